"""A clean stop of a training run on a signal: cluster preemption (SLURM's SIGTERM, or ``--signal=USR1@90``) or Ctrl-C.

While :class:`Trainer.fit <vision_rwkv.engine.loop.Trainer>` runs, SIGTERM, SIGINT and SIGUSR1 no longer kill the
process: the handler only records the signal, the trainer finishes the optimizer step in progress, checkpoints it
(atomically, as every checkpoint) and returns, and the tool exits with status 128 + the signal's number (143 for
SIGTERM, 130 for Ctrl-C), so that ``--resume latest`` continues from that very step. A second SIGINT (Ctrl-C twice)
stops at once, as without the handler. Under torchrun every process checks every step whether any process got a
signal (one small all-reduce), so that all of them stop after the same step. DataLoader worker processes ignore
these signals (:func:`ignore_stop_signals`, their ``worker_init_fn``): a signal sent to the whole process group
(Ctrl-C, SLURM) would otherwise kill them under the main process. Because they ignore SIGTERM, an exit handler kills
the daemonic children still alive when the main process exits (after an error, their loader is left unclosed), where
multiprocessing's own exit handler would SIGTERM them and wait forever (only children that ignore SIGTERM: the others
are left to it). A tool's process (:func:`hold_after_stop`)
keeps ignoring stop signals once one has stopped its run, so that one more (torchrun closing its workers, a second
Ctrl-C) cannot cut its exit short.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals", "ignore_stop_signals", "hold_after_stop", "signal_name", "stop_exit_status"]

# the signals that ask a training run to stop after its current step (SIGUSR1 does not exist on Windows)
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores :data:`STOP_SIGNALS` (the main process decides when to
    stop, then ends its workers; a worker whose main process dies exits on its own)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _kill_loader_workers() -> None:
    """At exit, before multiprocessing's handler (registered earlier, so run later): SIGKILL the daemonic children
    that ignore SIGTERM - DataLoader workers of a loader an error left open - which that handler would SIGTERM, then
    wait for forever. SIGCHLD goes back to its default first: the loader's own handler would report each killed
    worker as an error ("killed by signal: Killed") over the one that ended the process."""
    workers = [p for p in multiprocessing.active_children() if p.daemon and _ignores_sigterm(p.pid)]
    if not workers:
        return
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in workers:
        p.kill()
    for p in workers:
        p.join(timeout=10)


def _ignores_sigterm(pid: int | None) -> bool:
    """Whether process ``pid`` ignores SIGTERM (Linux: its ``SigIgn`` mask in /proc; elsewhere assumed, as for every
    daemonic child there: multiprocessing would SIGTERM it anyway)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next((line.split()[1] for line in f if line.startswith("SigIgn:")), None)
    except OSError:
        return True
    return mask is None or bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


atexit.register(_kill_loader_workers)

_HOLD_AFTER_STOP = False


def hold_after_stop(enabled: bool = True) -> None:
    """Whether :class:`StopSignals` leaves stop signals ignored once one has been received (set by the tools, whose
    process ends with the run; a library caller keeps its handlers back, Ctrl-C included)."""
    global _HOLD_AFTER_STOP
    _HOLD_AFTER_STOP = bool(enabled)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (the number as text for one this platform does not name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_exit_status(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum``: 128 + its number, as a shell reports a process the
    signal ended (the run is not finished: ``train && evaluate`` must not go on)."""
    return 128 + int(signum)


class StopSignals:
    """Context manager recording :data:`STOP_SIGNALS` instead of dying of them (main thread only: elsewhere Python
    cannot install handlers, and it does nothing). ``received`` is the first signal's number, or None."""

    def __init__(self, announce: bool = True):
        self.received: int | None = None
        self.announce = announce
        self.settled = False  # set once a stop is checkpointed: later signals are ignored (Ctrl-C again included)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        hold = _HOLD_AFTER_STOP and self.received is not None
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if hold else handler)
        self._previous.clear()

    def _record(self, signum: int, frame: Any) -> None:
        if self.settled:  # (the stop's checkpoint is written: the run only winds down now)
            return
        if self.received is not None:
            if signum == signal.SIGINT:  # Ctrl-C a second time: stop now, without the checkpoint
                raise KeyboardInterrupt
            return
        self.received = signum
        if self.announce:  # (a raw write: a print here could re-enter a print the signal interrupted)
            note = (f"\n[trainer] {signal_name(signum)} received: stopping after this step and checkpointing "
                    "it (Ctrl-C again stops at once, without it)\n")
            try:
                os.write(2, note.encode(errors="backslashreplace"))
            except OSError:
                pass
