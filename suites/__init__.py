"""The benchmark suites, installed as ``msafety_bench.suites``: ``pytest --pyargs msafety_bench.suites``."""
