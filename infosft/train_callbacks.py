"""The trainer's callbacks and stop handling: ``RunWriter`` (``status.json`` every step,
a ``metrics.jsonl`` line per log) and ``StopRequest`` (SIGTERM / SIGINT -> checkpoint and
stop at the next step end, on every rank)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from infosft import train_status as ts
from infosft.atomic import usual_permissions
from infosft.loss import STEP_PICTURE

log = logging.getLogger("infosft.train")


class StopRequest:
    """Set by SIGTERM / SIGINT: the trainer checkpoints and stops at the next step end.
    A second SIGINT interrupts at once (KeyboardInterrupt)."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main = run_dir, is_main
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.is_main:
            ts.write_status(self.run_dir, state="stopping")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _any_rank(flag: bool, device) -> bool:
    """``flag`` OR-ed across processes, so all ranks stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def close_process_group() -> None:
    """Under a launcher, wait for every rank, then close the process group: rank 0 hosts
    the rendezvous store, and a rank still using it when rank 0 exits aborts (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class RunWriter(TrainerCallback):
    """Writes ``status.json`` every step and a ``metrics.jsonl`` line per log (the weight
    stats from the log itself: :class:`infosft.trainers.WeightedTrainer` adds them)."""

    def __init__(self, run_dir: Path, stop: StopRequest, prior_elapsed: float):
        self.run_dir, self.stop = run_dir, stop
        self.prior_elapsed = prior_elapsed

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = self.t_mark = time.time()
        self.step0 = state.global_step
        self.tokens_mark = state.num_input_tokens_seen
        if state.is_world_process_zero:
            ts.write_status(self.run_dir, state=self._state(), step=state.global_step,
                            total_steps=state.max_steps, epoch=state.epoch)

    def _state(self) -> str:
        return "stopping" if self.stop.requested else "running"

    def on_step_end(self, args, state, control, **kw):
        if _any_rank(self.stop.requested, args.device):
            self.stop.requested = True
            control.should_save = True
            control.should_training_stop = True
        if state.is_world_process_zero:
            now = time.time()
            done = state.global_step - self.step0
            rate = done / max(now - self.t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if done else None
            ts.write_status(self.run_dir, state=self._state(), step=state.global_step,
                            total_steps=state.max_steps, epoch=state.epoch,
                            elapsed_s=self.prior_elapsed + now - self.t0, eta_s=eta)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        now = time.time()
        if "loss" in logs:
            tokens = state.num_input_tokens_seen - self.tokens_mark
            tps = tokens / max(now - self.t_mark, 1e-9)
            self.t_mark, self.tokens_mark = now, state.num_input_tokens_seen
            line = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch),
                    "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"), "tokens_per_s": tps,
                    "mean_weight": logs.get("mean_weight"),
                    "zero_weight_share": logs.get("zero_weight_share"),
                    **{k: logs.get(k) for k in STEP_PICTURE}, "time": now}
        elif "eval_loss" in logs:
            line = {"step": state.global_step, "epoch": state.epoch,
                    "eval_loss": logs["eval_loss"], "time": now}
        else:
            return
        if state.is_world_process_zero:
            ts.append_metrics(self.run_dir, line)
            log.info(" ".join(f"{k} {_fmt(v)}" for k, v in line.items()
                              if k not in ("time", "q_hist")))

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = ts.last_checkpoint(self.run_dir)
            if ckpt:
                usual_permissions(ckpt)  # safetensors writes owner-only files


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
