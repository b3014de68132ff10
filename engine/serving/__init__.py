"""The serving layer over replicas: `ModelGroup` is the engine's front door (it resolves
the model, validates and tokenizes each request once), routes to replicas, survives
their failures and reshapes while serving; `DevicePool` hands devices to replicas."""
