"""infosft's analysis core: scoring datasets into Parquet runs, statistics, export, and the
before/after evaluation of training runs."""
