"""Training checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture, keep-last-N, best tracking.

A training state is a plain dict (everything in it loads with ``torch.load(weights_only=True)``)::

    {"model": ..., "optimizer": ..., "scheduler": ..., "scaler": ..., "ema": ...,   # state_dicts (None if unused)
     "step": int, "epoch": int, "batch_in_epoch": int,                              # data position
     "rng": [per-rank RNG states], "best": {"value": float | None, "step": int},
     "extra": {...}}                                                               # anything else (plain types)

:class:`CheckpointManager` also stores the EMA weights under timm's name ``state_dict_ema`` (the same tensors,
written once), so ``timm.create_model(..., checkpoint_path=PATH)`` / ``timm.models.load_checkpoint`` take them as
every loader here does (:func:`vision_rwkv.models.convert.select_weights`: EMA weights preferred when present).

Files: ``<run_dir>/checkpoints/ckpt_<step>.pt`` (the last ``keep_last`` are kept), ``best.pt`` (copy of the best
one by a metric), written as ``.<name>.tmp.<pid>`` in the same folder and moved into place with ``os.replace``,
so a crash never leaves a partial checkpoint under a real name.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..models.convert import (CheckpointFileMismatchError, CheckpointMismatchError, load_checkpoint_file,
                              select_weights)
from .config import ConfigError
from .distributed import all_gather_object, get_rank, is_main_process, unwrap_model
from .files import check_output_dir

__all__ = ["atomic_save", "load_checkpoint", "capture_rng_state", "restore_rng_state", "CheckpointManager",
           "find_latest_checkpoint", "run_checkpoint", "load_model_weights", "read_model_state", "load_weights",
           "model_record", "RunDirInUseError", "CheckpointWriteError"]

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
_PARTIAL_RE = re.compile(r"^\.(ckpt_\d+|best)\.pt\.tmp\.\d+$")  # atomic_save's temporary names


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = next((e for e in _error_chain(err) if isinstance(e, OSError) and e.errno == errno.ENOSPC), None)
        if full is not None:  # (torch reports it as "unexpected pos ..." with the OSError as its cause)
            raise CheckpointWriteError(errno.ENOSPC, f"no space left on the device to write the checkpoint {path} "
                                       "(the earlier checkpoints are kept; free space, then --resume latest)"
                                       ) from err
        raise
    return path


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk): one error line, exit status 1."""

    def __str__(self) -> str:
        return str(self.strerror)


def _error_chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for a missing or unreadable file
    (:func:`~vision_rwkv.models.convert.load_checkpoint_file`). ``mmap``: map the tensors' storage instead of
    reading it (to look at a few entries of a large file)."""
    return load_checkpoint_file(path, map_location=map_location, mmap=mmap)


def capture_rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch CPU / CUDA RNG states, as weights_only-loadable types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def step_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The ``ckpt_<step>.pt`` files of ``ckpt_dir``, oldest step first (none when the folder does not exist)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The ``ckpt_<step>.pt`` with the highest step in ``ckpt_dir`` (None if there is none)."""
    found = step_checkpoints(ckpt_dir)
    return found[-1] if found else None


def run_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run folder offers for evaluation: ``checkpoints/best.pt``, else the newest
    ``checkpoints/ckpt_<step>.pt``; None when there is none."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if (ckpt_dir / "best.pt").is_file():
        return ckpt_dir / "best.pt"
    return find_latest_checkpoint(ckpt_dir)


def read_model_state(path: str | os.PathLike, key: str | None = "auto") -> dict[str, Any]:
    """The model state dict in a training checkpoint (``model`` or ``ema`` entry), a timm / DeiT training checkpoint
    (``state_dict`` / ``model`` with ``state_dict_ema`` / ``model_ema``), an mmcv / Lightning checkpoint
    (``state_dict``) or a plain state dict file (``.pt``/``.pth`` with weights_only, or ``.safetensors``),
    ``module.`` prefixes removed. ``key`` as :func:`~vision_rwkv.models.convert.select_weights` takes it:
    ``"auto"`` prefers the EMA weights when present, ``"model"`` the raw weights, ``"ema"`` the EMA weights (an
    error naming the file if it has none)."""
    return _model_state(load_checkpoint_file(path), key, path)


