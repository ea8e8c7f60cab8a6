"""Helpers shared by the test modules (import them as ``from tests.helpers import ...``;
fixtures stay in ``conftest.py``, and no test module imports another one)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"
SAMPLE_RUN = ROOT / "sample_data" / "runs" / "sample"
SAMPLE_ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
MATH_ROWS = [r for r in SAMPLE_ROWS if r["task"] == "math"]
CODE_ROWS = [r for r in SAMPLE_ROWS if r["task"] == "code"]


# ---------------------------------------------------------------- files and processes

def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a ``str`` row is written verbatim (for malformed-line tests)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *argv: str) -> list[str]:
    """``python -m torch.distributed.run`` with ``nproc`` ranks on a free rendezvous port
    (a fixed port collides with any other run on the machine)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *argv]


_HOLD_LOCK = ("import sys, time\nfrom infosft.runlock import RunLock\n"
              "lock = RunLock(sys.argv[1], 'x').acquire()\nprint('locked', flush=True)\n"
              "time.sleep(120)\n")


@contextlib.contextmanager
def lock_held_by_another_process(directory: Path):
    """A real second process that holds ``directory``'s run lock until the block ends; it
    is then SIGKILLed, so no cleanup code of its own runs. Yields its ``Popen``."""
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


# A test hook for kill and stop tests: the real CLI (``python -m infosft ...``) in a child
# process that first wraps one product function so that the process parks at a known
# point of its work. The test then signals a process that is certainly mid-run, not one
# that may already have finished (the race of polling for progress, then signalling).
_HOOKED_CLI = """
import runpy, sys, time
{hook}
sys.argv = ["infosft.app.cli", *sys.argv[1:]]
runpy.run_module("infosft.app.cli", run_name="__main__", alter_sys=True)
"""

#: ``infosft train``: at the end of step 2 (step 1 and its checkpoint, if any, are on
#: disk), wait for SIGTERM / SIGINT (parked until killed when none comes); the step then
#: ends as usual, so a stop checkpoints step 2.
HOLD_TRAIN_AT_STEP_2 = """
from infosft import train as _t
_end = _t.RunWriter.on_step_end
def on_step_end(self, args, state, control, **kw):
    if state.global_step == 2:
        while not self.stop.requested:
            time.sleep(0.01)
    return _end(self, args, state, control, **kw)
_t.RunWriter.on_step_end = on_step_end
"""


def hold_score_after_part(n: int, release: Path | None = None) -> str:
    """Hook for ``infosft score``: once its ``n``-th token part is written, print
    ``parked`` and wait until the file ``release`` exists (forever without one: killed
    there), then go on."""
    release = repr(str(release)) if release else None
    return f"""
import os
from infosft.analysis.store import Run as _Run
_write = _Run.write_part
_n, _release = [0], {release}
def write_part(self, *a, **kw):
    path = _write(self, *a, **kw)
    _n[0] += 1
    if _n[0] == {n}:
        print("parked", flush=True)
        while _release is None or not os.path.exists(_release):
            time.sleep(0.01)
    return path
_Run.write_part = write_part
"""


def wait_parked(proc: subprocess.Popen) -> bool:
    """Read ``proc``'s text stdout up to its hook's ``parked`` line; False at EOF (it
    exited before reaching the hook)."""
    for line in proc.stdout:
        if line.strip() == "parked":
            return True
    return False


def hooked_cli(hook: str, *argv: str) -> list[str]:
    """The argv of ``python -m infosft ARGV`` with ``hook`` (Python code) run first."""
    return [sys.executable, "-c", _HOOKED_CLI.format(hook=hook), *map(str, argv)]


# ---------------------------------------------------------------- the app

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


# ---------------------------------------------------------------- the CLI

