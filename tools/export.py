#!/usr/bin/env python
"""Export a model for deployment: a torch.export program (.pt2), an ONNX file or an AOTInductor package, checked
against the eager model.

    python tools/export.py MODEL_OR_CONFIG [key=value ...] [--checkpoint PATH] [--format pt2|onnx|aoti] [--output P]
    python tools/export.py vrwkv_tiny_patch16_224 --checkpoint vrwkv_t.safetensors --format onnx
    python tools/export.py vrwkv_tiny_patch16_224 --checkpoint vrwkv_t.safetensors --output vrwkv_t.onnx
    python tools/export.py vrwkv6_small_patch16_224 --img-size 512 --output vrwkv6_s_512.pt2
    python tools/export.py RWKV-CLIP-B-32 --checkpoint clip.pt --tower text --format onnx
    python tools/export.py configs/segmentation/demo_shapes.yaml --checkpoint runs/seg/demo_shapes/checkpoints/best.pt
    python tools/export.py vrwkv_tiny_patch16_224 --checkpoint vrwkv_t.safetensors --format aoti --dynamic-size

MODEL_OR_CONFIG is a classifier - a timm model name (the VRWKV models and any other) or a classification config YAML
with its training checkpoint -, an RWKV-CLIP model name or train_clip config (``--tower image|text``), or a
segmentation config YAML;
configs take ``key=value`` overrides, and the class count comes from the checkpoint (a segmentation config's classes
without one). The program is made for one input size (``--img-size H [W]``; default the model's, or the config's
crop size) and, unless ``--static-batch`` (batch 2), any batch from 1 to ``--max-batch`` (1: a batch-1 program). With
``--dynamic-size`` one program takes every image height and width from 3 patches (2 p + 1 pixels) to ``--max-size``
(default 1024), patch multiples or not - a segmentor from where its coarsest pyramid level is 2 x 2 (33 pixels for
patch 16), and with the ViT-Adapter neck multiples of 32 only -; ``--img-size`` is then the example it is traced
with. The format is ``--format``, else the ``--output`` suffix (.pt2 or .onnx), else pt2; ``--format aoti`` compiles
the program ahead of time with AOTInductor into a .pt2 package (default name <model>_aoti.pt2; needs a C++ compiler;
it runs without the Python model code, and checks its inputs only where AOTI_RUNTIME_CHECK_INPUTS=1 is set, never
their lower bounds - the check here runs with it set). The exported model is
run on the batches 1, 2 and 3 it takes (the static batch: 2) - with ``--dynamic-size`` also on the corners of its
size range (smallest height with largest width, the reverse, the largest square) - and compared with the eager model
(``--atol``); a mismatch, or a size the program does not take, is an error (exit 1) and nothing is written (a file
already at ``--output`` stays as it was). An ONNX file holds the batch as a free dimension (``--max-batch`` is
checked by .pt2 programs and packages only) and the opset asked for (``--opset``; one the exporter cannot write is an
error). Without ``--checkpoint`` (and, for a classification config, without
model.pretrained / model.checkpoint) a warning says the program holds random, untrained weights. Prints a JSON
summary. ONNX needs ``pip install onnx onnxscript onnxruntime``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from vision_rwkv.engine.cli import config_arg_parser, parse_config_args

FORMATS = ("pt2", "onnx", "aoti")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = config_arg_parser(__doc__.splitlines()[0],
                               "timm model name, RWKV-CLIP model name, or classification / segmentation config",
                               checkpoint="weights (training checkpoint, state dict, safetensors)",
                               epilog=__doc__.split("\n\n", 1)[1], target="MODEL_OR_CONFIG")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="output format: a torch.export program, an ONNX file or an AOTInductor package "
                             "(default: from the --output suffix, else pt2)")
    parser.add_argument("--output", default=None,
                        help="output file, .pt2 or .onnx (default: <model>.pt2, <model>.onnx, <model>_aoti.pt2)")
    parser.add_argument("--img-size", type=int, nargs="+", default=None, metavar="S", help="input size H [W]")
    parser.add_argument("--num-classes", type=int, default=None, help="class count when the checkpoint has none")
    parser.add_argument("--tower", choices=("image", "text"), default="image",
                        help="RWKV-CLIP tower to export (default: image)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size at 2")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="largest batch of a dynamic-batch export (default 4096; 1: a batch-1 program)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="one program for every image height and width from 3 patches to --max-size")
    parser.add_argument("--max-size", type=int, default=None,
                        help="largest image side of a --dynamic-size export (default 1024)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--optimize", action="store_true",
                        help="run onnxscript's ONNX graph optimizer (minutes for 12 blocks; onnxruntime optimises "
                             "at load time anyway)")
    parser.add_argument("--external-data", action="store_true",
                        help="ONNX: the weights in a file of their own, <output>.data (always above 2 GB)")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the check against eager (>= 0)")
    parsed = parse_config_args(parser, argv)
    args = parsed.options
    args.target, args.overrides = parsed.config, parsed.overrides
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error(f"--img-size takes H or H W, got {args.img_size}")
    if args.max_batch is not None and args.static_batch:
        parser.error("--max-batch is the limit of a dynamic batch; --static-batch fixes the batch at 2: give one")
    if args.max_batch is not None and args.max_batch < 1:
        parser.error(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_size is not None and not args.dynamic_size:
        parser.error("--max-size is the limit of a --dynamic-size export: give --dynamic-size too")
    if args.dynamic_size and args.tower == "text":
        parser.error("--dynamic-size is for image models; the text tower's input is a fixed-length token sequence")
    args.max_size = 1024 if args.max_size is None else args.max_size
    if args.atol < 0:
        parser.error(f"--atol must be >= 0, got {args.atol}")
    if args.opset is not None and args.opset < 1:
        parser.error(f"--opset must be a positive ONNX opset version, got {args.opset}")
    args.max_batch = 4096 if args.max_batch is None else args.max_batch
    args.format = _output_format(parser, args.format, args.output)
    if args.external_data and args.format != "onnx":
        parser.error(f"--external-data is for ONNX files, not --format {args.format}")
    return args


def _output_format(parser: argparse.ArgumentParser, fmt: Optional[str], output: Optional[str]) -> str:
    """The export format: ``--format``, else the ``--output`` suffix, else pt2; a suffix that is not the format's
    (or no known format's) is a usage error."""
    if output is None:
        return fmt or "pt2"
    suffix = Path(output).suffix
    if fmt == "aoti" and suffix == ".pt2":  # (an AOTInductor package is a .pt2 file too)
        return fmt
    known = {".pt2": "pt2", ".onnx": "onnx"}
    if suffix not in known:
        what = f"unknown suffix {suffix!r}" if suffix else "no suffix"
        parser.error(f"--output {output}: {what}; name it .pt2 (torch.export program) or .onnx (ONNX file)")
    if fmt is not None and known[suffix] != fmt:
        parser.error(f"--output {output} has the suffix of {known[suffix]}, not of --format {fmt}: "
                     f"name the file .{fmt}, or give --format {known[suffix]}")
    return known[suffix]


def missing_onnx_packages() -> List[str]:
    """The packages an ONNX export and its check need that are not installed."""
    import importlib.util
    return [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]


def _onnx_opset(path: Path) -> int:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _example_in_range(example, size_range, step: int):
    """The default example, its height and width moved into a dynamic-size range (multiples of ``step``): e.g. the
    demo segmentation config's 32 x 32 crop, below a segmentor's 33-pixel minimum."""
    import torch

    (low_h, low_w), (high_h, high_w) = size_range
    h = min(max(example.shape[2], low_h), high_h) // step * step
    w = min(max(example.shape[3], low_w), high_w) // step * step
    h, w = max(h, low_h), max(w, low_w)
    if (h, w) == tuple(example.shape[2:]):
        return example
    print(f"note: tracing at {h}x{w}, inside the dynamic size range (the default example is "
          f"{example.shape[2]}x{example.shape[3]}; --img-size sets it)", file=sys.stderr)
    return torch.randn(example.shape[0], example.shape[1], h, w, dtype=example.dtype)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.format == "onnx" and missing_onnx_packages():
        print(f"error: an ONNX export needs {', '.join(missing_onnx_packages())}: pip install onnx onnxscript "
              f"onnxruntime (or pip install -e \".[onnx]\")", file=sys.stderr)
        return 2
    import torch

    from vision_rwkv.export import (ExportMismatchError, build_export_target, cpp_compiler, export_aoti, export_onnx,
                                    export_program, dynamic_size_range, dynamic_size_step, publish, size_checks,
                                    staging_dir, verify_aoti, verify_onnx, verify_program)
    if args.format == "aoti" and cpp_compiler() is None:
        print("error: an AOTInductor package needs a C++ compiler: install g++ or clang++, or set CXX",
              file=sys.stderr)
        return 2
    from vision_rwkv.engine.files import check_output_file
    from vision_rwkv.engine.predict import untrained_warning

    stem = Path(args.target).stem if args.target.endswith((".yaml", ".yml")) else args.target.replace("/", "_")
    suffix = {"aoti": "_aoti.pt2"}.get(args.format, f".{args.format}")
    out = Path(args.output or f"{stem}{'_text' if args.tower == 'text' else ''}{suffix}")
    try:
        check_output_file(out, "--output")  # (before the model is built and exported)
        model, example = build_export_target(args.target, args.checkpoint, args.num_classes, args.img_size,
                                             args.tower, args.overrides)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    warning = untrained_warning(args.target, args.checkpoint, args.overrides, "so has the exported program")
    if warning:
        print(warning, file=sys.stderr)
    if args.dynamic_size:
        try:
            size_range, step = dynamic_size_range(model, args.max_size), dynamic_size_step(model)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.img_size is None:  # (the default example may lie outside the range)
            example = _example_in_range(example, size_range, step)
    dynamic = not args.static_batch and args.max_batch > 1  # (max 1: a program of batch 1)
    if args.static_batch:
        checks = [example]
    else:  # batches 1, 2, 3 within the declared maximum
        checks = [example[:1], example, torch.cat([example, example[:1]])][:min(args.max_batch, 3)]
    batches = f"batch 1-{args.max_batch}" if dynamic else f"batch {checks[0].shape[0]}"
    shape = tuple(example.shape[1:])
    if args.dynamic_size:
        checks += size_checks(model, example, args.max_size)
        (low_h, low_w), (high_h, high_w) = size_range
        sides = f" (sides multiples of {step})" if step > 1 else ""
        shape = (f"{shape[0]} channels, any size from {low_h}x{low_w} to {high_h}x{high_w}{sides} "
                 f"(traced at {shape[1:]})")
    start = time.perf_counter()
    print(f"exporting {args.target} for inputs {shape} ({args.format}, {batches})...", file=sys.stderr)
    opset = None
    sizes = dict(dynamic_size=args.dynamic_size, max_size=args.max_size)
    staged = out
    try:
        # (written and checked in a staging folder next to out, under out's name, then moved: a file already at out
        # stays as it was unless the new one passed its check, and an ONNX file's external data keeps its name)
        with staging_dir(out) as stage:
            staged = stage / out.name
            if args.format == "onnx":
                export_onnx(model, example, staged, not args.static_batch, args.max_batch, args.opset, args.optimize,
                            **sizes, external_data=args.external_data or None)
                opset = _onnx_opset(staged)
                if args.opset is not None and opset != args.opset:
                    raise ExportMismatchError(f"--opset {args.opset}: the exporter wrote opset {opset} (torch's "
                                              f"ONNX exporter cannot convert this model to the opset asked for)")
                diff = verify_onnx(staged, model, checks, atol=args.atol)
            elif args.format == "aoti":
                export_aoti(model, example, staged, not args.static_batch, args.max_batch, **sizes)
                diff = verify_aoti(staged, model, checks, atol=args.atol)
            else:
                program = export_program(model, example, not args.static_batch, args.max_batch, **sizes)
                diff = verify_program(program, model, checks, atol=args.atol)
                torch.export.save(program, str(staged))  # (torch.export.save wants .pt2)
            written = publish(stage, out)
    except ExportMismatchError as err:  # (named as --output: the staging folder is gone)
        print(f"error: {str(err).replace(str(staged), str(out))}", file=sys.stderr)
        return 1
    except ValueError as err:  # (a model whose program cannot take a dynamic size)
        print(f"error: {err}", file=sys.stderr)
        return 2
    others = [p.name for p in written if p.name != out.name]
    print(json.dumps({"output": str(out), "format": args.format, "input_shape": list(example.shape[1:]),
                      "input_dtype": str(example.dtype).replace("torch.", ""), "dynamic_batch": dynamic,
                      "checked_batches": [int(x.shape[0]) for x in checks], "max_abs_diff": diff,
                      **({"size_range": {"min": list(size_range[0]), "max": list(size_range[1]), "step": step},
                          "checked_sizes": [list(x.shape[2:]) for x in checks]} if args.dynamic_size else {}),
                      **({"opset": opset} if opset is not None else {}),
                      **({"external_data": others} if others else {}),
                      "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
