"""The projections of the fused mixers and the values they derive from parameters.

* :func:`stackable` / :func:`linear_stack` - a token mix's M projections of one shape as one batched GEMM.
* :func:`plain_weights` / :func:`step_weights` - a mixer's weight matrices cast to the compute dtype in one launch
  (in training their gradients back in one), by name; eager inference keeps the casts (:func:`mix_gemm_weights`: the
  same for the mixed-operand inference paths).
* :func:`key_relu_square` / :func:`receptance_gate` - the fused path's ``relu(key(x))^2`` and
  ``sigmoid(receptance(x)) * y``: one GEMM with the activation in its epilogue when
  :func:`~vision_rwkv.ops.fused.fused_gemm_enabled`, else the Linear and one elementwise pass; likewise
  :func:`lora_tanh` / :func:`lora_decay` for the RWKV-6 LoRAs (tanh; the log decay).
* :func:`step_linear_weights` / :func:`step_matrices` - whether a fused mixer runs as one step
  (:func:`vision_rwkv.ops.fused.mixer_steps`: one autograd node in eager training, one call in eager inference), and
  (with the projections' weights, read once), and the step's cast matrices kept across inference forwards.
* :func:`mix_gemm_ready` - whether the Q-Shift interpolations ride in the projections' GEMMs (inference,
  ``VRWKV_FUSED_MIX=1``; training, ``VRWKV_FUSED_MIX_TRAIN=1``): the mixed inputs are then never written (in
  training: recomputed by the backward).
* :func:`derived_in_inference` / :func:`_fold` - values computed from parameters, kept across eager inference
  forwards while the parameters are unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.ops import fused
from vision_rwkv.ops.cast_weights import cast_weights
from vision_rwkv.ops.stacked_linear import stacked_linear

__all__ = ['step_linear_weights', 'step_matrices', 'stackable', 'linear_stack', 'plain_weights',
           'step_weights', 'mix_gemm_weights', 'key_relu_square', 'receptance_gate', 'lora_tanh', 'lora_decay',
           'mix_gemm_enabled', 'mix_gemm_ready', 'derived_in_inference']


def _plain_linear(linear: nn.Module) -> bool:
    """A projection a fused GEMM kernel may replace: a bias-free ``nn.Linear`` (exact type: wrappers such as LoRA
    layers keep their own forward) without hooks."""
    return (type(linear) is nn.Linear and linear.bias is None and not linear._forward_hooks
            and not linear._forward_pre_hooks)


def _epilogue_ready(linear: nn.Module) -> bool:
    """A plain projection, with the GEMM-epilogue kernels switched on."""
    return fused.fused_gemm_enabled() and _plain_linear(linear)


def mix_gemm_enabled() -> bool:
    """The switch of :func:`mix_gemm_ready`: ``VRWKV_FUSED_MIX=1`` in inference (no grad mode),
    ``VRWKV_FUSED_MIX_TRAIN=1`` in training. Mixers test it before reading their projections (each submodule read is
    an ``nn.Module.__getattr__``, ~0.6 us of host time per call)."""
    return fused.fused_mix_train_enabled() if torch.is_grad_enabled() else fused.fused_mix_enabled()


def mix_gemm_ready(*linears: nn.Module) -> bool:
    """Whether the fused path forms the Q-Shift interpolations inside the GEMMs of these projections
    (:func:`vision_rwkv.ops.fused.mix_linear`): plain projections, and switched on - in inference (no grad mode) by
    ``VRWKV_FUSED_MIX=1``, in training by ``VRWKV_FUSED_MIX_TRAIN=1`` (a memory saving: the ops' backward recomputes
    the mixed inputs instead of storing them; off by default, where storing them once is the faster choice)."""
    return mix_gemm_enabled() and all(_plain_linear(m) for m in linears)


def step_linear_weights(x: torch.Tensor, dtype: torch.dtype,
                        linears: Sequence[nn.Module]) -> Optional[Tuple[torch.Tensor, ...]]:
    """The weights of ``linears`` (each read once: the step takes them) if a fused mixer may run as one step
    (:func:`vision_rwkv.ops.fused.mixer_steps`) for activations ``x`` computing in ``dtype`` - in eager training ONE
    autograd node, in eager inference one call that launches its kernels without the per-op wrappers: not
    compiling, switched on (``VRWKV_FUSED_STEP``, the default), no float64, the fused ops on their Triton backend,
    and plain projections (:func:`_plain_linear`) whose weights share one dtype and device (one cast launch for all).
    Training: not the opt-in mixed-operand training GEMMs
    (``VRWKV_FUSED_MIX_TRAIN``, a memory saving the per-op path runs); the GEMM-epilogue kernels
    (``VRWKV_FUSED_GEMM``) do not stop it - the steps keep the cuBLAS GEMMs (eager training at 224 px is bound by
    host time, which the one node saves). Inference: not with ``VRWKV_FUSED_GEMM`` (its epilogue kernels are the
    point there; the per-op path runs them). None otherwise. The caller checks its own structure (Q-Shift, no key
    norm, ...)."""
    if torch.compiler.is_compiling() or not fused.fused_step_enabled() or torch.float64 in (x.dtype, dtype):
        return None
    if fused.fused_mix_train_enabled() if torch.is_grad_enabled() else fused.fused_gemm_enabled():
        return None
    if not fused.triton_active(x) or not all(_plain_linear(m) for m in linears):  # (the steps launch the kernels)
        return None
    weights = tuple(m.weight for m in linears)
    w0 = weights[0]
    return weights if all(w.dtype == w0.dtype and w.device == w0.device for w in weights) else None


# a fused mixer's request for its step matrices (``step_cast_request``): (weights, group sizes, tensors appended
# uncast) - the group outputs of :func:`~vision_rwkv.ops.cast_weights.cast_weight_groups`, then the tail, are the
# ``cast=`` of its forward
StepCastRequest = Tuple[Tuple[torch.Tensor, ...], Tuple[int, ...], Tuple[torch.Tensor, ...]]


def refuse_cast(module: nn.Module, cast) -> None:
    """For a mixer forward that does not run as one step: a RuntimeError if it was given ``cast=`` (matrices cast for
    a step, e.g. by the model's once-per-step cast, must not be dropped silently)."""
    if cast is not None:
        raise RuntimeError(f"{type(module).__name__}: cast= was given, but this forward does not run as one step "
                           f"(see step_cast_request)")


def step_matrices(module: nn.Module, weights: Tuple[torch.Tensor, ...], make: Callable[[], Any],
                  dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, ...]]:
    """A step's cast matrices in eager inference (``make()``, e.g. :func:`~vision_rwkv.ops.fused.mixer_steps_triton.
    time_mix6_matrices`), kept in ``module._folded`` while ``weights`` are unchanged (:func:`derived_in_inference`):
    no stack or cast launched per forward. None while autograd records (the step casts them itself, in its node)."""
    if torch.is_grad_enabled():
        return None
    return derived_in_inference(weights, module._folded, 'step_matrices', make, key=dtype)