def _model_state(checkpoint: Any, key: str | None, path: str | os.PathLike) -> dict[str, Any]:
    sd = select_weights(checkpoint, key, path)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_model_weights(model: nn.Module, path: str | os.PathLike, key: str | None = "auto",
                       strict: bool = True, state: Mapping[str, Any] | None = None,
                       set_wkv_mode: bool = True) -> nn.Module:
    """:func:`load_weights` of ``path`` (or ``state``, already read from it) into ``model``, every weight from the
    file; returns ``model``."""
    load_weights(model, path, key=key, strict=strict, state=state, set_wkv_mode=set_wkv_mode)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, key: str | None = "auto", strict: bool = True,
                 state: Mapping[str, Any] | None = None, set_wkv_mode: bool = True,
                 new_classifier: bool = False) -> list[str]:
    """Load the weights of the file ``path`` (:func:`read_model_state`, or ``state`` already read from it) into
    ``model``: the one loader of ``--checkpoint`` and ``model.checkpoint``.

    VRWKV / VRWKV6 models also take the original layouts (:func:`~vision_rwkv.models.convert.checkpoint_filter_fn`);
    with ``set_wkv_mode`` a v4 model runs the Bi-WKV function the weights were trained with
    (:func:`~vision_rwkv.models.convert.trained_wkv_mode`; unknown: its own). With ``new_classifier`` a classifier
    of another class count (or none in the file) keeps its initialisation. Missing, unexpected (``strict``) or
    mis-shaped keys raise a RuntimeError naming the file. Returns the classifier keys left as initialised."""
    from ..models import VRWKV, VRWKV6
    from ..models.convert import (checkpoint_filter_fn, key_mismatches, trained_wkv_mode, unwrap_state_dict,
                                  with_file_named)

    checkpoint = load_checkpoint_file(path) if state is None else None  # (also read for its record of the mode)
    sd = _model_state(checkpoint, key, path) if state is None else dict(state)
    target = unwrap_model(model)
    if isinstance(target, (VRWKV, VRWKV6)):
        try:
            sd = unwrap_state_dict(sd)
            record = (trained_wkv_mode(path, checkpoint, sd) if set_wkv_mode and isinstance(target, VRWKV)
                      else None)
            if record is not None:
                chunks = record[1] or (getattr(target, "pretrained_cfg", None) or {}).get("wkv_chunks") or 32
                target.set_wkv_mode(record[0], chunks)
            sd = checkpoint_filter_fn(sd, target)
        except CheckpointMismatchError as err:  # the file named: "checkpoint PATH does not fit VRWKV: ..."
            raise CheckpointFileMismatchError(with_file_named(err, f"checkpoint {path}")) from err
    own = target.state_dict()
    renewed: list[str] = []
    if new_classifier:
        classifier = (getattr(target, "pretrained_cfg", None) or {}).get("classifier") or "head"
        heads = tuple(c + "." for c in ([classifier] if isinstance(classifier, str) else classifier))
        renewed = sorted(k for k in own if k.startswith(heads) and (k not in sd or sd[k].shape != own[k].shape))
        sd = {k: v for k, v in sd.items() if k not in renewed}
    problems = key_mismatches({k: v for k, v in own.items() if k not in renewed}, sd, strict)
    if problems:
        raise CheckpointFileMismatchError(f"checkpoint {path} does not match the model: {'; '.join(problems)}")
    target.load_state_dict(sd, strict=False)
    return renewed


def model_record(model: nn.Module) -> dict[str, Any]:
    """What a training checkpoint records of how ``model`` computes, for loaders to restore (``extra``): a v4
    model's Bi-WKV ``wkv_mode`` and ``wkv_chunks``; nothing for other models."""
    target = unwrap_model(model)
    if not hasattr(target, "set_wkv_mode"):
        return {}
    return {"wkv_mode": str(target.wkv_mode), "wkv_chunks": int(target.wkv_chunks)}


