"""DFT: each token's loss scaled by its own probability (Wu et al., arXiv 2508.05629)."""

from infosft.schemes.base import Scheme, register


def weight(f):
    return f["logp"].exp()


SCHEME = register(Scheme("dft", "DFT", "w = q", "Dynamic Fine-Tuning, arXiv 2508.05629", weight))
