"""`python -m mgpud.cli ...` = `mgpud ...` (for environments without the console script)."""

from .main import main

main()
