"""Contrastive training of RWKV-CLIP on the shared engine (`vision_rwkv.engine.Trainer`).

    cfg = load_clip_config("configs/clip/demo_shapes.yaml", ["train.max_steps=100"])
    result = train_clip(cfg)  # {"step", "train_loss", "zeroshot_acc1", "image_retrieval_recall@1", ...}

Per step: each sample contributes one caption drawn uniformly from its captions; symmetric InfoNCE with
open_clip's `ClipLoss` (features gathered across ranks with gradients, local-loss form); AdamW with the
configured warm-up schedule; autocast (fp32/bf16/fp16 + GradScaler); gradient clipping; optionally channels-last
images and image-tower weights (`train.channels_last`, also used by the in-training evaluation); the logit scale is
clamped to [0, ln 100] after every optimiser step. Checkpoints are atomic and `resume="latest"` continues
exactly (model, optimizer, scheduler, scaler, step, data position, RNG). Unreadable images are replaced by the
next readable sample and counted (`skipped_images`). Runs under `torchrun` with DDP (gloo on CPU).
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from open_clip.loss import ClipLoss

from vision_rwkv.engine import (ConfigError, DistInfo, Trainer, all_reduce_sum, broadcast_object, build_train_loader,
                                check_run_dir_is_free, cleanup_distributed, compile_for_training, init_distributed,
                                load_config, print_rank0, save_config, seed_everything, to_channels_last, to_dict,
                                unwrap_model, wrap_ddp)
from vision_rwkv.engine.process_state import process_state_restored

from .data import IMAGE_EXTENSIONS, CsvCaptionDataset, RandomCaptionDataset, ShapesCaptionSamples, TarCaptionDataset
from .evaluate import EvalCfg, run_evaluation
from .factory import create_model_and_transforms, get_tokenizer
from .shard_index import default_index_cache

__all__ = ["ClipTrainConfig", "load_clip_config", "train_clip", "build_optimizer", "build_scheduler",
           "build_train_dataset"]


@dataclass
class ModelCfg:
    name: str = "RWKV-CLIP-Tiny-demo"       # a rwkv_clip.list_models() name
    pretrained: Optional[str] = None         # local checkpoint to start from (ours or original)
    kwargs: dict = field(default_factory=dict)  # overrides merged into the model config (vision_cfg/text_cfg)
    grad_checkpointing: bool = False


@dataclass
class DataCfg:
    kind: str = "shapes"                      # shapes | csv | tar
    train: Any = None                         # CSV/TSV path, or tar shard spec ("a-{000..009}.tar") or a list
    img_key: str = "filepath"                 # CSV image column
    caption_keys: Any = field(default_factory=lambda: ["title"])  # CSV caption column(s): a list or "a,b"
    root: Optional[str] = None                # folder for relative CSV image paths
    sep: Optional[str] = None                 # CSV separator (default from the extension)
    index_cache: Optional[str] = "auto"       # tar shards' index cache folder; auto = ~/.cache/vision_rwkv/tar_index
    augment: bool = True                      # open_clip's train transform (RandomResizedCrop) vs the val one
    workers: int = 0
    shapes_length: int = 4000
    shapes_image_size: int = 64
    shapes_num_captions: int = 5
    shapes_seed: int = 0
    shapes_group_by: Optional[str] = None     # e.g. "color": batches of same-colour groups (hard negatives)
    shapes_group_size: int = 8                # samples per group (the per-rank batch must be a multiple)


@dataclass
class OptimCfg:
    lr: float = 1e-3
    weight_decay: float = 0.2
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    wd_all_params: bool = False               # True = decay every parameter (the original recipe)


@dataclass
class SchedCfg:
    name: str = "cosine"                      # cosine | onecycle | constant
    warmup_frac: float = 0.1                  # warm-up length as a fraction of all steps ...
    warmup_steps: Optional[int] = None        # ... or in steps (takes precedence)
    min_lr_ratio: float = 0.0                 # cosine floor (fraction of lr)
    div_factor: float = 25.0                  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4             # onecycle: final lr = initial lr / final_div_factor
    cycle_momentum: bool = True               # onecycle: cycle beta1 in [0.85, 0.95] (torch default, original)


@dataclass
class TrainCfg:
    batch_size: int = 64                      # global contrastive batch per micro-step (split over the ranks)
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    precision: str = "fp32"                   # fp32 | bf16 | fp16
    compile: bool = False                     # torch.compile the training forward; checkpoints stay plain
    compile_backend: str = "inductor"
    compile_mode: Optional[str] = None        # None | default | reduce-overhead | max-autotune | ...
    channels_last: bool = False               # the image tower's 4-D weights and the images in channels-last order
                                              # (timm's --channels-last); checkpoints stay contiguous
    clip_grad: Optional[float] = 1.0
    grad_accum_steps: int = 1                 # micro-steps per optimizer step (each its own contrastive batch:
                                              # negatives come from the micro-batch, no feature cache)
    local_loss: bool = True
    gather_with_grad: bool = True
    seed: int = 0
    device: str = "auto"
    ckpt_every_steps: Optional[int] = None
    ckpt_every_epochs: int = 1
    keep_last: int = 2
    log_every: int = 10
    tensorboard: bool = True
    show_progress: bool = True
    stop_after_steps: Optional[int] = None    # stop early WITHOUT saving (simulated crash, for resume tests)
    threads: Optional[int] = None             # torch.set_num_threads per process
    best_metric: Optional[str] = None         # an evaluation metric best.pt follows (higher is better): zeroshot_acc1,
                                              # zeroshot_acc5, zeroshot_mean_per_class_recall, image_retrieval_recall@K,
                                              # text_retrieval_recall@K (K = 1, 5, 10); None: no best.pt


@dataclass
class ClipTrainConfig:
    run_dir: str = "runs/clip"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)


def load_clip_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] | None = None) -> DictConfig:
    """A CLIP training config: the `ClipTrainConfig` defaults, then every file of the YAML's `_base_` chain (each
    checked against the schema: unknown keys raise ConfigError), then `key=value` overrides."""
    return load_config(path, overrides, schema=ClipTrainConfig)


# ----------------------------------------------------------------------------------------------- builders

def build_train_dataset(data: Any, transform, tokenizer) -> RandomCaptionDataset:
    """The training dataset of `data` (a DataCfg): Shapes captions, CSV/TSV table or tar shards."""
    if data.kind == "shapes":
        base = ShapesCaptionSamples("train", data.shapes_length, data.shapes_seed, data.shapes_image_size,
                                    data.shapes_num_captions, transform=transform, group_by=data.shapes_group_by,
                                    group_size=data.shapes_group_size)
    elif data.kind == "csv":
        if not data.train or not isinstance(data.train, str):
            raise ConfigError(f"data.train must name the CSV/TSV file for data.kind=csv, got {data.train!r}")
        keys = data.caption_keys if isinstance(data.caption_keys, str) else list(data.caption_keys)
        try:
            base = CsvCaptionDataset(data.train, data.img_key, keys, transform, data.root, data.sep)
        except KeyError as err:  # the table lacks a column the config names
            raise ConfigError(f"{err.args[0]} (data.img_key={data.img_key!r}, data.caption_keys={keys!r})") from err
    elif data.kind == "tar":
        if not data.train:
            raise ConfigError("data.train must name the tar shards for data.kind=tar")
        shards = data.train if isinstance(data.train, str) else list(data.train)
        cache = default_index_cache() if data.index_cache == "auto" else data.index_cache
        base = TarCaptionDataset(shards, transform, index_cache=cache or None)
        if base.damaged:
            print_rank0(f"[clip] {len(base.damaged)} of {len(base.shards)} tar shard(s) damaged, read in part: "
                        + "; ".join(base.damaged[:3]) + (" ..." if len(base.damaged) > 3 else ""))
        if base.incomplete:  # (a caption under another key, or images of another type, would lose every sample)
            kinds = ", ".join(IMAGE_EXTENSIONS)
            print_rank0(f"[clip] {base.incomplete} tar sample(s) without an image ({kinds}) or a caption (*.txt, "
                        f"json 'caption(s)') left out of {len(base.shards)} shard(s); {len(base)} used")
    else:
        raise ConfigError(f"unknown data.kind {data.kind!r} (shapes, csv, tar)")
    return RandomCaptionDataset(base, tokenizer)


def build_optimizer(model: torch.nn.Module, optim: Any) -> torch.optim.AdamW:
    """AdamW; weight decay on >= 2-D weights outside `model.no_weight_decay()` (or on all with wd_all_params)."""
    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if optim.wd_all_params or (p.ndim >= 2 and name not in nwd):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": float(optim.weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    kwargs = dict(lr=float(optim.lr), betas=tuple(float(b) for b in optim.betas), eps=float(optim.eps))
    try:  # the fused kernel (CPU and CUDA) is several times faster, e.g. on the 49408-row text embedding
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


SCHEDULES = ("cosine", "constant", "onecycle")


def build_scheduler(optimizer: torch.optim.Optimizer, sched: Any, lr: float, total_steps: int):
    """Per-step schedule: `cosine` (linear warm-up then cosine to min_lr_ratio * lr), `constant` (warm-up then
    flat) or `onecycle` (torch OneCycleLR as in the original recipe)."""
    warmup = int(sched.warmup_steps) if sched.warmup_steps is not None else int(round(sched.warmup_frac * total_steps))
    if sched.name == "onecycle":
        # OneCycleLR peaks at step pct * total - 1, so a 1-step warm-up peaks at step 0 (no warm-up; its formula
        # would divide 0 by 0 there)
        pct = min(max(warmup / total_steps if warmup > 1 else 0.0, 1e-6), 0.999)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct, div_factor=sched.div_factor,
            final_div_factor=sched.final_div_factor, cycle_momentum=sched.cycle_momentum)
    if sched.name not in SCHEDULES:
        raise ValueError(f"unknown sched.name {sched.name!r} ({', '.join(SCHEDULES)})")
    floor = float(sched.min_lr_ratio)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if sched.name == "constant":
            return 1.0
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _ClipObjective:
    """loss_fn for the Trainer: symmetric InfoNCE over (possibly gathered) normalised features."""

    def __init__(self, info: DistInfo, local_loss: bool, gather_with_grad: bool):
        self.loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                             rank=info.rank, world_size=info.world_size)
        self.trainer: Callable[[], Optional[Trainer]] = lambda: None  # (weakly: the trainer holds this objective)

    def __call__(self, model, batch):
        images, texts, skipped = batch
        image_features, text_features, logit_scale = model(images, texts)
        loss = self.loss(image_features.float(), text_features.float(), logit_scale.float())
        n_skipped = int(skipped.sum())
        trainer = self.trainer()
        if trainer is not None:
            extra = trainer.extra_state
            extra["skipped_images"] = int(extra.get("skipped_images", 0)) + n_skipped
        return loss, {"logit_scale": float(logit_scale.detach()), "skipped_images": float(n_skipped)}


def _clamp_logit_scale(trainer: Trainer) -> None:
    unwrap_model(trainer.model).clamp_logit_scale()


# ----------------------------------------------------------------------------------------------- main

@process_state_restored()
def train_clip(cfg: DictConfig | ClipTrainConfig | dict, resume: Optional[str] = None) -> dict:
    """Train RWKV-CLIP as configured; returns the final metrics (train loss, last eval, skipped images, time).

    `resume`: None (fresh run; an existing run folder is resumed only if asked), "latest" or a checkpoint path.
    Works in one process and under torchrun (one process per rank).
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.merge(OmegaConf.structured(ClipTrainConfig), cfg)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    info = init_distributed(tc.device)
    try:
        return _train(cfg, info, resume)
    finally:
        cleanup_distributed()


