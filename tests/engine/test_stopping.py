"""A stop signal (SIGTERM / SIGINT / SIGUSR1) during Trainer.fit: the step in progress is finished and checkpointed,
the result says which signal, and --resume latest continues exactly; Ctrl-C twice stops at once; under DDP the
processes stop after the same step."""
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402
from test_loop import _trainer  # noqa: E402

from vision_rwkv.engine import load_checkpoint, read_metrics_csv  # noqa: E402
from vision_rwkv.engine.cli import exit_status  # noqa: E402
from vision_rwkv.engine.stopping import (STOP_SIGNALS, StopSignals, hold_after_stop, ignore_stop_signals,  # noqa: E402
                                         stop_exit_status)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def _signal_at(step: int, *signums: int):
    """An ``after_step`` sending this process ``signums`` after optimizer step ``step``."""
    def after_step(trainer):
        if trainer.step == step:
            for s in signums:
                os.kill(os.getpid(), s)
    return after_step


def _steps_saved(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("ckpt_*.pt"))


# (the tiny run of test_loop: 6 steps of 2 micro-batches, 2 per epoch; step 3 is inside epoch 2, step 4 ends it)
@pytest.mark.parametrize("stop_step, signum", [(3, signal.SIGTERM), (4, signal.SIGUSR1), (1, signal.SIGINT)])
def test_a_signal_checkpoints_the_step_and_resume_is_exact(tmp_path, stop_step, signum):
    full = _trainer(tmp_path / "full")
    full.fit()
    stopped = _trainer(tmp_path / "run", after_step=_signal_at(stop_step, signum), plot=True)
    before = signal.getsignal(signal.SIGTERM)
    result = stopped.fit()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    assert result["stopped"] and result["step"] == stop_step
    assert result["stopped_by"] == signal.Signals(signum).name
    assert result["exit_status"] == 128 + signum == exit_status(result)
    assert Path(result["checkpoint"]).name == f"ckpt_{stop_step:08d}.pt"
    assert load_checkpoint(result["checkpoint"])["step"] == stop_step
    assert stop_step in _steps_saved(tmp_path / "run")
    assert max(_steps_saved(tmp_path / "run")) == stop_step  # nothing after the stop
    curves = tmp_path / "run" / "curves.png"
    assert curves.is_file()  # the curves of the run so far are drawn on a stop, too
    curves.unlink()

    resumed = _trainer(tmp_path / "run")
    torch.manual_seed(99)  # a new process starts from another RNG state
    assert not resumed.fit(resume="latest").get("stopped")
    assert resumed.step == 6
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
    for split in ("train", "val"):  # the logs are the uninterrupted run's: an evaluation skipped by the stop is made
        rows, want = (read_metrics_csv(tmp_path / run / f"{split}_metrics.csv") for run in ("run", "full"))
        timeless = [[{k: v for k, v in r.items() if k != "samples_per_s"} for r in t] for t in (rows, want)]
        assert timeless[0] == timeless[1], split
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert resumed.ckpt.best_step == full.ckpt.best_step and resumed.ckpt.best_value == full.ckpt.best_value


def test_an_evaluation_left_by_a_stop_is_made_once_by_the_resumed_runs(tmp_path):
    """The stop at step 4 came before that epoch end's evaluation: the resume evaluates step 4 first; a second resume
    from the same checkpoint (the first one killed before its next checkpoint) does not log step 4 twice."""
    assert _trainer(tmp_path, after_step=_signal_at(4, signal.SIGTERM)).fit()["stopped"]
    assert [r["step"] for r in read_metrics_csv(tmp_path / "val_metrics.csv")] == [2]
    assert load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000004.pt")["eval_due"]
    assert _trainer(tmp_path, stop_after_steps=5).fit(resume="latest")["stopped"]  # (a crash: nothing saved)
    assert [r["step"] for r in read_metrics_csv(tmp_path / "val_metrics.csv")] == [2, 4]
    _trainer(tmp_path).fit(resume="latest")
    assert [r["step"] for r in read_metrics_csv(tmp_path / "val_metrics.csv")] == [2, 4, 6]


def test_a_signal_at_the_last_step_lets_the_run_finish(tmp_path):
    result = _trainer(tmp_path, after_step=_signal_at(6, signal.SIGTERM)).fit()
    assert not result.get("stopped") and result["step"] == 6 and "neg_w" in result


