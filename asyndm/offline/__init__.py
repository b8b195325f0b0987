"""Models the project builds itself with random weights (tests, benchmarks, the offline default).

One module per model family; each builder saves its diffusers folder once, in the cache, and returns
it. ``asyndm.sources.BUILT_IN_MODELS`` names them (``model=tiny``, ``AsyncPipeline.from_pretrained("tiny")``).
"""
