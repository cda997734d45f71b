"""Small helpers shared by the Triton operator modules (``vision_rwkv/ops/*/triton.py``).

Nothing here imports triton, so the dispatcher can import it cheaply.
"""
from __future__ import annotations

import os

import torch
from torch._subclasses.fake_tensor import is_fake

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the environment's backing dict (bytes -> bytes) on POSIX, which os.environ reads and writes through
_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
_ENV_KEYS: dict = {}
_ENV_TEXT: dict = {}  # raw value (bytes) -> its decoded text


def env_get(name: str, default: str = "") -> str:
    """``os.environ.get(name, default)``, read live (``os.environ`` / ``monkeypatch.setenv`` changes are seen at once),
    at a fraction of its cost: the switches are read on every op call (hundreds per forward), where
    ``os.environ.get``'s key encoding and value decoding cost ~3 us each on the host. Falls back to
    ``os.environ.get`` off POSIX and while torch.compile traces."""
    if _ENV_DATA is None or torch.compiler.is_compiling():
        return os.environ.get(name, default)
    value = _ENV_DATA.get(_ENV_KEYS.get(name) or _env_key(name))
    if value is None:
        return default
    text = _ENV_TEXT.get(value)  # (decoded once per distinct value: the switches take few values)
    if text is None:
        if len(_ENV_TEXT) > 256:
            _ENV_TEXT.clear()
        text = _ENV_TEXT[value] = os.fsdecode(value)
    return text


def _env_key(name: str) -> bytes:
    key = _ENV_KEYS[name] = os.fsencode(name)
    return key


def _with_bytes(table: dict) -> dict:
    """``table`` (text -> value) with each key also as bytes: the raw values :func:`env_flag` / :func:`env_backend`
    look up (bytes from the environment's backing dict, str off POSIX and while torch.compile traces)."""
    return {**table, **{os.fsencode(k): v for k, v in table.items()}}


# The on/off switches (VRWKV_FUSED*, VRWKV_TRITON_DEBUG / _CHECKS / _FAST_LAUNCH) take these words, in any case and
# with surrounding spaces; unset or empty is the switch's default. (Triton reads TRITON_INTERPRET with the same
# words.)
FLAG_WORDS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}
_FLAGS: dict = _with_bytes(FLAG_WORDS)  # raw value -> bool, for every valid value met: one dict lookup a call


def env_flag(name: str, default: bool) -> bool:
    """The on/off switch ``$name``: ``default`` when unset or empty, else one of :data:`FLAG_WORDS` (any case,
    surrounding spaces ignored); any other value is a ValueError naming the variable and the accepted values. Read
    live on every call (a changed value takes effect at once) as cheaply as :func:`env_get`: each distinct raw value
    is parsed once."""
    if _ENV_DATA is None or torch.compiler.is_compiling():
        raw = os.environ.get(name)
    else:
        raw = _ENV_DATA.get(_ENV_KEYS.get(name) or _env_key(name))
    if raw is None:
        return default
    value = _FLAGS.get(raw)
    if value is None:
        return _parse_flag(name, raw, default)
    return value


def _parse_flag(name: str, raw, default: bool) -> bool:
    text = (os.fsdecode(raw) if isinstance(raw, bytes) else raw).strip().lower()
    if not text:
        return default
    value = FLAG_WORDS.get(text)
    if value is None:
        raise ValueError(f"{name}={os.fsdecode(raw)!r} is not an on/off value: use 1 or 0 (also true/false, on/off, "
                         f"yes/no, any case; unset or empty: the default, {int(default)})")
    if not torch.compiler.is_compiling():  # (no side effects while torch.compile traces)
        if len(_FLAGS) > 256:
            _FLAGS.clear()
            _FLAGS.update(_with_bytes(FLAG_WORDS))
        _FLAGS[raw] = value
    return value


BACKEND_CHOICES = ("reference", "triton")
_BACKEND_WORDS = {"reference": "reference", "triton": "triton", "auto": None}
_BACKENDS: dict = _with_bytes(_BACKEND_WORDS)  # raw value -> None (auto) or a backend, for every valid value met
_MISSING = object()


