"""mgpud: serve LLMs with tensor and data parallelism on one node."""

__version__ = "0.1.0"
