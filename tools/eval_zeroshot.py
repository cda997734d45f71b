#!/usr/bin/env python
"""Zero-shot classification and image-text retrieval for RWKV-CLIP or any open_clip model
(thin CLI over `rwkv_clip.evaluate`).

    # a train_clip run (model config + latest checkpoint), on held-out Shapes
    python tools/eval_zeroshot.py --run-dir runs/clip_demo_shapes --output results.json
    # original RWKV-CLIP weights, ImageNet-style folder + Flickr30k Karpathy split
    python tools/eval_zeroshot.py --model RWKV-CLIP-B-32 --pretrained RWKV-CLIP-B32-YFCC15M.pt \\
        --zeroshot-data imagefolder --zeroshot-path /data/imagenet/val --classes imagenet \\
        --retrieval-data karpathy --retrieval-path /data/flickr30k/dataset_flickr30k.json \\
        --retrieval-root /data/flickr30k/images
    # a plain open_clip model with local weights, CSV retrieval data with two caption columns
    python tools/eval_zeroshot.py --model ViT-B-32 --pretrained vit_b32.pt --zeroshot-data none \\
        --retrieval-data csv --retrieval-path pairs.csv --caption-keys title,alt

No config file: the model comes from --run-dir (a train_clip run) or --model with --pretrained (alias
--checkpoint), the data from the --zeroshot-* / --retrieval-* options.

Metrics (JSON): zeroshot_acc1/acc5/mean_per_class_recall, image_retrieval_recall@{1,5,10} (text->image) and
text_retrieval_recall@{1,5,10} (image->text, any of the image's captions), clip_benchmark's definitions.
A PNG grid of the top retrieved images for a few captions is written next to the JSON. One process (not under
torchrun).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="rwkv_clip or open_clip model name")
    p.add_argument("--pretrained", "--checkpoint", dest="pretrained", default=None,
                   help="local checkpoint (ours, original RWKV-CLIP or open_clip); --checkpoint is an alias, as in "
                        "tools/eval.py and tools/test_seg.py")
    p.add_argument("--run-dir", default=None,
                   help="a train_clip run folder (config.yaml + latest checkpoint); the data options below default "
                        "to the run's own `eval:` settings (what its training-time evaluation used)")
    # data options: None = the run's eval setting with --run-dir, else rwkv_clip.evaluate.EvalCfg's default
    p.add_argument("--zeroshot-data", default=None, choices=["shapes", "imagefolder", "csv", "none"],
                   help="default shapes")
    p.add_argument("--zeroshot-path", default=None, help="ImageFolder root or CSV (image + label columns)")
    p.add_argument("--classes", default=None,
                   help="built-in class set (shapes, imagenet, imagenet-simple, cifar10), 'folders', or a file "
                        "(default shapes). With an ImageFolder, names that are the folder names are matched to "
                        "them; other names must follow the sorted folder order")
    p.add_argument("--label-key", default=None, help="CSV label column (default label)")
    p.add_argument("--label-type", default=None, choices=["auto", "index", "name"],
                   help="CSV labels are class indices or class names (default auto: names when every label is a "
                        "class name, else indices)")
    p.add_argument("--zeroshot-length", type=int, default=None, help="Shapes test samples (default 400)")
    p.add_argument("--retrieval-data", default=None, choices=["shapes", "csv", "karpathy", "none"],
                   help="default shapes")
    p.add_argument("--retrieval-path", default=None, help="CSV/TSV or Karpathy JSON")
    p.add_argument("--retrieval-root", default=None, help="image folder for relative paths")
    p.add_argument("--img-key", default=None, help="CSV image column (default filepath)")
    p.add_argument("--caption-keys", default=None, help="comma-separated CSV caption columns (default title)")
    p.add_argument("--split", default=None, help="Karpathy / Shapes split (default test)")
    p.add_argument("--retrieval-length", type=int, default=None, help="Shapes test images (default 200)")
    p.add_argument("--shapes-image-size", type=int, default=None, help="Shapes image size (default 64)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64")
    p.add_argument("--workers", type=int, default=None, help="default 0")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the image tower's weights and the images in channels-last order (timm's --channels-last); "
                        "default: the run's train.channels_last with --run-dir, else off")
    p.add_argument("--output", default="eval_results.json", help="JSON output file")
    p.add_argument("--no-grid", action="store_true", help="do not write the retrieval PNG grid")
    return p


# CLI option -> the EvalCfg keys it sets
_OPTION_KEYS = {
    "batch_size": ["batch_size"], "workers": ["workers"], "shapes_image_size": ["shapes_image_size"],
    "zeroshot_data": ["zero_shot.data"], "zeroshot_path": ["zero_shot.path"], "classes": ["zero_shot.classes"],
    "label_key": ["zero_shot.label_key"], "label_type": ["zero_shot.label_type"],
    "zeroshot_length": ["zero_shot.length"],
    "img_key": ["zero_shot.img_key", "retrieval.img_key"], "split": ["zero_shot.split", "retrieval.split"],
    "retrieval_data": ["retrieval.data"], "retrieval_path": ["retrieval.path"], "retrieval_root": ["retrieval.root"],
    "retrieval_length": ["retrieval.length"], "caption_keys": ["retrieval.caption_keys"],
}


def eval_config(args: argparse.Namespace):
    """EvalCfg defaults -> the run's `eval:` section (with --run-dir) -> the options given on the command line."""
    from omegaconf import OmegaConf

    from rwkv_clip.evaluate import EvalCfg

    cfg = OmegaConf.structured(EvalCfg)
    if args.run_dir is not None:
        run_cfg = Path(args.run_dir) / "config.yaml"
        if not run_cfg.is_file():
            raise FileNotFoundError(f"{run_cfg} not found: not a train_clip run folder")
        run_eval = OmegaConf.load(run_cfg).get("eval")
        if run_eval is not None:
            cfg = OmegaConf.merge(cfg, run_eval)
    for option, keys in _OPTION_KEYS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if option == "caption_keys":
            value = [k.strip() for k in value.split(",") if k.strip()]
        for key in keys:
            OmegaConf.update(cfg, key, value, merge=False)
    cfg.grid_png = cfg.grid_png and not args.no_grid
    if cfg.zero_shot.data == "none" and cfg.retrieval.data == "none":
        from vision_rwkv.engine import ConfigError
        where = f"the run's eval: section ({args.run_dir}) sets" if args.run_dir is not None else "the options set"
        raise ConfigError(f"nothing to evaluate: {where} zero_shot.data and retrieval.data to none (give "
                          "--zeroshot-data and / or --retrieval-data)")
    return cfg


