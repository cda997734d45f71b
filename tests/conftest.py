"""Shared pytest fixtures: where the parity fixtures live, deterministic seeds, small thread counts."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VRWKV_FIXTURES", ROOT.parent / "shared" / "fixtures"))

# Tiny test tensors: more threads only add contention (pytest runs with -n 2 workers on 2 cores).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (the README's test command and CI pass it)")


def pytest_collection_modifyitems(config, items):
    """Without ``--run-slow``, skip the tests marked slow (listed in the summary: "slow: pass --run-slow")."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow (the README's test command and CI do)")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def run_slow(request) -> bool:
    """Whether the slow tests run (``--run-slow``): interpreter fixtures then run every case, else the quick ones."""
    return bool(request.config.getoption("--run-slow"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Folder with the original implementations' outputs (../shared/fixtures or $VRWKV_FIXTURES)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"parity fixtures not found at {FIXTURES} (set VRWKV_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def load_fixture(fixtures_dir):
    """Load one fixture file by name with weights_only=True (cached per session)."""
    cache = {}

    def _load(name: str):
        if name not in cache:
            cache[name] = torch.load(fixtures_dir / name, map_location="cpu", weights_only=True)
        return cache[name]

    return _load


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def captured_figures(monkeypatch):
    """``capture(module)``: the matplotlib figures ``module`` saves from now on (its ``save_figure`` still writes
    them), to look at their axes, titles and labels."""
    def capture(module) -> list:
        figures = []
        real = module.save_figure

        def keep(fig, *args, **kwargs):
            figures.append(fig)
            return real(fig, *args, **kwargs)

        monkeypatch.setattr(module, "save_figure", keep)
        return figures

    return capture


@pytest.fixture(scope="session")
def load_tool():
    """Import a script of tools/ by name (``load_tool("convert_mmcv_config").main([...])``), once per session."""
    import importlib.util
    cache = {}

    def _load(name: str):
        if name not in cache:
            spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
            cache[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(cache[name])
        return cache[name]
    return _load


@pytest.fixture
def modules_left_by(monkeypatch):
    """``modules_left_by(fn)``: calls ``fn()`` with the garbage collector off and returns the type names of the
    ``nn.Module``s made during the call that outlive it. A run must free its model on return (on a GPU, memory that
    waits for a collection is memory the next run lacks). As in a process's first run, where matplotlib's first
    import keeps exceptions whose tracebacks hold the training frames, ``Trainer.fit`` leaves such a cycle."""
    import gc
    import warnings
    import weakref

    from vision_rwkv.engine.loop import Trainer
    fit = Trainer.fit

    def fit_leaving_a_cycle(self, *args, **kwargs):
        try:
            raise RuntimeError("kept")
        except RuntimeError as err:
            kept = err  # kept -> its traceback -> this frame (-> kept); the frame's f_back -> the trainer's caller
        assert kept
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_leaving_a_cycle)

    def modules(seen=None) -> list:
        with warnings.catch_warnings():  # (isinstance on some of torch's deprecated objects warns)
            warnings.simplefilter("ignore")
            return [o for o in gc.get_objects() if isinstance(o, torch.nn.Module) and (seen is None or o not in seen)]

    def left_by(fn) -> list[str]:
        before = weakref.WeakSet(modules())
        enabled = gc.isenabled()
        gc.disable()
        try:
            fn()
            return sorted({type(m).__name__ for m in modules(before)})
        finally:
            if enabled:
                gc.enable()
    return left_by


@pytest.fixture
def process_snapshot():
    """``snapshot()``: the process-wide settings a library run must leave as it found them (threads, the python /
    numpy / torch random states, the determinism settings); the caller's values are made unusual first (2 threads,
    warn-only deterministic mode, cuDNN benchmark on), and put back after the test."""
    import random

    import numpy as np

    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = True
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)

    def snapshot() -> dict:
        return {"threads": torch.get_num_threads(), "python_rng": random.getstate(),
                "numpy_rng": repr(np.random.get_state()), "torch_rng": torch.get_rng_state().tolist(),
                "deterministic": (torch.are_deterministic_algorithms_enabled(),
                                  torch.is_deterministic_algorithms_warn_only_enabled()),
                "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
                "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    yield snapshot
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.backends.cudnn.benchmark = saved[3]
