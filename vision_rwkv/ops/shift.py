"""Token shifts used by the RWKV mixers.

* :func:`q_shift` - the 2-D "Q-Shift" of Vision-RWKV: four channel groups take the left, right, upper and lower
  neighbour of each token of a row-major (H, W) grid (zero padding at the borders).
* :func:`bi_shift_1d` - the 1-D bidirectional shift of the RWKV-CLIP text tower: per head, the first half of the
  channels take the previous token, the second half the next one.

Both are a handful of slice copies into a zero tensor: no Python loop over heads or positions, differentiable.
"""
from __future__ import annotations

import torch

from ._validate import is_symbolic

__all__ = ["q_shift", "bi_shift_1d", "quarter_bounds"]


def quarter_bounds(c: int) -> tuple[int, int, int, int, int]:
    """Channel boundaries ``b_k = int(c * k / 4)`` for k = 0..4 (the original's split, also for c % 4 != 0)."""
    return tuple(int(c * k / 4) for k in range(5))  # type: ignore[return-value]


def _check_tokens(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected x of shape (B, N, C), got {tuple(x.shape)}")


def q_shift(x: torch.Tensor, grid_size: tuple[int, int], head_size: int | None = None) -> torch.Tensor:
    """Q-Shift of tokens ``x`` (B, N, C) laid out row-major on a grid ``grid_size = (H, W)``, N = H * W.

    With ``head_size=None`` (VRWKV v4) the channel quarters are global, ``[b_k, b_{k+1})`` with
    ``b_k = int(C * k / 4)``; with ``head_size=N_h`` (VRWKV6) the quarters are taken inside every head of N_h
    channels. Quarter 0 takes the left neighbour ``x[h, w-1]``, 1 the right ``x[h, w+1]``, 2 the upper
    ``x[h-1, w]``, 3 the lower ``x[h+1, w]``; tokens outside the grid are zero.
    """
    _check_tokens(x, "q_shift")
    try:
        # (a symbolic size - torch.export with a dynamic H / W - is kept: int() would specialise it)
        gh, gw = (s if is_symbolic(s) else int(s) for s in grid_size)
    except (TypeError, ValueError):  # (an int, a 3-tuple, a string, ...)
        raise ValueError(f"q_shift: grid_size must be a pair of ints (H, W), got {grid_size!r}") from None
    b, n, c = x.shape
    if gh < 1 or gw < 1 or gh * gw != n:
        raise ValueError(f"q_shift: grid_size {gh}x{gw} does not match the {n} tokens of x {tuple(x.shape)}")
    if head_size is None:
        xg = x.reshape(b, gh, gw, 1, c)
        cq = quarter_bounds(c)
    else:
        head_size = int(head_size)
        if head_size < 1 or c % head_size:
            raise ValueError(f"q_shift: channels C={c} are not a multiple of head_size={head_size}")
        xg = x.reshape(b, gh, gw, c // head_size, head_size)
        cq = quarter_bounds(head_size)
    out = torch.zeros_like(xg)
    out[:, :, 1:, :, cq[0]:cq[1]] = xg[:, :, :-1, :, cq[0]:cq[1]]  # left neighbour
    out[:, :, :-1, :, cq[1]:cq[2]] = xg[:, :, 1:, :, cq[1]:cq[2]]  # right neighbour
    out[:, 1:, :, :, cq[2]:cq[3]] = xg[:, :-1, :, :, cq[2]:cq[3]]  # upper neighbour
    out[:, :-1, :, :, cq[3]:cq[4]] = xg[:, 1:, :, :, cq[3]:cq[4]]  # lower neighbour
    return out.reshape(b, n, c)


def bi_shift_1d(x: torch.Tensor, head_size: int) -> torch.Tensor:
    """Bidirectional 1-D shift of ``x`` (B, T, C): inside every head of ``head_size`` channels, channels
    ``[0, head_size // 2)`` take token t-1 and ``[head_size // 2, head_size)`` take token t+1 (zeros at the ends)."""
    _check_tokens(x, "bi_shift_1d")
    b, t, c = x.shape
    head_size = int(head_size)
    if head_size < 1 or c % head_size:
        raise ValueError(f"bi_shift_1d: channels C={c} are not a multiple of head_size={head_size}")
    half = head_size // 2
    xh = x.reshape(b, t, c // head_size, head_size)
    out = torch.zeros_like(xh)
    out[:, 1:, :, :half] = xh[:, :-1, :, :half]
    out[:, :-1, :, half:] = xh[:, 1:, :, half:]
    return out.reshape(b, t, c)
