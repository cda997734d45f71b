"""The CPU form of the bidirectional RWKV-6 WKV: both directions from one set of chunks (defined in ``reference.py``).

With A_t = sum of log decays from the chunk start through t (A_{-1} = 0, A_L the chunk total), every pair weight
splits into a query factor and a key factor:
    n < t (causal):   prod_{n<m<t} d_m = e^{A_{t-1}} e^{-A_n}
    n > t (reversed): prod_{t<m<n} d_m = e^{-A_t} e^{A_{n-1}}
so a chunk's scores are ``tril(qf kf^T, -1) + triu(qr kr^T, 1) + diag(r . u k)`` with qf = r e^{A_{t-1}},
kf = k e^{-A_n}, qr = r e^{-A_t}, kr = k e^{A_{n-1}} (the exponents summed and exponentiated in float64, each factor
rounded once), and the other chunks enter through two N x N states: the causal state of the chunks before (keys
kf e^{A_L}) and the reversed state of the chunks after (keys kr), read by qf and by qr e^{A_L}. The growing factors
e^{-A} stay below e^{MAX_EXP} only while every chunk's total is >= -MAX_EXP: :func:`bi_wkv6_direct` halves the
chunk until that holds and returns None when not even MIN_CHUNK tokens do (the binary-tree reference takes over).
Compared with the binary-tree reference: no flipped copy of the inputs, one set of chunk products for both
directions, the bonus on the scores' diagonal: 2-4x faster on CPU in inference, 1.5-2.7x in training.

Differentiable by autograd, but its log-decay gradient is a suffix sum of the exponents' gradients, in which the
pairs not spanning a token cancel: their rounding (fp32: ~1e-7 of a pair's weight) stays small next to the true
gradient only while the spanning pairs' weights are not much smaller, i.e. for moderate decays. With ``max_decay``
(the reference passes TRAIN_MAX_DECAY when a gradient is recorded) it declines any call with a per-token decay
stronger than e^-max_decay: up to 2 the fp32 gradients stay within ~1e-6 of the float64 ones (tests), at 3.6 per
token they were 9e-6 off, at 7 2e-4.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._triton_utils import autograd_needed
from .._validate import reference_dtype

__all__ = ["bi_wkv6_direct", "MAX_EXP", "TRAIN_MAX_DECAY"]

# the largest growing factor is e^MAX_EXP (fp32 holds up to e^88); chunks shrink to MIN_CHUNK tokens to respect it
MAX_EXP = 60.0
MIN_CHUNK = 4
# the strongest per-token log decay (-logd) the reference lets this form differentiate (see the module docstring)
TRAIN_MAX_DECAY = 2.0


def _chunk_log_decays(logd: torch.Tensor, chunk: int) -> Optional[torch.Tensor]:
    """(G, nc, L) float64 cumulative log decays inside each chunk of the largest L <= ``chunk`` (a power of two,
    >= MIN_CHUNK) whose every chunk total is >= -MAX_EXP, or None (also for NaN)."""
    g, t_pad, n = logd.shape
    l64 = logd.double()
    while chunk >= MIN_CHUNK:
        a = l64.view(g * (t_pad // chunk), chunk, n).cumsum(1)
        if bool(a[:, -1].min() >= -MAX_EXP):
            return a
        chunk //= 2
    return None


def _scan_states(upd: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """States entering each chunk from both sides: for ``upd`` (G, nc, 2N, N) (rows :N causal increments, N:
    reversed ones) and ``dec`` (G, nc, N, 1) the chunk decays, S_c = dec_{c-1} S_{c-1} + upd_{c-1} (S_0 = 0) and
    R_c = dec_{c+1} R_{c+1} + upd_{c+1} (R_{nc-1} = 0), stacked as ``upd``. Written in place of one new tensor
    without a graph; with one, a differentiable loop (each state a new tensor)."""
    nc, n = upd.shape[1], dec.shape[2]
    if autograd_needed((upd, dec)):
        fwd, rev = [torch.zeros_like(upd[:, 0, :n])], [torch.zeros_like(upd[:, 0, n:])]
        for c in range(1, nc):
            fwd.append(torch.addcmul(upd[:, c - 1, :n], fwd[-1], dec[:, c - 1]))
            rev.append(torch.addcmul(upd[:, nc - c, n:], rev[-1], dec[:, nc - c]))
        return torch.cat([torch.stack(fwd, 1), torch.stack(rev[::-1], 1)], dim=2)
    st = torch.empty_like(upd)
    fwd, rev = st[:, :, :n], st[:, :, n:]
    fwd[:, 0] = 0
    rev[:, nc - 1] = 0
    for c in range(1, nc):
        torch.addcmul(upd[:, c - 1, :n], fwd[:, c - 1], dec[:, c - 1], out=fwd[:, c])
        e = nc - 1 - c
        torch.addcmul(upd[:, e + 1, n:], rev[:, e + 1], dec[:, e + 1], out=rev[:, e])
    return st


def bi_wkv6_direct(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor, u: torch.Tensor,
                   chunk: int = 32, max_decay: Optional[float] = None) -> Optional[torch.Tensor]:
    """Bidirectional RWKV-6 WKV of (B, T, H, N) inputs (see the module docstring), or None when the decays are too
    strong for the split factors (or, with ``max_decay``, some ``logd < -max_decay``). Computes in fp32 (float64
    inputs: float64) with float64 exponents; returns (B, T, H, N) contiguous in v's dtype. ``chunk``: the largest
    chunk tried (a power of two). Differentiable by autograd."""
    if max_decay is not None and not bool(logd.min() >= -max_decay):  # (False for NaN)
        return None
    graph = autograd_needed((r, k, v, logd, u))  # (in place only where no graph is recorded)
    b, t_len, h, n = r.shape
    dt = reference_dtype(r, k, v, logd, u)
    f64 = torch.float64
    chunk = max(MIN_CHUNK, min(chunk, 1 << (t_len - 1).bit_length()))
    t_pad = -(-t_len // chunk) * chunk
    g = b * h

    def to_chunks(x, dtype):  # (B, T, H, N) -> (G, t_pad, N), zero padding at the end
        out = x.new_empty((b, h, t_pad, n), dtype=dtype)
        out[:, :, :t_len].copy_(x.permute(0, 2, 1, 3))  # (one pass: the permutation and the cast)
        out[:, :, t_len:].zero_()
        return out.view(g, t_pad, n)

    # exponents in float64 (sums of log decays keep every digit), factors rounded to dt; every elementwise op has
    # operands of one dtype (mixed-dtype ops take PyTorch's slower casting loops on CPU)
    lg = to_chunks(logd, f64)
    a = _chunk_log_decays(lg.clamp(min=-1e4) if graph else lg.clamp_(min=-1e4), chunk)  # (exp(-1e4) = 0 anywhere)
    if a is None:
        return None
    chunk = a.shape[1]
    nc = a.shape[0] // g
    rr, kk, vv = (to_chunks(x, dt).view(g * nc, chunk, n) for x in (r, k, v))
    grow = torch.neg(a).exp_().to(dt)  # e^{-A_t} <= e^MAX_EXP
    shrink = F.pad(a[:, :-1], (0, 0, 1, 0)).exp_().to(dt)  # e^{A_{t-1}} <= 1
    qf, kf, qr, kr = rr * shrink, kk * grow, rr * grow, kk * shrink
    scores = torch.bmm(qf, kf.transpose(1, 2)).tril_(-1)
    scores += torch.bmm(qr, kr.transpose(1, 2)).triu_(1)
    rk, ub = (rr * kk).view(b, h, nc, chunk, n), u.to(dt)[None, :, None, None]
    bonus = (rk * ub if graph else rk.mul_(ub)).sum(-1)
    scores.diagonal(dim1=1, dim2=2).copy_(bonus.view(g * nc, chunk))
    y = torch.bmm(scores, vv)
    if nc > 1:
        total = a[:, -1:].exp().to(dt)  # (G * nc, 1, N) chunk decays e^{A_L}
        keys = torch.cat([kf * total if graph else kf.mul_(total), kr], dim=2)  # causal k e^{A_L - A_n}, reversed
        upd = torch.bmm(keys.transpose(1, 2), vv).view(g, nc, 2 * n, n)
        states = _scan_states(upd, total.view(g, nc, n, 1)).view(g * nc, 2 * n, n)
        y.baddbmm_(torch.cat([qf, qr * total if graph else qr.mul_(total)], dim=2), states)
    out = v.new_empty((b, t_len, h, n))
    return out.copy_(y.view(b, h, nc * chunk, n)[:, :, :t_len].permute(0, 2, 1, 3))
