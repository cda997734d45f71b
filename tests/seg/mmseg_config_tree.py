"""An mmseg 0.x config tree in the layout of the original Vision-RWKV repo's ``segmentation/configs`` (mmseg's
stock ``_base_`` files and the four VRWKV_Adapter + UperNet ADE20K configs, with the values of the released
recipes), written as test input for the mmseg config converter."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from file_tree import write_files

UPERNET_BASE = """\
# UperNet with a ResNet-50 (the stock model base the configs start from)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(type='ResNetV1c', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1),
                  strides=(1, 2, 2, 2), norm_cfg=norm_cfg, norm_eval=False, style='pytorch',
                  contract_dilation=True),
    decode_head=dict(type='UPerHead', in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3],
                     pool_scales=(1, 2, 3, 6), channels=512, dropout_ratio=0.1, num_classes=19,
                     norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=1024, in_index=2, channels=256, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=19, norm_cfg=norm_cfg,
                        align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
"""

ADE20K_BASE = """\
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2048, 512), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='ImageToTensor', keys=['img']),
                     dict(type='Collect', keys=['img'])]),
]
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=4,
    train=dict(type=dataset_type, data_root=data_root, img_dir='images/training',
               ann_dir='annotations/training', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_root=data_root, img_dir='images/validation',
             ann_dir='annotations/validation', pipeline=test_pipeline),
    test=dict(type=dataset_type, data_root=data_root, img_dir='images/validation',
              ann_dir='annotations/validation', pipeline=test_pipeline))
"""

RUNTIME_BASE = """\
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook', by_epoch=False)])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
cudnn_benchmark = True
"""

SCHEDULE_160K = """\
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optimizer_config = dict()
lr_config = dict(policy='poly', power=0.9, min_lr=1e-4, by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=160000)
checkpoint_config = dict(by_epoch=False, interval=16000)
evaluation = dict(interval=16000, metric='mIoU', pre_eval=True)
"""

# the released recipes: (embed_dims, depth, backbone extras, deform heads, deform ratio, groups, layer decay, lr)
ADAPTER_RECIPES = {
    "tiny": (192, 12, "init_values=1,", 6, 1.0, "[[0, 2], [3, 5], [6, 8], [9, 11]]", 0.95, "12e-5", 0.1),
    "small": (384, 12, "init_values=1e-5, post_norm=True,", 6, 1.0, "[[0, 2], [3, 5], [6, 8], [9, 11]]", 0.85,
              "6e-5", 0.2),
    "base": (768, 12, "init_values=1e-5, post_norm=True,", 12, 0.5, "[[0, 2], [3, 5], [6, 8], [9, 11]]", 0.8,
             "6e-5", 0.3),
    "large": (1024, 24, "init_values=1e-5, post_norm=True, key_norm=True,", 16, 0.5,
              "[[0, 5], [6, 11], [12, 17], [18, 23]]", 0.9, "6e-5", 0.4),
}


def adapter_config(size: str) -> str:
    """The ADE20K VRWKV_Adapter + UperNet config of one released size (the original repo's values)."""
    dims, depth, extras, heads, ratio, groups, decay, lr, dpr = ADAPTER_RECIPES[size]
    img = 192 if size == "large" else 224
    return f"""\
_base_ = [
    '../_base_/models/upernet_r50.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py'
]
pretrained = 'pretrained/vrwkv_{size[0]}_in1k_{img}.pth'
model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True, type='VRWKV_Adapter', img_size={img}, patch_size=16, embed_dims={dims}, depth={depth},
        pretrained=None, {extras} with_cp=False, drop_path_rate={dpr}, conv_inplane=64, n_points=4,
        deform_num_heads={heads}, cffn_ratio=0.25, deform_ratio={ratio}, interaction_indexes={groups}),
    decode_head=dict(num_classes=150, in_channels=[{dims}] * 4),
    auxiliary_head=dict(num_classes=150, in_channels={dims}),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2048, 512), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='ResizeToMultiple', size_divisor=32),
                     dict(type='RandomFlip'), dict(type='Normalize', **img_norm_cfg),
                     dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])
]
optimizer = dict(_delete_=True, type='AdamW', lr={lr}, betas=(0.9, 0.999), weight_decay=0.01,
                 constructor='MyLayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers={depth}, layer_decay_rate={decay}))
lr_config = dict(_delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6,
                 power=1.0, min_lr=0.0, by_epoch=False)
data = dict(samples_per_gpu=2, val=dict(pipeline=test_pipeline), test=dict(pipeline=test_pipeline))
runner = dict(type='IterBasedRunner')
checkpoint_config = dict(by_epoch=False, interval=1000, max_keep_ckpts=1)
evaluation = dict(interval=16000, metric='mIoU', save_best='mIoU')
fp16 = dict(loss_scale=dict(init_scale=512))
"""


def write_tree(root: Path) -> Dict[str, Path]:
    """Write the bases and the four ADE20K adapter configs under `root`; returns {size: config path}."""
    files = {"_base_/models/upernet_r50.py": UPERNET_BASE, "_base_/datasets/ade20k.py": ADE20K_BASE,
             "_base_/default_runtime.py": RUNTIME_BASE, "_base_/schedules/schedule_160k.py": SCHEDULE_160K}
    files.update({f"ade20k/upernet_vrwkv_adapter_{s}_512_160k_ade20k.py": adapter_config(s) for s in ADAPTER_RECIPES})
    write_files(root, files)
    return {s: root / f"ade20k/upernet_vrwkv_adapter_{s}_512_160k_ade20k.py" for s in ADAPTER_RECIPES}
