"""Shared fixtures: the real default model (converted once per machine, loaded once per
session) and a tiny random Llama with the same tokenizer for fast pipeline tests."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"
SAMPLE_RUN = ROOT / "sample_data" / "runs" / "sample"


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


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a ``str`` row is written verbatim (for malformed-line tests)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A complete run of 30 sample rows scored by the tiny model."""
    from analysis.score import ScoreConfig, score_dataset

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:30]]
    data = write_jsonl(out.parent / "data.jsonl", rows)
    return score_dataset(ScoreConfig(source=str(data), out=str(out), model=str(tiny_model_dir),
                                     device="cpu"), progress=False)


_HOLD_LOCK = ("import sys, time\nfrom infosft.runlock import RunLock\n"
              "lock = RunLock(sys.argv[1], 'x').acquire()\nprint('locked', flush=True)\n"
              "time.sleep(120)\n")


@contextlib.contextmanager
def lock_held_by_another_process(directory: Path):
    """A real second process that holds ``directory``'s run lock until the block ends; it
    is then SIGKILLed, so no cleanup code of its own runs. Yields its ``Popen``."""
    import os
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def app_page(page: str | None = None, **state):
    """An AppTest of the app (switched to ``page`` when given, e.g. "views/tune.py"),
    with ``state`` in its session state, after its first run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at
