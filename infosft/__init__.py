"""infosft: token-weighted supervised fine-tuning (SFT, DFT, InfoSFT, ProFit).

This package holds the method only: the weight formulas, records -> tokens,
model loading and (later) the weighted loss and training. It knows nothing of
Parquet files or the browser app.
"""

__version__ = "0.1.0"
