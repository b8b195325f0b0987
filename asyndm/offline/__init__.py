"""Models the project builds itself with random weights (tests, benchmarks, the offline default)."""