def good_row(i: int) -> dict:
    return {"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``infosft ARGV`` in-process: (exit code, stdout, stderr)."""
    from infosft.app.cli import main

    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The single error line of a failed command (fails unless stderr is exactly that)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("infosft: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------- training

def tiny_cfg(data, out, model, **kw) -> dict:
    """A training config mapping for fast full-weight steps on the tiny model."""
    values = {"data": str(data), "out": str(out), "model": str(model), "lora": False,
              "scheme": "sft", "max_steps": 16, "batch_size": 2, "logging_steps": 1,
              "eval_split": 0, "device": "cpu", "lr": 1e-3, **kw}
    return values


def cli_args(values: dict) -> list[str]:
    """The flags of a config mapping, as a user would type them."""
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


def make_training_run(path: Path, final_model, tokenizer, *, base: str | None,
                      eval_rows: list[dict], state: str = "finished", **config) -> Path:
    """A training run directory as ``infosft train`` leaves it: config.yaml, status.json,
    metrics.jsonl, final/ (a full model + tokenizer) and data/eval.jsonl."""
    import yaml

    path.mkdir(parents=True)
    cfg = {"data": str(SAMPLE), "model": base, "scheme": "infosft", "C": 2.0, "P": None,
           "threshold": None, "direction": None, "mode": "online", "lora": False,
           "max_length": 512, "fields": None, "use_template": True, "eval_split": 0.1,
           "eval_data": None, "seed": 0, "out": str(path), **config}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "status.json").write_text(json.dumps({"state": state}))
    (path / "metrics.jsonl").write_text("")
    if final_model is not None:
        final_model.save_pretrained(path / "final")
        tokenizer.save_pretrained(path / "final")
    (path / "data").mkdir()
    write_jsonl(path / "data" / "eval.jsonl", eval_rows)
    return path


def perturbed(model_dir: Path, scale: float, layer_filter: str):
    """The model in ``model_dir`` with seeded Gaussian noise added to some weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if layer_filter in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- weights

#: The schemes the bundled run supports: it is scored with entropy_top20 (EAFT), without
#: a reference model (no excess).
SAMPLE_SCHEMES = ("sft", "dft", "infosft", "profit", "eaft")


def reference_weights(logp: np.ndarray, scheme: str, C: float = 2.0, tau: float = 0.1,
                      entropy_top20: np.ndarray | None = None, alpha: float = 1.0):
    """Each scheme's token weight, written out in float64 numpy (EAFT from each token's
    ``entropy_top20``: ``(H / 3) ** alpha``)."""
    if scheme == "eaft":
        return (np.clip(entropy_top20.astype(np.float64), 0, None) / 3.0) ** alpha
    q = np.exp(logp.astype(np.float64))
    if scheme == "sft":
        return np.ones_like(q)
    if scheme == "dft":
        return q
    if scheme == "infosft":
        with np.errstate(divide="ignore"):
            logit = np.log(q) - np.log1p(-q)
        return q * np.clip(1 - logit / C, 0, None)
    return (q >= tau).astype(np.float64)


# ---------------------------------------------------------------- the trainers' tests

#: The label of an unsupervised position, written out for the reference losses,
#: independently of the product's one definition (infosft.data.IGNORE_INDEX).
IGNORE = -100
# (prompt, response) tokens of the 4 examples; the second is plain text (every token a
# target, its first one too), where a flattened batch must not predict across the boundary
LENGTHS = [(6, 14), (9, 9), (5, 17), (8, 11)]
PLAIN = 1


def probed(cls):
    """``cls`` recording each micro-batch's loss (what backward gets) and N."""

    class Probe(cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.micro.append((float(loss), int(num_items_in_batch)))
            return loss

    Probe.micro = None
    return Probe


def make(cls, model, **kwargs):
    trainer = probed(cls)(model=model, **kwargs)
    trainer.micro = []
    return trainer


class ForwardCount:
    """Counts the calls of ``model(...)`` (the top module, whatever its forward became)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.n += 1


CPU_ARGS = {"use_cpu": True, "max_steps": 1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2, "train_sampling_strategy": "sequential",
            "logging_steps": 1, "save_strategy": "no", "report_to": "none"}


def sft_args(tmp_path, **kw):
    """The smallest SFTConfig that trains on CPU (use_cpu, bf16=False), plus a fixed
    batch order: two micro-batches of 2 examples, in dataset order."""
    from trl import SFTConfig

    return SFTConfig(**{**CPU_ARGS, "output_dir": str(tmp_path / "out"), "bf16": False,
                        "max_length": None, **kw})


def step_loss(trainer, steps=2):
    return sum(loss for loss, _ in trainer.micro[:steps])


def n_targets(examples):
    return sum(sum(x != IGNORE for x in ex["labels"][1:]) for ex in examples)


def hf_args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(**{**CPU_ARGS, "output_dir": str(tmp_path / "out"), **kw})


def forbid_token_load(monkeypatch) -> None:
    """Make loading every target token of a run (``Targets.from_run``) fail the test:
    a page of a large run must work on its histograms."""
    from infosft.analysis.stats import Targets

    def no_tokens(cls, *a, **k):
        raise AssertionError("Targets.from_run was called: every token loaded")

    monkeypatch.setattr(Targets, "from_run", classmethod(no_tokens))
