"""Engine errors: each message names the problem and the knob that fixes it."""


class EngineError(Exception):
    """Base of every error the engine raises to its owner."""


class ModelLoadError(EngineError):
    """The model cannot be loaded as asked (missing file, bad shape, no memory)."""


class InvalidRequest(EngineError):
    """A request is refused before it is queued (too long, bad sampling parameters)."""


class EngineDead(EngineError):
    """A worker process of this replica died; the replica no longer serves."""
