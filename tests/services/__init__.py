"""Real services the tests and the benchmarks start themselves (no pytest here: the benchmarks
import these too, with ``tests/`` on ``sys.path``)."""