def stackable(*linears: nn.Module) -> bool:
    """Whether one batched GEMM may run these projections (:func:`linear_stack`): plain bias-free ``nn.Linear``s
    without hooks (see :func:`_plain_linear`) with weights of one shape, dtype and device."""
    w0 = linears[0].weight
    return all(_plain_linear(m) and m.weight.shape == w0.shape and m.weight.dtype == w0.dtype
               and m.weight.device == w0.device for m in linears)


def linear_stack(linears: Sequence[nn.Linear], x: torch.Tensor, cache: Optional[dict] = None,
                 name: str = '', stacked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``stack([linears[i](x[i]) for i])`` as one batched GEMM (:func:`vision_rwkv.ops.stacked_linear`): x (M, ..., C)
    -> (M, ..., C_out). Fused path: the mixed inputs of a token mix come from one kernel as one (M, B, N, C) tensor,
    so k, v, r (v4) or k, v, r, g (v6) take one launch instead of M - and in training two backward GEMMs instead of
    2M. ``stacked``: the stacked weights in x's dtype, when the caller has them (:func:`step_weights`; gradients go
    to it). Else the weights are stacked and cast here, and with ``cache`` eager inference keeps that stack while the
    weights are unchanged (:func:`derived_in_inference`): no stack or cast per forward."""
    weights = tuple(lin.weight for lin in linears)
    if stacked is not None or cache is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return stacked_linear(x, weights, stacked=stacked)
    stacked = derived_in_inference(weights, cache, name, lambda: torch.stack(weights).to(x.dtype), key=x.dtype)
    return stacked_linear(x, weights, stacked=stacked)


def plain_weights(module: nn.Module, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``{name: module.<name>.weight}`` for the projections among ``names`` that are plain (bias-free ``nn.Linear``s
    without hooks, :func:`_plain_linear`): the ones a fused forward may run with a weight of its own
    (:func:`step_weights`); the others keep their forward."""
    return {n: getattr(module, n).weight for n in names if _plain_linear(getattr(module, n))}


