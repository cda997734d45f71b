"""Shared check of the references' ``recompute`` option (tests/ops/test_bi_wkv.py, test_bi_wkv6.py)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from vision_rwkv.benchmark import saved_activation_bytes


def check_recompute(monkeypatch, module, base: Sequence[torch.Tensor], numel: int,
                    reference: Callable[[list, bool], torch.Tensor], public: Callable[[list], torch.Tensor]) -> None:
    """``reference(args, recompute)`` keeps only its inputs for the backward with recompute (5x less than without),
    with gradients bit-equal to the stored graph's; the public op (``public(args)``, as the models call it) recomputes
    exactly when the input that sets the size holds ``module.RECOMPUTE_MIN_NUMEL`` elements or more (``numel``)."""
    saved, grads, gy = {}, {}, None
    for recompute in (True, False):
        args = [x.clone().requires_grad_() for x in base]
        saved[recompute], y = saved_activation_bytes(lambda: reference(args, recompute))
        if gy is None:
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
        (y * gy).sum().backward()
        grads[recompute] = [a.grad for a in args]
    inputs = sum(x.numel() * x.element_size() for x in base)
    assert saved[True] <= inputs < saved[False] / 5, saved
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=0)
    for threshold, expected in ((numel + 1, saved[False]), (numel, saved[True])):
        monkeypatch.setattr(module, "RECOMPUTE_MIN_NUMEL", threshold)
        args = [x.clone().requires_grad_() for x in base]
        assert saved_activation_bytes(lambda: public(args))[0] == expected
