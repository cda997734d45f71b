"""Sequence lengths whose chunk count would overflow a CUDA grid axis (65535 on y / z): the opt-in kernels fall back
to kernels whose grid fits (v4 register-sequential -> tile-scan, v6 chunk-parallel -> walk), and the v4 tile-scan
kernels beyond their own limit raise a clear error instead of a failed launch. Checked on CPU: launches are
compiled for sm_90 and recorded with their grids, not run."""
import pytest
import torch

pytest.importorskip("triton")
from vision_rwkv.kernel_report import capture_kernels, cuobjdump_path  # noqa: E402
from vision_rwkv.ops._triton_utils import GRID_YZ_MAX  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(cuobjdump_path() is None, reason="Triton's NVIDIA backend tools not found")]


def _with_config_restored(module):
    """Yield the kernel module; its CONFIG (launch settings) is restored afterwards."""
    saved = dict(module.CONFIG)
    yield module
    module.CONFIG.clear()
    module.CONFIG.update(saved)


@pytest.fixture
def v4():
    from vision_rwkv.ops.bi_wkv import triton as t4

    yield from _with_config_restored(t4)


@pytest.fixture
def v6():
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    yield from _with_config_restored(t6)


def test_v4_seq_falls_back_to_tile_scan_beyond_the_grid(v4):
    v4.CONFIG.update(seq=1, seq_t=16)
    T = 16 * (GRID_YZ_MAX + 1)  # one 16-token chunk too many for the seq kernels; 32768 tile-scan chunks
    k = v = torch.empty(1, T, 4)
    w, u = torch.zeros(4), torch.zeros(4)
    with capture_kernels() as recs:
        y, m, car = v4._fwd(w, u, k, v, "exact", 32)
        v4._bwd(w, u, k, v, m, car, torch.empty_like(y), "exact", 32)
    names = {r.name for r in recs}
    assert "_fwd_summary_kernel" in names and not any(n.startswith("_seq") for n in names), names
    assert all(max(tuple(r.grid)[1:] + (1,)) <= GRID_YZ_MAX for r in recs), [r.grid for r in recs]
    with capture_kernels() as recs:  # below the limit the seq kernels run
        v4._fwd(w, u, k[:, : 16 * GRID_YZ_MAX], v[:, : 16 * GRID_YZ_MAX], "exact", 32)
    assert any(r.name.startswith("_seq") for r in recs)


def test_v4_tile_scan_beyond_the_grid_raises(v4):
    T = v4.CONFIG["chunk_t"] * GRID_YZ_MAX + 1
    k = torch.empty(1, T, 1)
    with pytest.raises(ValueError, match="grid axis"):
        v4._fwd(torch.zeros(1), torch.zeros(1), k, k, "exact", 32)


def test_v6_chunk_falls_back_to_walk_beyond_the_grid(v6):
    v6.CONFIG.update(algo="chunk")
    T = v6.CONFIG["block_t"] * (GRID_YZ_MAX + 1)
    r = torch.empty(1, T, 1, 16)
    u = torch.zeros(1, 16)
    with capture_kernels() as recs:
        v6._fwd(r, r, r, r, u)
    assert [x.name for x in recs] == ["_v6_fwd_kernel", "_planes_kernel"], [x.name for x in recs]
    assert all(max(tuple(x.grid)[1:] + (1,)) <= GRID_YZ_MAX for x in recs), [x.grid for x in recs]
    with capture_kernels() as recs:
        v6._fwd(r[:, :4096], r[:, :4096], r[:, :4096], r[:, :4096], u)
    assert "_state_kernel" in {x.name for x in recs}
