"""Plain-PyTorch references of the v4 bidirectional WKV (this docstring defines both functions of the operator).

Shapes: ``k``, ``v`` (B, T, C); ``w``, ``u`` (C,) are the PER-STEP decay and bonus (the model passes
``spatial_decay / T`` and ``spatial_first / T``). Two functions ("modes"):

* ``"exact"`` - the paper's Eq. 5: ``y_t = sum_n W_tn v_n / sum_n W_tn`` with ``W_tn = exp(k_n - (|t-n|-1) w)``
  for n != t and ``W_tt = exp(u + k_t)``.
* ``"original"`` - the function the pre-2025 CUDA kernel computes (released checkpoints were trained with it):
  T split into chunks of ``S = ceil(T / chunks)`` tokens; with ``s`` the start of t's chunk,
  ``W_tn = exp(k_n - w (t-n))`` (n < s), ``exp(k_n - w (t-n-1))`` (n = s < t),
  ``exp(k_n - w (t-n-1)) + (1 - e^w) exp(k_n + w (t-n))`` (s < n < t),
  ``exp(u + k_t) + [t > s] (1 - e^w) exp(k_t)`` (n = t), ``exp(k_n - w (n-t))`` (n > t).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._triton_utils import autograd_needed
from .._validate import check_chunks, is_symbolic, reference_dtype, no_autocast

__all__ = ["bi_wkv_reference", "bi_wkv_naive", "decay_scan", "original_kernel_kv_grads", "MODES"]

MODES = ("exact", "original")


def _naive_factor(w: torch.Tensor, u: torch.Tensor, t_len: int, mode: str, chunks: int) -> torch.Tensor:
    """(C, T, T) multiplier of exp(k_n) in W_tn."""
    idx = torch.arange(t_len, device=w.device)
    t = idx[:, None].to(w.dtype)
    n = idx[None, :].to(w.dtype)
    wc = w[:, None, None]
    uc = u[:, None, None]
    eye = (idx[:, None] == idx[None, :])
    if mode == "exact":
        dist = (t - n).abs() - 1
        return torch.where(eye, torch.exp(uc), torch.exp(-dist * wc))
    size = math.ceil(t_len / chunks)
    s = (idx[:, None] // size * size).to(w.dtype)  # start of t's chunk
    one_m_ew = -torch.expm1(wc)
    before = torch.exp(-wc * (t - n))
    inside = torch.exp(-wc * (t - n - 1))
    grow = one_m_ew * torch.exp(wc * (t - n))
    after = torch.exp(-wc * (n - t))
    diag = torch.exp(uc) + (t > s).to(w.dtype) * one_m_ew
    f = torch.where(n < s, before, torch.where(n == s, inside, inside + grow))
    f = torch.where(n > t, after, f)
    return torch.where(eye, diag, f)


def bi_wkv_naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
                 chunks: int = 32) -> torch.Tensor:
    """O(T^2)-memory form of either mode (a weighted average over positions); for tests. Computes in k's dtype."""
    if mode not in MODES:
        raise ValueError(f"bi_wkv_naive: unknown mode {mode!r}; expected one of {MODES}")
    chunks = check_chunks("bi_wkv_naive", chunks)
    t_len = k.shape[1]
    kc = k.transpose(1, 2)  # (B, C, T)
    vc = v.transpose(1, 2)
    kmax = kc.amax(dim=-1, keepdim=True).detach()
    a = torch.exp(kc - kmax)[:, :, None, :]  # (B, C, 1, T) over n
    weight = _naive_factor(w, u, t_len, mode, chunks)[None] * a  # (B, C, T, T)
    y = (weight * vc[:, :, None, :]).sum(-1) / weight.sum(-1)
    return y.transpose(1, 2)


