# Models that ship with asyndm (the toy world's), installed as the package data
# `asyndm.shipped_models` (see pyproject.toml); `AsyncPipeline.from_pretrained("toy")` finds them.
