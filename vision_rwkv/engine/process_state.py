"""The process-wide settings a run changes, put back when it returns: library calls (a sweep in one process, a
notebook) leave the caller's threads, random streams and determinism settings as they found them."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["process_state_restored"]


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Run a block (a training or evaluation run) and put back what it may set for the whole process:

    - torch's intra-op thread count (``num_threads`` in a config);
    - the python, numpy and torch random states (a run seeds them for its own reproducibility; a random search
      drawing between runs would otherwise draw the same values each time), CUDA's too when it was initialised;
    - the determinism settings (``deterministic: true``): torch's deterministic mode and its warn-only flag, cuDNN's
      ``deterministic`` / ``benchmark`` flags and ``CUBLAS_WORKSPACE_CONFIG``.
    """
    threads = torch.get_num_threads()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
