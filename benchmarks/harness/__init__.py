"""The benchmark behind ``python benchmarks/bench.py`` (see benchmarks/README.md)."""
