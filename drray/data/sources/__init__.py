"""The built-in data sources, registered in DATA_SOURCES on import:

  digits   scikit-learn's 8x8 digits (bundled, offline)
  idx      any MNIST-format folder;  mnist: the same, checksummed, downloadable
  text     plain text and JSON lines, cut into byte sequences
  parquet  drray's Parquet schema (what `jobs.prepare` writes)
  imagefolder  image files (PNG, JPEG) in one folder per class, optionally under train/ heldout/ test/

A source is `fn(cfg: DataConfig) -> (pool, test)` or `(pool, test, heldout)`, an ExampleSet each
(None where it has no such split); register your own with `@DATA_SOURCES.register("name")`.
"""
from drray.data.sources import digits, idx, imagefolder, parquet, text  # noqa: F401