def step_weights(dtype: torch.dtype, weights: Dict[str, torch.Tensor], stack: Sequence[str] = (),
                 cache: Optional[dict] = None, name: str = 'step_weights') -> Dict[str, torch.Tensor]:
    """A fused forward's weights in the compute dtype ``dtype``, cast in ONE launch by name
    (:func:`vision_rwkv.ops.cast_weights.cast_weights`; in training their gradients are cast back in one launch too)
    - instead of one autocast cast per weight each way. The names in ``stack`` (weights of one shape) come back as one
    stacked tensor under ``'stack'`` (for :func:`linear_stack`). Eager inference with ``cache`` keeps the casts while
    the weights are unchanged (:func:`derived_in_inference`): no cast per forward.

    Empty - the caller uses the parameters, cast by autocast where used - under torch.compile (Inductor fuses the
    casts), when the weights already are in ``dtype`` (no autocast, or a model cast to it), or not all of one dtype
    and device."""
    if not weights or torch.compiler.is_compiling():
        return {}
    names = list(stack) + [n for n in weights if n not in stack]
    tensors = tuple(weights[n] for n in names)
    w0 = tensors[0]
    if w0.dtype == dtype or any(w.dtype != w0.dtype or w.device != w0.device for w in tensors):
        return {}
    keys = (['stack'] if stack else []) + names[len(stack):]
    return derived_in_inference(tensors, cache, name,
                                lambda: dict(zip(keys, cast_weights(tensors, dtype, stack=len(stack)))), key=dtype)