def test_ctrl_c_twice_stops_at_once(tmp_path):
    trainer = _trainer(tmp_path, after_step=_signal_at(3, signal.SIGINT, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert max(_steps_saved(tmp_path)) == 2  # (the step-2 checkpoint of ckpt_every_steps=2; step 3 was not saved)


def test_ctrl_c_again_once_the_stop_is_checkpointed_is_ignored(tmp_path):
    """A second Ctrl-C after the stop's checkpoint, while the run winds down (the loader shutting its workers): it
    was raised inside the loader's __del__ ("Exception ignored ... KeyboardInterrupt")."""
    trainer = _trainer(tmp_path, after_step=_signal_at(3, signal.SIGINT))
    close = trainer.logger.close

    def close_after_a_second_ctrl_c():  # (_stop closes the logger after the checkpoint)
        os.kill(os.getpid(), signal.SIGINT)
        close()
    trainer.logger.close = close_after_a_second_ctrl_c
    result = trainer.fit()
    assert result["stopped_by"] == "SIGINT" and result["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stop_on_signals_false_leaves_the_handlers_alone(tmp_path):
    seen = []

    def after_step(trainer):
        seen.append(signal.getsignal(signal.SIGTERM))

    _trainer(tmp_path, after_step=after_step, stop_on_signals=False).fit()
    assert seen and all(h is signal.getsignal(signal.SIGTERM) for h in seen)


def test_stop_signals_records_the_first_signal_and_restores():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopSignals(announce=False) as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a later, different signal is not recorded over the first
        assert stop.received == signal.SIGUSR1
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    assert stop_exit_status(signal.SIGTERM) == 143 and stop_exit_status(signal.SIGINT) == 130


def test_stop_signals_outside_the_main_thread_does_nothing():
    import threading
    out = {}

    def run():
        with StopSignals(announce=False) as stop:
            out["installed"] = dict(stop._previous)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out["installed"] == {}


def _worker_ignores(queue):
    ignore_stop_signals(0)
    queue.put([signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS])


def test_loader_workers_ignore_the_stop_signals():
    ctx = mp.get_context("spawn")  # (the function must work as a worker_init_fn in a fresh interpreter)
    queue = ctx.Queue()
    p = ctx.Process(target=_worker_ignores, args=(queue,))
    p.start()
    got = queue.get(timeout=120)
    p.join(timeout=60)
    assert got == [True] * len(STOP_SIGNALS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters import torch + timm
def test_ddp_processes_stop_after_the_same_step_when_one_gets_the_signal(tmp_path):
    out = tmp_path / "result"
    mp.spawn(_ddp_worker.spawn_stop_entry, args=(2, _free_port(), str(tmp_path / "run"), str(out), (1, 2), 2.0),
             nprocs=2, join=True)
    results = [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)]
    for r in results:
        assert r["stopped"] and r["step"] == 2 and r["stopped_by"] == "SIGTERM" and r["exit_status"] == 143
    assert _steps_saved(tmp_path / "run") == [2]
    # rank 1 returned (and would have exited: torchrun then kills the others) only once rank 0 had written
    assert results[1]["returned_at"] >= results[0]["saved_at"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt")["step"] == 2


def test_a_tool_process_keeps_ignoring_stop_signals_after_a_stop():
    """torchrun closing the processes with SIGTERM, or a second Ctrl-C, after the stop: in a tool's process (which
    ends with the run) they are ignored, so the exit is not cut short; a library caller gets its handlers back."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        hold_after_stop(True)
        with StopSignals(announce=False):  # no stop: put back
            pass
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
        with StopSignals(announce=False):
            os.kill(os.getpid(), signal.SIGUSR1)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # (ignored)
    finally:
        hold_after_stop(False)
        for s, handler in before.items():
            signal.signal(s, handler)
    with StopSignals(announce=False):
        os.kill(os.getpid(), signal.SIGUSR1)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_a_finished_runs_result_file_goes_when_the_run_goes_on(tmp_path):
    """A finished run extended and then stopped kept the old final_metrics.json: it looked finished."""
    _trainer(tmp_path, stop_after_steps=2).fit()
    result = tmp_path / "final.json"
    result.write_text("{}")
    _trainer(tmp_path, result_files=("final.json",)).fit(resume="latest")  # steps to go: removed
    assert not result.exists()
    result.write_text("{}")
    _trainer(tmp_path, result_files=("final.json",)).fit(resume="latest")  # finished: kept
    assert result.exists()
