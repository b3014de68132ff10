# Benchmarks (see benchmarks/README.md). PYTHON: the project virtualenv by default.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick

# The whole suite, full size: results/*.json, the plots, results/summary.md.
bench:
	$(PYTHON) benchmarks/run_all.py

# Every benchmark as a small smoke run (results/*.quick.json), as tests/test_benchmarks.py does.
bench-quick:
	$(PYTHON) benchmarks/run_all.py --quick