BEST_METRICS = {"zeroshot": ("zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall"),
                "retrieval": tuple(f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10))}


def _check_best_metric(cfg: DictConfig) -> None:
    """train.best_metric names a metric the configured evaluation computes (ConfigError otherwise)."""
    name = cfg.train.best_metric
    if name is None:
        return
    part = next((p for p, names in BEST_METRICS.items() if name in names), None)
    if part is None:
        known = ", ".join(n for names in BEST_METRICS.values() for n in names)
        raise ConfigError(f"train.best_metric {name!r} is not an evaluation metric ({known})")
    data = cfg.eval.zero_shot.data if part == "zeroshot" else cfg.eval.retrieval.data
    if data == "none":
        key = "eval.zero_shot.data" if part == "zeroshot" else "eval.retrieval.data"
        raise ConfigError(f"train.best_metric {name!r} needs its evaluation, but {key} is none")


def _train(cfg: DictConfig, info: DistInfo, resume: Optional[str]) -> dict:
    tc = cfg.train
    if tc.batch_size < 1 or tc.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size (the global batch) must be a positive multiple of the number of "
                          f"processes, {info.world_size}; got {tc.batch_size}")
    if tc.max_steps is None and not tc.epochs:
        raise ConfigError("set train.epochs or train.max_steps (the defaults set neither)")
    if not float(cfg.optim.lr) > 0 or not float(cfg.optim.weight_decay) >= 0:
        raise ConfigError(f"optim.lr must be positive and optim.weight_decay >= 0, got {cfg.optim.lr} and "
                          f"{cfg.optim.weight_decay}")
    if (to_dict(cfg.model.kwargs) or {}).get("init_logit_bias") is not None:
        raise ConfigError("model.kwargs.init_logit_bias: a logit bias is for SigLIP's sigmoid loss, and train_clip.py "
                          "trains with the softmax contrastive loss (which a bias does not change); train SigLIP-style "
                          "with tools/train_open_clip.py --siglip")
    if cfg.sched.name not in SCHEDULES:  # (before the model and the data are built)
        raise ConfigError(f"unknown sched.name {cfg.sched.name!r} ({', '.join(SCHEDULES)}; open_clip's 'const' is "
                          "'constant')")
    _check_best_metric(cfg)
    run_dir = Path(cfg.run_dir)
    check_run_dir_is_free(run_dir, resume)  # fail fast, before the model and the data are built
    seed_everything(tc.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)

    model, preprocess_train, preprocess_val = create_model_and_transforms(
        cfg.model.name, pretrained=cfg.model.pretrained, **to_dict(cfg.model.kwargs))
    model.set_grad_checkpointing(bool(cfg.model.grad_checkpointing))
    model = model.to(info.device)
    if tc.channels_last:  # (the image tower only: its patch embedding is the model's one convolution; before DDP)
        to_channels_last(model.visual)
    tokenizer = get_tokenizer(cfg.model.name, context_length=model.context_length)

    train_set = build_train_dataset(cfg.data, preprocess_train if cfg.data.augment else preprocess_val, tokenizer)
    group_size = getattr(train_set.dataset, "group_size", 1)  # Shapes hard-negative groups (data.shapes_group_by)
    if (tc.batch_size // info.world_size) % group_size:
        raise ConfigError(f"train.batch_size {tc.batch_size} gives {tc.batch_size // info.world_size} samples per "
                          f"process ({info.world_size} processes), not a multiple of data.shapes_group_size "
                          f"{group_size}: each process's batch holds whole groups")
    loader = build_train_loader("train.batch_size", train_set, tc.batch_size // info.world_size, shuffle=True,
                                drop_last=True, seed=tc.seed, num_workers=cfg.data.workers, info=info,
                                group_size=group_size)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = len(loader) // tc.grad_accum_steps
    total = int(tc.max_steps) if tc.max_steps is not None else int(tc.epochs) * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.sched, float(cfg.optim.lr), total)
    objective = _ClipObjective(info, tc.local_loss, tc.gather_with_grad)
    ddp_model = compile_for_training(wrap_ddp(model, info), tc.compile, tc.compile_backend, tc.compile_mode)

    eval_fn = None
    if cfg.eval.zero_shot.data != "none" or cfg.eval.retrieval.data != "none":
        def eval_fn(m):
            metrics = None
            if info.is_main:
                metrics = run_evaluation(m, tokenizer, preprocess_val, cfg.eval, device=info.device,
                                         out_dir=run_dir, precision=tc.precision, scalars_only=True)
            return broadcast_object(metrics) if info.distributed else metrics

    trainer = Trainer(
        ddp_model, optimizer, loader, objective, run_dir=run_dir, info=info, epochs=tc.epochs, max_steps=total,
        scheduler=scheduler, precision=tc.precision, grad_accum_steps=tc.grad_accum_steps, clip_grad=tc.clip_grad,
        eval_fn=eval_fn, eval_every_epochs=cfg.eval.every_epochs, eval_every_steps=cfg.eval.every_steps,
        ckpt_every_steps=tc.ckpt_every_steps, ckpt_every_epochs=tc.ckpt_every_epochs, keep_last=tc.keep_last,
        log_every=tc.log_every, tensorboard=tc.tensorboard, after_step=_clamp_logit_scale,
        stop_after_steps=tc.stop_after_steps, show_progress=tc.show_progress, summed_extra=("skipped_images",),
        result_files=("result.json",), best_metric=tc.best_metric, best_mode="max")
    objective.trainer = weakref.ref(trainer)
    # config.yaml once the config, data and model are checked and a resume has succeeded
    result = trainer.fit(resume=resume, on_start=partial(save_config, cfg, run_dir / "config.yaml")
                         if info.is_main else None)
    skipped = torch.tensor(float(trainer.extra_state.get("skipped_images", 0)))
    result["skipped_images"] = int(all_reduce_sum(skipped).item())
    result["history"] = list(trainer.history)
    result["logit_scale"] = float(unwrap_model(trainer.model).logit_scale.detach().exp())
    result["run_dir"] = str(run_dir)
    if result["skipped_images"]:
        print_rank0(f"[train_clip] skipped {result['skipped_images']} unreadable images")
    return result