def env_backend():
    """``VRWKV_BACKEND`` as the dispatchers read it: None (auto: unset, empty or ``auto``), ``"reference"`` or
    ``"triton"`` (any case, surrounding spaces ignored); any other value is a ValueError naming the variable. The
    one reading shared by the WKV ops' dispatch and the fused ops (:func:`vision_rwkv.ops.fused.fused_enabled`); read
    live, each distinct raw value parsed once."""
    if _ENV_DATA is None or torch.compiler.is_compiling():
        raw = os.environ.get("VRWKV_BACKEND")
    else:
        raw = _ENV_DATA.get(_ENV_KEYS.get("VRWKV_BACKEND") or _env_key("VRWKV_BACKEND"))
    if raw is None:
        return None
    value = _BACKENDS.get(raw, _MISSING)
    if value is _MISSING:
        return _parse_backend(raw)
    return value


def _parse_backend(raw):
    text = (os.fsdecode(raw) if isinstance(raw, bytes) else raw).strip().lower()
    if not text:
        value = None
    elif text in _BACKEND_WORDS:
        value = _BACKEND_WORDS[text]
    else:
        raise ValueError(f"VRWKV_BACKEND={os.fsdecode(raw)!r} is not one of {', '.join(BACKEND_CHOICES)} or auto "
                         "(unset or empty: auto)")
    if not torch.compiler.is_compiling():
        if len(_BACKENDS) > 64:
            _BACKENDS.clear()
            _BACKENDS.update(_with_bytes(_BACKEND_WORDS))
        _BACKENDS[raw] = value
    return value


def backend_arg(op: str, backend) -> "str | None":
    """An op's ``backend=`` argument read as ``VRWKV_BACKEND`` is: None (auto; also ``"auto"`` or empty),
    ``"reference"`` or ``"triton"`` (any case, surrounding spaces ignored); anything else a ValueError."""
    if backend is None or backend in BACKEND_CHOICES:
        return backend
    text = backend.strip().lower() if isinstance(backend, str) else None
    if text == "" or text in _BACKEND_WORDS:  # (the words VRWKV_BACKEND takes)
        return _BACKEND_WORDS.get(text)
    raise ValueError(f"{op}: unknown backend {backend!r}; expected None or 'auto' (auto), or one of {BACKEND_CHOICES}")


