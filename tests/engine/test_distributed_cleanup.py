"""``cleanup_distributed`` in 2-process gloo runs: the DDP model's reference cycle is collected before the group is
destroyed (else gloo's threads outlive it into interpreter shutdown), the ranks meet at a final barrier, a rank that
fails skips it without leaving the others hanging, and a group the caller created stays."""
import json
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, fail_rank=None, callers_group=False) -> list[dict]:
    out = tmp_path / "seen"
    mp.spawn(_ddp_worker.spawn_cleanup_entry, args=(2, _free_port(), str(out), fail_rank, callers_group), nprocs=2,
             join=True)
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]


@pytest.mark.slow  # two spawned interpreters import torch + timm
def test_cleanup_collects_the_ddp_cycle_and_meets_at_a_barrier(tmp_path):
    for rank, seen in enumerate(_run(tmp_path)):
        assert seen["alive_before_cleanup"], rank  # (the cycle: without a collection it would still be there)
        assert seen["alive_at_destroy"] is False, rank
        assert seen["barriers"] == 1, rank
        assert seen["warnings"] == [] and not seen["group_left"], rank


@pytest.mark.slow
def test_a_failing_rank_skips_the_barrier_and_the_other_is_warned(tmp_path):
    failed, other = _run(tmp_path, fail_rank=1)[::-1]
    assert failed["raised"] and failed["barriers"] == 0 and not failed["group_left"]
    assert not other["group_left"]
    assert other["barriers"] == 1
    assert len(other["warnings"]) == 1 and "final barrier" in other["warnings"][0], other["warnings"]


@pytest.mark.slow
def test_a_group_the_caller_created_is_left_to_the_caller(tmp_path):
    """Several runs in one torchrun process need one group for all (PyTorch cannot reliably create a group again in
    a process): a group that existed before the run is adopted, and the run's cleanup leaves it working."""
    for rank, seen in enumerate(_run(tmp_path, callers_group=True)):
        assert seen["alive_before_cleanup"], rank
        assert seen["barriers"] == 0 and seen["group_left"] and seen["all_reduce_after"] == 2.0, rank
