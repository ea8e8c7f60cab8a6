"""infosft: token-weighted supervised fine-tuning (SFT, DFT, InfoSFT, ProFit).

This package holds the method only: the weight formulas, the weighted loss,
records -> tokens, model loading, training and the public trainer classes, and the
plumbing every writer shares (atomic writes, run locks, process identity). It imports
neither ``analysis`` nor ``app``, writes no Parquet and knows nothing of the browser
app. The design: docs/design.md.
"""

__version__ = "0.1.0"