def channels_last(args: argparse.Namespace) -> bool:
    """--channels-last / --no-channels-last, else the run's ``train.channels_last`` (with --run-dir), else False."""
    if args.channels_last is not None or args.run_dir is None:
        return bool(args.channels_last)
    from omegaconf import OmegaConf
    # (config.yaml went through the schema: a boolean; a run from before the key has none)
    return bool(OmegaConf.select(OmegaConf.load(Path(args.run_dir) / "config.yaml"), "train.channels_last",
                                 default=False))


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # every process would evaluate everything, and write it
        from vision_rwkv.engine import launch_rank
        parser.exit(2, "error: eval_zeroshot.py runs in one process: start it with python, not torchrun\n"
                    if launch_rank() == 0 else None)
    from rwkv_clip.evaluate import load_model_for_eval, run_evaluation
    from vision_rwkv.engine.files import check_output_file, write_text_atomic
    from vision_rwkv.engine.logger import json_text

    cfg = eval_config(args)
    check_output_file(args.output, "--output")  # (before the evaluation, not after it)
    model, tokenizer, preprocess = load_model_for_eval(args.model, args.pretrained, args.run_dir, args.device)
    if channels_last(args):
        from vision_rwkv.engine import to_channels_last
        to_channels_last(model.visual)
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metrics = run_evaluation(model, tokenizer, preprocess, cfg, device=args.device, out_dir=out_path.parent,
                             precision=args.precision)
    metrics = {k: v for k, v in metrics.items() if k != "zeroshot_predictions"}
    metrics["model"] = args.model or args.run_dir
    write_text_atomic(out_path, json_text(metrics))
    print(json_text({k: v for k, v in metrics.items() if not isinstance(v, list)}))
    return metrics


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
