"""Launch settings shared by the fused elementwise Triton kernels (``shift_triton``, ``elementwise_triton``,
``group_norm_triton``, ``add_norm_triton``); tests and sweeps change them in place (``CONFIG.update``)."""
from __future__ import annotations

from .._triton_utils import cdiv

# bwd_programs: the most programs of the row-reducing backward kernels (GroupNorm * gate, residual add + LayerNorm);
# each walks its share of row blocks and writes one partial sum of the parameter gradients
# lora_bwd_*: the tiles of the mixing backward that forms the ddlerp LoRA's m itself (``_tsm_lora_bwd``)
CONFIG = dict(block_t=32, block_c=64, warps=4, block_elem=2048, elem_warps=8, gn_elems=4096, bwd_programs=1024,
              lora_bwd_block_t=16, lora_bwd_warps=8)


def row_programs(nblocks: int) -> tuple[int, int]:
    """(programs, row blocks per program) of a row-reducing backward kernel over ``nblocks`` row blocks."""
    nprog = max(1, min(nblocks, int(CONFIG["bwd_programs"])))
    return nprog, cdiv(nblocks, nprog)
