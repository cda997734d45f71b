"""The generic training loop shared by the classification, CLIP and segmentation tools.

:class:`Trainer` owns one run: optimizer steps with gradient accumulation (DDP ``no_sync`` on all but the last
micro-batch), autocast + GradScaler, gradient clipping, EMA update, per-iteration scheduler steps, periodic
evaluation, atomic checkpoints with exact resume, best-checkpoint tracking, tqdm progress, CSV/TensorBoard logs
and PNG curves. Task code supplies only ``loss_fn`` (and optionally ``eval_fn`` / ``after_step``).

Typical use::

    info = init_distributed("auto")
    model = wrap_ddp(model, info)
    loader = EpochLoader(train_set, batch_size, seed=cfg.seed, info=info)
    trainer = Trainer(model, optimizer, loader, loss_fn, info=info, run_dir=run_dir, epochs=10,
                      scheduler=sched, ema=ema, precision="bf16", grad_accum_steps=2, clip_grad=1.0,
                      eval_fn=evaluate, best_metric="top1")
    result = trainer.fit(resume="latest")   # {"step", "epoch", "train_loss", <last eval metrics>, "best", ...}

Contracts:
- ``loss_fn(model, batch) -> loss`` or ``(loss, {name: float})``; ``batch`` is already on the device (tensors in
  nested tuples/lists/dicts are moved; other objects, e.g. caption strings, are passed as is). It runs inside
  the autocast context. ``model`` is the (possibly DDP-wrapped) training model.
- ``eval_fn(model) -> {name: float}`` is called on every rank with the unwrapped model (and again with the EMA
  module, metrics prefixed ``ema_``); it must reduce across ranks itself (see ``distributed.all_reduce_sum``).
- ``after_step(trainer)`` runs after each optimizer step (e.g. clamp CLIP's logit scale).
- The schedule is per optimizer step: a timm scheduler gets ``step_update(step)`` each step and ``step(epoch)``
  at each epoch end; a torch scheduler gets ``step()`` each step.
- Evaluation and checkpoints run after an optimizer step when the step schedule (``eval_every_steps`` /
  ``ckpt_every_steps``), the epoch schedule (``eval_every_epochs`` / ``ckpt_every_epochs``, at an epoch end; 0 or
  None = never) or the end of training asks, each at most once per step.
- ``stop_after_steps`` ends ``fit`` early WITHOUT saving (a simulated crash, for resume tests).
- SIGTERM / SIGINT / SIGUSR1 during ``fit`` (preemption, Ctrl-C) end it after the optimizer step in progress, with
  a checkpoint of that step; the result then has ``stopped_by`` (the signal's name) and ``exit_status`` (128 + its
  number), and ``--resume latest`` continues from the step (:mod:`.stopping`; ``stop_on_signals=False`` leaves the
  signals alone). ``result_files`` (names in ``run_dir``: what the tool writes when the run ends) are removed when a
  run starts or resumes with steps to go, so that a stopped extension of a finished run does not look finished.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import deque
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..models.convert import CheckpointFileMismatchError, CheckpointReadError, key_mismatches
from .checkpoint import (CheckpointManager, check_run_dir_is_free, check_training_state, gather_rng_states,
                         is_fresh_start, load_checkpoint, restore_rank_rng, step_checkpoints)
from .config import ConfigError
from .distributed import (DistInfo, all_reduce_max, all_reduce_sum, barrier, print_rank0, reduce_dict, unwrap_model,
                          warn_rank0)
from .loader import EpochLoader
from .logger import MetricLogger, progress
from .memory_format import plain_layout
from .precision import autocast, check_precision, make_grad_scaler
from .stopping import StopSignals, signal_name, stop_exit_status

__all__ = ["Trainer", "move_to_device", "clip_gradients"]


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Recursively move tensors in tuples/lists/dicts to ``device``; other objects pass through."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(moved) if isinstance(obj, list) else tuple(moved)
    return obj


CLIP_MODES = ("norm", "value", "agc")


def clip_gradients(parameters, max_norm: float | None, mode: str = "norm") -> float:
    """Clip by total L2 norm (``mode="norm"``), by value (``"value"``) or adaptively per unit (``"agc"``, timm's
    ``adaptive_clip_grad`` with clip factor ``max_norm``), as timm's ``dispatch_clip_grad``; returns the pre-clip
    total norm."""
    if mode not in CLIP_MODES:
        raise ValueError(f"unknown clip mode {mode!r}; expected one of {', '.join(CLIP_MODES)}")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if mode == "norm":
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")))
    norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    if max_norm and mode == "value":
        torch.nn.utils.clip_grad_value_(params, max_norm)
    elif max_norm:
        from timm.utils.agc import adaptive_clip_grad
        adaptive_clip_grad(params, max_norm)
    return float(norm)


class Trainer:
    """One training run (see the module docstring)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: EpochLoader,
                 loss_fn: Callable[[nn.Module, Any], Any], *, run_dir: str | Path, info: DistInfo | None = None,
                 epochs: int | None = None, max_steps: int | None = None, scheduler: Any = None,
                 ema: nn.Module | None = None, precision: str = "fp32", grad_accum_steps: int = 1,
                 clip_grad: float | None = None, clip_mode: str = "norm",
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, eval_every_epochs: int = 1,
                 eval_every_steps: int | None = None, best_metric: str | None = None, best_mode: str = "max",
                 ckpt_every_steps: int | None = None, ckpt_every_epochs: int = 1, keep_last: int = 3,
                 log_every: int = 10, tensorboard: bool = False, after_step: Callable[["Trainer"], None] | None = None,
                 stop_after_steps: int | None = None, show_progress: bool = True, extra_state: dict | None = None,
                 summed_extra: tuple[str, ...] = (), must_match: tuple[str, ...] = (), plot: bool = True,
                 stop_on_signals: bool = True, result_files: tuple[str, ...] = ()):
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.info = info or DistInfo()
        self.model, self.optimizer, self.loader, self.loss_fn = model, optimizer, train_loader, loss_fn
        self.scheduler, self.ema = scheduler, ema
        self.precision = check_precision(precision)
        self.device = self.info.device
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.accum = int(grad_accum_steps)
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"unknown clip mode {clip_mode!r}; expected one of {', '.join(CLIP_MODES)}")
        self.clip_grad, self.clip_mode = clip_grad, clip_mode
        self.steps_per_epoch = len(train_loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_loader)} batches per epoch is less than grad_accum_steps={self.accum}")
        if epochs is None and max_steps is None:
            raise ValueError("give epochs or max_steps")
        self.total_steps = int(max_steps) if max_steps is not None else int(epochs) * self.steps_per_epoch
        if self.total_steps < 1:
            raise ValueError(f"nothing to train: the run has {self.total_steps} optimizer steps "
                             f"(epochs={epochs}, max_steps={max_steps})")
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self._by_epochs = max_steps is None  # (a resume on changed data keeps the epoch count, not the step count)
        self._schedule_offset = 0  # schedule position - step (a by-epoch run resumed on a training set of another size)
        self.eval_fn, self.eval_every_epochs, self.eval_every_steps = eval_fn, eval_every_epochs, eval_every_steps
        self.best_metric = best_metric
        self.ckpt_every_steps, self.ckpt_every_epochs = ckpt_every_steps, ckpt_every_epochs
        self.log_every, self.after_step = max(1, int(log_every)), after_step
        self.stop_after_steps, self.show_progress, self.plot = stop_after_steps, show_progress, plot
        self.run_dir = Path(run_dir)
        self.ckpt = CheckpointManager(self.run_dir, keep_last=keep_last, mode=best_mode)
        self.logger = MetricLogger(self.run_dir, tensorboard=tensorboard and self.info.is_main,
                                   enabled=self.info.is_main)
        self.extra_state: dict[str, Any] = dict(extra_state or {})
        self.summed_extra = tuple(summed_extra)  # per-rank counters: saved as their sum, restored on rank 0
        self.must_match = tuple(must_match)  # extra_state keys a resumed checkpoint must record the same
        self.step = 0            # optimizer steps done
        self.epoch = 0           # current epoch
        self.batch_in_epoch = 0  # batches of the current epoch consumed
        self.last_eval: dict[str, float] = {}
        self._last_eval_step: int | None = None  # the step last evaluated (a step is never evaluated twice)
        self.last_train_loss: float | None = None  # the last logged window's mean loss
        self.history: deque[dict[str, float]] = deque(maxlen=10_000)  # the last logged rows (all are in the CSV)
        self._window: dict[str, float] = {}  # sums of the step logs since the last logged row, and their count
        self._window_n = 0
        self._time_before = 0.0  # training seconds of the processes before a resume (up to their checkpoint)
        self._fit_start: float | None = None
        self.stop_on_signals = stop_on_signals
        self.result_files = tuple(result_files)  # a finished run's files in run_dir, removed when it goes on
        self._signals: StopSignals | None = None  # (during fit)
        self._eval_due = False  # the resumed checkpoint's step is still to be evaluated (a stop signal came first)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The full training state (call on every rank: RNG states are gathered)."""
        sched = self.scheduler.state_dict() if self.scheduler is not None else None
        return {
            "model": plain_layout(unwrap_model(self.model).state_dict()),  # (a channels-last model's too)
            "optimizer": self.optimizer.state_dict(),
            "scheduler": sched,
            "scaler": self.scaler.state_dict(),
            "ema": plain_layout(self.ema.state_dict()) if self.ema is not None else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps, "world_size": self.info.world_size,
            "micro_batch_samples": self._micro_batch_samples(), "train_samples": self._train_samples(),
            "rng": gather_rng_states(),
            "extra": self._saved_extra(),
            "last_eval": dict(self.last_eval), "last_eval_step": self._last_eval_step,
            "last_train_loss": self.last_train_loss,
            "log_window": {"steps": self._window_n, "sums": self._window_sums()},
            "train_time_s": self._train_time(),
        }

    def _train_time(self) -> float:
        """Seconds of training so far, over the processes a resumed run has had."""
        return self._time_before + (time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0)

    def _window_sums(self) -> dict[str, float]:
        """The sums of the steps logged since the last row, averaged over ranks (what the row's reduction does), so
        that a resumed run's first row averages the same steps as an uninterrupted run's."""
        return reduce_dict(self._window, self._collective_device)

    @property
    def _collective_device(self) -> torch.device | str:
        """Where the tensors of a collective live: the CUDA device (NCCL reduces CUDA tensors), else the CPU."""
        return self.device if self.device.type == "cuda" else "cpu"

    def _saved_extra(self) -> dict[str, Any]:
        """``extra_state`` with the ``summed_extra`` counters summed over ranks (every rank counts its own)."""
        extra = dict(self.extra_state)
        if self.summed_extra:
            device = self._collective_device
            counts = torch.tensor([float(extra.get(k, 0)) for k in self.summed_extra], dtype=torch.float64,
                                  device=device)
            for k, v in zip(self.summed_extra, all_reduce_sum(counts).tolist()):
                extra[k] = int(v) if float(v).is_integer() else v
        return extra

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap_model(self.model).load_state_dict(state["model"])
        configured = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        moved = self._map_position(state)
        lr_changed = self._keep_configured_lr(configured)
        saved_samples, samples = state.get("train_samples"), self._train_samples()
        data_changed = saved_samples is not None and samples is not None and int(saved_samples) != samples
        if self._by_epochs:  # the run ends with its last epoch, the schedule at the epoch-based position
            done_now = min(self.batch_in_epoch // self.accum, self.steps_per_epoch)
            # (0 unless the training set changed size since the step count began: then the steps so far are of
            # epochs of another length, and the schedule, built for epochs of this one, is that many steps ahead)
            self._schedule_offset = self.epoch * self.steps_per_epoch + done_now - self.step
            self.total_steps = self.epochs * self.steps_per_epoch - self._schedule_offset
        saved_total = state.get("total_steps")
        if self.scheduler is not None and state.get("scheduler") is not None:
            if ((saved_total is None or int(saved_total) == self.total_steps) and not moved and not lr_changed
                    and not data_changed):  # (a resized training set: equal totals by chance, another schedule)
                self.scheduler.load_state_dict(state["scheduler"])
            else:  # a longer / shorter run (timm's train.py --resume with new --epochs), or a step count mapped to
                # another batch: the new schedule at the new step (the saved one would run ahead of or behind it)
                if saved_total is not None and int(saved_total) != self.total_steps:
                    warn_rank0(f"checkpoint was written for a run of {saved_total} steps, this one has "
                               f"{self.total_steps}: the learning-rate schedule follows the new length from step "
                               f"{self.step}")
                self._advance_scheduler()
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise RuntimeError("the run uses EMA but the checkpoint has no EMA state")
            self.ema.load_state_dict(state["ema"])
        if data_changed:
            ends = (f"; the run still ends after epoch {self.epochs}, now at step {self.total_steps}"
                    if self._by_epochs else "")
            warn_rank0(f"checkpoint was written for a training set of {saved_samples} samples, this one has "
                       f"{samples}: the data changed, so the rest of epoch {self.epoch + 1} is drawn from another "
                       f"shuffle (samples already seen this epoch may come again, others not at all){ends}")
        saved_world = int(state.get("world_size", self.info.world_size))
        if saved_world != self.info.world_size and not moved:
            warn_rank0(f"checkpoint was written with world size {saved_world}, resuming with "
                       f"{self.info.world_size}: the data continues where it stopped, but the per-process random "
                       "streams (dropout, drop path, mixup) are not those of an uninterrupted run")
        self.extra_state = self._resumed_extra(dict(state.get("extra") or {}))
        if not self.info.is_main:  # the saved totals continue on rank 0; the other ranks count afresh
            self.extra_state.update({k: 0 for k in self.summed_extra if k in self.extra_state})
        self.ckpt.load_best_tracking(state)
        # the results a finished run reports, so that resuming it does not lose them
        self.last_eval = dict(state.get("last_eval") or {})
        self._last_eval_step = state.get("last_eval_step")
        self.last_train_loss = state.get("last_train_loss")
        self._time_before = float(state.get("train_time_s") or 0.0)
        window = state.get("log_window") or {}
        if not moved and window.get("steps"):  # (after a mapped position the steps are of another size)
            self._window, self._window_n = {k: float(v) for k, v in window["sums"].items()}, int(window["steps"])
        restore_rank_rng(state["rng"])

    def _keep_configured_lr(self, configured: list[float]) -> bool:
        """After the optimizer state is loaded: a base learning rate the config changed since the checkpoint (the
        saved one came back with the state) is set again, with a warning, and the schedule follows it from the
        resumed step, as timm's train.py does (its schedule is built from the new arguments); returns whether it
        changed."""
        groups = self.optimizer.param_groups
        saved = [g.get("initial_lr", g["lr"]) for g in groups]
        if len(saved) != len(configured) or all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(saved, configured)):
            return False
        for g, lr in zip(groups, configured):
            g["lr"] = lr
            if "initial_lr" in g:
                g["initial_lr"] = lr
        warn_rank0(f"the checkpoint's base learning rate was {max(saved):g}, this run's config says "
                   f"{max(configured):g}: the run continues at the configured rate (its schedule from step "
                   f"{self.step})")
        return True

    def _train_samples(self) -> int | None:
        """The training set's length (None when the loader's dataset has none)."""
        try:
            return len(self.loader.dataset)  # type: ignore[attr-defined, arg-type]
        except (AttributeError, TypeError):
            return None

    def _micro_batch_samples(self) -> int:
        """Samples of one batch position summed over the processes (the per-process batch x the world size)."""
        return int(getattr(self.loader, "batch_size", 0)) * self.info.world_size

    def _map_position(self, state: dict[str, Any]) -> bool:
        """A checkpoint written with another world size or per-process batch: keep the position in the data (the
        samples of the current epoch already seen, rounded down to a whole optimizer step) rather than the step
        count, so that the epoch, the learning-rate schedule and the samples still to see continue from where the
        run stopped. Returns whether the position moved (checkpoints before this field: never)."""
        old, new = int(state.get("micro_batch_samples") or 0), self._micro_batch_samples()
        if not old or not new or old == new:
            return False
        old_step, old_batch = self.step, self.batch_in_epoch
        seen = self.batch_in_epoch * old
        self.batch_in_epoch = min(seen // new // self.accum * self.accum, self.steps_per_epoch * self.accum)
        self.step = self.epoch * self.steps_per_epoch + self.batch_in_epoch // self.accum
        warn_rank0(f"checkpoint was written with {old} samples per batch over {state.get('world_size')} "
                   f"process(es), this run has {new} over {self.info.world_size}: it continues from the same "
                   f"place in the data, epoch {self.epoch} after {seen} of its samples (step {old_step} -> "
                   f"{self.step}, batch {old_batch} -> {self.batch_in_epoch}); the per-process random streams "
                   "are not those of an uninterrupted run")
        return True

    def _resumed_extra(self, saved: dict[str, Any]) -> dict[str, Any]:
        """The saved extra state with this run's own values over it: what the caller's ``extra_state`` says of the
        run being trained (e.g. the Bi-WKV mode its model computes with) is what later checkpoints must record; the
        ``summed_extra`` counters and keys this run does not set continue from the checkpoint. A changed value
        warns."""
        current = {k: v for k, v in self.extra_state.items() if k not in self.summed_extra}
        for key, value in current.items():
            if key in saved and saved[key] != value:
                warn_rank0(f"the checkpoint records {key}={_short_repr(saved[key])}, this run has "
                           f"{_short_repr(value)}: checkpoints from now on record this run's value")
        return {**saved, **current}

    def _advance_scheduler(self) -> None:
        """The freshly built scheduler where ``self.step`` optimizer steps (and ``self.epoch`` epochs) leave it."""
        if hasattr(self.scheduler, "step_update"):  # timm: a function of the step / epoch count
            self.scheduler.step(self.epoch)
            self.scheduler.step_update(num_updates=self.step + self._schedule_offset)
            return
        with warnings.catch_warnings():  # torch: replay the steps ("scheduler.step() before optimizer.step()")
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.step + self._schedule_offset):
                self.scheduler.step()

    def save(self, metric: float | None = None) -> Path | None:
        state = self.state_dict()
        return self.ckpt.save(state, self.step, metric)

    def resume(self, resume: str | Path | None) -> bool:
        """Restore from a checkpoint path or ``"latest"``; returns whether a checkpoint was loaded. A fresh run
        (``resume`` None) refuses a run folder holding another run's checkpoints and clears its stale metric logs."""
        if is_fresh_start(resume):
            check_run_dir_is_free(self.run_dir, resume)
            self.logger.truncate_after(0)  # the logs of an earlier run that stopped before its first checkpoint
        partial = self.ckpt.remove_partial_writes()
        if partial:
            print_rank0(f"[trainer] removed {len(partial)} unfinished checkpoint write(s) of a killed process: "
                        + ", ".join(p.name for p in partial[:3]))
        path = self.ckpt.resolve(resume)
        if path is None:
            if not is_fresh_start(resume) and str(resume) != "latest":
                raise FileNotFoundError(f"resume checkpoint not found: {resume}")
            if str(resume) == "latest":  # (the logs of a run killed before its first checkpoint start over too)
                print_rank0(f"[trainer] --resume latest: no checkpoint in {self.ckpt.dir} yet, starting at step 0")
                self.logger.truncate_after(0)
            return False
        state, path = self._read_resume_state(path, latest=str(resume) == "latest")
        check_training_state(state, path)
        self._check_resumable(state, path)
        self.load_state_dict(state)
        self._eval_due = bool(state.get("eval_due")) and self.eval_fn is not None
        saved_step = int(state["step"])
        if self.step != saved_step:  # steps of another size (_map_position): the logs and checkpoints follow
            # the rows of work after the checkpoint were lost; the kept ones take the new step size
            rescale = self.step / max(saved_step, 1)
            self.logger.truncate_after(saved_step, rescale=rescale, drop_at=("val",) if self._eval_due else ())
            if self.ckpt.best_step is not None:  # (best.pt itself is known by its save id)
                self.ckpt.best_step = max(1, round(self.ckpt.best_step * rescale))
            tag = f"steps_of_{state.get('micro_batch_samples')}_samples"
            resumed_file = self.ckpt.renumber(self.state_dict(), self.step, tag)
            print_rank0(f"[trainer] checkpoints of the earlier step size moved to {self.ckpt.dir / tag}; the run "
                        f"continues from {self.ckpt.dir / f'ckpt_{self.step:08d}.pt'}")
        else:
            self.logger.truncate_after(self.step, drop_at=("val",) if self._eval_due else ())
            resumed_file = path
        for line in self.ckpt.resume_files(self.step, resumed_file):  # (later files and a foreign best.pt aside)
            print_rank0(f"[trainer] {line}")
        done = " - the run had already finished" if self.step >= self.total_steps else ""
        print_rank0(f"[trainer] resumed from {path} at step {self.step} (epoch {self.epoch}, "
                    f"batch {self.batch_in_epoch}){done}")
        return True

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """A checkpoint this run cannot continue: other ``must_match`` extra values (a classifier's classes: a
        renamed class folder shifted what every row means), or a model that does not fit (another width, depth or
        class count) - one error naming the differences, before anything is loaded."""
        saved = state.get("extra") or {}
        for key in self.must_match:
            old, new = saved.get(key), self.extra_state.get(key)
            if old is None or new is None or old == new:
                continue
            if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
                gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
                change = "; ".join(part for part in (
                    f"gone: {_short_repr(gone)}" if gone else "", f"new: {_short_repr(added)}" if added else "",
                    "the same names in another order" if not gone and not added else "") if part)
            else:
                change = f"{_short_repr(old)} -> {_short_repr(new)}"
            raise ConfigError(f"cannot resume from {path}: it was trained with other {key} ({change}); resume with "
                              f"the data it was trained on, or start a new run (e.g. from its weights)")
        problems = key_mismatches(unwrap_model(self.model).state_dict(), state["model"])
        if problems:
            raise CheckpointFileMismatchError(
                f"cannot resume from {path}: its model does not fit this run's ({'; '.join(problems)}); resume with "
                "the model settings the run was trained with (its run_dir's config.yaml)")

    def _read_resume_state(self, path: Path, latest: bool) -> tuple[dict[str, Any], Path]:
        """The checkpoint at ``path``; for ``--resume latest`` an unreadable newest file (a damaged disk or copy)
        falls back to the newest readable one, with a warning naming both."""
        try:
            return load_checkpoint(path, map_location="cpu"), path
        except CheckpointReadError as err:
            if not latest:
                raise
            for older in reversed(step_checkpoints(self.ckpt.dir)):
                if older == path:
                    continue
                try:
                    state = load_checkpoint(older, map_location="cpu")
                except CheckpointReadError:
                    continue
                warn_rank0(f"the newest checkpoint is unreadable ({err}); resuming from {older}, the newest readable "
                           "one (the steps after it are trained again)")
                return state, older
            raise

    # ------------------------------------------------------------------------------------------- steps
    def _no_sync(self, last: bool):
        ddp = getattr(self.model, "_orig_mod", self.model)  # DDP inside a torch.compile wrapper too
        if not last and isinstance(ddp, nn.parallel.DistributedDataParallel):
            return ddp.no_sync()
        return nullcontext()

    def train_step(self, micro_batches: list[Any]) -> dict[str, float]:
        """One optimizer step over ``micro_batches`` (already on the device); returns loss, grad norm, lr."""
        self.model.train()
        logs: dict[str, float] = {}
        total = 0.0
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            with self._no_sync(i == n - 1):
                with autocast(self.precision, self.device):
                    out = self.loss_fn(self.model, batch)
                loss, extra = (out if isinstance(out, tuple) else (out, {}))
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(
                        f"non-finite loss {float(loss.detach())} at step {self.step + 1} (the logs' step numbering; "
                        "a lower optim learning rate or gradient clipping may help; --resume latest continues from "
                        "the last checkpoint)")
                self.scaler.scale(loss / n).backward()
            total += float(loss.detach()) / n
            for k, v in extra.items():
                logs[k] = logs.get(k, 0.0) + float(v) / n
        # the rate this step runs at (with layer-wise decay the groups' rates are scaled down from it; the head's is
        # unscaled), read before the scheduler moves on to the next step's, as timm's train.py logs it
        lr = max(float(g["lr"]) for g in self.optimizer.param_groups)
        self.scaler.unscale_(self.optimizer)
        params = list(self.model.parameters())
        if self.clip_mode == "agc":  # (as timm's train.py: the classifier, the last two tensors, is not clipped)
            params = params[:-2]
        grad_norm = clip_gradients(params, self.clip_grad, self.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), step=self.step)
        if self.scheduler is not None:
            if hasattr(self.scheduler, "step_update"):
                self.scheduler.step_update(num_updates=self.step + self._schedule_offset)
            else:
                self.scheduler.step()
        if self.after_step is not None:
            self.after_step(self)
        logs.update(loss=total, grad_norm=grad_norm, lr=lr)
        return logs

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` under ``no_grad`` on the model in eval mode (and on the EMA model, prefixed ``ema_``)."""
        if self.eval_fn is None:
            return {}
        model = unwrap_model(self.model)
        model.eval()
        with torch.no_grad():
            metrics = dict(self.eval_fn(model))
            if self.ema is not None:
                ema_module = getattr(self.ema, "module", self.ema)
                ema_module.eval()
                metrics.update({f"ema_{k}": v for k, v in self.eval_fn(ema_module).items()})
        model.train()
        self.last_eval, self._last_eval_step = metrics, self.step
        self.logger.log(self.step, metrics, split="val", epoch=self.epoch_label())
        print_rank0(f"[eval] step {self.step} epoch {self.epoch_label()}: " +
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def _window_row(self) -> dict[str, float]:
        """The logged row of the window: each step log's mean over its steps and over the ranks, but the counters of
        ``summed_extra`` (e.g. unreadable images) summed over the ranks."""
        device = self._collective_device
        means = {k: v / self._window_n for k, v in self._window.items()}
        summed = {k: means.pop(k) for k in self.summed_extra if k in means}
        row = reduce_dict(means, device)
        if summed:
            row.update(reduce_dict(summed, device, average=False))
        return {k: row[k] for k in self._window}

    def epoch_label(self) -> int:
        """The 1-based epoch the last optimizer step belongs to (the ``epoch`` column of every metrics CSV)."""
        return self.epoch + 1 if self.batch_in_epoch else max(self.epoch, 1)

    @staticmethod
    def _every(count: int, period: int | None) -> bool:
        return bool(period) and count % int(period) == 0

    def _eval_and_checkpoint(self, epoch_finished: bool, done: bool) -> None:
        """After an optimizer step: evaluate and/or checkpoint, each at most once, when the step schedule
        (``*_every_steps``), the epoch schedule (``*_every_epochs``, at an epoch end) or the end of training asks.
        An evaluation that raises is followed by a checkpoint of the step (single process; the error propagates)."""
        evaluated = None
        # (a step evaluated already: a resume on a smaller training set can put the checkpoint's step at an epoch end)
        if self._eval_is_due(epoch_finished, done) and self._last_eval_step != self.step:
            try:
                evaluated = self.evaluate()
            except Exception:
                # the training is not lost to a failing evaluation (a bad test setting, a corrupt validation
                # image): this step is checkpointed, without a metric, before the error propagates. Single
                # process only: saving gathers every rank's RNG state, and another rank may not have failed.
                if self.info.world_size == 1:
                    print(f"[eval] step {self.step} failed; checkpointing the step before stopping", flush=True)
                    self._checkpoint(None)
                raise
        if (done or self._every(self.step, self.ckpt_every_steps)
                or (epoch_finished and self._every(self.epoch, self.ckpt_every_epochs))):
            self._checkpoint(evaluated)
        elif evaluated:  # an evaluation between checkpoints: best.pt still follows the best metric
            self._track_best(evaluated)

    def _eval_is_due(self, epoch_finished: bool, done: bool) -> bool:
        """Whether the step just taken is evaluated: the step or epoch schedule, or the end of training, asks."""
        return self.eval_fn is not None and (done or self._every(self.step, self.eval_every_steps)
                                             or (epoch_finished and self._every(self.epoch, self.eval_every_epochs)))

    def _track_best(self, evaluated: dict[str, float]) -> None:
        """An evaluation without a checkpoint of its step: ``best.pt`` alone, when its metric is the best."""
        metric = self._best_metric_of(evaluated)
        if metric is not None and self.ckpt.is_better(metric):
            self.ckpt.save_best(self.state_dict(), self.step, metric)

    def _best_metric_of(self, evaluated: dict[str, float] | None) -> float | None:
        if self.best_metric is None or not evaluated:
            return None
        if self.best_metric not in evaluated:
            raise KeyError(f"best_metric {self.best_metric!r} not among eval metrics {sorted(evaluated)}")
        return float(evaluated[self.best_metric])

    def _checkpoint(self, evaluated: dict[str, float] | None) -> None:
        self.save(self._best_metric_of(evaluated))

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, resume: str | Path | None = None, on_start: Callable[[], Any] | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming first if asked); returns the final metrics. ``on_start`` runs once the
        run has started or resumed (the tools write the run's ``config.yaml`` there: a resume that fails leaves the
        folder's config describing its checkpoints). A stop signal ends it early, checkpointed (module docstring)."""
        if not self.stop_on_signals:
            return self._fit(resume, on_start)
        with StopSignals(announce=True) as self._signals:
            try:
                return self._fit(resume, on_start)
            finally:
                self._signals = None

    def _stop_signal(self) -> int | None:
        """The signal to stop on if any process got one, else None (the processes agree: under DDP one all-reduce
        of the signal numbers, the same on every process at the same step)."""
        local = self._signals.received if self._signals is not None else None
        if self.info.world_size == 1:
            return local
        got = int(all_reduce_max(torch.tensor([local or 0], device=self._collective_device)).item())
        return local or got or None

    def _stop(self, signum: int, epoch_finished: bool) -> dict[str, Any]:
        """End the run after this step: checkpoint it (every process: the RNG states are gathered) and report. An
        evaluation this step was due is left to the resumed run (``eval_due``: it evaluates first)."""
        if self._signals is not None:
            self._signals.announce = False  # (one from torchrun closing the processes: this one is stopping already)
        state = self.state_dict()
        state["eval_due"] = self._eval_is_due(epoch_finished, done=False)
        path = self.ckpt.save(state, self.step)
        barrier()  # (no process exits before rank 0 has written the checkpoint: torchrun would kill it)
        if self._signals is not None:  # (a second Ctrl-C now would only break the loader's shutdown)
            self._signals.settled = True
        self._draw_curves()  # (after the checkpoint: a preempted run's seconds go to its work first)
        name = signal_name(signum)
        where = f" in {path}" if path is not None else ""
        print_rank0(f"[trainer] stopped by {name} after step {self.step}/{self.total_steps}, checkpointed{where}; "
                    "--resume latest continues from it")
        return {"step": self.step, "epoch": self.epoch, "stopped": True, "stopped_by": name,
                "exit_status": stop_exit_status(signum), "checkpoint": str(path) if path is not None else None}

    def _draw_curves(self) -> None:
        """``curves.png`` of the run so far (rank 0; a failure to draw is a warning, the run's work is saved)."""
        if not self.plot:
            return
        try:
            self.logger.plot()
        except OSError as err:  # (a full disk: the run, its checkpoints and its logs are done; the curves not)
            warn_rank0(f"could not draw the metric curves in {self.run_dir}: {err}")

    def _fit(self, resume: str | Path | None, on_start: Callable[[], Any] | None) -> dict[str, Any]:
        try:
            return self._train(resume, on_start)
        finally:  # (every way out, an error too: TensorBoard's writer thread ends, its events are flushed)
            self.logger.close()

    def _train(self, resume: str | Path | None, on_start: Callable[[], Any] | None) -> dict[str, Any]:
        self.resume(resume)
        if on_start is not None:
            on_start()
        if self.step < self.total_steps and self.info.is_main:  # (a finished run extended: its results are stale)
            for name in self.result_files:
                (self.run_dir / name).unlink(missing_ok=True)
        if self._eval_due:  # (the evaluation of a step a stop signal checkpointed before it)
            self._eval_due = False
            self._track_best(self.evaluate())
        self._fit_start = time.perf_counter()
        window_samples, window_t = 0, time.perf_counter()  # (throughput: of this process's steps only)
        while self.step < self.total_steps:
            bar = progress(self.loader.iter_epoch(self.epoch, self.batch_in_epoch),
                           total=self.steps_per_epoch * self.accum - self.batch_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{self.epochs}",
                           enabled=self.info.is_main and self.show_progress)
            micro: list[Any] = []
            for pos, batch in bar:
                if pos >= self.steps_per_epoch * self.accum:
                    break
                micro.append(move_to_device(batch, self.device, non_blocking=True))
                if (pos + 1) % self.accum:
                    continue
                window_samples += sum(_batch_len(b) for b in micro) * self.info.world_size
                logs = self.train_step(micro)
                micro = []
                self.batch_in_epoch = pos + 1
                for k, v in logs.items():
                    self._window[k] = self._window.get(k, 0.0) + v
                self._window_n += 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    avg = self._window_row()
                    avg["lr"] = logs["lr"]
                    now = time.perf_counter()
                    avg["samples_per_s"] = window_samples / max(now - window_t, 1e-9)
                    avg["skipped_samples"] = float(self.loader.num_skipped)
                    self.last_train_loss = avg["loss"]
                    self.logger.log(self.step, avg, split="train", epoch=self.epoch_label())
                    self.history.append({"step": self.step, **avg})
                    self._window, self._window_n, window_samples, window_t = {}, 0, 0, now
                if self.stop_after_steps is not None and self.step >= self.stop_after_steps:
                    return {"step": self.step, "stopped": True}
                if self.step >= self.total_steps:
                    break
                if self.batch_in_epoch < self.steps_per_epoch * self.accum:  # epoch ends are handled below
                    signum = self._stop_signal()
                    if signum is not None:  # (before this step's evaluation: a preempted run has seconds left)
                        if hasattr(bar, "close"):
                            bar.close()
                        return self._stop(signum, epoch_finished=False)
                    self._eval_and_checkpoint(epoch_finished=False, done=False)
            if hasattr(bar, "close"):
                bar.close()
            epoch_finished = self.batch_in_epoch >= self.steps_per_epoch * self.accum
            if epoch_finished:
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.scheduler is not None and hasattr(self.scheduler, "step_update"):
                    self.scheduler.step(self.epoch)
            done = self.step >= self.total_steps
            signum = None if done else self._stop_signal()  # (the last step: the run ends, evaluated, anyway)
            if signum is not None:
                return self._stop(signum, epoch_finished)
            self._eval_and_checkpoint(epoch_finished, done=done)
        if self.loader.num_skipped:
            print_rank0(f"[trainer] skipped {self.loader.num_skipped} unreadable samples")
        self._draw_curves()
        result: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "train_loss": self.last_train_loss,
                                  "train_time_s": self._train_time(),
                                  "skipped_samples": self.loader.num_skipped}
        result.update(self.last_eval)
        if self.ckpt.best_value is not None:
            result["best"] = {"metric": self.best_metric, "value": self.ckpt.best_value, "step": self.ckpt.best_step}
        return result


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_len(next(iter(batch.values())))
    return 1


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
