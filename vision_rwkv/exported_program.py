"""Load a ``torch.export`` program (``.pt2``), an ONNX file or an AOTInductor package with its input checked first,
in words that name the problem.

    from vision_rwkv.export import load_program
    model = load_program("vrwkv_tiny.pt2")   # an nn.Module
    logits = model(images)                     # (B, 3, H, W) float32, in the range the program was exported for

A program's own guards speak of its graph: a 3-D image and a 4-channel image both fail with
``Guard failed: x.size()[1] == 3``. :class:`CheckedProgram` reads what the program takes from the program itself
(its input's rank, dtype, fixed sizes, and the range and step of each dynamic size) and raises a ValueError naming the
dimension, the value and what the program takes before running it. It takes what the program was exported for
(which torch's guards at times let more through than: a size of 0 under a minimum of 1, a derived size off its step);
integer ids of another integer dtype are converted, as an embedding takes any.

An ONNX file's free dimensions carry no range, and onnxruntime bounds none: :func:`~vision_rwkv.export.export_onnx`
records the program's :class:`InputSpec` in the file's metadata (``vision_rwkv.input``, JSON), and :func:`load_onnx`
gives an onnxruntime session behind the same check (for a file without the entry: rank, dtype and fixed sizes from
its graph). An AOTInductor package checks its inputs only with ``AOTI_RUNTIME_CHECK_INPUTS=1``, and no lower bound:
:func:`~vision_rwkv.export.export_aoti` records the spec in the package's metadata, and :func:`load_aoti` checks it.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = ["load_program", "CheckedProgram", "load_onnx", "CheckedOnnx", "load_aoti", "CheckedAoti", "InputSpec",
           "DimSpec", "input_spec", "INPUT_SPEC_KEY"]

INPUT_SPEC_KEY = "vision_rwkv.input"  # the metadata entry of an ONNX file / AOTInductor package: its InputSpec (JSON)


@dataclass(frozen=True)
class DimSpec:
    """One input dimension: ``low``..``high`` in steps of ``step`` (a fixed size: ``low == high``). Dimensions of the
    same ``symbol`` (e.g. a square image's height and width, or ``s`` and ``2 s``) move together: the symbol's value,
    ``base + (size - low) / step`` (``base``: its value at ``low``), is the same."""

    name: str
    low: int
    high: Optional[int]
    step: int = 1
    symbol: Optional[str] = None
    base: int = 0

    def symbol_value(self, size: int) -> int:
        return self.base + (size - self.low) // self.step

    def describe(self) -> str:
        """``3``, ``[33, 1024]``, ``a multiple of 32 in [64, 1024]``, ``[5, 21] in steps of 2`` or ``>= 1``."""
        if self.low == self.high:
            return str(self.low)
        where = f">= {self.low}" if self.high is None else f"[{self.low}, {self.high}]"
        if self.step == 1:
            return where
        if self.low % self.step == 0:
            return f"a multiple of {self.step} in {where}"
        return f"{where} in steps of {self.step}"

    def takes(self, value: int) -> bool:
        return self.low <= value <= (value if self.high is None else self.high) and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class InputSpec:
    """What a program's one input takes: dtype, device and one :class:`DimSpec` per dimension."""

    dtype: torch.dtype
    device: Optional[torch.device]  # (that of its weights; None for a program without any)
    dims: tuple[DimSpec, ...]

    def layout(self) -> str:
        return "(" + ", ".join(d.name for d in self.dims) + ")"

    def summary(self) -> str:
        """E.g. ``float32 (batch, channels, height, width): batch [1, 4096], channels 3, height 224, width 224``."""
        ties = [", ".join(d.name for d in self.dims if d.symbol == sym) for sym in self._tied_symbols()]
        dims = ", ".join(f"{d.name} {d.describe()}" for d in self.dims)
        return f"{_dtype_name(self.dtype)} {self.layout()}: {dims}" + "".join(f" ({t}: one size)" for t in ties)

    def _tied_symbols(self) -> list[str]:
        symbols = [d.symbol for d in self.dims if d.symbol is not None]
        return sorted({s for s in symbols if symbols.count(s) > 1})

    def to_json(self) -> str:
        """The dtype and the dimensions as JSON (the ``vision_rwkv.input`` metadata of an ONNX file or AOTInductor
        package; no device)."""
        dims = [[d.name, d.low, d.high, d.step, d.symbol, d.base] for d in self.dims]
        return json.dumps({"dtype": _dtype_name(self.dtype), "dims": dims})

    @classmethod
    def from_json(cls, text: str) -> "InputSpec":
        data = json.loads(text)
        dims = tuple(DimSpec(str(n), int(lo), None if hi is None else int(hi), int(st), sym, int(base))
                     for n, lo, hi, st, sym, base in data["dims"])
        return cls(getattr(torch, data["dtype"]), None, dims)

    def admit(self, x, what: str = "exported program") -> torch.Tensor:
        """``x`` if this spec takes it (integer ids of another integer dtype widened or narrowed to the spec's, as an
        embedding takes any), else a ValueError naming the problem (a TypeError for what is not a tensor)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} input: expected a tensor, got {type(x).__name__}; it takes {self.summary()}")
        if x.dtype != self.dtype and _is_integer(x.dtype) and _is_integer(self.dtype):
            x = x.to(self.dtype)
        problem = None
        if x.dim() != len(self.dims):
            problem = f"{x.dim()}-D, where it takes {len(self.dims)}-D {self.layout()}"
        elif x.dtype != self.dtype:
            problem = f"dtype {_dtype_name(x.dtype)}"
        elif self.device is not None and x.device.type != self.device.type:
            problem = f"on {x.device}, where its weights are on {self.device}"
        else:
            sizes = [int(s) for s in x.shape]
            bad = next(((d, s) for d, s in zip(self.dims, sizes) if not d.takes(s)), None)
            if bad is not None:
                problem = f"{bad[0].name} {bad[1]}, where it must be {bad[0].describe()}"
            for sym in self._tied_symbols() if bad is None else ():
                tied = [(d, s) for d, s in zip(self.dims, sizes) if d.symbol == sym]
                if len({d.symbol_value(s) for d, s in tied}) > 1:
                    problem = (" and ".join(f"{d.name} {s}" for d, s in tied) + " differ, where they are one size ("
                               + ", ".join(f"{d.name} {d.describe()}" for d, _ in tied) + ")")
                    break
        if problem is not None:
            raise ValueError(f"{what} input of shape {_shape(x)}: {problem}; it takes {self.summary()}")
        return x


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dim_names(rank: int, dtype: torch.dtype) -> tuple[str, ...]:
    if rank == 4 and dtype.is_floating_point:
        return "batch", "channels", "height", "width"
    if rank == 2 and not dtype.is_floating_point:
        return "batch", "tokens"
    return tuple(f"dimension {i}" for i in range(rank))


def _dim_spec(name: str, size, ranges: dict) -> DimSpec:
    """A fixed size, or a symbolic one: ``a * s + b`` of one symbol ``s`` with its range. A plain symbol's lower bound
    of 2 is torch's 0/1 specialisation (``Dim.AUTO``), not a limit: the program takes 1 (torch's own checks let sizes
    0 and 1 through)."""
    if not isinstance(size, torch.SymInt):
        return DimSpec(name, int(size), int(size))
    expr = size.node.expr
    symbols = list(expr.free_symbols)
    if len(symbols) != 1 or symbols[0] not in ranges:
        return DimSpec(name, 0, None)  # (an expression this does not read: the program's own guards check it)
    (sym,) = symbols
    r = ranges[sym]
    if not r.lower.is_Integer:
        return DimSpec(name, 0, None)
    lo = int(r.lower)
    if lo == 2 and expr == sym:
        lo = 1
    at_lo, at_next = int(expr.subs(sym, lo)), int(expr.subs(sym, lo + 1))
    hi = int(expr.subs(sym, int(r.upper))) if r.upper.is_Integer else None  # (else torch's int_oo: no maximum)
    return DimSpec(name, at_lo, hi, max(at_next - at_lo, 1), str(sym), lo)


def input_spec(program: torch.export.ExportedProgram) -> InputSpec:
    """What ``program``'s one user input takes (from its placeholder's fake tensor and its range constraints)."""
    from torch.export.graph_signature import InputKind

    users = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(users) != 1:
        raise ValueError(f"CheckedProgram takes a program of one input, this one has {len(users)}")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
    val = node.meta["val"]
    ranges = {sym: r for sym, r in program.range_constraints.items() if getattr(sym, "is_Symbol", False)}
    names = _dim_names(val.dim(), val.dtype)
    weights = [*program.state_dict.values(), *program.constants.values()]
    device = next((t.device for t in weights if isinstance(t, torch.Tensor)), None)
    return InputSpec(val.dtype, device, tuple(_dim_spec(n, s, ranges) for n, s in zip(names, val.shape)))


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


class CheckedProgram(nn.Module):
    """``program.module()`` behind a check of its input: a :class:`ValueError` (a :class:`TypeError` for what is not
    a tensor) that names the dimension, the value and what the program takes. ``spec`` holds what it takes.

    It takes what the program was exported for, which is at times less than what torch's own guards let through:
    a derived size off its step (``2 * s + 1`` given 6), or a size below a declared minimum of 1 (0)."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self.spec = input_spec(program)
        args, kwargs = program.call_spec.in_spec.children()  # (the calling convention, saved with the program)
        self.keyword = kwargs.context[0] if args.num_children == 0 and kwargs.num_children == 1 else None
        self.program_module = program.module()

    def forward(self, *args, **kwargs):
        inputs = [*args, *kwargs.values()]
        if len(inputs) != 1 or (kwargs and self.keyword not in kwargs):
            how = f"as {self.keyword}=" if self.keyword else "positionally"
            raise TypeError(f"exported program: one input ({how}), got {len(args)} positional and keywords "
                            f"{sorted(kwargs)}")
        x = self.spec.admit(inputs[0], "exported program")
        return self.program_module(**{self.keyword: x}) if self.keyword else self.program_module(x)

    def train(self, mode: bool = True) -> "CheckedProgram":
        """``eval()`` is a no-op (a program is exported in eval mode); training mode is an error."""
        if mode:
            raise RuntimeError("an exported program runs as it was exported (eval mode): it has no training mode")
        return self


