"""2-process DDP on CPU (gloo) gives the same weights as 1 process at the same global batch."""
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters import torch + timm: ~15 s idle, more on a busy machine
def test_two_process_ddp_matches_single_process(tmp_path):
    steps, global_batch = 6, 16  # 64 samples -> 4 steps per epoch: crosses an epoch boundary
    single = _ddp_worker.build_and_train(str(tmp_path / "single"), global_batch, steps)
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker.spawn_entry, args=(2, _free_port(), str(tmp_path / "ddp"), str(out), global_batch, steps),
             nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    assert set(ddp) == set(single)
    assert ddp["allreduce_calls"] == steps  # one bucket per step (the net is tiny)
    for k in single:
        if k == "allreduce_calls":
            continue
        torch.testing.assert_close(ddp[k].float(), single[k].float(), rtol=1e-4, atol=1e-5, msg=k)
    # and it did train: the weights moved away from the seeded init
    init = _ddp_worker.build_model().state_dict()
    assert (single["5.weight"] - init["5.weight"]).abs().max() > 1e-3


@pytest.mark.slow
def test_compiled_ddp_with_accumulation_matches_single_process(tmp_path):
    """train.compile over DDP: the compiled 2-process run with gradient accumulation matches one process, and the
    micro-batches before the last skip the all-reduce (DDP's no_sync found inside the torch.compile wrapper)."""
    steps, global_batch, accum = 3, 16, 2
    single = _ddp_worker.build_and_train(str(tmp_path / "single"), global_batch, steps)
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker.spawn_entry, args=(2, _free_port(), str(tmp_path / "ddp"), str(out), global_batch, steps,
                                            accum, True), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    assert ddp["allreduce_calls"] == steps  # not steps * accum
    for k in single:
        if k != "allreduce_calls":
            torch.testing.assert_close(ddp[k].float(), single[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def test_grad_accumulation_matches_big_batch(tmp_path):
    a = _ddp_worker.build_and_train(str(tmp_path / "a"), 16, 4, accum=1)
    b = _ddp_worker.build_and_train(str(tmp_path / "b"), 16, 4, accum=4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
