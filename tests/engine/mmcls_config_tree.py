"""An mmcls 0.x config tree in the layout of the original Vision-RWKV repo's ``classification/configs`` (its
``_base_`` files and the six VRWKV / VRWKV6 ImageNet-1k configs, with the values of the released recipes), written
as test input for the mmcls config converter."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from file_tree import write_files

RAND_AUG = """\
# timm's increasing RandAugment ops, in mmcls's terms
rand_increasing_policies = [
    dict(type='AutoContrast'), dict(type='Equalize'), dict(type='Invert'),
    dict(type='Rotate', magnitude_key='angle', magnitude_range=(0, 30)),
    dict(type='Posterize', magnitude_key='bits', magnitude_range=(4, 0)),
    dict(type='Solarize', magnitude_key='thr', magnitude_range=(256, 0)),
    dict(type='SolarizeAdd', magnitude_key='magnitude', magnitude_range=(0, 110)),
    dict(type='ColorTransform', magnitude_key='magnitude', magnitude_range=(0, 0.9)),
    dict(type='Contrast', magnitude_key='magnitude', magnitude_range=(0, 0.9)),
    dict(type='Brightness', magnitude_key='magnitude', magnitude_range=(0, 0.9)),
    dict(type='Sharpness', magnitude_key='magnitude', magnitude_range=(0, 0.9)),
    dict(type='Shear', magnitude_key='magnitude', magnitude_range=(0, 0.3), direction='horizontal'),
    dict(type='Shear', magnitude_key='magnitude', magnitude_range=(0, 0.3), direction='vertical'),
    dict(type='Translate', magnitude_key='magnitude', magnitude_range=(0, 0.45), direction='horizontal'),
    dict(type='Translate', magnitude_key='magnitude', magnitude_range=(0, 0.45), direction='vertical'),
]
"""

IMAGENET = """\
_base_ = ['./pipelines/rand_aug.py']
dataset_type = 'ImageNet'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', size=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', flip_prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies={{_base_.rand_increasing_policies}}, num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in img_norm_cfg['mean'][::-1]], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=img_norm_cfg['mean'][::-1], fill_std=img_norm_cfg['std'][::-1]),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='ImageToTensor', keys=['img']),
    dict(type='ToTensor', keys=['gt_label']),
    dict(type='Collect', keys=['img', 'gt_label']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', size=(256, -1), backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='ImageToTensor', keys=['img']),
    dict(type='Collect', keys=['img']),
]
data = dict(
    samples_per_gpu=64,
    workers_per_gpu=8,
    train=dict(type=dataset_type, data_prefix='data/imagenet/train', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='data/imagenet/val', ann_file='data/imagenet/meta/val.txt',
             pipeline=test_pipeline),
    test=dict(type=dataset_type, data_prefix='data/imagenet/val', ann_file='data/imagenet/meta/val.txt',
              pipeline=test_pipeline))
evaluation = dict(interval=10, metric='accuracy')
"""

SCHEDULE = """\
paramwise_cfg = dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                     custom_keys={'.absolute_pos_embed': dict(decay_mult=0.0),
                                  '.relative_position_bias_table': dict(decay_mult=0.0)})
optimizer = dict(type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999),
                 paramwise_cfg=paramwise_cfg)
optimizer_config = dict(grad_clip=dict(max_norm=5.0))
lr_config = dict(policy='CosineAnnealing', by_epoch=False, min_lr_ratio=1e-2, warmup='linear', warmup_ratio=1e-3,
                 warmup_iters=20, warmup_by_epoch=True)
runner = dict(type='EpochBasedRunner', max_epochs=300)
"""

RUNTIME = """\
checkpoint_config = dict(interval=1)
log_config = dict(interval=100, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
"""

# (family, size): (embed_dims, extra backbone arguments, mixup, samples_per_gpu)
RECIPES = {
    ("vrwkv", "tiny"): (192, "", False, 128),
    ("vrwkv", "small"): (384, "drop_path_rate=0.3, post_norm=True, init_values=1,", True, 128),
    ("vrwkv", "base"): (768, "drop_path_rate=0.5, post_norm=True, init_values=1e-5,", True, 64),
    ("vrwkv6", "tiny"): (192, "num_heads=3,", False, 128),
    ("vrwkv6", "small"): (384, "num_heads=6, drop_path_rate=0.3, post_norm=True, init_values=1e-5,", True, 128),
    ("vrwkv6", "base"): (768, "num_heads=12, drop_path_rate=0.5, post_norm=True, init_values=1e-5,", True, 64),
}


def classifier_config(family: str, size: str) -> str:
    """The ImageNet-1k config of one released model (the original repo's values)."""
    dims, extra, mixup, batch = RECIPES[(family, size)]
    augments = ("dict(augments=[dict(type='BatchMixup', alpha=0.8, num_classes=1000, prob=0.5),"
                " dict(type='BatchCutMix', alpha=1.0, num_classes=1000, prob=0.5)])") if mixup else "dict()"
    return f"""\
_base_ = [
    '../_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_swin.py',
    '../_base_/default_runtime.py'
]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='{family.upper()}', img_size=224, patch_size=16, embed_dims={dims}, {extra}),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=1000, in_channels={dims}, init_cfg=None,
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'), cal_acc=False),
    init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
              dict(type='Constant', layer='LayerNorm', val=1., bias=0.)],
    train_cfg={augments})
checkpoint_config = dict(interval=1, max_keep_ckpts=2, save_last=True)
evaluation = dict(interval=1)
data = dict(samples_per_gpu={batch})
"""


def write_tree(root: Path) -> Dict[tuple, Path]:
    """Write the bases and the six configs under `root`; returns {(family, size): config path}."""
    files = {"_base_/datasets/pipelines/rand_aug.py": RAND_AUG, "_base_/datasets/imagenet_bs64_swin_224.py": IMAGENET,
             "_base_/schedules/imagenet_bs1024_adamw_swin.py": SCHEDULE, "_base_/default_runtime.py": RUNTIME}
    paths = {}
    for (family, size), (_, _, _, batch) in RECIPES.items():
        name = f"{family}/{family}_{size}_{'16xb64' if batch == 64 else '8xb128'}_in1k.py"
        files[name] = classifier_config(family, size)
        paths[(family, size)] = root / name
    write_files(root, files)
    return paths