def load_program(path: Union[str, os.PathLike]) -> CheckedProgram:
    """The ``.pt2`` program at ``path`` (written by :func:`~vision_rwkv.export.export_program` and
    ``torch.export.save``, or ``tools/export.py``) as a :class:`CheckedProgram`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported program not found: {path}")
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # (an AOTInductor package or another zip: not a saved ExportedProgram)
        raise ValueError(f"{path} is not a torch.export program (.pt2 from export_program / torch.export.save; an "
                         f"AOTInductor package loads with torch._inductor.aoti_load_package): {err}") from err
    return CheckedProgram(program)


# ONNX input types (onnxruntime's names) -> torch dtypes, for a file without our metadata
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
              "tensor(bfloat16)": torch.bfloat16, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32}


def _onnx_input_spec(session) -> InputSpec:
    """The file's ``vision_rwkv.input`` metadata (written by :func:`~vision_rwkv.export.export_onnx`: the ranges
    and steps of the program it came from), else what its graph says: rank, dtype, fixed sizes (free ones unbounded)."""
    meta = session.get_modelmeta().custom_metadata_map
    if INPUT_SPEC_KEY in meta:
        return InputSpec.from_json(meta[INPUT_SPEC_KEY])
    inp = session.get_inputs()[0]
    if inp.type not in _ORT_TYPES:
        raise ValueError(f"load_onnx: input type {inp.type} is not one of {', '.join(_ORT_TYPES)}")
    dtype = _ORT_TYPES[inp.type]
    names = _dim_names(len(inp.shape), dtype)
    dims = tuple(DimSpec(n, d, d) if isinstance(d, int) else DimSpec(n, 0, None, 1, d if isinstance(d, str) else None)
                 for n, d in zip(names, inp.shape))  # (free dimensions of one name: one size)
    return InputSpec(dtype, None, dims)


class CheckedOnnx:
    """An ONNX file in an onnxruntime session, called like the model (a tensor in, a tensor out), its input checked
    first against the range the file records (onnxruntime itself bounds none of its free dimensions)."""

    def __init__(self, path: Union[str, os.PathLike], providers: Optional[list] = None):
        import onnxruntime

        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.spec = _onnx_input_spec(self.session)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spec.admit(x, "ONNX model")
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0])


def load_onnx(path: Union[str, os.PathLike], providers: Optional[list] = None) -> CheckedOnnx:
    """The ONNX file at ``path`` as a :class:`CheckedOnnx` (needs onnxruntime; ``providers``: onnxruntime's execution
    providers, default CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("load_onnx needs onnxruntime: pip install onnxruntime")
    return CheckedOnnx(path, providers)


class CheckedAoti:
    """An AOTInductor package (``torch._inductor.aoti_load_package``) called like the model, its input checked first
    against the spec :func:`~vision_rwkv.export.export_aoti` records in the package's metadata: the package's own
    checks run only with ``AOTI_RUNTIME_CHECK_INPUTS=1`` and never check lower bounds. A package without the entry
    runs unchecked (``spec`` None)."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self.runner = torch._inductor.aoti_load_package(str(self.path))
        meta = self.runner.get_metadata()
        self.spec = InputSpec.from_json(meta[INPUT_SPEC_KEY]) if INPUT_SPEC_KEY in meta else None

    def __call__(self, x: torch.Tensor):
        if self.spec is not None:
            x = self.spec.admit(x, "AOTInductor package")
        return self.runner(x)


def load_aoti(path: Union[str, os.PathLike]) -> CheckedAoti:
    """The AOTInductor package at ``path`` (from :func:`~vision_rwkv.export.export_aoti` or ``tools/export.py
    --format aoti``) as a :class:`CheckedAoti`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package not found: {path}")
    return CheckedAoti(path)
