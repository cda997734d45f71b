"""Fused elementwise operators around the WKV kernels (the memory-bound "glue" of the VRWKV blocks).

Each op has a plain-PyTorch reference (``reference.py``) and a Triton kernel pair, forward and backward, registered
as a torch custom op (``shift_triton.py``, ``elementwise_triton.py``, ``group_norm_triton.py``,
``add_norm_triton.py``; all four imported lazily through ``triton.py``):

* :func:`token_shift_mix` / :func:`shift_lerp` - Q-Shift + interpolation writing the M mixed inputs of a token or
  channel mix in one pass, in the compute dtype (v4 lerp, v6 per-head shift, v6 data-dependent "ddlerp").
* :func:`token_shift_mix_lora` - the v6 ddlerp with its rank-R LoRA computed inside the kernel.
* :func:`sigmoid_mul` - ``sigmoid(r) * y``; :func:`relu_square` - ``relu(x)^2``.
* :func:`linear_relu_square` / :func:`linear_sigmoid_mul` - a bias-free projection with those activations in its
  GEMM epilogue (``linear_triton.py``; the models use them when :func:`fused_gemm_enabled`); likewise
  :func:`linear_tanh` and :func:`linear_decay` for the two stages of the RWKV-6 LoRAs.
* :func:`lora_mlp` - the RWKV-6 decay LoRA ``tanh(x @ w1) @ w2`` as one kernel each way (``lora_triton.py``; the
  one-node time mix runs it: its rank-R hidden is never written in inference, and its tanh is never a pass of its
  own).
* :func:`mix_linear` - a projection whose GEMM operand is the Q-Shift interpolation, formed tile by tile while
  loaded (``mix_linear_triton.py``): the mixed inputs of the projections are never written (``VRWKV_FUSED_MIX=1``
  lets the models use it in inference, ``VRWKV_FUSED_MIX_TRAIN=1`` in training, where its backward recomputes them).
* :func:`mix_linear_group` - several such projections of one x in one launch (``mix_group_triton.py``): x is read
  from DRAM once for all of them (the models' key / value / receptance / gate with ``VRWKV_FUSED_MIX=1``).
* :func:`mix_mlp` - the channel mix's key-value MLP (``relu(K mix(x))^2`` then V) in one kernel whose 4C-wide hidden
  never leaves the SM (``mix_mlp_triton.py``; inference with ``VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1``, narrow
  models).
* :func:`group_norm_mul_linear` - the VRWKV6 output projection with ``group_norm_mul`` formed in its operand load
  (``norm_linear_triton.py``; also inference with ``VRWKV_FUSED_MIX=1``).
* :func:`group_norm_mul` - per-token GroupNorm times a (SiLU) gate; :func:`decay_logd` - ``-exp(w0 + z)``.
* :func:`add_norm` - residual + LayerNorm (+ layer scale) of a block, post- or pre-norm.
* :func:`mixer_steps` - whole token / channel mixers, with their block's residual add + LayerNorm, as one step each
  (``mixer_steps_triton.py``: one autograd node in eager training, one call without the per-op wrappers in eager
  inference; the same kernels with far less host work per launch; ``VRWKV_FUSED_STEP=0`` switches back to op by
  op).

``backend=None`` picks Triton for CUDA tensors (when triton imports) and the reference otherwise; the environment
variable ``VRWKV_BACKEND=reference|triton`` forces one (as for the WKV ops). :func:`fused_enabled` is the switch the
models use: True only for CUDA tensors on the Triton backend, so CPU runs are exactly the plain-PyTorch models;
``VRWKV_FUSED=0`` turns the models' fused path off everywhere (the WKV operators keep their own dispatch).
``VRWKV_FUSED_GEMM=1`` additionally lets the fused path run the channel-mix key and the receptance projections (and
the RWKV-6 LoRA products, with tanh / the log decay) as Triton GEMMs with their activation in the epilogue (off by
default until timed against cuBLAS + the elementwise kernels on a GPU: ``benchmarks/device_run6.sh``).
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .._triton_utils import (as_dtype, autograd_needed, backend_arg, check_cpu_kernels, check_split, cpu_triton,
                             env_backend, env_flag, split_outputs)
from .._validate import check_shape, check_tensors
from .reference import (MIX_ACTS, add_norm_reference, decay_logd_reference, group_norm_mul_linear_reference,
                        group_norm_mul_reference, linear_decay_reference, linear_relu_square_reference,
                        linear_sigmoid_mul_reference, linear_tanh_reference, lora_mlp_reference,
                        mix_linear_group_reference,
                        mix_linear_reference, mix_mlp_reference, relu_square_reference, sigmoid_mul_reference,
                        token_shift_mix_reference)

__all__ = ["token_shift_mix", "token_shift_mix_lora", "shift_lerp", "sigmoid_mul", "relu_square", "group_norm_mul",
           "decay_logd", "add_norm", "linear_relu_square", "linear_sigmoid_mul", "linear_tanh", "linear_decay",
           "lora_mlp",
           "mix_linear", "mix_linear_group", "mix_mlp", "group_norm_mul_linear", "linear_add_norm", "fused_enabled",
           "fused_gemm_enabled", "fused_mix_enabled", "fused_mix_train_enabled", "fused_mlp_enabled",
           "fused_step_enabled", "mixer_steps", "kernel_device", "triton_active", "compute_dtype", "ResidualNorm",
           "FUSED_UNDER_COMPILE"]

# When a model is traced by torch.compile, use the fused custom ops (True) or hand the plain-PyTorch code to
# inductor, which then generates its own fused kernels (False). Read at trace time.
FUSED_UNDER_COMPILE = True

# ``split`` of the mixing ops: False (one (M, B, N, C) tensor), True (M tensors) or group sizes summing to M
Split = Union[bool, Tuple[int, ...]]

_triton_mod = None
_gemm_mods: dict = {}  # GEMM-kernel module name -> module, filled on first use


def _triton():
    """The Triton module, or the exception its import raised."""
    global _triton_mod
    if _triton_mod is None:
        try:
            _triton_mod = importlib.import_module("vision_rwkv.ops.fused.triton")
        except Exception as e:  # missing triton, no GPU toolchain, ...
            _triton_mod = e
    return _triton_mod


def _gemm_module(name: str):
    """A GEMM-kernel module of this package (``linear_triton``, ``mix_linear_triton``, ...), imported on first use
    (each imports kernels of the modules ``triton.py`` gathers, whose import :func:`_triton_ok` checks first)."""
    mod = _gemm_mods.get(name)
    if mod is None:
        mod = _gemm_mods[name] = importlib.import_module(f"vision_rwkv.ops.fused.{name}")
    return mod


def _linear():
    return _gemm_module("linear_triton")


def _mix():
    return _gemm_module("mix_linear_triton")


def _norm_linear():
    return _gemm_module("norm_linear_triton")


def _mlp():
    return _gemm_module("mix_mlp_triton")


def _triton_ok() -> bool:
    """Whether the Triton module imports (eager calls after the first one only read the cached import result).

    While torch.compile traces, the cached global must not be read before :func:`_triton_ok_traced` has imported
    the modules: dynamo keeps the first value it reads of a global for the whole trace, so a model whose first call
    is compiled would see ``None`` and trace ``importlib.import_module`` (a graph break; an error with
    ``fullgraph=True``)."""
    if not _is_compiling() and _triton_mod is not None:
        return not isinstance(_triton_mod, BaseException)
    return _triton_ok_traced()


@torch.compiler.assume_constant_result
def _triton_ok_traced() -> bool:
    """Whether the Triton module imports. Run eagerly even while torch.compile traces (the import would otherwise
    break the graph); it also loads the WKV operators' Triton modules into their dispatcher's cache, so a model's
    first call may be a compiled one."""
    mod = _triton()
    try:
        from ..dispatch import triton_available

        for op in ("bi_wkv", "bi_wkv6"):
            triton_available(op)
        if not isinstance(mod, BaseException):
            _linear()  # the GEMM-epilogue modules too (VRWKV_FUSED_GEMM=1, VRWKV_FUSED_MIX=1)
            _mix()
            _gemm_module("mix_group_triton")
            _norm_linear()
            _mlp()
            _gemm_module("lora_triton")  # (the decay LoRA's kernels, which the per-op path runs)
    except Exception:  # the WKV dispatcher / the GEMM ops report their own errors when used
        pass
    return not isinstance(mod, BaseException)


def _resolve(op: str, device: torch.device, backend: Optional[str]) -> str:
    backend = backend_arg(op, backend)
    if backend is None:
        env = env_backend()
        if env == "reference":
            return "reference"
        if device.type == "cuda":
            return "triton" if _triton_ok() else "reference"
        if env == "triton" and cpu_triton() and _triton_ok():
            check_cpu_kernels(op)
            return "triton"
        return "reference"
    if backend == "triton":
        if device.type != "cuda" and not cpu_triton():
            raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors (got {device.type}); set "
                               "TRITON_INTERPRET=1 to run the Triton kernels on CPU in the interpreter")
        if not _triton_ok():
            mod = _triton()
            raise RuntimeError(f"{op}: the Triton backend is not available ({type(mod).__name__}: {mod}); "
                               "use backend='reference'") from mod
        if device.type != "cuda":
            check_cpu_kernels(op)
    return backend


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def fused_enabled(x: torch.Tensor) -> bool:
    """Whether the models should take their fused path for activations ``x``: CUDA tensors whose backend resolves
    to Triton (and, while torch.compile traces, only if :data:`FUSED_UNDER_COMPILE`). CPU tensors only with
    ``TRITON_INTERPRET=1`` and ``VRWKV_BACKEND=triton`` (tests). Never for a torch.fx Proxy: a symbolic trace records
    the plain model around leaf blocks, which choose their path when the graph runs."""
    if isinstance(x, torch.fx.Proxy) or not env_flag("VRWKV_FUSED", True):
        return False  # the plain path on any device (before/after profiles and benchmarks)
    if not kernel_device(x):
        return False  # CPU: the plain-PyTorch model (tests force the interpreted kernels with both variables)
    if _is_compiling() and not FUSED_UNDER_COMPILE:
        return False
    return triton_active(x)


def kernel_device(x: torch.Tensor) -> bool:
    """Whether ``x``'s device is one the GPU path's kernels run on: CUDA, or the CPU with ``TRITON_INTERPRET=1`` and
    ``VRWKV_BACKEND=triton`` (the interpreter standing in for a GPU in tests)."""
    return x.device.type == "cuda" or (cpu_triton() and env_backend() == "triton")


def triton_active(x: torch.Tensor) -> bool:
    """Whether the fused ops resolve to their Triton kernels for tensors on ``x``'s device (auto dispatch or
    ``VRWKV_BACKEND``): what code calling the kernels directly (:func:`mixer_steps`) checks first."""
    return _resolve("fused", x.device, None) == "triton"


def fused_gemm_enabled() -> bool:
    """Whether the fused path also runs projections with their activation in the GEMM epilogue
    (``VRWKV_FUSED_GEMM=1``; off by default) - in inference and on the per-op training path: eager training's one-node
    mixers (:func:`mixer_steps`) keep the cuBLAS GEMMs."""
    return env_flag("VRWKV_FUSED_GEMM", False)


def fused_mix_enabled() -> bool:
    """Whether the fused path computes the Q-Shift interpolations inside the projections' GEMMs (:func:`mix_linear`)
    in inference (``VRWKV_FUSED_MIX=1``; off by default until timed on a GPU)."""
    return env_flag("VRWKV_FUSED_MIX", False)


def fused_mix_train_enabled() -> bool:
    """Whether the models also take the mixed-operand GEMMs of :func:`fused_mix_enabled` in training
    (``VRWKV_FUSED_MIX_TRAIN=1``; off by default): their backward recomputes the mixed inputs (with
    ``VRWKV_FUSED_MLP=1`` also the channel mix's hidden) instead of storing them - less activation memory, a few
    more FLOPs in the backward."""
    return env_flag("VRWKV_FUSED_MIX_TRAIN", False)


def fused_step_enabled() -> bool:
    """Whether eager runs each fused mixer as one step (:mod:`.mixer_steps_triton`: in training ONE autograd node, in
    inference one call without the per-op wrappers; the same kernels, a fraction of the host work per launch;
    ``VRWKV_FUSED_STEP``, on by default, ``0`` = op by op)."""
    return env_flag("VRWKV_FUSED_STEP", True)


def mixer_steps():
    """The module of the one-step mixers (:mod:`vision_rwkv.ops.fused.mixer_steps_triton`), imported on first use."""
    return _gemm_module("mixer_steps_triton")


def fused_mlp_enabled() -> bool:
    """Whether the fused inference path (:func:`fused_mix_enabled`) also runs the channel mix's key-value MLP in one
    kernel (:func:`mix_mlp`; ``VRWKV_FUSED_MLP=1``, its own switch: less DRAM traffic, more L2 traffic)."""
    return env_flag("VRWKV_FUSED_MLP", False)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the next matmul computes in: the autocast dtype of x's device when autocast is on, else x's."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _check_grid(op: str, x: torch.Tensor, grid_size: Tuple[int, int], head_size: Optional[int]) -> None:
    if x.dim() != 3:
        raise ValueError(f"{op}: expected x of shape (B, N, C), got {tuple(x.shape)}")
    if len(grid_size) != 2 or int(grid_size[0]) * int(grid_size[1]) != x.shape[1] or min(grid_size) < 1:
        raise ValueError(f"{op}: grid_size {tuple(grid_size)} does not match the {x.shape[1]} tokens of x")
    if head_size is not None and (int(head_size) < 1 or x.shape[2] % int(head_size)):
        raise ValueError(f"{op}: channels C={x.shape[2]} are not a multiple of head_size={head_size}")


MAX_WEIGHT_VECTORS = 5  # interpolation vectors the Triton kernels read as separate tensors (more are stacked)


def _mix_weights(op: str, a, tensors: dict) -> Tuple[object, int]:
    """The interpolation weights ``a`` of a mixing op - an (M, C) tensor or a sequence of M vectors of C elements
    (any shape, e.g. the (1, 1, C) parameters) - added to ``tensors`` (for the dtype / device check). Returns (the
    tensor or the tuple of vectors, M)."""
    if isinstance(a, torch.Tensor):
        tensors["a"] = a
        return a, a.shape[0]
    vectors = tuple(a)
    if not 1 <= len(vectors) <= 8:
        raise ValueError(f"{op}: a must be an (M, C) tensor or 1..8 vectors, got {len(vectors)} vectors")
    for i, v in enumerate(vectors):
        tensors[f"a[{i}]"] = v
    return vectors, len(vectors)


def _weight_vectors(op: str, a, c: int):
    """After the tensor checks: each vector of ``a`` has C elements; what the Triton path takes (the (M, C) tensor,
    a tuple of <= MAX_WEIGHT_VECTORS vectors, or the stack of more)."""
    if isinstance(a, torch.Tensor):
        return a
    for i, v in enumerate(a):
        if v.numel() != c:
            raise ValueError(f"{op}: a[{i}] has {v.numel()} elements {tuple(v.shape)}; expected C={c}")
    return _stack_weights(a) if len(a) > MAX_WEIGHT_VECTORS else a


def _stack_weights(a) -> torch.Tensor:
    """(M, C) interpolation weights from :func:`_mix_weights`' result (the reference paths take a matrix)."""
    return a if isinstance(a, torch.Tensor) else torch.stack([v.reshape(-1) for v in a])


def token_shift_mix(x: torch.Tensor, grid_size: Tuple[int, int], a, m: Optional[torch.Tensor] = None,
                    head_size: Optional[int] = None, out_dtype: Optional[torch.dtype] = None,
                    backend: Optional[str] = None, one_minus: bool = False, split: Split = False):
    """``out[i] = x + (q_shift(x, grid_size, head_size) - x) * (a[i] + m[i])`` for i < M, in one pass.

    Args:
        x: (B, N, C) tokens, row-major on grid_size = (H, W).
        a: (M, C) weights of the shifted token (M = 1..8), or a sequence of M vectors of C elements each (e.g.
            the model's (1, 1, C) parameters: the Triton kernels read up to 5 of them where they are, no stack).
        m: optional (M, B, N, C) data-dependent offsets (RWKV-6 ddlerp).
        head_size: None = v4 whole-channel quarters; an int = quarters inside every head (v6).
        out_dtype: dtype of the result (default x's; the models pass the autocast dtype).
        backend: None (auto), 'reference' or 'triton'.
        one_minus: ``a`` holds the weights of the UNshifted token (the v4 ``mu``): ``1 - a`` is used, computed in
            the kernel (no separate launch).
        split: ``True``: a tuple of the M (B, N, C) mixed inputs instead (what a caller unpacking them wants: in
            training their gradients then reach the backward kernel without being stacked into one tensor); a tuple
            of group sizes summing to M: consecutive groups, a group of one as a (B, N, C) tensor, a larger one as
            an (n, B, N, C) view (e.g. ``(2, 1)``: two inputs for one batched GEMM, one for another projection).
    Returns:
        (M, B, N, C) tensor (or its parts, see ``split``); ``out[i]`` is contiguous.
    """
    op = "token_shift_mix"
    tensors = dict(x=x) if m is None else dict(x=x, m=m)
    a, nmix = _mix_weights(op, a, tensors)
    device = check_tensors(op, **tensors)
    _check_grid(op, x, grid_size, head_size)
    a = _weight_vectors(op, a, x.shape[2])
    if isinstance(a, torch.Tensor) and (a.dim() != 2 or a.shape[1] != x.shape[2] or not 1 <= nmix <= 8):
        raise ValueError(f"{op}: a must be (M, C) with C={x.shape[2]} and 1 <= M <= 8, got {tuple(a.shape)}")
    if m is not None:
        check_shape(op, "m", m, (nmix,) + tuple(x.shape))
    check_split(op, split, nmix)
    if _resolve(op, device, backend) == "triton" and x.dtype != torch.float64:
        return _triton().token_shift_mix_triton(x, grid_size, a, m, head_size, out_dtype, one_minus, split)
    a = _stack_weights(a)
    out = token_shift_mix_reference(x, grid_size, 1 - a if one_minus else a, m, head_size, out_dtype)
    return split_outputs(out, split)


def token_shift_mix_lora(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor, h: torch.Tensor,
                         w2: torch.Tensor, head_size: Optional[int] = None, out_dtype: Optional[torch.dtype] = None,
                         backend: Optional[str] = None, split: Split = False):
    """:func:`token_shift_mix` with ``m[i] = h[..., i*R:(i+1)*R] @ w2[i]`` (the RWKV-6 ddlerp LoRA).

    Args:
        x: (B, N, C) tokens; a: (M, C) or M vectors (see :func:`token_shift_mix`); h: (B, N, M*R) LoRA hidden
            (``tanh(xxx @ W1)``); w2: (M, R, C).
        split: the M mixed inputs as separate tensors or groups instead of one tensor (see
            :func:`token_shift_mix`).
    Returns:
        (M, B, N, C) in ``out_dtype`` (or its parts, see ``split``). The Triton kernel computes m per tile (R a
        power of two >= 16), the reference materialises it with one bmm (in h's dtype, as under autocast).
    """
    op = "token_shift_mix_lora"
    tensors = dict(x=x, h=h, w2=w2)
    a, nmix_a = _mix_weights(op, a, tensors)
    device = check_tensors(op, **tensors)
    _check_grid(op, x, grid_size, head_size)
    a = _weight_vectors(op, a, x.shape[2])
    a_shape = tuple(a.shape) if isinstance(a, torch.Tensor) else (nmix_a, x.shape[2])
    if w2.dim() != 3 or w2.shape[2] != x.shape[2] or a_shape != (w2.shape[0], x.shape[2]):
        raise ValueError(f"{op}: w2 must be (M, R, C) and a (M, C) with C={x.shape[2]}, got {tuple(w2.shape)} and "
                         f"{a_shape}")
    nmix, rank = w2.shape[0], w2.shape[1]
    check_shape(op, "h", h, tuple(x.shape[:2]) + (nmix * rank,))
    check_split(op, split, nmix)
    pow2 = rank >= 16 and rank & (rank - 1) == 0
    if _resolve(op, device, backend) == "triton" and x.dtype != torch.float64 and pow2:
        return _triton().token_shift_mix_lora_triton(x, grid_size, a, h, w2, head_size, out_dtype, split)
    m = torch.bmm(h.reshape(-1, nmix, rank).transpose(0, 1), w2.to(h.dtype)).view((nmix,) + tuple(x.shape))
    out = token_shift_mix_reference(x, grid_size, _stack_weights(a), m, head_size, out_dtype)
    return split_outputs(out, split)


def shift_lerp(x: torch.Tensor, grid_size: Tuple[int, int], mix: torch.Tensor, head_size: Optional[int] = None,
               out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None, split: Split = False):
    """``out[i] = x * mix[i] + q_shift(x) * (1 - mix[i])`` (mix weights the unshifted token), (M, B, N, C)
    (or its parts, see ``split`` of :func:`token_shift_mix`)."""
    return token_shift_mix(x, grid_size, mix, None, head_size, out_dtype, backend, one_minus=True, split=split)


def sigmoid_mul(r: torch.Tensor, y: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``sigmoid(r) * y`` (same shapes), fp32 math, result in ``result_type(r, y)``."""
    op = "sigmoid_mul"
    device = check_tensors(op, r=r, y=y)
    check_shape(op, "y", y, tuple(r.shape))
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (r.dtype, y.dtype):
        return _triton().sigmoid_mul_triton(r, y)
    return sigmoid_mul_reference(r, y)


def relu_square(x: torch.Tensor, backend: Optional[str] = None, inplace: bool = False) -> torch.Tensor:
    """``relu(x) ** 2`` in x's dtype. ``inplace=True`` lets the Triton path write the result over x (a temporary
    such as a Linear output; its backward then works from the output) - the reference stays out of place."""
    op = "relu_square"
    device = check_tensors(op, x=x)
    if _resolve(op, device, backend) == "triton" and x.dtype != torch.float64:
        return _triton().relu_square_inplace_triton(x) if inplace else _triton().relu_square_triton(x)
    return relu_square_reference(x)


def _check_linear(op: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() < 1 or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: weight must be (N, K) with K = x.shape[-1] = {x.shape[-1] if x.dim() else None}, "
                         f"got {tuple(weight.shape)}")


def _operands(x: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """x and weight in the dtype the GEMM computes in (what autocast would give F.linear), and that dtype."""
    dtype = compute_dtype(x)
    return as_dtype(x, dtype), as_dtype(weight, dtype), dtype


def _linear_activation(op: str, x: torch.Tensor, weight: torch.Tensor, backend: Optional[str], reference):
    """``act(x @ weight^T)`` by the GEMM-epilogue kernel ``<op>_triton`` or ``reference``: checked, operands in the
    compute dtype."""
    device = check_tensors(op, x=x, weight=weight)
    _check_linear(op, x, weight)
    x, weight, dtype = _operands(x, weight)
    if _resolve(op, device, backend) == "triton" and dtype != torch.float64:
        return getattr(_linear(), f"{op}_triton")(x, weight)
    return reference(x, weight)


def linear_relu_square(x: torch.Tensor, weight: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``relu(x @ weight^T) ** 2`` (a bias-free ``nn.Linear`` and the channel-mix squared ReLU) in one GEMM.

    x: (..., K); weight: (N, K). Computes in :func:`compute_dtype` of x (both operands cast to the autocast dtype
    under autocast, as ``F.linear`` would); returns (..., N) in that dtype, differentiable in x and weight.
    """
    return _linear_activation("linear_relu_square", x, weight, backend, linear_relu_square_reference)


def linear_sigmoid_mul(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                       backend: Optional[str] = None) -> torch.Tensor:
    """``sigmoid(x @ weight^T) * y`` (a bias-free receptance projection and its gate) in one GEMM.

    x: (..., K); weight: (N, K); y: (..., N). The GEMM computes in :func:`compute_dtype` of x; the result has
    ``result_type(x, y)`` (x in that dtype), differentiable in x, weight and y.
    """
    op = "linear_sigmoid_mul"
    device = check_tensors(op, x=x, weight=weight, y=y)
    _check_linear(op, x, weight)
    check_shape(op, "y", y, tuple(x.shape[:-1]) + (weight.shape[0],))
    x, weight, dtype = _operands(x, weight)
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (dtype, y.dtype):
        return _linear().linear_sigmoid_mul_triton(x, weight, y)
    return linear_sigmoid_mul_reference(x, weight, y)


def linear_tanh(x: torch.Tensor, weight: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``tanh(x @ weight^T)`` in one GEMM (the first stage of an RWKV-6 LoRA: pass ``w1.t()`` for ``x @ w1``; any
    strides, no copy). Computes in :func:`compute_dtype` of x; returns (..., N) in that dtype, differentiable in x
    and weight."""
    return _linear_activation("linear_tanh", x, weight, backend, linear_tanh_reference)


def linear_decay(x: torch.Tensor, weight: torch.Tensor, w0: torch.Tensor,
                 backend: Optional[str] = None) -> torch.Tensor:
    """``-exp(w0 + x @ weight^T)`` in float32 in one GEMM (the RWKV-6 log decay from its LoRA: pass ``w2.t()`` for
    ``x @ w2``). x: (..., K); weight: (N, K), any strides; w0: (N,). The product computes in :func:`compute_dtype`
    of x and is not rounded before the decay; differentiable in x, weight and w0."""
    op = "linear_decay"
    device = check_tensors(op, x=x, weight=weight, w0=w0)
    _check_linear(op, x, weight)
    check_shape(op, "w0", w0, (weight.shape[0],))
    x, weight, dtype = _operands(x, weight)
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (dtype, w0.dtype):
        return _linear().linear_decay_triton(x, weight, w0)
    return linear_decay_reference(x, weight, w0)


class ResidualNorm(NamedTuple):
    """A block's residual add + LayerNorm, to fuse into the op that makes its branch - the epilogue of the branch's
    last GEMM in inference, a mixer's one-node step in training (:func:`mixer_steps`): the op then returns
    ``add_norm(x, branch, gamma, weight, bias, eps, post, out_dtype, sample_scale=sample_scale)`` = ``(s, n)``
    instead of the branch (``n`` None for post-norm). ``sample_scale``: drop path's (B,) factor (see
    :func:`add_norm`); the GEMM epilogues do not take one (:meth:`fusable`)."""

    x: torch.Tensor
    gamma: Optional[torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-5
    post: bool = False
    out_dtype: Optional[torch.dtype] = None
    inplace: bool = False  # s written into x (eager inference; x must not be an operand of the op that takes it)
    sample_scale: Optional[torch.Tensor] = None

    def apply(self, branch: torch.Tensor, backend: Optional[str] = None):
        """``add_norm`` of this residual and ``branch`` (the unfused form)."""
        return add_norm(self.x, branch, self.gamma, self.weight, self.bias, self.eps, self.post, self.out_dtype,
                        backend, sample_scale=self.sample_scale, inplace=self.inplace)

    def check(self, op: str, shape: Tuple[int, ...]) -> None:
        check_tensors(op, **{k: v for k, v in dict(residual_x=self.x, residual_gamma=self.gamma,
                                                   residual_weight=self.weight, residual_bias=self.bias,
                                                   residual_sample_scale=self.sample_scale).items()
                             if v is not None})
        check_shape(op, "residual.x", self.x, shape)
        for name in ("gamma", "weight", "bias"):
            if getattr(self, name) is not None:
                check_shape(op, f"residual.{name}", getattr(self, name), (shape[-1],))
        if self.sample_scale is not None:
            check_shape(op, "residual.sample_scale", self.sample_scale, (shape[0],))

    def fusable(self, n: int, *tensors: Optional[torch.Tensor]) -> bool:
        """Whether a Triton epilogue can take it: no gradient needed (of these or the op's ``tensors``), rows of at
        most 512 channels (a program holds whole rows: wider ones spill registers on an H100), no float64, no
        drop path (``sample_scale``)."""
        all_tensors = (self.x, self.gamma, self.weight, self.bias) + tensors
        needs_grad = autograd_needed(all_tensors)
        return not needs_grad and n <= 512 and self.x.dtype != torch.float64 and self.sample_scale is None


def mix_linear(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor, weight: torch.Tensor,
               head_size: Optional[int] = None, h: Optional[torch.Tensor] = None, w2: Optional[torch.Tensor] = None,
               one_minus: bool = False, act: str = "none", y: Optional[torch.Tensor] = None,
               backend: Optional[str] = None, residual: Optional[ResidualNorm] = None):
    """One projection of a token / channel mix with its Q-Shift interpolation as the GEMM operand:
    ``act(mix @ weight^T)``, ``mix = x + (q_shift(x, grid_size, head_size) - x) * coef``.

    Args:
        x: (B, T, C) tokens, row-major on grid_size = (H, W).
        a: (C,) interpolation weights of the shifted token (``one_minus``: of the unshifted token, the v4 ``mu``).
        weight: (N, C) bias-free projection (any strides: ``w1.t()`` for a LoRA's ``x @ w1``).
        head_size: None = v4 whole-channel quarters; an int = quarters inside every head (v6).
        h, w2: optional RWKV-6 LoRA offset ``coef += h @ w2``: h (B, T, R) (a column slice of the LoRA hidden),
            w2 (R, C); R a power of two >= 16 on the Triton path.
        act: ``'none'``, ``'relu_square'``, ``'tanh'`` or ``'sigmoid_mul'`` (``sigmoid(.) * y``, y (B, T, N)).
        residual: optional :class:`ResidualNorm` (N = C): return the block's ``(s, n)`` instead of the projection,
            the residual add + LayerNorm in the GEMM's epilogue (inference; composed with :func:`add_norm` when a
            gradient is needed or N > 512).
    Returns:
        (B, T, N) in :func:`compute_dtype` of x (``sigmoid_mul``: promoted with y's dtype); differentiable in x, a,
        h, w2, weight and y. The Triton kernel forms the mixed input per tile while loading the GEMM operand (never
        stored); the reference writes it (in the compute dtype) and multiplies.
    """
    op = "mix_linear"
    tensors = dict(x=x, a=a, weight=weight, **{k: v for k, v in dict(h=h, w2=w2, y=y).items() if v is not None})
    device = check_tensors(op, **tensors)
    _check_grid(op, x, grid_size, head_size)
    if act not in MIX_ACTS:
        raise ValueError(f"{op}: act must be one of {MIX_ACTS}, got {act!r}")
    c = x.shape[2]
    check_shape(op, "a", a, (c,))
    _check_linear(op, x, weight)
    if (h is None) != (w2 is None):
        raise ValueError(f"{op}: pass both h and w2 (the LoRA offset) or neither")
    if h is not None:
        if w2.dim() != 2 or w2.shape[1] != c:
            raise ValueError(f"{op}: w2 must be (R, C) with C={c}, got {tuple(w2.shape)}")
        check_shape(op, "h", h, tuple(x.shape[:2]) + (w2.shape[0],))
    if (act == "sigmoid_mul") != (y is not None):
        raise ValueError(f"{op}: y is the gated tensor of act='sigmoid_mul' and only of it")
    if y is not None:
        check_shape(op, "y", y, tuple(x.shape[:2]) + (weight.shape[0],))
    if residual is not None:
        residual.check(op, tuple(x.shape[:2]) + (weight.shape[0],))
    dtype = compute_dtype(x)
    weight = as_dtype(weight, dtype)
    rank_ok = h is None or (w2.shape[0] >= 16 and w2.shape[0] & (w2.shape[0] - 1) == 0)
    triton_ok = (_resolve(op, device, backend) == "triton" and dtype != torch.float64 and x.dtype != torch.float64
                 and rank_ok)
    if residual is not None:
        if triton_ok and residual.fusable(weight.shape[0], x, a, h, w2, weight, y):
            r = residual
            return _mix().mix_linear_residual_triton(x, grid_size, a, weight, head_size, h, w2, one_minus, act, y,
                                                     r.x, r.gamma, r.weight, r.bias, r.eps, r.post,
                                                     r.out_dtype or r.x.dtype, inplace=r.inplace)
        return residual.apply(mix_linear(x, grid_size, a, weight, head_size, h, w2, one_minus, act, y, backend),
                              backend)
    if triton_ok:
        return _mix().mix_linear_triton(x, grid_size, a, weight, head_size, h, w2, one_minus, act, y)
    return mix_linear_reference(x, grid_size, a, weight, head_size, h, w2, one_minus, act, y)


def mix_linear_group(x: torch.Tensor, grid_size: Tuple[int, int], a, weights: Sequence[torch.Tensor],
                     head_size: Optional[int] = None, h: Optional[torch.Tensor] = None,
                     w2: Optional[torch.Tensor] = None, one_minus: bool = False,
                     backend: Optional[str] = None) -> Tuple[torch.Tensor, ...]:
    """P projections of one token mix, each :func:`mix_linear` with its own interpolation, in one launch:
    ``out[p] = mix_p @ weights[p]^T``, ``mix_p = x + (q_shift(x) - x) * coef_p``.

    The Triton kernel runs the P projections of an output tile side by side, so x and its shifted rows are read from
    DRAM once for all of them (the v4 key and value; the RWKV-6 key, value, receptance and gate); groups of more than
    4 take one launch per 4.

    Args:
        x: (B, T, C) tokens, row-major on grid_size = (H, W).
        a: the P interpolation weights, a (P, C) tensor or P (C,) vectors (``one_minus``: of the unshifted token,
            the v4 ``mu``).
        weights: P bias-free (N, C) projections (one N for all).
        head_size: None = v4 whole-channel quarters; an int = quarters inside every head (v6).
        h, w2: optional RWKV-6 LoRA offsets ``coef_p += h[..., pR:(p+1)R] @ w2[p]``: h (B, T, P * R) (a column
            slice of the LoRA hidden is fine), w2 (P, R, C); R a power of two >= 16 on the Triton path.
    Returns:
        A tuple of P (B, T, N) tensors in :func:`compute_dtype` of x; differentiable in x, a, h, w2 and the weights.
    """
    op = "mix_linear_group"
    weights, coefs = tuple(weights), tuple(a)
    if not weights:
        raise ValueError(f"{op}: weights is empty; pass one (N, C) weight per projection")
    lora = {k: v for k, v in dict(h=h, w2=w2).items() if v is not None}
    device = check_tensors(op, x=x, **{f"a[{i}]": c for i, c in enumerate(coefs)},
                           **{f"weights[{i}]": w for i, w in enumerate(weights)}, **lora)
    _check_grid(op, x, grid_size, head_size)
    P, c = len(weights), x.shape[2]
    if len(coefs) != P:
        raise ValueError(f"{op}: a has {len(coefs)} rows for {P} weights; pass one (C,) vector per projection")
    for i, (coef, w) in enumerate(zip(coefs, weights)):
        check_shape(op, f"a[{i}]", coef, (c,))
        _check_linear(f"{op}: weights[{i}]", x, w)
        if w.shape[0] != weights[0].shape[0]:
            raise ValueError(f"{op}: all weights must have one N; weights[0] is {tuple(weights[0].shape)}, "
                             f"weights[{i}] {tuple(w.shape)}")
    if (h is None) != (w2 is None):
        raise ValueError(f"{op}: pass both h and w2 (the LoRA offsets) or neither")
    if h is not None:
        if w2.dim() != 3 or w2.shape[0] != P or w2.shape[2] != c:
            raise ValueError(f"{op}: w2 must be (P, R, C) with P={P}, C={c}, got {tuple(w2.shape)}")
        check_shape(op, "h", h, tuple(x.shape[:2]) + (P * w2.shape[1],))
    dtype = compute_dtype(x)
    weights = tuple(as_dtype(w, dtype) for w in weights)
    rank = None if h is None else w2.shape[1]
    if (_resolve(op, device, backend) == "triton" and dtype != torch.float64 and x.dtype != torch.float64
            and (rank is None or (rank >= 16 and rank & (rank - 1) == 0))):
        mod, outs = _gemm_module("mix_group_triton"), ()
        for s in range(0, P, mod.MAX_GROUP):
            e = min(P, s + mod.MAX_GROUP)
            outs += tuple(mod.mix_linear_group_triton(
                x, grid_size, coefs[s:e], weights[s:e], head_size, None if h is None else h[..., s * rank:e * rank],
                None if w2 is None else w2[s:e], one_minus).unbind(0))
        return outs
    return mix_linear_group_reference(x, grid_size, torch.stack(coefs), weights, head_size, h, w2, one_minus)


def _check_group_norm(op: str, y: torch.Tensor, g: torch.Tensor, num_groups: int, weight: tuple, bias: tuple,
                      gate_act: Optional[str]) -> None:
    """Shapes of a GroupNorm * gate: g like y, C a multiple of num_groups, (name, tensor) weight and bias (C,), and
    the gate activation."""
    check_shape(op, "g", g, tuple(y.shape))
    c = y.shape[-1]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"{op}: C={c} is not a multiple of num_groups={num_groups}")
    for name, t in (weight, bias):
        check_shape(op, name, t, (c,))
    if gate_act not in (None, "silu"):
        raise ValueError(f"{op}: gate_act must be None or 'silu', got {gate_act!r}")


def group_norm_mul(y: torch.Tensor, g: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5, gate_act: Optional[str] = None, out_dtype: Optional[torch.dtype] = None,
                   backend: Optional[str] = None) -> torch.Tensor:
    """Per-token ``GroupNorm(num_groups, C)(y) * act(g)`` over the last dim C (act None or 'silu').

    y, g: (..., C); weight, bias: (C,). Result in ``out_dtype`` (default ``result_type(y, g)``).
    """
    op = "group_norm_mul"
    device = check_tensors(op, y=y, g=g, weight=weight, bias=bias)
    _check_group_norm(op, y, g, num_groups, ("weight", weight), ("bias", bias), gate_act)
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (y.dtype, g.dtype):
        return _triton().group_norm_mul_triton(y, g, num_groups, weight, bias, eps, gate_act, out_dtype)
    return group_norm_mul_reference(y, g, num_groups, weight, bias, eps, gate_act, out_dtype)


def linear_add_norm(x: torch.Tensor, weight: torch.Tensor, residual: ResidualNorm, backend: Optional[str] = None):
    """A bias-free projection and the block's residual add + LayerNorm in its epilogue: ``residual.apply(x @
    weight^T)`` = ``(s, n)`` (n None for post-norm) - the v4 token mix's output projection on the fused inference
    path. x: (B, T, K); weight: (N, K). The Triton kernel (whole rows per program) for N <= 512 without gradients;
    otherwise the projection and :func:`add_norm` (differentiable)."""
    op = "linear_add_norm"
    device = check_tensors(op, x=x, weight=weight)
    if x.dim() != 3:
        raise ValueError(f"{op}: expected x of shape (B, T, K), got {tuple(x.shape)}")
    _check_linear(op, x, weight)
    residual.check(op, tuple(x.shape[:2]) + (weight.shape[0],))
    dtype = compute_dtype(x)
    weight = as_dtype(weight, dtype)
    if (_resolve(op, device, backend) == "triton" and torch.float64 not in (x.dtype, dtype)
            and residual.fusable(weight.shape[0], x, weight)):
        r = residual
        xc = x.to(dtype).contiguous()
        return _mix().mix_linear_residual_triton(xc, (1, x.shape[1]), xc, weight, None, None, None, False, "none",
                                                 None, r.x, r.gamma, r.weight, r.bias, r.eps, r.post,
                                                 r.out_dtype or r.x.dtype, shift=False, inplace=r.inplace)
    return residual.apply(torch.nn.functional.linear(x, weight), backend)


def lora_mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``tanh(x @ w1) @ w2``, the RWKV-6 decay LoRA (``time_decay_w1``, ``time_decay_w2``), in one kernel each way.

    x: (..., K); w1: (K, R); w2: (R, N). Computes in :func:`compute_dtype` of x (the weights cast to it; the hidden
    rounded to it, as a stored product would be); returns (..., N) in that dtype, differentiable in x and both
    weights."""
    op = "lora_mlp"
    device = check_tensors(op, x=x, w1=w1, w2=w2)
    if x.dim() < 1 or w1.dim() != 2 or w2.dim() != 2 or w1.shape[0] != x.shape[-1] or w2.shape[0] != w1.shape[1]:
        raise ValueError(f"{op}: need x (..., K), w1 (K, R), w2 (R, N); got x {tuple(x.shape)}, w1 "
                         f"{tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    dtype = compute_dtype(x)
    x, w1, w2 = (as_dtype(t, dtype) for t in (x, w1, w2))
    if _resolve(op, device, backend) == "triton" and dtype != torch.float64:
        z = _gemm_module("lora_triton").lora_mlp_triton(x.reshape(-1, x.shape[-1]), w1, w2)
        return z.view(*x.shape[:-1], w2.shape[1])
    return lora_mlp_reference(x, w1, w2)


def mix_mlp(x: torch.Tensor, grid_size: Tuple[int, int], a: torch.Tensor, key_weight: torch.Tensor,
            value_weight: torch.Tensor, head_size: Optional[int] = None, one_minus: bool = False,
            backend: Optional[str] = None) -> torch.Tensor:
    """The channel mix's key-value MLP on its Q-Shift interpolation: ``relu(mix @ key_weight^T)^2 @ value_weight^T``
    with ``mix`` as in :func:`mix_linear` (``a`` (C,) of the shifted token, ``one_minus`` for the v4 ``mu``).

    x: (B, T, C); key_weight: (HID, C); value_weight: (C, HID). Returns (B, T, C) in :func:`compute_dtype` of x,
    differentiable in x, a and both weights. The Triton kernel keeps the HID-wide hidden on chip (never stored) for
    C up to ``mix_mlp_triton.CONFIG["max_c"]`` (256); wider models run :func:`mix_linear` (relu^2 epilogue) and
    the value GEMM.
    """
    op = "mix_mlp"
    device = check_tensors(op, x=x, a=a, key_weight=key_weight, value_weight=value_weight)
    _check_grid(op, x, grid_size, head_size)
    c = x.shape[2]
    check_shape(op, "a", a, (c,))
    _check_linear(op, x, key_weight)
    if value_weight.dim() != 2 or tuple(value_weight.shape) != (c, key_weight.shape[0]):
        raise ValueError(f"{op}: value_weight must be (C, HID) = ({c}, {key_weight.shape[0]}), got "
                         f"{tuple(value_weight.shape)}")
    dtype = compute_dtype(x)
    wk = as_dtype(key_weight, dtype)
    wv = as_dtype(value_weight, dtype)
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (x.dtype, dtype):
        if c <= _mlp().CONFIG["max_c"]:
            return _mlp().mix_mlp_triton(x, grid_size, a, wk, wv, head_size, one_minus)
        hidden = mix_linear(x, grid_size, a, wk, head_size, one_minus=one_minus, act="relu_square", backend=backend)
        return torch.nn.functional.linear(hidden, wv)
    return mix_mlp_reference(x, grid_size, a, wk, wv, head_size, one_minus)


def group_norm_mul_linear(y: torch.Tensor, g: torch.Tensor, num_groups: int, gn_weight: torch.Tensor,
                          gn_bias: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                          gate_act: Optional[str] = None, backend: Optional[str] = None,
                          residual: Optional[ResidualNorm] = None):
    """``(GroupNorm(num_groups)(y) * act(g)) @ weight^T`` per token: the RWKV-6 ``output(ln_x(y) * silu(gate))``.

    y, g: (..., C); gn_weight, gn_bias: (C,); weight: (N, C) bias-free projection; gate_act None or 'silu'.
    Returns (..., N) in :func:`compute_dtype` of y, differentiable in y, g, gn_weight, gn_bias and weight. The Triton
    kernel normalises and gates each head's tile while loading the GEMM operand (the gated tensor is never stored;
    head size C / num_groups a power of two >= 16, else the ``group_norm_mul`` pass and the projection).
    ``residual`` (:class:`ResidualNorm`, N = C): return the block's ``(s, n)`` instead, the residual add + LayerNorm in
    the epilogue (inference; composed with :func:`add_norm` when a gradient is needed).
    """
    op = "group_norm_mul_linear"
    device = check_tensors(op, y=y, g=g, gn_weight=gn_weight, gn_bias=gn_bias, weight=weight)
    _check_group_norm(op, y, g, num_groups, ("gn_weight", gn_weight), ("gn_bias", gn_bias), gate_act)
    _check_linear(op, y, weight)
    c = y.shape[-1]
    if residual is not None:
        residual.check(op, tuple(y.shape[:-1]) + (weight.shape[0],))
    dtype = compute_dtype(y)
    weight = as_dtype(weight, dtype)
    hs = c // num_groups
    kernel_ok = (_resolve(op, device, backend) == "triton" and torch.float64 not in (y.dtype, g.dtype, dtype)
                 and hs >= 16 and hs & (hs - 1) == 0)
    if residual is not None:
        r = residual
        if kernel_ok and r.fusable(weight.shape[0], y, g, gn_weight, gn_bias, weight):
            return _norm_linear().group_norm_mul_linear_residual_triton(
                y, g, num_groups, gn_weight, gn_bias, eps, gate_act, weight, r.x, r.gamma, r.weight, r.bias, r.eps,
                r.post, r.out_dtype or r.x.dtype, inplace=r.inplace)
        return r.apply(group_norm_mul_linear(y, g, num_groups, gn_weight, gn_bias, weight, eps, gate_act, backend),
                       backend)
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (y.dtype, g.dtype, dtype):
        if kernel_ok:
            return _norm_linear().group_norm_mul_linear_triton(y, g, num_groups, gn_weight, gn_bias, eps, gate_act,
                                                               weight)
        gated = group_norm_mul(y, g, num_groups, gn_weight, gn_bias, eps, gate_act, dtype, backend)
        return torch.nn.functional.linear(gated, weight)
    return group_norm_mul_linear_reference(y, g, num_groups, gn_weight, gn_bias, eps, gate_act, weight)


def decay_logd(w0: torch.Tensor, z: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """``-exp(w0 + z)`` in float32: w0 (C,) broadcast over z (..., C) (the VRWKV6 per-token log decay)."""
    op = "decay_logd"
    device = check_tensors(op, w0=w0, z=z)
    check_shape(op, "w0", w0, (z.shape[-1],))
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (w0.dtype, z.dtype):
        return _triton().decay_logd_triton(w0, z)
    return decay_logd_reference(w0, z)


def add_norm(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
             bias: torch.Tensor, eps: float = 1e-5, post: bool = False, out_dtype: Optional[torch.dtype] = None,
             backend: Optional[str] = None, sample_scale: Optional[torch.Tensor] = None,
             inplace: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Residual + LayerNorm over the last dim C in one pass.

    post=True: ``s = x + gamma * LN(y)`` -> ``(s, None)`` (post-norm block).
    post=False: ``s = x + gamma * y``, ``n = LN(s)`` -> ``(s, n)`` (pre-norm block; n in ``out_dtype``).
    x, y: (..., C) (s keeps x's dtype: the residual stream); gamma: (C,) layer scale or None; weight, bias: (C,).
    sample_scale: optional (B,) per-sample factor of the branch for x of shape (B, ..., C) - drop path's
    ``mask / keep_prob`` (see :func:`vision_rwkv.models.mixing.drop_path_scale`); not differentiated.
    inplace: write s into x (contiguous; eager, without autograd recording): an inference chain that owns its
    residual stream keeps one buffer for it instead of a new one per add; s is then x.
    """
    op = "add_norm"
    if inplace:
        recording, compiling = autograd_needed((x, y, gamma, weight, bias)), torch.compiler.is_compiling()
        if recording or compiling or not x.is_contiguous():
            raise ValueError(f"{op}: inplace is for eager inference on a contiguous x (got contiguous="
                             f"{x.is_contiguous()}, autograd recording={recording}, compiling={compiling})")
    tensors = dict(x=x, y=y, weight=weight, bias=bias)
    if gamma is not None:
        tensors["gamma"] = gamma
    if sample_scale is not None:
        tensors["sample_scale"] = sample_scale
    device = check_tensors(op, **tensors)
    c = x.shape[-1]
    check_shape(op, "y", y, tuple(x.shape))
    for name in ("weight", "bias", "gamma"):
        if name in tensors:
            check_shape(op, name, tensors[name], (c,))
    if sample_scale is not None:
        if x.dim() < 2:
            raise ValueError(f"{op}: sample_scale needs x of shape (B, ..., C), got {tuple(x.shape)}")
        check_shape(op, "sample_scale", sample_scale, (x.shape[0],))
    if _resolve(op, device, backend) == "triton" and torch.float64 not in (x.dtype, y.dtype):
        s, n = _triton().add_norm_triton(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale, inplace)
        return s, (None if post else n)
    s, n = add_norm_reference(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale)
    return (x.copy_(s), n) if inplace else (s, n)
