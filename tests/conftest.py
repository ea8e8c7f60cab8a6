"""Shared fixtures: the real default model (converted once per machine, loaded once per
session) and a tiny random Llama with the same tokenizer for fast pipeline tests. Shared
helpers (no fixtures) are in ``tests/helpers.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Under pytest-xdist (``-n N``), each worker gets its share of the cores for torch's
# and OpenMP's thread pools (and so do the processes tests start, through the
# environment): N workers with a pool of every core each spin against each other and
# made CPU-heavy tests 2-3x slower. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1)
                                            // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest

from tests.helpers import IGNORE, LENGTHS, PLAIN, SAMPLE, write_jsonl


@pytest.fixture(scope="session")
def default_dir() -> Path:
    from infosft.models import default_model_dir

    return default_model_dir()[0]


@pytest.fixture(scope="session")
def tokenizer(default_dir):
    from infosft.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def default_model(default_dir):
    """(model, tokenizer, info) of the embedded SmolLM2-135M-Instruct, fp32 on CPU."""
    from infosft.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama (seeded) with the default tokenizer: same tokens, fast forward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A complete run of 30 sample rows scored by the tiny model."""
    from infosft.analysis.score import ScoreConfig, score_dataset

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:30]]
    data = write_jsonl(out.parent / "data.jsonl", rows)
    return score_dataset(ScoreConfig(source=str(data), out=str(out), model=str(tiny_model_dir),
                                     device="cpu"), progress=False)


# ------------------------------------------------- the trainers' tests (test_trainers*.py)

@pytest.fixture(scope="session")
def peaky_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random Llama with its logits scaled 20x: on its own samples, target
    probabilities spread over (0, 1), so every scheme gives distinct, non-trivial weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.model.norm.weight.data *= 20
    out = tmp_path_factory.mktemp("peaky")
    model.save_pretrained(out)
    return out


@pytest.fixture
def model(peaky_dir):
    """The peaky tiny Llama (``peaky_dir``), fresh for each test (it gets trained)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(peaky_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def examples(peaky_dir):
    """4 examples: a random prompt (labels -100, but for the plain-text one) and a response
    sampled from the peaky model; static ``weights`` in [0, 1] on the targets (some exactly
    0), 0 elsewhere."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(peaky_dir)
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, (n_prompt, n_resp) in enumerate(LENGTHS):
        ids = torch.randint(100, 5000, (1, n_prompt), generator=gen)
        for _ in range(n_resp):
            with torch.no_grad():
                p = model(ids).logits[0, -1].softmax(-1)
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=gen)[None]], 1)
        ids = ids[0].tolist()
        w = torch.rand(len(ids), generator=gen)
        w[w < 0.2] = 0.0
        n_prompt = 0 if i == PLAIN else n_prompt
        w[:n_prompt] = 0.0
        out.append({"input_ids": ids, "labels": [IGNORE] * n_prompt + ids[n_prompt:],
                    "weights": w.tolist()})
    return out
