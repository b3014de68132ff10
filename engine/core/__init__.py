"""One replica of a model: `LLMEngine` (the owner side, in the caller's process) drives
one worker process per device; rank 0 schedules and samples, the other ranks follow its
step plans. It takes prepared requests (token ids, checked sampling parameters) from
the serving layer and never re-checks them."""
