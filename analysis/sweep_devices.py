"""Sweeps on several devices: one run per device at a time, each in its own process.

``infosft sweep --devices cuda:0 cuda:1 ...`` (the default where a machine has more than
one GPU) trains and evaluates the sweep's runs on those devices side by side: each run
is ``infosft train --config`` then ``infosft eval --config`` in a subprocess that sees
only its device (``CUDA_VISIBLE_DEVICES=N``), so the trainer, which takes a device type,
never needs an index. The queue's files live in the sweep (this module owns them)::

    SWEEP/queue/NAME.train.yaml     the run's training config
    SWEEP/queue/NAME.eval.yaml      its evaluation config (runs: [RUN], overwrite)
    SWEEP/queue/NAME.*.outcome      what each command said when it ended (infosft.outcome)
    SWEEP/queue/NAME.log            both commands' output

``cpu`` may be named more than once (a many-core CPU machine): its workers share the
cores, each with its share of torch's threads. A run that stops or fails does not stop
the others; the sweep reports the first such run when the queue is empty, and
``--resume`` continues it, as for a sequential sweep.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from infosft import train_status as ts
from infosft.configs import write_config
from infosft.errors import InfosftError
from infosft.outcome import read_outcome

QUEUE = "queue"


def default_devices() -> list[str] | None:
    """One device per GPU where there are several; None (one run after another, in this
    process) otherwise."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] if n > 1 else None


def check_devices(devices: list[str]) -> list[str]:
    """The devices as torch spells them, each one this machine has; ``cuda`` alone and
    ``mps`` are refused (a worker needs a device of its own: ``cuda:N``)."""
    from infosft.models import check_device

    out = []
    for d in devices:
        dev = check_device(d)
        if dev == "cuda" or dev.startswith("mps"):
            raise InfosftError(f"--devices {d!r}: name one device per worker: cpu or cuda:N")
        out.append(dev)
    if len([d for d in out if d != "cpu"]) != len({d for d in out if d != "cpu"}):
        raise InfosftError(f"--devices {' '.join(devices)}: a GPU named twice would train "
                           "two runs on it at once")
    return out


def _env(device: str, workers_on_cpu: int) -> dict[str, str]:
    env = dict(os.environ)
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    elif workers_on_cpu > 1:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers_on_cpu))
    return env


def run_on_devices(out: Path, runs: list[tuple[Any, Path]], eval_cfg, devices: list[str],
                   progress: bool) -> list[str]:
    """Train (unless finished) and evaluate (unless evaluated) each ``(TrainConfig, RUN)``
    on the first free device; returns one line per run that did not finish (empty when
    all did). ``write_report`` is the caller's, once the queue is empty."""
    from infosft.analysis.evaluate import read_report

    qdir = out / QUEUE
    qdir.mkdir(exist_ok=True)
    work: queue.Queue = queue.Queue()
    for item in runs:
        work.put(item)
    on_cpu = devices.count("cpu")
    problems: list[str] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def worker(device: str) -> None:
        env = _env(device, on_cpu)
        while not stopping.is_set():
            try:
                cfg, run = work.get_nowait()
            except queue.Empty:
                return
            problem = one(cfg, run, device, env)
            if problem:
                with lock:
                    problems.append(problem)

    def one(cfg, run: Path, device: str, env: dict[str, str]) -> str | None:
        name, kind = run.name, device.split(":")[0]
        with open(qdir / f"{name}.log", "ab") as log:
            def call(argv: list[str]) -> None:
                subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, check=False)

            state = ts.read_status(run).get("state") if (run / ts.CONFIG).exists() else None
            if state != "finished":
                again = state is not None
                can_resume = again and ts.last_checkpoint(run) is not None and state != "failed"
                outcome = qdir / f"{name}.train.outcome"
                argv = [sys.executable, "-m", "infosft", "--status-file", str(outcome), "train"]
                if can_resume:  # the run's stored config; only the device may change
                    argv += ["--out", str(run), "--resume", "--device", kind]
                else:
                    train_file = write_config(asdict(replace(cfg, device=kind)),
                                              qdir / f"{name}.train.yaml")
                    argv += ["--config", str(train_file), *(["--overwrite"] if again else [])]
                if progress:
                    print(f"sweep: training {name} on {device}", flush=True)
                call(argv)
                if ts.read_status(run).get("state") != "finished":
                    said = read_outcome(outcome) or {}
                    return f"{run}: training " + (f"failed: {said['error']}"
                                                  if said.get("error") else "stopped")
            report = read_report(run)
            if (report or {}).get("status") == "complete" or stopping.is_set():
                return None if not stopping.is_set() else f"{run}: not evaluated (stopped)"
            eval_file = write_config(asdict(replace(eval_cfg, runs=[str(run)], overwrite=True,
                                                    device=kind)), qdir / f"{name}.eval.yaml")
            outcome = qdir / f"{name}.eval.outcome"
            if progress:
                print(f"sweep: evaluating {name} on {device}", flush=True)
            call([sys.executable, "-m", "infosft", "--status-file", str(outcome), "eval",
                  "--config", str(eval_file), "--quiet"])
            said = read_outcome(outcome) or {}
            if said.get("returncode") != 0:
                return (f"{run}: evaluation failed: "
                        f"{said.get('error') or 'no outcome (killed?)'}")
        return None

    # SIGTERM (the app's Stop) reaches the workers' trainers through the process group:
    # they checkpoint and stop; here it only means "start nothing new".
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopping.is_set() and not problems:
        problems.append(f"{out}: stopped")
    order = {str(run): i for i, (_, run) in enumerate(runs)}
    return sorted(problems, key=lambda p: order.get(p.split(":")[0], len(order)))
