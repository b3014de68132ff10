"""Where model directories come from: a path on disk, or the embedded demo model
(prepared once from a GGUF file shipped on PyPI)."""
