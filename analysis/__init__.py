"""infosft's analysis core: scoring datasets into Parquet runs, statistics, export."""