def mix_gemm_weights(module: nn.Module, dtype: torch.dtype, linears: Sequence[str],
                     params: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """The weights of a mixer's mixed-operand (mix-GEMM) path by name - its plain projections among ``linears`` and
    the parameters ``params`` - cast to ``dtype`` by :func:`step_weights` and kept in ``module._folded`` across eager
    inference forwards (the path's Triton GEMMs would cast each weight per call). Empty while autograd records: in
    training these ops keep the parameters (their backward computes some weight gradients in fp32)."""
    if torch.is_grad_enabled():
        return {}
    weights = plain_weights(module, linears)
    weights.update((n, getattr(module, n)) for n in params)
    return step_weights(dtype, weights, cache=module._folded, name='mix_gemm_weights')


def _linear(linear: nn.Module, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``linear(x)``; with ``weight`` (a plain projection's weight from :func:`step_weights`) ``F.linear(x, weight)``."""
    return linear(x) if weight is None else F.linear(x, weight)


def key_relu_square(key: nn.Module, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused path: ``relu(key(x)) ** 2`` - one GEMM with the activation in its epilogue when allowed, else the
    Linear and an in-place relu^2 pass over its output. ``weight``: the key's weight from :func:`step_weights`."""
    if _epilogue_ready(key):
        return fused.linear_relu_square(x, key.weight if weight is None else weight)
    return fused.relu_square(_linear(key, x, weight), inplace=True)  # over the Linear output: one buffer, not two


def receptance_gate(receptance: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused path: ``sigmoid(receptance(x)) * y`` - one GEMM with the gate in its epilogue when allowed, else the
    Linear and one sigmoid-gate pass. ``weight``: the receptance's weight from :func:`step_weights`."""
    if _epilogue_ready(receptance):
        return fused.linear_sigmoid_mul(x, receptance.weight if weight is None else weight, y)
    return fused.sigmoid_mul(_linear(receptance, x, weight), y)


def lora_tanh(x: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """Fused path: ``tanh(x @ w1)``, the first stage of an RWKV-6 LoRA - one GEMM with the tanh in its epilogue when
    the fused GEMMs are on (``w1`` read through a transposed view, no copy), else the product and a tanh pass."""
    if fused.fused_gemm_enabled():
        return fused.linear_tanh(x, w1.t())
    return torch.tanh(x @ w1)


def lora_decay(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """Fused path: the RWKV-6 log decay ``-exp(w0 + tanh(x @ w1) @ w2)`` in float32 - with the fused GEMMs, two GEMMs
    with the tanh and the decay in their epilogues (the second product never stored), else the LoRA in one kernel
    (:func:`fused.lora_mlp`: its hidden never a pass of its own) and one decay pass."""
    if fused.fused_gemm_enabled():
        return fused.linear_decay(lora_tanh(x, w1), w2.t(), w0)
    return fused.decay_logd(w0, fused.lora_mlp(x, w1, w2))


def _capturing_graph() -> bool:
    """Whether the current CUDA stream is capturing a CUDA graph."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _keeps_derived(t: torch.Tensor) -> bool:
    """Whether values derived from ``t`` are kept: where the GPU path's kernels run (:func:`fused.kernel_device`), a
    launch costs more than recomputing; on the plain CPU path the stacks and divisions are a few microseconds against
    milliseconds of forward, so nothing there can go stale."""
    return fused.kernel_device(t)


def derived_in_inference(vectors: Tuple[torch.Tensor, ...], cache: Optional[dict], name: str,
                         make: Callable[[], Any], key: Any = None) -> Any:
    """``make()``, a value computed from the parameter tensors ``vectors`` only (and ``key``). With ``cache`` (a dict
    of the owning module) eager inference on a GPU keeps it under ``name`` while the vectors are unchanged (the same
    tensor objects, storages and version counters) and ``key`` is equal: no launch per forward. Writes through
    ``p.data`` bump no version counter: the owning mixer's ``train()`` / ``eval()`` forgets the kept values. With
    autograd recording, under torch.compile, on CPU (see :func:`_keeps_derived`), or while a CUDA graph is captured it
    is computed each call (in a graph: by the graph, so that its replays see later in-place updates of the
    parameters - as autocast turns its cast cache off there)."""
    if (cache is None or torch.is_grad_enabled() or not _keeps_derived(vectors[0])
            or torch.compiler.is_compiling() or _capturing_graph()):
        return make()
    state = (key,) + tuple((v.data_ptr(), v._version) for v in vectors)
    hit = cache.get(name)  # (the vectors themselves: held, so an identity check cannot match a recycled object)
    if hit is None or hit[1] != state or any(c is not v for c, v in zip(hit[0], vectors)):
        hit = cache[name] = (tuple(vectors), state, make())
    return hit[2]


def _fold(vectors: Tuple[torch.Tensor, ...], cache: Optional[dict] = None, name: str = ''):
    """Per-channel vectors stored (C,) or (1, 1, C) as the interpolation weights of the fused mixing ops: one vector
    as a (1, C) view; with autograd recording (eager training) the vectors themselves - the kernels read each where
    it is (no stack launched per step; each vector gets its gradient; more than the kernels take are stacked by the
    ops); else stacked into the (M, C) layout, and with ``cache`` kept across eager inference forwards
    (:func:`derived_in_inference`)."""
    if len(vectors) == 1:
        return vectors[0].reshape(1, -1)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return vectors
    return derived_in_inference(vectors, cache, name, lambda: torch.stack(vectors).reshape(len(vectors), -1))
