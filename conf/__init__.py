# The Hydra configs, installed as the package data `asyndm.conf` (see pyproject.toml), so an
# installed asyndm finds them through the package rather than next to the source tree.
