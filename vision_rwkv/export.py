"""Export models for deployment: ``torch.export`` programs (``.pt2``), ONNX files and AOTInductor packages, checked
against eager.

    import timm, torch, vision_rwkv
    from vision_rwkv.export import export_aoti, export_onnx, export_program, load_program, verify_program
    model = timm.create_model("vrwkv_tiny_patch16_224").eval()
    example = torch.randn(2, 3, 224, 224)
    program = export_program(model, example)              # batch dynamic in [1, 4096]
    torch.export.save(program, "vrwkv_tiny.pt2")
    verify_program(program, model, [torch.randn(5, 3, 224, 224)])
    load_program("vrwkv_tiny.pt2")(torch.randn(5, 3, 224, 224))  # its input checked first, in words
    export_onnx(model, example, "vrwkv_tiny.onnx")      # needs onnx + onnxscript (onnxruntime to verify)
    export_aoti(model, example, "vrwkv_tiny_aoti.pt2")  # AOTInductor: compiled, runs without the Python model

Any module whose forward takes one tensor and returns one works: the VRWKV / VRWKV6 classifiers and their
feature maps, the segmentors, the RWKV-CLIP towers (:class:`ImageEncoder`, :class:`TextEncoder`). The image size
is fixed by the example, unless ``export_program(..., dynamic_size=True)`` (or ``export_onnx``): then the reference
operators trace their shape-generic form (tokens padded to whole blocks / chunks, closed-form carries between them)
and one program takes every height and width in [2 p + 1, ``max_size``] (:func:`dynamic_size_range`; the VRWKV /
VRWKV6 classifiers and the RWKV-CLIP image towers). A segmentor's range starts where its coarsest pyramid level is
2 x 2 (33 px for patch 16); with the ViT-Adapter neck it takes multiples of 32 only (:func:`dynamic_size_step`). The
"original" v4 WKV mode's program takes chunks of at most 64 tokens (T <= 2048 with 32 chunks, 1024 with the
segmentation weights' 16): a larger ``max_size`` is a ValueError naming the largest it takes, and the program checks
it at run time; :func:`size_checks` gives the range's corners to verify. The batch may be dynamic. Export CPU
models: the program then holds the plain-PyTorch operators, which ONNX runtimes run on any device (a CUDA model's
Triton kernels are torch custom ops, which ONNX has no counterpart for; not checked on a device yet).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .exported_program import (INPUT_SPEC_KEY, CheckedAoti, CheckedOnnx, CheckedProgram, input_spec, load_aoti,
                               load_onnx, load_program)

__all__ = ["export_program", "export_onnx", "export_aoti", "verify_program", "verify_onnx", "verify_aoti",
           "max_abs_diff", "build_export_target", "dynamic_size_range", "dynamic_size_step", "size_checks",
           "ExportMismatchError", "ImageEncoder", "TextEncoder", "load_program", "CheckedProgram", "load_onnx",
           "CheckedOnnx", "load_aoti", "CheckedAoti", "staging_dir", "publish"]


class ExportMismatchError(RuntimeError):
    """An exported model fails its check against the eager model: its outputs differ beyond the tolerance, or the
    runtime cannot load or run it."""


class _ClipEncoder(nn.Module):
    """One of an RWKV-CLIP model's encoders (its method ``encode``) as a one-input module (for export)."""

    encode = ""

    def __init__(self, clip_model: nn.Module, normalize: bool = True):
        super().__init__()
        self.clip_model = clip_model
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.clip_model, self.encode)(x, normalize=self.normalize)


class ImageEncoder(_ClipEncoder):
    """``model.encode_image(images, normalize)`` of an RWKV-CLIP model as a one-input module (for export)."""

    encode = "encode_image"


class TextEncoder(_ClipEncoder):
    """``model.encode_text(tokens, normalize)`` of an RWKV-CLIP model as a one-input module (for export)."""

    encode = "encode_text"


@contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, its train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _size_rule(model: nn.Module) -> Optional[tuple[int, int]]:
    """A segmentor's (smallest side, side multiple) (``Segmentor.dynamic_size_rule``); None for other models."""
    rule = getattr(model, "dynamic_size_rule", None)
    return tuple(int(v) for v in rule()) if callable(rule) else None


def dynamic_size_step(model: nn.Module) -> int:
    """The multiple every image side of ``model``'s dynamic-size export must be: 32 for a segmentor with the
    ViT-Adapter neck, else 1 (any size)."""
    rule = _size_rule(model)
    return rule[1] if rule else 1


def dynamic_size_range(model: nn.Module, max_size: int = 1024) -> tuple[tuple[int, int], tuple[int, int]]:
    """The image sizes a ``dynamic_size`` export takes: ((min H, min W), (max H, max W)), the minimum 2 p + 1 for
    the patch size p of the model's (first) patch embedding - a token grid of at least 3 x 3 (the Q-Shift's
    shifted slices of a 2-wide grid would be a special case of the program) -, for a segmentor also every level of
    its feature pyramid at least 2 x 2, and the maximum ``max_size``; both multiples of
    :func:`dynamic_size_step`."""
    from vision_rwkv.models._layers import PatchEmbed

    embed = next((m for m in model.modules() if isinstance(m, PatchEmbed)), None)
    if embed is None:
        raise ValueError("export: a dynamic image size needs a vision-rwkv image model (one with a patch embedding)")
    rule = _size_rule(model)  # a segmentor's
    smallest, step = rule or (0, 1)
    low = tuple(-(-max(2 * int(p) + 1, smallest) // step) * step for p in embed.patch_size)
    high = int(max_size) // step * step
    if high < max(low):
        raise ValueError(f"export: max_size {max_size} is below the smallest image side of a dynamic-size program, "
                         f"{max(low)} ({'a 3 x 3 token grid' if rule is None else 'a 2 x 2 coarsest level'}"
                         f"{f', sides multiples of {step}' if step > 1 else ''})")
    _check_original_mode_limit(model, embed.patch_size, high, step, max(low))
    return low, (high, high)


def _check_original_mode_limit(model: nn.Module, patch: Sequence[int], high: int, step: int, low: int) -> None:
    """The "original" v4 WKV mode's program takes chunks of at most ORIGINAL_MAX_BLOCK tokens (chunks x 64 tokens):
    a largest square past that is a ValueError naming the largest side it takes."""
    from vision_rwkv.ops.bi_wkv.reference import ORIGINAL_MAX_BLOCK

    chunks = [m.wkv_chunks for m in model.modules() if getattr(m, "wkv_mode", None) == "original"]
    if not chunks:
        return
    limit = min(chunks) * ORIGINAL_MAX_BLOCK

    def tokens(side: int) -> int:
        return -(-side // int(patch[0])) * -(-side // int(patch[1]))

    if tokens(high) <= limit:
        return
    largest = next((s for s in range(high, low - 1, -step) if tokens(s) <= limit), None)
    raise ValueError(f"export: max_size {high} is past the \"original\" v4 WKV mode's program limit: at most "
                     f"{ORIGINAL_MAX_BLOCK} tokens per chunk, {limit} tokens with {min(chunks)} chunks; "
                     + (f"give a max_size of at most {largest}" if largest else "no dynamic size fits it") +
                     " (or the 'exact' mode, which has no limit)")


def _size_dims(model: nn.Module, example: torch.Tensor, max_size: int) -> dict:
    """``dynamic_shapes`` entries for a symbolic image height and width (dims 2 and 3) over
    :func:`dynamic_size_range` (multiples of :func:`dynamic_size_step`)."""
    if example.dim() != 4:
        raise ValueError(f"export: a dynamic image size needs (B, C, H, W) inputs, got {tuple(example.shape)}")
    low, high = dynamic_size_range(model, max_size)
    step = dynamic_size_step(model)
    dims = {}
    for axis, name in ((2, "height"), (3, "width")):
        lo, hi = low[axis - 2], high[axis - 2]
        if not lo <= example.shape[axis] <= hi:
            raise ValueError(f"export: a dynamic image size needs an example {name} in [{lo}, {hi}], got "
                             f"{example.shape[axis]}")
        if example.shape[axis] % step:
            raise ValueError(f"export: {type(model).__name__} takes image sides that are multiples of {step}; the "
                             f"example {name} is {example.shape[axis]}")
        dims[axis] = (torch.export.Dim(name, min=lo, max=hi) if step == 1 else
                      step * torch.export.Dim(f"{name}_{step}s", min=lo // step, max=hi // step))
    return dims


def size_checks(model: nn.Module, example: torch.Tensor, max_size: int = 1024) -> list[torch.Tensor]:
    """Batch-1 inputs at the corners of a dynamic-size program's range (:func:`dynamic_size_range`): smallest
    height with the largest width, the reverse, and the largest square - where a size-specialised program or one
    of the program's run-time guards would show."""
    (lo_h, lo_w), (hi_h, hi_w) = dynamic_size_range(model, max_size)
    channels = example.shape[1]
    return [torch.randn(1, channels, h, w, dtype=example.dtype, device=example.device)
            for h, w in ((lo_h, hi_w), (hi_h, lo_w), (hi_h, hi_w))]


def _export_args(example: torch.Tensor, dynamic_batch: bool, max_batch: int, size_dims: Optional[dict] = None):
    """The example to trace and its ``dynamic_shapes``: batch symbolic in [1, ``max_batch``], or fixed (a static
    batch, or ``max_batch`` 1: the example's first sample, since torch.export specialises a batch of 1); plus
    ``size_dims`` (symbolic image dims, :func:`_size_dims`) when given."""
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise TypeError(f"export: the example input must be a batched tensor, got {type(example).__name__}")
    if size_dims:
        example, shapes = _export_args(example, dynamic_batch, max_batch)
        return example, ({**(shapes[0] if shapes else {}), **size_dims},)
    if not dynamic_batch:
        return example, None
    if int(max_batch) < 1:
        raise ValueError(f"export: max_batch must be >= 1, got {max_batch}")
    if example.shape[0] < 1:
        raise ValueError("export: the example batch is empty")
    if int(max_batch) == 1:
        return example[:1], None
    if example.shape[0] < 2:
        raise ValueError(f"export: a dynamic batch needs an example batch of at least 2 (torch.export specialises "
                         f"sizes 0 and 1), got {example.shape[0]}")
    if max_batch < example.shape[0]:
        raise ValueError(f"export: max_batch {max_batch} is smaller than the example batch {example.shape[0]}")
    return example, ({0: torch.export.Dim("batch", min=1, max=int(max_batch))},)


def export_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
                   max_batch: int = 4096, dynamic_size: bool = False,
                   max_size: int = 1024) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode for inputs shaped like ``example`` (B, ...): the batch dimension
    symbolic in [1, ``max_batch``] when ``dynamic_batch`` (the example batch must then be in [2, ``max_batch``]; a
    ``max_batch`` of 1 gives a program of batch 1, traced on the example's first sample), every other dimension
    fixed - unless ``dynamic_size``: then an image model's height and width are symbolic too, each in
    :func:`dynamic_size_range` - [2 p + 1, ``max_size``] for p the patch size, any size in the range, patch multiple
    or not (a segmentor: from where its coarsest level is 2 x 2; with the ViT-Adapter neck, multiples of 32). The
    model's train/eval mode is restored afterwards."""
    size_dims = _size_dims(model, example, max_size) if dynamic_size else None
    example, shapes = _export_args(example, dynamic_batch, max_batch, size_dims)
    with _eval_mode(model), _size_specialised(model, example, size_dims):
        return torch.export.export(model, (example,), dynamic_shapes=shapes)


@contextmanager
def _size_specialised(model: nn.Module, example: torch.Tensor, size_dims: Optional[dict]):
    """A dynamic-size export that torch.export finds specialised to the example's size: a ValueError naming the
    model (the library's operators, backbones, necks and heads are shape-generic; a layer of the caller's may not
    be)."""
    from torch._dynamo.exc import UserError
    try:
        yield
    except UserError as err:
        if not size_dims or "Constraints violated" not in str(err):
            raise
        guards = [line.strip(" -") for line in str(err).splitlines() if line.lstrip().startswith("- ")]
        raise _specialised_error(model, example, guards[0] if guards else None) from err


def _specialised_error(model: nn.Module, example: torch.Tensor, guard: Optional[str] = None) -> ValueError:
    """``guard``: torch.export's first unmet constraint, quoted as the cause (up to 300 characters)."""
    return ValueError(f"export: {type(model).__name__} cannot take a dynamic image size: its program specialises the "
                      f"height and width to the example's {tuple(example.shape[2:])}; export this model for one "
                      f"size{f' (torch.export: {guard[:300]})' if guard else ''}")


@contextmanager
def staging_dir(path: Union[str, os.PathLike]):
    """A fresh hidden folder next to ``path`` (removed at exit, with what is left in it): write the files of an
    export there under their final names, then :func:`publish` them. (An ONNX file's external data is referenced by
    file name: written under a temporary name and renamed, the model would point at the temporary one.)"""
    path = Path(path).absolute()
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # (deepest first)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.staging."))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # (those this made, where nothing was published: a failed export leaves nothing)
            try:
                folder.rmdir()
            except OSError:
                break


def _onnx_external_files(path: Path) -> set[str]:
    """The external data files the ONNX file at ``path`` names (none for a file that is not ONNX or unreadable)."""
    try:
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # (no onnx package, or not an ONNX file: nothing to clean up after)
        return set()
    return {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}


def publish(stage: Path, path: Union[str, os.PathLike]) -> list[Path]:
    """Move every file of ``stage`` next to ``path``, the file named as ``path`` last (each move atomic: a reader
    never finds the model file before its external data). An ONNX file replaced at ``path`` leaves no external data
    file that only it named. Returns the moved files' new paths."""
    path = Path(path)
    old_data = _onnx_external_files(path) if path.suffix == ".onnx" and path.is_file() else set()
    files = sorted(stage.iterdir(), key=lambda f: f.name == path.name)
    for f in files:
        os.replace(f, path.parent / f.name)
    for name in old_data - {f.name for f in files}:
        if "/" not in name and "\\" not in name:  # (a plain file name next to it, as exporters write)
            (path.parent / name).unlink(missing_ok=True)
    return [path.parent / f.name for f in files]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Union[str, os.PathLike], dynamic_batch: bool = True,
                max_batch: int = 4096, opset: Optional[int] = None, optimize: bool = False,
                dynamic_size: bool = False, max_size: int = 1024, external_data: Optional[bool] = None) -> Path:
    """Write ``model`` (eval mode) as an ONNX file at ``path`` through torch's dynamo exporter (needs the ``onnx``
    and ``onnxscript`` packages: ``pip install vision-rwkv[onnx]``); batch and image size dynamic as in
    :func:`export_program`.
    Input ``input``, output ``output``. ``optimize``: run onnxscript's graph optimizer (off by default: its time
    grows faster than the graph - minutes for a 12-block VRWKV6 - and onnxruntime optimises the graph when it
    loads it anyway). ``external_data``: the weights in a file of their own next to it, ``<name>.data`` (None: only
    above ONNX's 2 GB limit for one file, as torch decides). Returns the path."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as err:
            raise ImportError(f"ONNX export needs the {package!r} package: pip install onnx onnxscript") from err
    size_dims = _size_dims(model, example, max_size) if dynamic_size else None
    example, shapes = _export_args(example, dynamic_batch, max_batch, size_dims)
    path = Path(path)
    with _eval_mode(model), _size_specialised(model, example, size_dims):
        onnx_program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                         input_names=["input"], output_names=["output"], optimize=optimize,
                                         verbose=False)
    if size_dims and any(isinstance(d, int) for d in onnx_program.model.graph.inputs[0].shape[2:]):
        raise _specialised_error(model, example)  # (the exporter specialised the size instead of failing)
    if onnx_program.exported_program is not None:  # (the range the file takes, which ONNX cannot express)
        onnx_program.model.metadata_props[INPUT_SPEC_KEY] = input_spec(onnx_program.exported_program).to_json()
    with staging_dir(path) as stage:
        onnx_program.save(str(stage / path.name), external_data=external_data)
        publish(stage, path)
    return path


AOTI_CHECK_ENV = "AOTI_RUNTIME_CHECK_INPUTS"


def cpp_compiler() -> Optional[str]:
    """The C++ compiler AOTInductor would find (``$CXX``, g++, c++ or clang++ on PATH), or None."""
    import shutil
    candidates = filter(None, (os.environ.get("CXX", ""), "g++", "c++", "clang++"))
    return next((found for found in map(shutil.which, candidates) if found), None)


def export_aoti(model: nn.Module, example: torch.Tensor, path: Union[str, os.PathLike], dynamic_batch: bool = True,
                max_batch: int = 4096, dynamic_size: bool = False, max_size: int = 1024) -> Path:
    """Compile ``model`` (eval mode) ahead of time with AOTInductor into a package at ``path`` (``.pt2``): a shared
    library and the weights, which run without the Python model code (``torch._inductor.aoti_load_package(path)``,
    or ``torch::inductor::AOTIModelPackageLoader`` in C++), for the inputs of :func:`export_program` (batch and
    image size dynamic as there). Needs a C++ compiler (``$CXX``, g++ or clang++); about 30 s for a 1-block model
    on 2 CPU cores, ~100 s for VRWKV-T. The package checks its inputs - channels, dtype, a batch or size above
    the maximum - only in a process with ``AOTI_RUNTIME_CHECK_INPUTS=1``, and never the lower bounds (batch 1 would
    fail torch's check, which takes a dynamic minimum of 1 for 2); it records the program's input spec in its
    metadata, which :func:`load_aoti` checks every input against. Returns the path."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"export: an AOTInductor package is a .pt2 file, got {path}")
    if cpp_compiler() is None:
        raise RuntimeError("export: AOTInductor needs a C++ compiler: install g++ or clang++, or set CXX")
    program = export_program(model, example, dynamic_batch, max_batch, dynamic_size, max_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        configs = {"aot_inductor.check_lowerbound": False,  # (load_aoti checks them: the range in the metadata)
                   "aot_inductor.metadata": {INPUT_SPEC_KEY: input_spec(program).to_json()}}
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def max_abs_diff(reference: torch.Tensor, candidate: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4,
                 what: str = "exported model") -> float:
    """Largest |candidate - reference|; raises :class:`ExportMismatchError` on a shape mismatch, a non-finite
    value or a difference beyond ``atol + rtol * |reference|``."""
    if not isinstance(candidate, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError(f"{what}: expected tensor outputs, got {type(reference).__name__} and "
                        f"{type(candidate).__name__}")
    ref, out = reference.detach().float().cpu(), candidate.detach().float().cpu()
    if ref.shape != out.shape:
        raise ExportMismatchError(f"{what}: output shape {tuple(out.shape)}, the eager model's {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise ExportMismatchError(f"{what}: non-finite outputs")
    diff = (out - ref).abs()
    bad = diff > atol + rtol * ref.abs()
    if bad.any():
        raise ExportMismatchError(f"{what}: {int(bad.sum())} of {bad.numel()} outputs differ from the eager model's "
                                  f"(max |diff| {diff.max().item():.3g}, atol {atol}, rtol {rtol})")
    return diff.max().item() if diff.numel() else 0.0


def _first_line(err: BaseException) -> str:
    """The first line of an error's message (runtimes' messages run on), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@torch.no_grad()
def verify_program(program: torch.export.ExportedProgram, model: nn.Module, inputs: Sequence[torch.Tensor],
                   atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Run ``program`` (as :func:`load_program` gives it: its input checked first) and ``model`` (eval mode) on
    every input; the largest difference (:func:`max_abs_diff`)."""
    # (ValueError: the input check; AssertionError: a run-time guard of the program)
    return _compare(model, inputs, CheckedProgram(program), (ValueError, AssertionError, RuntimeError),
                    "exported program", "", atol, rtol)


def _compare(model: nn.Module, inputs: Sequence[torch.Tensor], run, failures: tuple, name: str, where: str,
             atol: float, rtol: float) -> float:
    """Run the exported model ``run`` and ``model`` (eval mode) on every input; the largest difference
    (:func:`max_abs_diff`). ``run`` raising one of ``failures`` is an :class:`ExportMismatchError`
    "``name``: input (shape) fails``where``: (its first line)"."""
    def output(x: torch.Tensor) -> torch.Tensor:
        try:
            return run(x)
        except failures as err:
            raise ExportMismatchError(f"{name}: input {tuple(x.shape)} fails{where}: {_first_line(err)}") from err

    with _eval_mode(model):
        return max(max_abs_diff(model(x), output(x), atol, rtol, f"{name}, input {tuple(x.shape)}") for x in inputs)


@torch.no_grad()
def verify_onnx(path: Union[str, os.PathLike], model: nn.Module, inputs: Sequence[torch.Tensor], atol: float = 1e-4,
                rtol: float = 1e-4) -> float:
    """Run the ONNX file in onnxruntime (CPU) and ``model`` (eval mode) on every input; the largest difference."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("verifying an ONNX file needs onnxruntime: pip install onnxruntime")
    try:
        runner = CheckedOnnx(path)  # (as load_onnx gives it: its input checked first)
    except Exception as err:  # (onnxruntime's own error types: an invalid graph, an unsupported opset)
        raise ExportMismatchError(f"onnxruntime cannot load the ONNX file {path}: {_first_line(err)}") from err
    # (Exception: the input check, onnxruntime's own error types, a shape the graph does not take)
    return _compare(model, inputs, runner, (Exception,), f"ONNX model {path}", " in onnxruntime", atol, rtol)


@torch.no_grad()
def verify_aoti(path: Union[str, os.PathLike], model: nn.Module, inputs: Sequence[torch.Tensor], atol: float = 1e-4,
                rtol: float = 1e-4) -> float:
    """Load the AOTInductor package at ``path`` as :func:`load_aoti` does (its input checked first) and run it, with
    its own input checks on too (``AOTI_RUNTIME_CHECK_INPUTS=1`` while it runs), and ``model`` (eval mode) on every
    input; the largest difference (:func:`max_abs_diff`)."""
    previous = os.environ.get(AOTI_CHECK_ENV)
    os.environ[AOTI_CHECK_ENV] = "1"  # (read at the package's first run)
    try:
        try:
            runner = CheckedAoti(path)
        except Exception as err:  # (a missing file, or a .pt2 that is not an AOTInductor package)
            raise ExportMismatchError(f"cannot load the AOTInductor package {path}: {_first_line(err)}") from err
        # (ValueError: the input check; RuntimeError: the package's own, a size it does not take)
        return _compare(model, inputs, runner, (ValueError, RuntimeError), f"AOTInductor package {path}", "", atol,
                        rtol)
    finally:
        if previous is None:
            os.environ.pop(AOTI_CHECK_ENV, None)
        else:
            os.environ[AOTI_CHECK_ENV] = previous


def _size(img_size: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    if img_size is None:
        return None
    size = tuple(int(s) for s in ([img_size] if isinstance(img_size, int) else img_size))
    size = size * 2 if len(size) == 1 else size
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"img_size must be one or two positive ints, got {img_size!r}")
    return size  # type: ignore[return-value]


def _classifier_target(name: str, checkpoint, num_classes, size, overrides):
    from vision_rwkv.engine.predict import load_classifier

    clf = load_classifier(name, checkpoint, overrides, num_classes)
    model = clf.model
    if size is not None and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=size)
    return model, torch.randn(2, int(getattr(model, "in_chans", 3)), *(size or clf.input_size))


def _clip_target(name: str, checkpoint, size, tower: str, kwargs: Optional[dict] = None):
    import rwkv_clip

    if tower == "text" and size is not None:
        raise ValueError(f"img_size {size} is the image tower's input: the text tower takes token ids")
    model = rwkv_clip.create_model(name, pretrained=checkpoint, force_image_size=size, **(kwargs or {}))
    if tower == "image":
        return ImageEncoder(model), torch.randn(2, 3, *model.visual.image_size)
    tokenizer = rwkv_clip.get_tokenizer(name, context_length=model.context_length)  # (a config may change it)
    tokens = tokenizer(["a photo of a cat", "a diagram of a bridge"])
    return TextEncoder(model), tokens


def _seg_target(config, checkpoint, num_classes, size, overrides):
    from vision_rwkv.seg.predict_images import load_segmentor

    model, cfg, _ = load_segmentor(config, checkpoint, overrides, num_classes)
    return model, torch.randn(2, 3, *(size or tuple(cfg.data.crop_size)))


def build_export_target(name: str, checkpoint: Optional[Union[str, os.PathLike]] = None,
                        num_classes: Optional[int] = None, img_size: Optional[Sequence[int]] = None,
                        tower: str = "image", overrides: Sequence[str] = ()) -> tuple[nn.Module, torch.Tensor]:
    """The module to export (eval mode) and an example batch of 2 for ``name``: a classifier - a timm model name or
    a classification config YAML, loaded as :func:`vision_rwkv.engine.predict.load_classifier` does (class count
    from the checkpoint) -, an RWKV-CLIP model name or train_clip config (its ``tower``, "image" or "text"; the
    other kinds take no tower but "image"), or a segmentation config YAML (class count from the checkpoint's decode
    head); configs take ``key=value`` ``overrides``. ``img_size`` (H,
    W) or one int: the input size the program is made for (default: the model's, or the config's crop size)."""
    size = _size(img_size)
    if tower not in ("image", "text"):
        raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    from vision_rwkv.engine.predict import is_segmentation_config

    import rwkv_clip
    clip_config = _clip_config(name)
    if name in rwkv_clip.list_models() or clip_config is not None:
        if num_classes is not None:
            raise ValueError(f"num_classes={num_classes}: an RWKV-CLIP model has no classifier")
        if clip_config is None and overrides:
            raise ValueError(f"key=value overrides {list(overrides)} apply to a config file, not to model {name!r}")
        if clip_config is not None:
            from rwkv_clip.train import load_clip_config
            from vision_rwkv.engine.config import to_dict
            cfg = load_clip_config(name, list(overrides))
            model, example = _clip_target(cfg.model.name, checkpoint, size, tower, to_dict(cfg.model.kwargs))
        else:
            model, example = _clip_target(name, checkpoint, size, tower)
    elif tower != "image":
        raise ValueError(f"tower={tower!r} is a tower of an RWKV-CLIP model; {name!r} is not one (export it "
                         f"without a tower)")
    elif str(name).endswith((".yaml", ".yml")) and is_segmentation_config(name):
        model, example = _seg_target(name, checkpoint, num_classes, size, overrides)
    else:
        model, example = _classifier_target(name, checkpoint, num_classes, size, overrides)
    return model.eval(), example


def _clip_config(name: str) -> Optional[str]:
    """The RWKV-CLIP model a train_clip config (a YAML whose ``model.name`` is an RWKV-CLIP model) names, else None."""
    if not str(name).endswith((".yaml", ".yml")):
        return None
    import rwkv_clip

    from vision_rwkv.engine.config import ConfigError, config_layers
    try:
        layers = config_layers(name)
    except (OSError, ConfigError):  # (the classifier / segmentation loaders say what is wrong with the file)
        return None
    names = [(layer.get("model") or {}).get("name") for _, layer, _ in layers]
    found = [n for n in names if n is not None]
    return found[-1] if found and found[-1] in rwkv_clip.list_models() else None
