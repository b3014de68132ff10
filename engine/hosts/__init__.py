"""What this host has: devices (CUDA GPUs through NVML, or CPU virtual devices) with
their live readings, and the hardware figures (memory, FLOP/s, bandwidth) planning uses."""