def is_fresh_start(resume: str | os.PathLike | None) -> bool:
    """Whether ``resume`` (a tool's ``--resume`` / ``train.resume``) asks for a fresh run rather than a resumed one."""
    return resume is None or str(resume) in ("", "none", "None", "false", "False")


class RunDirInUseError(ConfigError, FileExistsError):
    """A fresh run was asked for in a run folder that holds an earlier run's checkpoints: a usage error, reported
    as a config error (one line, exit status 2)."""


def check_run_dir_is_free(run_dir: str | os.PathLike, resume: str | os.PathLike | None) -> None:
    """Refuse a fresh run (``resume`` None) in a ``run_dir`` that holds an earlier run's checkpoints: the two runs'
    checkpoints would be pruned together by step number, and ``--resume latest``, ``best.pt`` and the metric logs
    would mix them. Raises :class:`RunDirInUseError` (a FileExistsError and a ConfigError) naming the folder and
    the ways out; and a ``run_dir`` that cannot be written (:class:`~vision_rwkv.engine.files.OutputPathError`),
    before the data and the model are built."""
    check_output_dir(run_dir, "run_dir")
    if not is_fresh_start(resume):
        return
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = sorted(p.name for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if found:
        shown = ", ".join(found[:3]) + (f", ... ({len(found)} files)" if len(found) > 3 else "")
        raise RunDirInUseError(
            f"run_dir {run_dir} already holds an earlier run's checkpoints ({shown}): continue that run with "
            "`--resume latest` (train.resume=latest), or start this one in another run_dir (or delete the folder)")


def check_training_state(state: Any, path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` (a ValueError; the ``--resume`` value is wrong) unless ``state`` (read from
    ``path``) is a training checkpoint written by the engine."""
    needed = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "rng")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(
            f"{path} is not a training checkpoint of this engine (no {', '.join(repr(k) for k in missing)}), so a run "
            "cannot resume from it; to start a new run from its weights, give it as the config's pretrained / "
            "initial-weights file instead")


class CheckpointManager:
    """Writes ``ckpt_<step>.pt`` into ``<run_dir>/checkpoints``, keeps the newest ``keep_last``, and copies the state
    to ``best.pt`` whenever ``metric`` improves (``mode`` "max" or "min"). Only rank 0 writes files."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"best-checkpoint mode must be 'max' or 'min', got {mode!r}")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = int(keep_last)
        self.mode = mode
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_id: str | None = None  # the save_id of the best checkpoint (which file is the best, by content)

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def latest(self) -> Path | None:
        return find_latest_checkpoint(self.dir)

    def resolve(self, resume: str | os.PathLike | None) -> Path | None:
        """``None``/"" -> None; ``"latest"`` -> newest checkpoint here (None if none); a path -> that file."""
        if is_fresh_start(resume):
            return None
        if str(resume) == "latest":
            return self.latest()
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path}")
        return path

    def is_better(self, metric: float) -> bool:
        if self.best_value is None:
            return True
        return metric > self.best_value if self.mode == "max" else metric < self.best_value

    def save(self, state: dict[str, Any], step: int, metric: float | None = None) -> Path | None:
        """Save ``state`` as step ``step`` (rank 0 only); returns the path on rank 0. An improved ``metric`` makes
        ``best.pt`` the same file (a hard link; a copy where links are not supported)."""
        improved = metric is not None and self.is_better(metric)
        save_id = new_save_id()
        if improved:
            self.best_value, self.best_step, self.best_id = float(metric), int(step), save_id
        state = self._with_records(state, save_id)
        if not is_main_process():
            return None
        path = atomic_save(state, self.dir / f"ckpt_{int(step):08d}.pt")
        if improved:
            _replace_with_link(path, self.best_path)
        self._prune()
        return path

    def save_best(self, state: dict[str, Any], step: int, metric: float) -> bool:
        """An evaluation between checkpoints: ``state`` written as ``best.pt`` alone when ``metric`` improves
        (rank 0 writes); returns whether it did improve."""
        if not self.is_better(metric):
            return False
        save_id = new_save_id()
        self.best_value, self.best_step, self.best_id = float(metric), int(step), save_id
        if is_main_process():
            atomic_save(self._with_records(state, save_id), self.best_path)
        return True

    def load_best_tracking(self, state: dict[str, Any]) -> None:
        best = state.get("best") or {}
        self.best_value, self.best_step, self.best_id = best.get("value"), best.get("step"), best.get("id")

    def resume_files(self, step: int, resumed: str | os.PathLike | None = None) -> list[str]:
        """Make the folder agree with a run resumed at ``step`` from the file ``resumed`` (after
        :meth:`load_best_tracking`; rank 0 acts), so that ``latest``, pruning (both by step number) and ``best.pt``
        follow the new run:

        - step checkpoints of later steps (an abandoned continuation, or a skipped unreadable newest file), of the
          same step but other content, or - when ``resumed`` is not a file of this folder - all of them (their
          lineage is unknown) move to a new ``checkpoints/abandoned_after_<step>[_<n>]/``, with a ``best.pt`` that
          is not the tracked best (by the id each save records; by step for checkpoints written before ids);
        - a resumed file that is not this folder's ``ckpt_<step>.pt`` is linked in as it;
        - ``best.pt`` becomes the tracked best step's checkpoint when that is still kept (a kill between writing a
          checkpoint and linking it left an older one, or none).

        Returns what was done, one line each."""
        if not is_main_process() or not self.dir.is_dir():
            return []
        resumed = Path(resumed) if resumed is not None else None
        # (the folder the resumed path names, not where a symlinked file points)
        in_folder = resumed is not None and Path(os.path.abspath(resumed)).parent.resolve() == self.dir.resolve()
        aside = []
        for p in step_checkpoints(self.dir):
            at = _checkpoint_step(p)
            if resumed is not None and os.path.abspath(p) == os.path.abspath(resumed):
                continue  # (the resumed file itself stays)
            if at > step or not in_folder or (at == step and not _same_file(p, resumed)):
                aside.append(p)
        tracked = self._is_tracked_best(self.best_path)
        if self.best_path.is_file() and not tracked:
            aside.append(self.best_path)
        done = []
        if aside:
            archive = _new_folder(self.dir, f"abandoned_after_{int(step):08d}")
            for p in aside:
                os.replace(p, archive / p.name)
            names = ", ".join(p.name for p in aside)
            done.append(f"moved {len(aside)} checkpoint file(s) not of the resumed run ({names}) to {archive}")
        target = self.dir / f"ckpt_{int(step):08d}.pt"
        if resumed is not None and not target.exists():
            _replace_with_link(resumed, target)
            done.append(f"the resumed checkpoint is {target.name} of this run (linked from {resumed})")
        if self.best_step is not None and not tracked:
            source = self.dir / f"ckpt_{int(self.best_step):08d}.pt"
            if source.is_file() and self._is_tracked_best(source):
                _replace_with_link(source, self.best_path)
                done.append(f"best.pt is now the checkpoint of step {self.best_step}, the run's best")
            else:
                done.append(f"best.pt is not the run's best (step {self.best_step}, whose checkpoint is no longer "
                            "kept): it is written again at the next improvement")
        return done

    def _is_tracked_best(self, path: Path) -> bool:
        """Whether the checkpoint file ``path`` is the tracked best: its save id (or, for files written before ids,
        its step) is the tracker's."""
        recorded = _recorded_ids(path)
        if recorded is None or self.best_step is None:
            return False
        step, save_id = recorded
        if self.best_id is not None and save_id is not None:
            return save_id == self.best_id
        return step == self.best_step

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for p in step_checkpoints(self.dir)[:-self.keep_last]:
            p.unlink(missing_ok=True)

    def _with_records(self, state: dict[str, Any], save_id: str | None = None) -> dict[str, Any]:
        """``state`` with its save id, the best-metric tracking and timm's names for the weights (torch.save writes
        the shared tensors once): timm.models.load_checkpoint(use_ema=) and resume_checkpoint read these files
        too."""
        state = dict(state)
        state["save_id"] = save_id or new_save_id()
        state["best"] = {"value": self.best_value, "step": self.best_step, "mode": self.mode, "id": self.best_id}
        if "model" in state:
            state.setdefault("state_dict", state["model"])
        if state.get("ema") is not None:
            state.setdefault("state_dict_ema", state["ema"])
        return state

    def renumber(self, state: dict[str, Any], step: int, tag: str) -> Path | None:
        """A resume whose steps are of another size (another batch or world size): the checkpoints of the old
        numbering moved into ``checkpoints/<tag>/`` (kept, but out of the way: pruning and ``latest`` go by step
        number, and the new run's lower numbers were pruned first and lost to ``latest``) and ``state`` written as
        step ``step`` of the new numbering. The old files are linked into the folder before the new one is written
        and unlinked after, so that a crash at any point leaves ``latest`` something to resume. Rank 0 writes (the
        caller builds ``state`` on every rank: its RNG states are gathered)."""
        if not is_main_process():
            return None
        old = step_checkpoints(self.dir)
        archive = self.dir / tag
        archive.mkdir(exist_ok=True)
        for p in old:  # linked first: every old file stays reachable whatever happens next
            if not (archive / p.name).exists():
                _replace_with_link(p, archive / p.name)
        path = atomic_save(self._with_records(state), self.dir / f"ckpt_{int(step):08d}.pt")
        for p in old:
            if p != path:
                p.unlink(missing_ok=True)
        return path

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of checkpoint writes that never finished (a process killed while saving:
        half a checkpoint each, never read); call when no process of this run is writing (at its start). Rank 0
        only; returns what was deleted."""
        if not is_main_process() or not self.dir.is_dir():
            return []
        partial = [p for p in self.dir.iterdir() if _PARTIAL_RE.match(p.name)]
        for p in partial:
            p.unlink(missing_ok=True)
        return partial


def new_save_id() -> str:
    """A fresh id for one checkpoint write (which file is which, whatever its step number)."""
    return uuid.uuid4().hex


def _checkpoint_step(path: Path) -> int:
    return int(_CKPT_RE.match(path.name).group(1))


def _recorded_ids(path: Path) -> tuple[int | None, str | None] | None:
    """(step, save id) a checkpoint file records (its tensors mapped, not read); None when there is no readable
    file."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, mmap=True)
    except Exception:  # (an unreadable file: as good as none)
        return None
    if not isinstance(state, dict):
        return None
    step = state.get("step")
    return (int(step) if step is not None else None), state.get("save_id")


def _same_file(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _new_folder(parent: Path, name: str) -> Path:
    """``parent / name``, or ``name_2``, ``name_3``, ... when taken (a folder is never reused: nothing in it is
    overwritten)."""
    folder, n = parent / name, 1
    while folder.exists():
        n += 1
        folder = parent / f"{name}_{n}"
    folder.mkdir()
    return folder


def _replace_with_link(source: Path, target: Path) -> None:
    """``target`` becomes the file ``source`` (a hard link, swapped in atomically; a copy where links fail)."""
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # (a file system without hard links)
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def gather_rng_states() -> list[dict[str, Any]]:
    """RNG states of every rank (index = rank); call on all ranks."""
    return all_gather_object(capture_rng_state())


def restore_rank_rng(states: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Restore this rank's RNG from a list saved by :func:`gather_rng_states` (or one state)."""
    if isinstance(states, dict):
        restore_rng_state(states)
        return
    rank = get_rank()
    if rank >= len(states):
        warnings.warn(f"checkpoint has RNG states for {len(states)} ranks, this is rank {rank}: the run continues, "
                      "but not exactly (resume with the same world size for an exact continuation)")
    restore_rng_state(states[rank % len(states)])


__all__ += ["gather_rng_states", "restore_rank_rng", "step_checkpoints"]
