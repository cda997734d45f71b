"""The segmentation config schema (every key a config file or override may set) and its loader.

Configs are YAML files under `configs/segmentation/` (optionally with `_base_` inheritance);
`load_seg_config(path, overrides)` merges the :class:`SegConfig` defaults -> every file of the `_base_` chain ->
the `key=value` overrides. Every file may set any schema key and only those (typed; an unknown key is a
ConfigError naming the key and the file), so a config file lists only what differs from these defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig

__all__ = ["SegConfig", "ModelConfig", "AdapterConfig", "DataConfig", "OptimConfig", "TrainConfig", "TestConfig",
           "load_seg_config", "check_seg_values"]


@dataclass
class AdapterConfig:
    """The ViT-Adapter neck (model.neck=adapter; vision_rwkv.seg.adapter.ViTAdapter), defaults of VRWKV-T / S."""
    conv_inplane: int = 64                        # spatial prior module width
    n_points: int = 4                             # deformable attention points per head and level
    deform_num_heads: int = 6
    init_values: float = 0.0                      # injectors' gamma at init
    interaction_indexes: Optional[List[Any]] = None  # [first, last] block per group; None: 4 even groups
    with_cffn: bool = True
    cffn_ratio: float = 0.25
    deform_ratio: float = 1.0                     # value width / backbone width in the deformable attention
    add_vit_feature: bool = True                  # add the groups' backbone maps to the outputs
    use_extra_extractor: bool = True              # two more extractors after the last group
    drop_path_rate: float = 0.0                   # the extractors' drop path


@dataclass
class ModelConfig:
    backbone: str = "vrwkv_tiny_patch16_224"      # any timm model with forward_intermediates
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs (img_size, ...)
    pretrained: Optional[str] = None              # local backbone checkpoint (.pth / .safetensors); never downloaded
    grad_checkpointing: bool = False              # recompute backbone blocks in the backward (mmseg's with_cp)
    out_indices: Optional[List[int]] = None       # None: 4 evenly spaced blocks (12 blocks -> 2, 5, 8, 11)
    norm_intermediates: bool = False              # apply the backbone's final norm to every taken block output
    strides: List[int] = field(default_factory=lambda: [4, 8, 16, 32])  # neck output strides
    neck_channels: Optional[int] = None            # None: backbone width
    decode_channels: int = 512                    # UperNet channels
    pool_scales: List[int] = field(default_factory=lambda: [1, 2, 3, 6])  # PPM
    dropout: float = 0.1
    aux_channels: int = 256                       # FCN auxiliary head on level aux_level
    aux_weight: float = 0.4
    aux_level: int = 2
    class_weight: Optional[List[float]] = None    # per-class cross-entropy weights, None: unweighted
    avg_non_ignore: bool = False                  # loss / non-ignored pixels; False: / all pixels (mmseg default)
    align_corners: bool = False
    probe_size: int = 224                         # input size for probing a backbone without feature_info
    neck: str = "multilevel"                      # multilevel | adapter (ViT-Adapter, VRWKV / VRWKV6 backbones)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)


@dataclass
class DataConfig:
    type: str = "ade20k"                           # ade20k | cityscapes | folder | shapes
    root: Optional[str] = None                     # ade20k / cityscapes root
    train_split: str = "training"
    val_split: str = "validation"
    # type=folder: image + mask directories, class names (list, or a text file with one name per line)
    img_dir: Optional[str] = None
    ann_dir: Optional[str] = None
    val_img_dir: Optional[str] = None
    val_ann_dir: Optional[str] = None
    classes: Optional[Any] = None                 # list of names or a text file (one name per line)
    img_suffix: str = ".jpg"
    seg_map_suffix: str = ".png"
    reduce_zero_label: bool = False
    palette: Optional[List[List[int]]] = None      # [r, g, b] (0-255) per class for label PNGs and overlays (mmseg's
    #                                                METAINFO palette); None: the package's colours
    # type=shapes
    image_size: int = 64
    train_length: int = 2000
    val_length: int = 200
    shapes_seed: int = 0
    # all
    ignore_index: int = 255
    max_val_images: Optional[int] = None           # evaluate on the first N validation images only
    batch_size: int = 2                            # per process (16 = 8 GPUs x 2)
    num_workers: int = 2
    crop_size: List[int] = field(default_factory=lambda: [512, 512])
    scale: List[int] = field(default_factory=lambda: [2048, 512])  # (long, short) base scale of the rescale
    ratio_range: Optional[List[float]] = field(default_factory=lambda: [0.5, 2.0])  # [lo, hi] or None
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])


@dataclass
class OptimConfig:
    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: Optional[float] = 0.95            # None / 1.0: no layer-wise decay
    decay_exempt: str = "timm"                     # no decay on: timm = 1-D parameters, biases, no_weight_decay();
    #                                                norm_bias = norm layers and biases; none = every parameter decays
    max_iters: int = 160000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    clip_grad: Optional[float] = None


@dataclass
class TrainConfig:
    run_dir: str = "runs/seg"
    seed: int = 0
    device: str = "auto"
    num_threads: Optional[int] = None              # torch CPU threads during the run (None: torch's default)
    precision: str = "fp32"                        # fp32 | bf16 | fp16
    compile: bool = False                          # torch.compile the training forward; checkpoints stay plain
    compile_backend: str = "inductor"
    compile_mode: Optional[str] = None             # None | default | reduce-overhead | max-autotune | ...
    channels_last: bool = False                    # convolution weights and images in channels-last order (timm's
    #                                                --channels-last; cuDNN's NHWC convolutions); files stay plain
    resume: Optional[str] = None                   # None | "latest" | checkpoint path
    log_every: int = 50
    eval_every: Optional[int] = 16000              # iterations; None: only at the end
    ckpt_every: Optional[int] = 16000
    keep_last: int = 2
    sync_bn: bool = True
    find_unused_parameters: bool = False
    tensorboard: bool = False
    show_progress: bool = True
    deterministic: bool = False
    stop_after_steps: Optional[int] = None         # end early without saving (simulated crash, for tests)


@dataclass
class TestConfig:
    mode: str = "slide"                            # whole | slide
    crop_size: List[int] = field(default_factory=lambda: [512, 512])
    stride: List[int] = field(default_factory=lambda: [341, 341])
    scale: Optional[List[int]] = field(default_factory=lambda: [2048, 512])  # keep-ratio test resize; None: keep
    flip: bool = False
    scales: List[float] = field(default_factory=lambda: [1.0])
    size_divisor: Optional[int] = None             # resize the test image up to multiples of this (mmseg's
    #                                                ResizeToMultiple; 32 for the ViT-Adapter neck)
    checkpoint: Optional[str] = None               # None: best (else latest) checkpoint of train.run_dir
    out_dir: Optional[str] = None                  # None: <run_dir>/test
    num_visualize: int = 4
    save_labels: bool = False                      # a label PNG per test image in <out_dir>/labels (mmseg's --out)
    save_overlays: bool = False                    # an overlay PNG per test image in <out_dir>/overlays (--show-dir)
    label_offset: int = 0                          # added to the class ids in those PNGs (1: ADE20K's 1..150)
    channels_last: Optional[bool] = None           # None: train.channels_last


@dataclass
class SegConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


def load_seg_config(path: str | os.PathLike, overrides: Sequence[str] | None = None) -> DictConfig:
    """Schema defaults -> the YAML's `_base_` chain -> `key=value` overrides (module docstring). Unknown keys raise
    `vision_rwkv.engine.ConfigError` naming the key and the file."""
    from vision_rwkv.engine import load_config

    cfg = load_config(path, overrides=overrides, schema=SegConfig)
    check_seg_values(cfg)
    return cfg


DATA_TYPES = ("ade20k", "cityscapes", "folder", "shapes")
NECKS = ("multilevel", "adapter")


def _sizes(value: Any, key: str, allow_none: bool = False) -> None:
    from vision_rwkv.engine import ConfigError

    if value is None and allow_none:
        return
    if value is None or len(value) != 2 or any(int(v) < 1 for v in value):
        raise ConfigError(f"{key} must be two positive integers (height, width), got {value}")


def check_seg_values(cfg: Any) -> None:
    """Reject values that would only fail later (at the first evaluation, hours into a run): the data type,
    crop / stride / test sizes, the inference mode and scales. Raises ConfigError naming the key."""
    from vision_rwkv.engine import ConfigError

    d, t = cfg.data, cfg.test
    if cfg.model.neck not in NECKS:
        raise ConfigError(f"model.neck must be one of {', '.join(NECKS)}, got {cfg.model.neck!r}")
    if t.size_divisor is not None and int(t.size_divisor) < 1:
        raise ConfigError(f"test.size_divisor must be a positive integer or null, got {t.size_divisor}")
    if d.type not in DATA_TYPES:
        raise ConfigError(f"data.type must be one of {', '.join(DATA_TYPES)}, got {d.type!r}")
    _sizes(d.crop_size, "data.crop_size")
    _sizes(d.scale, "data.scale")
    if t.mode not in ("whole", "slide"):
        raise ConfigError(f"test.mode must be 'whole' or 'slide', got {t.mode!r}")
    _sizes(t.crop_size, "test.crop_size")
    _sizes(t.stride, "test.stride")
    _sizes(t.scale, "test.scale", allow_none=True)
    if t.mode == "slide" and any(int(s) > int(c) for s, c in zip(t.stride, t.crop_size)):
        raise ConfigError(f"test.stride {list(t.stride)} must not exceed test.crop_size {list(t.crop_size)} "
                          f"(windows would leave pixels uncovered)")
    if int(t.label_offset) < 0:
        raise ConfigError(f"test.label_offset must be >= 0, got {t.label_offset}")
    if not t.scales or any(float(s) <= 0 for s in t.scales):
        raise ConfigError(f"test.scales must be a non-empty list of positive factors, got {t.scales}")
    o, tr = cfg.optim, cfg.train
    for key, value in (("optim.max_iters", o.max_iters), ("data.batch_size", d.batch_size),
                       ("train.log_every", tr.log_every), ("train.eval_every", tr.eval_every),
                       ("train.ckpt_every", tr.ckpt_every)):
        if value is not None and int(value) < 1:
            nullable = key in ("train.eval_every", "train.ckpt_every")
            raise ConfigError(f"{key} must be a positive integer{' or null' if nullable else ''}, got {value}")
    if int(tr.keep_last) < 0:
        raise ConfigError(f"train.keep_last must be >= 0 (0: keep every checkpoint), got {tr.keep_last}")
    if not 0 <= int(o.warmup_iters) <= int(o.max_iters):
        raise ConfigError(f"optim.warmup_iters must be in [0, optim.max_iters={o.max_iters}], got {o.warmup_iters}")
    if float(o.lr) <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if o.decay_exempt not in ("timm", "norm_bias", "none"):
        raise ConfigError(f"optim.decay_exempt must be timm, norm_bias or none, got {o.decay_exempt!r}")
    if cfg.model.neck == "adapter":  # its levels are the input at strides 8 / 16 / 32
        sizes = [("data.crop_size", d.crop_size)] + ([("test.crop_size", t.crop_size)] if t.mode == "slide" else [])
        bad = [f"{k}={list(v)}" for k, v in sizes if any(int(s) % 32 for s in v)]
        if t.size_divisor is None or int(t.size_divisor) % 32:
            bad.append(f"test.size_divisor={t.size_divisor}")
        if bad:
            raise ConfigError(f"model.neck=adapter needs input sides that are multiples of 32: {', '.join(bad)}")
