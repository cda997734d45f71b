"""A dispatch mode that records the aten ops run while it is active (the tests' launch counter on CPU)."""
from __future__ import annotations

from typing import Iterable

from torch.utils._python_dispatch import TorchDispatchMode


class OpRecorder(TorchDispatchMode):
    """``ops``: the overload-packet names (``"aten.bmm"``) of the aten ops dispatched while active, in order, except
    those in ``skip`` (e.g. allocations and views, which launch no kernel)."""

    def __init__(self, skip: Iterable[str] = ()):
        super().__init__()
        self.ops: list = []
        self.skip = frozenset(skip)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name not in self.skip:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))