_CPU_LAUNCHES = [False]  # set inside host_driver.host_only_launches and kernel_report.capture_kernels


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter, read as Triton reads it (1/true/on/yes, any
    case; any other value is off: the variable is Triton's, so no error here)."""
    raw = env_get("TRITON_INTERPRET", "0")
    return raw == "1" or (raw != "0" and FLAG_WORDS.get(raw.lower(), False))


def cpu_triton() -> bool:
    """Whether CPU tensors may take the Triton kernels: under ``TRITON_INTERPRET=1`` (the interpreter runs them), or
    inside :func:`vision_rwkv.ops.host_driver.host_only_launches` (compiled for a GPU, launches recorded)."""
    if _CPU_LAUNCHES[0]:
        return True
    raw = env_get("TRITON_INTERPRET", "0")  # (triton_interpret() inlined: read on every CPU op call)
    return raw == "1" or (raw != "0" and FLAG_WORDS.get(raw.lower(), False))


# whether TRITON_INTERPRET was on when vision_rwkv.ops.triton_jit was imported, i.e. when our kernels were defined
# (None: not yet); Triton decides at a kernel's definition whether the interpreter runs it
KERNELS_INTERPRETED: list = [None]


def check_cpu_kernels(op: str) -> None:
    """Before CPU tensors take the Triton kernels: an error when ``TRITON_INTERPRET=1`` was set after Triton's
    library or our kernels were defined (Triton's own error, "Cannot call @triton.jit'd outside of the scope of a
    kernel", would not say why)."""
    if _CPU_LAUNCHES[0]:
        return
    import triton.language as tl
    library = getattr(tl, "cdiv", None)  # (a @triton.jit function of Triton's own standard library)
    if KERNELS_INTERPRETED[0] is False or (library is not None and type(library).__name__ == "JITFunction"):
        raise RuntimeError(f"{op}: TRITON_INTERPRET=1 was set after Triton (or vision_rwkv's Triton kernels) was "
                           "imported, so the kernels cannot run in Triton's interpreter: Triton decides when a "
                           "kernel is defined. Set it before importing torch or vision_rwkv (in the environment of "
                           "the process)")


GRID_YZ_MAX = 65535  # CUDA's limit on a launch grid's y and z extents (where the WKV kernels put their chunks)


def debug_poison() -> bool:
    """True when ``VRWKV_TRITON_DEBUG`` is on (``1``): kernel outputs are allocated filled with NaN (tests turn this
    on so an element a kernel forgets to write shows up as NaN)."""
    return env_flag("VRWKV_TRITON_DEBUG", False)


def check_out(op: str, names, outs, likes) -> None:
    """Gradient buffers a caller passes to a backward (``out=``): each must be contiguous, of its input's shape and
    dtype (the kernels write them as dense row-major planes); else a ValueError naming the buffer."""
    for name, t, like in zip(names, outs, likes):
        if t.shape != like.shape or t.dtype != like.dtype or not t.is_contiguous():
            raise ValueError(f"{op} backward: out {name} must be a contiguous {tuple(like.shape)} {like.dtype} "
                             f"tensor, got {tuple(t.shape)} {t.dtype} (contiguous={t.is_contiguous()})")


def launch_opts(num_warps: int, maxnreg) -> dict:
    """A kernel launch's options: its warps and, when ``maxnreg`` is set (not 0), a cap on the registers per thread
    (ptxas then spills what does not fit: more resident programs per SM, more local-memory traffic)."""
    cap = int(maxnreg or 0)
    return dict(num_warps=num_warps, maxnreg=cap) if cap else dict(num_warps=num_warps)


def new_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; NaN-filled in debug mode."""
    if debug_poison():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def autograd_needed(args) -> bool:
    """Whether a call must record autograd: grad mode is on and a tensor among ``args`` requires a gradient (other
    entries, None included, are ignored)."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def holds_values(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read in eager Python: False while compiling or exporting, on the meta device and
    for FakeTensors (shape-only tracing, e.g. under ``FakeTensorMode``), where a data-dependent branch cannot run."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    return not is_fake(t)


def run_op(custom_op, function, forward, *args):
    """Run a Triton operator the cheapest correct way: its torch custom op while torch.compile traces, its
    ``torch.autograd.Function`` when a tensor argument needs a gradient, and otherwise the bare ``forward(*args)``
    (inference: no autograd or dispatcher bookkeeping on the host, which dominates small-batch eager runs)."""
    if torch.compiler.is_compiling():
        return custom_op(*args)
    if autograd_needed(args):
        return function.apply(*args)
    return forward(*args)


def run_split_op(custom_op, function, forward, args: tuple, a, split):
    """:func:`run_op` for the mixing ops (token shift + interpolation), whose 5th argument is the interpolation
    weights ``a``: an (M, C) tensor or a tuple of M vectors (what training passes: the kernels read each vector where
    it is, no stack per step). ``args`` are the op's other arguments in order (``a`` goes after the first four).
    Returns the (M, ...) output shaped by ``split`` (:func:`split_outputs`). In training ``function.apply(*args,
    split, vectors, *parts)`` returns the parts themselves, whose gradients then reach the backward kernel without
    being stacked, and hands each vector its gradient. While torch.compile traces, the custom op gets one (M, C)
    tensor (a traced stack; its outputs may not alias each other, so the split comes after)."""
    vectors = not isinstance(a, torch.Tensor)
    parts = tuple(v.contiguous() for v in a) if vectors else (a.contiguous(),)
    if torch.compiler.is_compiling():
        a2 = torch.stack([v.reshape(-1) for v in parts]) if vectors else parts[0]
        out = custom_op(*args[:4], a2, *args[4:])
    elif autograd_needed(args + parts):
        return function.apply(*args, split, vectors, *parts)
    else:
        out = forward(*args[:4], parts if vectors else parts[0], *args[4:])
    return split_outputs(out, split)


def coef_grads(ga: torch.Tensor, parts: tuple, vectors: bool) -> tuple:
    """The gradients of :func:`run_split_op`'s interpolation inputs from the backward kernels' (M, C) ``ga``: itself
    for an (M, C) tensor, else one row per vector (a view, in the vector's shape and dtype)."""
    if not vectors:
        return (as_dtype(ga, parts[0].dtype),)
    shape = parts[0].shape  # (the usual case, vectors of one shape: one view and one unbind for all of them)
    rows = (ga.view(len(parts), *shape).unbind(0) if len(ga) == len(parts) and all(v.shape == shape for v in parts)
            else [g.view(v.shape) for g, v in zip(ga.unbind(0), parts)])
    return tuple(as_dtype(g, v.dtype) for g, v in zip(rows, parts))


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when it already is (~1-2 us of host time a call, on the
    operators' hot paths)."""
    return t if t.dtype == dtype else t.to(dtype)


def check_split(op: str, split, nmix: int) -> None:
    """Raise a clear error unless ``split`` is a bool or a tuple of positive group sizes summing to ``nmix``."""
    if isinstance(split, bool):
        return
    if (not isinstance(split, (tuple, list)) or not all(isinstance(n, int) and n >= 1 for n in split)
            or sum(split) != nmix):
        raise ValueError(f"{op}: split must be True, False or a tuple of positive group sizes summing to the "
                         f"{nmix} mixed inputs, got {split!r}")


def split_outputs(out: torch.Tensor, split):
    """The (M, ...) tensor ``out`` as a caller asked for it: ``False`` -> itself, ``True`` -> its M planes, a tuple of
    group sizes (summing to M) -> consecutive groups, a group of one as its plane (...), a larger one as an
    (n, ...) view (e.g. ``(1, 4)``: one input for a LoRA, four for one batched GEMM). Every part is a view."""
    if split is False:
        return out
    if split is True:
        return out.unbind(0)
    parts, start = [], 0
    for n in split:
        parts.append(out[start] if n == 1 else out[start:start + n])
        start += n
    return tuple(parts)


def plane_grads(gout: tuple, split):
    """The gradients of :func:`split_outputs`' parts (an autograd Function's ``*grad_outputs``) as the backward
    kernels read them: the one (M, ...) gradient (``split`` False), else the list of the M per-plane gradients
    (views of the groups' gradients: nothing is stacked)."""
    if split is False:
        return gout[0]
    if split is True:
        return list(gout)
    planes = []
    for g, n in zip(gout, split):
        planes.extend([g] if n == 1 else g.unbind(0))
    return planes


def split_param_grads(sums: torch.Tensor, *params) -> tuple:
    """The rows of ``sums`` - the gradients of several small parameters reduced in one launch, stacked - each in its
    parameter's dtype (None for a parameter that is None). The kernels' backward custom ops return the stacked
    tensor (a custom op's outputs may not alias each other) and their autograd formulas split it."""
    return tuple(None if p is None else as_dtype(s, p.dtype) for s, p in zip(sums.unbind(0), params))


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def check_float(name: str, t: torch.Tensor) -> None:
    """Raise a clear error unless ``t`` is a float32/bfloat16/float16 tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devs = {name: t.device for name, t in tensors.items()}
    if len(set(devs.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devs}")


def config_from_env(config: dict, var: str) -> dict:
    """Update a kernel CONFIG dict in place from ``$var`` = "key=value,key=value" (values cast to the existing
    entry's type); unknown keys raise a clear error. Used for launch-setting sweeps."""
    text = os.environ.get(var, "").strip()
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, _, val = item.partition("=")
        if key not in config:
            raise ValueError(f"{var}: unknown key {key!r}; known: {sorted(config)}")
        kind = type(config[key])
        try:
            config[key] = kind(val)
        except ValueError:
            raise ValueError(f"{var}: {key}={val!r} is not a valid {kind.__name__} (current value "
                             f"{config[key]!r})") from None
    return config
