"""The files that ship with infosft: the sample data set, its pre-scored run, and the
prior-capability set that ``infosft eval`` measures forgetting on.

They live in the repository's ``sample_data/`` folder, which the wheel installs as the
package ``infosft.sample_data`` (pyproject.toml maps one onto the other, as it maps
``analysis/`` and ``app/`` onto ``infosft.analysis`` and ``infosft.app``). Everything
reads them through this module, so a checkout and an installed wheel find the same files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE_DIR = Path(str(files("infosft.sample_data")))
SAMPLE_DATA = SAMPLE_DIR / "sft_sample.jsonl"
SAMPLE_RUN = SAMPLE_DIR / "runs" / "sample"
PRIOR = SAMPLE_DIR / "prior.jsonl"


def bundled_source(text: str) -> str:
    """A data path as the bundled sample run records it (``sample_data/...``, relative to
    the folder that holds ``sample_data``), made absolute; any other path unchanged.

    >>> bundled_source("sample_data/sft_sample.jsonl") == str(SAMPLE_DATA)
    True
    >>> bundled_source("/data/mine.jsonl")
    '/data/mine.jsonl'
    """
    if text and not Path(text).is_absolute() and (SAMPLE_DIR.parent / text).exists():
        return str(SAMPLE_DIR.parent / text)
    return text
