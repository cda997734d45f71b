"""The training tools under a stop signal sent to their whole process group, DataLoader workers included (what
SLURM's preemption and Ctrl-C do): the step in progress is checkpointed, the tool exits 128 + the signal's number
without a traceback, and --resume latest goes on from that step."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tool_helpers import DEMO, ROOT, TINY

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")

SEG = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"
CLIP = ROOT / "configs" / "clip" / "demo_shapes.yaml"


def _rows(csv: Path) -> int:
    return max(len(csv.read_text().splitlines()) - 1, 0) if csv.is_file() else 0


def _run_until_logged(args: list[str], run_dir: Path, signum: int, rows: int = 1,
                      timeout: float = 300) -> subprocess.CompletedProcess:
    """Start a tool in its own process group, send the group ``signum`` once ``rows`` more rows are in
    train_metrics.csv, and return the finished process (its output captured)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    csv = run_dir / "train_metrics.csv"
    wanted = _rows(csv) + rows
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while _rows(csv) < wanted:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (status {proc.returncode}) before it logged a step:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("no training step logged in time")
            time.sleep(0.05)
        os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("ckpt_*.pt"))


def _assert_stopped(done: subprocess.CompletedProcess, run_dir: Path, signum: int) -> int:
    """The tool stopped cleanly on ``signum``; returns the step it checkpointed."""
    name = signal.Signals(signum).name
    assert done.returncode == 128 + signum, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{name} received" in done.stderr
    line = next(ln for ln in done.stdout.splitlines() if f"stopped by {name} after step" in ln)
    step = int(line.split("after step ")[1].split("/")[0])
    assert _checkpoint_steps(run_dir)[-1] == step
    return step


def test_classification_stops_on_sigterm_then_on_ctrl_c_after_a_resume(tmp_path):
    run = tmp_path / "run"
    args = ["tools/train.py", str(DEMO), *TINY, f"run_dir={run}", "train.epochs=50", "data.num_workers=2",
            "data.shapes.train_length=2000",  # (long epochs: the signal comes while the workers run)
            "train.log_every=1", "train.eval_every_epochs=0", "train.ckpt_every_epochs=0"]
    first = _assert_stopped(_run_until_logged(args, run, signal.SIGTERM), run, signal.SIGTERM)
    assert not (run / "final_metrics.json").exists()  # (the run is not finished)
    second = _assert_stopped(_run_until_logged([*args, "--resume", "latest"], run, signal.SIGINT, rows=2),
                             run, signal.SIGINT)
    assert second > first
    steps = [int(r.split(",")[0]) for r in (run / "train_metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1))  # the resume went on from the checkpointed step


@pytest.mark.slow  # a subprocess each: ~10 s
def test_segmentation_stops_on_sigterm(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "seg"))
    from test_train import TINY as SEG_TINY  # (tests/seg: its tiny model overrides)
    run = tmp_path / "run"
    args = ["tools/train_seg.py", str(SEG), *SEG_TINY, f"train.run_dir={run}", "optim.max_iters=100000",
            "data.num_workers=2", "data.train_length=2000", "train.ckpt_every=100000"]
    _assert_stopped(_run_until_logged(args, run, signal.SIGTERM), run, signal.SIGTERM)
    assert not (run / "train_result.json").exists()


@pytest.mark.slow
def test_clip_stops_on_sigterm(tmp_path):
    from test_train_clip_cli import _write_cfg
    run = tmp_path / "run"
    args = ["tools/train_clip.py", "--config", str(_write_cfg(tmp_path, run)), "train.max_steps=100000",
            "train.ckpt_every_steps=100000", "data.workers=2", "data.shapes_length=2000"]
    _assert_stopped(_run_until_logged(args, run, signal.SIGTERM), run, signal.SIGTERM)
    assert not (run / "result.json").exists()


def test_an_error_with_loader_workers_still_ends_the_tool(tmp_path):
    """The workers ignore SIGTERM, and an error left their loader open: multiprocessing's exit handler SIGTERMed and
    joined them forever (a NaN loss, an out-of-memory error or Ctrl-C twice hung the tool)."""
    args = [sys.executable, "tools/train.py", str(DEMO), *TINY, f"run_dir={tmp_path}", "train.epochs=5",
            "data.shapes.train_length=400", "data.num_workers=2", "optim.lr=1e30"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1 and "non-finite loss" in done.stderr, done.stderr[-2000:]
    assert "killed by signal" not in done.stderr  # (the loader's SIGCHLD handler reporting the workers ended at exit)