def decay_scan(x: torch.Tensor, w: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Inclusive decayed prefix sum ``h_t = sum_{n <= t} exp(-w (t - n)) x_n`` along the last dim.

    ``x`` (C, M, T), ``w`` (C,) (may be negative: growth). Blocks of ``block`` steps use a (block x block)
    per-channel matrix; the block totals are combined by the same scan over blocks (decay ``w * block``),
    recursively, so time is O(T * block) and memory O(T). Every factor is ``exp(-w d)`` of an exact integer
    distance ``d >= 0``, so nothing cancels (also not in the gradient w.r.t. ``w``) and the magnitudes stay within
    ``exp(|w| T)``.
    """
    c, m, t_len = x.shape
    if t_len <= block:
        idx = torch.arange(t_len, device=x.device)
        dist = idx[None, :] - idx[:, None]  # (n, t): t - n, the matrix x is multiplied by from the right
        mat = torch.exp(-w[:, None, None] * dist.clamp(min=0).to(x.dtype)) * (dist >= 0).to(x.dtype)
        return torch.matmul(x.contiguous(), mat)
    nblk = -(-t_len // block)
    pad = nblk * block - t_len
    xp = (F.pad(x, (0, pad)) if pad else x).reshape(c, m * nblk, block)
    intra = decay_scan(xp, w, block).view(c, m, nblk, block)
    carry = decay_scan(intra[..., -1], w * block, block)  # state at the end of every block
    carry = F.pad(carry[..., :-1], (1, 0))  # state at the end of the previous block
    steps = torch.exp(-w[:, None] * torch.arange(1, block + 1, device=x.device, dtype=x.dtype))
    # + carry x steps, in place on the matmul's result (which its backward does not read)
    out = intra.view(c, m * nblk, block).baddbmm_(carry.reshape(c, m * nblk, 1), steps[:, None, :])
    return out.view(c, m, nblk * block)[..., :t_len]


def _shift_right(h: torch.Tensor) -> torch.Tensor:
    """h_{t-1} along the last dim (0 at t = 0)."""
    return F.pad(h[..., :-1], (1, 0))


def _shift_left(h: torch.Tensor) -> torch.Tensor:
    """h_{t+1} along the last dim (0 at the end)."""
    return F.pad(h[..., 1:], (0, 1))


# recompute=None: the backward recomputes from the inputs when k holds at least this many elements (the stored
# graph would keep ~14-22 planes of k's size - ~220-350 MB per call from here on, as bi_wkv6's threshold); below it
# the extra forward (~25% of a training call) costs more than the memory is worth
RECOMPUTE_MIN_NUMEL = 1 << 22


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
                     chunks: int = 32, block: int = 32, recompute: Optional[bool] = None) -> torch.Tensor:
    """O(T)-time, O(T)-memory reference of either mode (fp32 or float64 accumulation; result in v's dtype).

    One max of k per (batch, channel) keeps exp(k) in range; every other factor is a decay ``exp(-w d)`` bounded
    by ``exp(|w| T)`` (|w| T = |spatial_decay| in the model). Differentiable by autograd; with ``recompute`` the
    backward recomputes the scans from the inputs (activation checkpointing of this op: the inputs are all it
    keeps for the backward, instead of ~14 planes of k's size in "exact" mode and ~22 in "original"); None: when k
    holds at least ``RECOMPUTE_MIN_NUMEL`` elements.
    """
    if mode not in MODES:
        raise ValueError(f"bi_wkv_reference: unknown mode {mode!r}; expected one of {MODES}")
    chunks = check_chunks("bi_wkv_reference", chunks)
    if isinstance(block, bool) or not isinstance(block, int) or block < 2:
        raise ValueError(f"bi_wkv_reference: block must be an int >= 2, got {block!r}")
    if recompute is None:  # (not while exporting: a size test on an exported dynamic dim would bound it)
        recompute = not torch.compiler.is_exporting() and k.numel() >= RECOMPUTE_MIN_NUMEL
    with no_autocast(k):
        if recompute and autograd_needed((w, u, k, v)):
            return checkpoint(_bi_wkv_reference, w, u, k, v, mode, chunks, block, use_reentrant=False)
        return _bi_wkv_reference(w, u, k, v, mode, chunks, block)


def _carry_matrix(w: torch.Tensor, nblk, dtype: torch.dtype) -> torch.Tensor:
    """(C, nblk, nblk) factors [j, i] = exp(-w (i - 1 - j)) for j < i, 0 else (every exponent an integer distance
    >= 0; the masked entries get exponent 0, so a growth w < 0 cannot overflow there)."""
    idx = torch.arange(nblk, device=w.device)
    d = idx[None, :] - 1 - idx[:, None]  # i - 1 - j
    expo = torch.exp(-w[:, None, None] * d.clamp(min=0).to(dtype))
    return torch.where(d >= 0, expo, torch.zeros((), dtype=dtype, device=w.device))


def _blocks_apply_symbolic(x: torch.Tensor, mat: torch.Tensor, w: torch.Tensor, offset: int) -> torch.Tensor:
    """:func:`_blocks_apply` for a symbolic T (torch.export with a dynamic image size): no branch on T - the
    tokens always padded to whole blocks (zeros add nothing to either sum), and the carries between blocks one
    closed-form (C, nblk, nblk) product per direction instead of :func:`decay_scan`'s size-dependent recursion
    (O(nblk^2) per channel, nblk = ceil(T / L); the same function, other rounding)."""
    c, m, t_len = x.shape
    size = mat.shape[-1]
    # at least two blocks (a zero block adds nothing): nblk = 1 would be a special case of the views below (a
    # guard on T > L that the program would check at run time)
    nblk = torch.sym_max(2, (t_len + size - 1) // size)
    xb = F.pad(x, (0, nblk * size - t_len)).reshape(c, m * nblk, size)
    idx = torch.arange(size, device=x.device, dtype=x.dtype)
    to_end = torch.exp(-w[:, None] * (size - 1 - idx))
    from_start = torch.exp(-w[:, None] * idx)
    full = torch.matmul(xb, torch.cat([mat, to_end[:, :, None], from_start[:, :, None]], dim=2))
    tot = full[..., :size]
    carry = _carry_matrix(w * size, nblk, x.dtype)  # [j, i]: block j's sum carried to block i > j
    ends = torch.matmul(full[..., size].reshape(c, m, nblk), carry)  # blocks before, decayed to t's block start
    starts = torch.matmul(full[..., size + 1].reshape(c, m, nblk), carry.transpose(1, 2))  # blocks after
    if offset:
        scale = torch.exp(-offset * w)[:, None, None]
        ends, starts = ends * scale, starts * scale
    carries = torch.stack((ends, starts), dim=-1)  # (C, M, nblk, 2)
    out = torch.baddbmm(tot, carries.view(c, m * nblk, 2), torch.stack((from_start, to_end), dim=1))
    # the first T tokens as a new tensor: a slice view [..., :T] makes torch.export guard on its contiguity (T a
    # multiple of L or not), which specialises the program
    return out.view(c, m, nblk * size).index_select(2, torch.arange(t_len, device=x.device))


def _blocks_apply(x: torch.Tensor, mat: torch.Tensor, w: torch.Tensor, block: int, offset: int) -> torch.Tensor:
    """``sum_n f_tn x_n`` for x (C, M, T), blocks of L = ``mat.shape[-1]`` tokens: inside a block the factors are
    the (C, L, L) matrix ``mat`` [n, t]; between blocks they are exp(-(|t-n| - 1 + offset) w).

    One product per block gives both directions and the diagonal (no flipped copy); two more columns of it give each
    block's sums decayed to its end and from its start, which :func:`decay_scan` carries across blocks (decay w L)
    forwards and backwards. Every carry factor is ``exp(-w d)`` of an integer distance d >= 0."""
    c, m, t_len = x.shape
    if is_symbolic(t_len):
        return _blocks_apply_symbolic(x, mat, w, offset)
    size = mat.shape[-1]
    nblk = -(-t_len // size)
    pad = nblk * size - t_len
    xb = (F.pad(x, (0, pad)) if pad else x).reshape(c, m * nblk, size)
    if nblk == 1:
        return torch.matmul(xb, mat).view(c, m, size)[..., :t_len]
    idx = torch.arange(size, device=x.device, dtype=x.dtype)
    to_end = torch.exp(-w[:, None] * (size - 1 - idx))  # (C, L): exp(-(L-1-n) w), n to its block's end
    from_start = torch.exp(-w[:, None] * idx)  # exp(-n w), the block's start to n
    full = torch.matmul(xb, torch.cat([mat, to_end[:, :, None], from_start[:, :, None]], dim=2))  # (C, M nblk, L+2)
    tot = full[..., :size]  # (C, M nblk, L): the sums inside each block
    # all tokens up to each block's end (but the last's), and from each block's start (but the first's): the unused
    # carries would span the padding too and, with growth (w < 0), overflow inside |w| T < 88; scaled below, an inf
    # made the gradient of w NaN (0 * inf) although the forward dropped it
    ends = decay_scan(full[..., size].reshape(c, m, nblk)[..., :-1], w * size, block)
    starts = decay_scan(full[..., size + 1].reshape(c, m, nblk)[..., 1:].flip(-1), w * size, block).flip(-1)
    if offset:
        scale = torch.exp(-offset * w)[:, None, None]
        ends, starts = ends * scale, starts * scale
    # the blocks before t's (their sums decayed to t) and after it: one rank-2 update of the in-block sums
    carries = torch.stack((F.pad(ends, (1, 0)), F.pad(starts, (0, 1))), dim=-1)  # (C, M, nblk, 2)
    out = torch.baddbmm(tot, carries.view(c, m * nblk, 2), torch.stack((from_start, to_end), dim=1))
    return out.view(c, m, nblk * size)[..., :t_len]


def _exact_weights_apply(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, block: int) -> torch.Tensor:
    """``sum_n f_tn x_n`` with the Eq. 5 factors f_tn = exp(-(|t-n|-1) w) (n != t), f_tt = exp(u); x (C, M, T):
    blocks of min(block, T) tokens (:func:`_blocks_apply`), the in-block factors one symmetric matrix per channel."""
    t_len = x.shape[-1]
    size = block if is_symbolic(t_len) else min(block, t_len)  # (symbolic T: blocks of `block`, padded)
    idx = torch.arange(size, device=x.device, dtype=x.dtype)
    dist = (idx[:, None] - idx[None, :]).abs()  # (n, t)
    mat = torch.where(dist == 0, torch.exp(u)[:, None, None], torch.exp(-w[:, None, None] * (dist - 1).clamp(min=0)))
    return _blocks_apply(x, mat, w, block, 0)


# "original" mode: chunks of S <= this many tokens take the block form (blocks of whole chunks), longer ones the scans
# (on CPU the block form was 1.4-2.6x faster up to S = 64, e.g. T = 2048 with P = 32; at S = 128 slower in inference)
ORIGINAL_MAX_BLOCK = 64


def _original_block_matrix(w: torch.Tensor, u: torch.Tensor, size: int, chunk: int) -> torch.Tensor:
    """(C, L, L) factors [n, t] of the pre-2025 kernel's closed form inside a block of L = ``size`` tokens that
    starts a chunk of S = ``chunk`` tokens and holds whole chunks (s = the start of t's chunk): exp(-w (t-n)) for
    n < t in an earlier chunk, exp(-w (t-n-1)) for s <= n < t, plus (1 - e^w) exp(w (t-n)) for s < n < t,
    exp(u) + [t > s] (1 - e^w) for n = t, exp(-w (n-t)) for n > t."""
    idx = torch.arange(size, device=w.device)
    n, t = idx[:, None], idx[None, :]
    same = (n // chunk) == (t // chunk)
    d = (t - n).to(w.dtype)
    expo = torch.where(n < t, torch.where(same, d - 1, d), -d)  # the decay's distance, >= 0 off the diagonal
    one_m_ew = -torch.expm1(w)[:, None, None]
    inside = same & (n % chunk > 0) & (n < t)
    grow = torch.where(inside, one_m_ew * torch.exp(w[:, None, None] * torch.where(inside, d, 0.0)), 0.0)
    diag = torch.exp(u)[:, None, None] + torch.where(t % chunk > 0, one_m_ew, 0.0)
    return torch.where(n == t, diag, torch.exp(-w[:, None, None] * expo) + grow)


def _original_weights_apply(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, chunks: int,
                            block: int) -> torch.Tensor:
    """``sum_n f_tn x_n`` with the factors of the pre-2025 kernel's closed form (chunks of S = ceil(T / P)): chunks of
    up to ORIGINAL_MAX_BLOCK tokens in blocks of whole chunks (:func:`_blocks_apply`; between chunks the factors are
    exp(-w |t-n|)), longer ones by scans."""
    t_len = x.shape[-1]
    size = -(-t_len // chunks)  # S = ceil(T / P) tokens per chunk
    if size <= ORIGINAL_MAX_BLOCK:
        per_block = max(1, min(block // size, -(-t_len // size)))  # whole chunks per block
        return _blocks_apply(x, _original_block_matrix(w, u, size * per_block, size), w, block, 1)
    return _original_weights_scans(x, w, u, size, block)


def _original_weights_scans(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, size: int,
                            block: int) -> torch.Tensor:
    """:func:`_original_weights_apply` for long chunks of S = ``size`` tokens, by decayed scans inside the chunks."""
    c, m, t_len = x.shape
    nch = -(-t_len // size)
    xr = F.pad(x, (0, nch * size - t_len)).reshape(c, m * nch, size)
    first = torch.ones(size, dtype=x.dtype, device=x.device)
    first[0] = 0
    hg = decay_scan(torch.cat([xr, xr * first], dim=0), torch.cat([w, -w]), block)
    h, g = hg.reshape(2 * c, m, nch, size).split(c, dim=0)
    # tokens before t's chunk: exp(-w (t - n)); state at the end of every chunk via a scan over chunks
    ends = decay_scan(h[..., -1], w * size, block)
    ends = F.pad(ends[..., :-1], (1, 0))
    steps = torch.exp(-w[:, None] * torch.arange(1, size + 1, device=x.device, dtype=x.dtype))
    pre = ends[..., None] * steps[:, None, None, :]
    # inside the chunk: exp(-w (t-n-1)) for s <= n < t, (1 - e^w) exp(w (t-n)) for s < n <= t
    inner = pre + _shift_right(h) - torch.expm1(w)[:, None, None, None] * g
    inner = inner.reshape(c, m, nch * size)[..., :t_len]
    after = decay_scan(x.flip(-1), w, block).flip(-1)  # sum_{n >= t} exp(-w (n - t)) x_n
    return torch.exp(u)[:, None, None] * x + inner + _shift_left(after) * torch.exp(-w)[:, None, None]


def _prepare(w, u, k, v):
    dt = reference_dtype(w, u, k, v)
    kc = k.to(dt)
    a = torch.exp(kc - kc.amax(dim=1, keepdim=True).detach()).permute(2, 0, 1)  # (C, B, T); one max per (b, c)
    return w.to(dt), u.to(dt), a, v.to(dt).permute(2, 0, 1)


def _bi_wkv_reference(w, u, k, v, mode, chunks, block):
    b = k.shape[0]
    w, u, a, vc = _prepare(w, u, k, v)
    x = torch.cat([a * vc, a], dim=1)  # (C, 2B, T): numerator and denominator terms
    if mode == "exact":
        tot = _exact_weights_apply(x, w, u, block)
    else:
        tot = _original_weights_apply(x, w, u, chunks, block)
    y = tot[:, :b] / tot[:, b:]
    # (B, T, C) as the kernels write it; the layout first (a cast of the permuted view puts a guard of B != 1 into a
    # dynamic-size half-precision program)
    return y.permute(1, 2, 0).contiguous().to(v.dtype)


@torch.no_grad()
def original_kernel_kv_grads(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gy: torch.Tensor,
                             chunks: int = 32, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The k and v "gradients" the pre-2025 CUDA backward returns for output gradient ``gy``.

    They are NOT the derivatives of its forward: with W5 the Eq. 5 weights and Zc, yc the closed form's denominator
    and output, ``gv_n = sum_t gy_t W5_tn / Zc_t`` and ``gk_n = sum_t gy_t W5_tn (v_n - yc_t) / Zc_t``. Provided to
    reproduce original training runs bit-for-bit in spirit; our "original" mode uses true gradients. O(T).
    """
    chunks = check_chunks("original_kernel_kv_grads", chunks)
    b = k.shape[0]
    with no_autocast(k):
        w, u, a, vc = _prepare(w, u, k, v)
        tot = _original_weights_apply(torch.cat([a * vc, a], dim=1), w, u, chunks, block)
        zc = tot[:, b:]
        yc = tot[:, :b] / zc
        p = gy.to(a.dtype).permute(2, 0, 1) / zc
        s_p, s_py = _exact_weights_apply(torch.cat([p, p * yc], dim=1), w, u, block).split(b, dim=1)  # f symmetric
        gv = a * s_p
        gk = a * (vc * s_p - s_py)
    return gk.permute(1, 2, 0).to(k.dtype), gv.permute(1, 2, 0).to(v.dtype)
