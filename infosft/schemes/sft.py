"""Plain SFT: every supervised token weighs 1."""

import torch

from infosft.schemes.base import Scheme, register


def weight(f):
    return torch.ones_like(f["logp"])


SCHEME = register(Scheme("sft", "SFT", "w = 1", "standard supervised fine-tuning", weight))
