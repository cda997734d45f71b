"""The mmseg 0.x config reader (no code runs) and the converter to our YAML (tools/convert_mmcv_config.py)."""
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from file_tree import write_files as _write
from mmseg_config_tree import ADAPTER_RECIPES, write_tree
from seg_folders import write_seg_folders
from vision_rwkv.models.vrwkv import VARIANT_ARGS
from vision_rwkv.seg.config import load_seg_config
from vision_rwkv.seg.mmseg_config_convert import conversion_yaml, convert_mmseg_config
from vision_rwkv.engine.mmcv_config import MmcvConfigError, read_mmcv_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "segmentation"


def _convert(path):
    return convert_mmseg_config(read_mmcv_config(path), Path(path).stem)


def _loaded(conversion, tmp_path, name="out.yaml"):
    path = tmp_path / name
    path.write_text(conversion_yaml(conversion, "test"))
    return OmegaConf.to_container(load_seg_config(path))


@pytest.mark.parametrize("size", sorted(ADAPTER_RECIPES))
def test_the_released_recipes_convert_to_the_shipped_configs(tmp_path, size):
    """The original repo's four ADE20K configs (mmseg bases + _delete_ + **img_norm_cfg) give our shipped configs:
    same model (backbone as built: the registered size's arguments + backbone_kwargs), data, schedule and test;
    the runtime is the original's (fp16, a checkpoint every 1000 iterations, one kept)."""
    conversion = _convert(write_tree(tmp_path / "original")[size])
    assert conversion.unsupported == []
    ours = _loaded(conversion, tmp_path)
    shipped = OmegaConf.to_container(load_seg_config(CONFIGS / f"upernet_vrwkv_adapter_{size}_ade20k_512.yaml"))
    for cfg in (ours, shipped):
        model = cfg["model"]
        model["backbone_kwargs"] = {**VARIANT_ARGS[model["backbone"]], **model["backbone_kwargs"]}
    assert ours["model"].pop("pretrained") == f"pretrained/vrwkv_{size[0]}_in1k_{192 if size == 'large' else 224}.pth"
    shipped["model"].pop("pretrained")
    assert ours["model"] == shipped["model"]
    assert ours["data"].pop("root") == "data/ade/ADEChallengeData2016" and ours["data"].pop("num_workers") == 4
    assert ours["data"] == {k: v for k, v in shipped["data"].items() if k not in ("root", "num_workers")}
    assert ours["optim"] == shipped["optim"] and ours["test"] == shipped["test"]
    train = {k: ours["train"][k] for k in ("precision", "ckpt_every", "keep_last", "eval_every", "log_every",
                                           "sync_bn", "run_dir")}
    assert train == dict(precision="fp16", ckpt_every=1000, keep_last=1, eval_every=16000, log_every=50, sync_bn=True,
                         run_dir=f"runs/seg/upernet_vrwkv_adapter_{size}_512_160k_ade20k")
    assert any("fp16" in n for n in conversion.notes)
    assert not any("img_norm_cfg" in n for n in conversion.notes)  # (a helper variable, unpacked into Normalize)


def _tiny_variant(tmp_path, body):
    write_tree(tmp_path)
    return _write(tmp_path, {"ade20k/variant.py": "_base_ = './upernet_vrwkv_adapter_tiny_512_160k_ade20k.py'\n"
                                                  + body})


def test_settings_without_an_equivalent_are_listed_not_dropped(tmp_path, capsys, load_tool):
    path = _tiny_variant(tmp_path, "\n".join([
        "optimizer = dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9)",
        "model = dict(decode_head=dict(loss_decode=dict(_delete_=True, type='DiceLoss')))",
        "data = dict(train=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='RandomRotate', prob=0.5,"
        " degree=20), dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),"
        " dict(type='RandomCrop', crop_size=(512, 512)), dict(type='Normalize', mean=[0, 0, 0], std=[1, 1, 1])]))",
        "load_from = 'segmentor.pth'",
        "custom_hooks = [dict(type='EMAHook')]",
        "optimzer = dict(lr=1)",
    ]) + "\n")
    conversion = _convert(path)
    text = "\n".join(conversion.unsupported)
    for expected in ("optimizer.type='SGD'", "optimizer.momentum=0.9", "loss_decode.type='DiceLoss'",
                     "RandomRotate has no equivalent", "load_from='segmentor.pth'", "custom_hooks",
                     "mean / std differ from the train pipeline's"):
        assert expected in text, expected
    assert any("top-level optimzer" in n for n in conversion.notes)  # a misspelt section is reported
    tool = load_tool("convert_mmcv_config")
    dst = tmp_path / "out.yaml"
    assert tool.main([str(path), str(dst)]) == 2 and not dst.exists()
    assert "RandomRotate" in capsys.readouterr().err
    assert tool.main([str(path), str(dst), "--allow-unsupported"]) == 0
    written = dst.read_text()
    assert "# NOT carried over" in written and "RandomRotate" in written
    load_seg_config(dst)
    assert tool.main([str(path), str(dst), "--allow-unsupported"]) == 2  # exists: --force to overwrite
    assert tool.main([str(path), str(dst), "--allow-unsupported", "--force"]) == 0


@pytest.mark.parametrize("body,message", [
    ("model = dict(backbone=dict(_delete_=True, type='ViTAdapter'))", r"backbone.type='ViTAdapter'"),
    ("model = dict(decode_head=dict(type='SegformerHead'))", r"decode_head.type='SegformerHead'"),
    ("model = dict(backbone=dict(shift_pixel=2))", r"shift_pixel=2 is not supported"),
    ("model = dict(backbone=dict(spam=2))", r"unknown original config keys: \['spam'\]"),
    ("data = dict(train=[dict(type='A'), dict(type='B')])", "a list of datasets"),
    ("runner = dict(_delete_=True, type='IterBasedRunner')", r"runner.max_iters \(or total_iters\) must be set"),
])
def test_configs_that_give_no_model_are_errors(tmp_path, body, message):
    with pytest.raises(MmcvConfigError, match=message):
        _convert(_tiny_variant(tmp_path, body + "\n"))


def test_head_defaults_are_mmsegs(tmp_path):
    """An FCNHead without num_convs / concat_input is mmseg's 2 convs with concatenation (it converted as 1 conv,
    none), without in_index the last level; img_ratios may be one number."""
    conversion = _convert(_tiny_variant(tmp_path, "\n".join([
        "model = dict(auxiliary_head=dict(_delete_=True, type='FCNHead', in_channels=192, channels=64, "
        "num_classes=150, norm_cfg=dict(type='SyncBN'), dropout_ratio=0.1))",
        "data = dict(val=dict(pipeline=[dict(type='MultiScaleFlipAug', img_scale=(2048, 512), img_ratios=0.75,"
        " transforms=[dict(type='Resize', keep_ratio=True), dict(type='ResizeToMultiple', size_divisor=32)])]))"])))
    text = "\n".join(conversion.unsupported)
    assert "num_convs=2 (mmcv's default)" in text and "concat_input=True (mmcv's default)" in text
    assert (conversion.config["model"]["aux_level"], conversion.config["test"]["scales"]) == (3, [0.75])


def test_a_smaller_backbone_without_layer_scale_stays_so(tmp_path):
    conversion = _convert(_tiny_variant(tmp_path, "model = dict(backbone=dict(_delete_=True, type='VRWKV_Adapter', "
                                                  "embed_dims=384, depth=12, drop_path_rate=0.1, deform_num_heads=6, "
                                                  "interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]]))"))
    assert conversion.config["model"]["backbone_kwargs"] == {"drop_path_rate": 0.1, "post_norm": False,
                                                             "init_values": False, "wkv_mode": "original",
                                                             "wkv_chunks": 16}


def test_runtime_forms_of_older_configs(tmp_path):
    """fp16 through mmcv's Fp16OptimizerHook (older mmseg configs) became fp32 silently; without max_keep_ckpts
    mmcv keeps every checkpoint; mmcv's {{ fileBasenameNoExtension }} names the run."""
    conversion = _convert(_tiny_variant(tmp_path, "\n".join([
        "fp16 = None", "optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.)",
        "checkpoint_config = dict(_delete_=True, by_epoch=False, interval=4000)",
        "work_dir = './work_dirs/{{ fileBasenameNoExtension }}'"]) + "\n"))
    assert conversion.unsupported == []
    train = conversion.config["train"]
    assert (train["precision"], train["keep_last"], train["ckpt_every"], train["run_dir"]) == \
        ("fp16", 0, 4000, "./work_dirs/variant")


def test_missing_runtime_sections_and_intervals_are_mmcvs(tmp_path):
    """No checkpoint_config (mmcv: no checkpoints) was a false unsupported by_epoch and kept 16000; an evaluation
    without interval runs every iteration in mmseg; pretrained on both the segmentor and the backbone is refused by
    mmseg; a linear warm-up needs warmup_iters; default_scope (mmengine's) is not read by mmcv."""
    conversion = _convert(_tiny_variant(tmp_path, "\n".join([
        "checkpoint_config = None", "evaluation = dict(_delete_=True, metric='mIoU')", "default_scope = 'mmseg'",
        "model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='vrwkv_t.pth')))"])))
    train = conversion.config["train"]
    assert (train["ckpt_every"], train["eval_every"]) == (None, 1)
    assert [u for u in conversion.unsupported if "both set" in u] and len(conversion.unsupported) == 1
    assert any("no checkpoint_config" in n for n in conversion.notes)
    with pytest.raises(MmcvConfigError, match="needs warmup_iters > 0"):
        _convert(_tiny_variant(tmp_path, "lr_config = dict(_delete_=True, policy='poly', warmup='linear', "
                                         "by_epoch=False)"))


def test_several_folders_per_split_are_an_error(tmp_path):
    with pytest.raises(MmcvConfigError, match=r"data.train.ann_dir=\['a', 'b'\]: one folder per split"):
        _convert(_tiny_variant(tmp_path, "data = dict(train=dict(type='CustomDataset', classes=['x'] * 150,"
                                         " img_dir='img', ann_dir=['a', 'b']))\n"))


def test_an_mmseg_1x_config_is_named(tmp_path):
    path = _write(tmp_path, {"c.py": "model = dict()\ntrain_dataloader = dict()\noptim_wrapper = dict()\n"})
    with pytest.raises(MmcvConfigError, match="mmseg 1.x config"):
        _convert(path)


def test_a_plain_vrwkv_with_a_multilevel_neck_converts_only_when_allowed(tmp_path):
    path = _tiny_variant(tmp_path, "model = dict(backbone=dict(_delete_=True, type='VRWKV', embed_dims=192,"
                                   " depth=12, img_size=512, out_indices=[2, 5, 8, 11]),"
                                   " neck=dict(type='MultiLevelNeck', in_channels=[192] * 4, out_channels=192,"
                                   " scales=[4, 2, 1, 0.5]))\n")
    conversion = _convert(path)
    assert any("MultiLevelNeck becomes" in u for u in conversion.unsupported)
    cfg = _loaded(conversion, tmp_path)["model"]
    assert (cfg["neck"], cfg["strides"], cfg["neck_channels"], cfg["out_indices"]) == \
        ("multilevel", [4, 8, 16, 32], 192, [2, 5, 8, 11])
    assert cfg["backbone_kwargs"] == {"img_size": 512, "wkv_mode": "original", "wkv_chunks": 16}


@pytest.mark.parametrize("out_indices,expected", [
    ("out_indices=[11, 8, 5, 2], ", [2, 5, 8, 11]), ("out_indices=-1, ", [11] * 4), ("out_indices=[11], ", [11] * 4),
    ("", [11] * 4), ("out_indices=[-10, -1], ", None)])
def test_plain_vrwkv_levels_follow_the_originals_block_order(tmp_path, out_indices, expected):
    """The original VRWKV returns its out_indices' features in block order and mmseg's MultiLevelNeck copies a
    single one to its four levels (the original's default: -1); block 11 was the stride-4 level of [11, 8, 5, 2],
    and -1 / [11] / none failed to build or took [2, 5, 8, 11]."""
    path = _tiny_variant(tmp_path, "model = dict(backbone=dict(_delete_=True, type='VRWKV', embed_dims=192, depth=12,"
                                   f" img_size=512, {out_indices}final_norm=True), neck=dict(type='MultiLevelNeck',"
                                   " in_channels=[192], out_channels=192, scales=[4, 2, 1, 0.5]))\n")
    conversion = _convert(path)
    if expected is None:
        assert any("out_indices=[-10, -1]: the MultiLevelNeck takes one block or four" in u
                   for u in conversion.unsupported)
        return
    assert _loaded(conversion, tmp_path)["model"]["out_indices"] == expected
    assert any("original's default -1" in n for n in conversion.notes) == (out_indices == "")


def _dataset_variant(tmp_path, train, val="", pipeline="dict(type='LoadAnnotations')"):
    return _tiny_variant(tmp_path, "data = dict(train=dict(_delete_=True, type='CustomDataset', data_root='data/my',"
                         f" img_dir='img/train', ann_dir='ann/train', classes=('a', 'b'), {train}pipeline=["
                         f"{pipeline}, dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),"
                         " dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),"
                         " dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]),"
                         f" val=dict(_delete_=True, type='CustomDataset', {val or chr(32)}classes=('a', 'b'),"
                         " pipeline={{_base_.test_pipeline}}), test=None)\n"
                         "model = dict(decode_head=dict(num_classes=2), auxiliary_head=dict(num_classes=2))\n")


def test_ignore_index_and_reduce_zero_label_are_the_losss_and_the_evaluations(tmp_path):
    """mmseg's loss ignores the decode head's ignore_index and trains on LoadAnnotations' reduce_zero_label; its
    evaluation uses the dataset's: a dataset value that differs is listed (it became the loss's), a head's other
    than 255 converts (the crop message failed with KeyError), and the dataset's reduce_zero_label no longer turns
    the training labels' reduction on."""
    val = "data_root='data/my', img_dir='img/val', ann_dir='ann/val', "
    differs = _convert(_dataset_variant(tmp_path / "a", "ignore_index=0, ", val))
    assert any("data.train.ignore_index=0 differs from the decode head's 255" in u for u in differs.unsupported)
    assert _loaded(differs, tmp_path)["data"]["ignore_index"] == 255
    head = _convert(_tiny_variant(tmp_path / "b", "model = dict(decode_head=dict(ignore_index=0),"
                                                  " auxiliary_head=dict(ignore_index=0))\n"))
    assert _loaded(head, tmp_path, "b.yaml")["data"]["ignore_index"] == 0
    assert any("RandomCrop.ignore_index=255: the crop's cat_max_ratio" in u for u in head.unsupported)
    reduce_ds = _convert(_dataset_variant(tmp_path / "c", "reduce_zero_label=True, ", val))
    assert any("LoadAnnotations's (training) is False, the dataset's (mmseg's evaluation) True" in u
               for u in reduce_ds.unsupported)
    assert _loaded(reduce_ds, tmp_path, "c.yaml")["data"]["reduce_zero_label"] is False
    both = _convert(_dataset_variant(tmp_path / "d", "reduce_zero_label=True, ", val,
                                     "dict(type='LoadAnnotations', reduce_zero_label=True)"))
    assert both.unsupported == [u for u in both.unsupported if "reduce_zero_label" not in u]
    assert _loaded(both, tmp_path, "d.yaml")["data"]["reduce_zero_label"] is True


def test_a_val_dataset_without_data_root_is_not_put_under_trains(tmp_path):
    """mmseg joins a dataset's own data_root only: val folders given in full stay where they are (they were
    joined to train's root: data/my/data/my/img/val)."""
    full = _convert(_dataset_variant(tmp_path / "a", "", "img_dir='data/my/img/val', ann_dir='data/my/ann/val', "))
    data = _loaded(full, tmp_path)["data"]
    assert (data["root"], data["val_img_dir"], data["val_ann_dir"]) == ("data/my", "img/val", "ann/val")
    assert not any("data_root" in u for u in full.unsupported)
    elsewhere = _convert(_dataset_variant(tmp_path / "b", "", "img_dir='other/img', ann_dir='other/ann', "))
    assert any("data.val.data_root=None differs from data.train's 'data/my'" in u for u in elsewhere.unsupported)
    absolute = _convert(_dataset_variant(tmp_path / "c", "", "img_dir='/srv/img', ann_dir='/srv/ann', "))
    assert _loaded(absolute, tmp_path, "c.yaml")["data"]["val_img_dir"] == "/srv/img"


def test_named_datasets_keep_their_suffixes_and_a_class_subset_is_listed(tmp_path):
    """An ADE20KDataset / CityscapesDataset outside its own layout keeps the type's suffixes and label reduction
    with classes given too (Cityscapes lost its suffixes); a subset of the classes (mmseg remaps the labels) is
    listed."""
    from vision_rwkv.seg.classes import CITYSCAPES_CLASSES
    city = _convert(_tiny_variant(tmp_path / "a", (
        "data = dict(train=dict(_delete_=True, type='CityscapesDataset', data_root='d', img_dir='i/t', ann_dir='a/t',"
        f" classes={tuple(CITYSCAPES_CLASSES)!r}, pipeline={{{{_base_.train_pipeline}}}}),"
        f" val=dict(_delete_=True, type='CityscapesDataset', data_root='d', img_dir='i/v', ann_dir='a/v',"
        f" classes={tuple(CITYSCAPES_CLASSES)!r}, pipeline={{{{_base_.test_pipeline}}}}), test=None)\n"
        "model = dict(decode_head=dict(num_classes=19), auxiliary_head=dict(num_classes=19))\n")))
    data = _loaded(city, tmp_path)["data"]
    assert (data["img_suffix"], data["seg_map_suffix"]) == ("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    subset = _convert(_tiny_variant(tmp_path / "b", (
        "data = dict(train=dict(_delete_=True, type='ADE20KDataset', data_root='d', img_dir='i/t', ann_dir='a/t',"
        " classes=('wall', 'floor'), pipeline={{_base_.train_pipeline}}), val=None, test=None)\n"
        "model = dict(decode_head=dict(num_classes=2), auxiliary_head=dict(num_classes=2))\n")))
    assert any("a subset of ADE20KDataset's classes makes mmseg remap" in u for u in subset.unsupported)


CUSTOM = """\
_base_ = ['../_base_/default_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (32, 32)
img_norm_cfg = dict(mean=[120.0, 110.0, 100.0], std=[60.0, 60.0, 60.0], to_rgb=True)
model = dict(
    type='EncoderDecoder',
    pretrained=None,
    backbone=dict(type='VRWKV_Adapter', img_size=32, patch_size=16, embed_dims=48, depth=4, drop_path_rate=0.1,
                  conv_inplane=8, n_points=2, deform_num_heads=6, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]),
    decode_head=dict(type='UPerHead', in_channels=[48] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2), channels=16,
                     dropout_ratio=0.0, num_classes=3, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                                      class_weight=[1.0, 2.0, 1.0])),
    auxiliary_head=dict(type='FCNHead', in_channels=48, in_index=2, channels=8, num_convs=1, concat_input=False,
                        dropout_ratio=0.0, num_classes=3, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.3,
                                         class_weight=[1.0, 2.0, 1.0])),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(16, 16)))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='Resize', img_scale=(48, 32), ratio_range=(0.8, 1.2)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
    dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'), dict(type='Collect', keys=['img', 'gt_semantic_seg'])]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(48, 32), flip=False,
    transforms=[dict(type='Resize', keep_ratio=True), dict(type='ResizeToMultiple', size_divisor=32),
                dict(type='RandomFlip'), dict(type='Normalize', **img_norm_cfg),
                dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]
classes = ('sky', 'road', 'tree')
palette = [[0, 0, 255], [128, 128, 128], [0, 255, 0]]
data = dict(samples_per_gpu=2, workers_per_gpu=0,
            train=dict(type='RepeatDataset', times=10, dataset=dict(
                type='CustomDataset', data_root='{root}', img_dir='img/train', ann_dir='ann/train', img_suffix='.png',
                classes=classes, palette=palette, pipeline=train_pipeline)),
            val=dict(type='CustomDataset', data_root='{root}', img_dir='img/val', ann_dir='ann/val', img_suffix='.png',
                     classes=classes, palette=palette, pipeline=test_pipeline))
optimizer = dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor', paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9))
optimizer_config = dict(grad_clip=dict(max_norm=1.0, norm_type=2))
lr_config = dict(policy='poly', warmup='linear', warmup_iters=1, warmup_ratio=0.1, power=0.9, min_lr=1e-5,
                 by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=2)
checkpoint_config = dict(by_epoch=False, interval=2, max_keep_ckpts=-1)
evaluation = dict(interval=2, metric='mIoU')
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='TensorboardLoggerHook')])
work_dir = '{work}'
"""


def test_a_custom_dataset_config_converts_and_trains(tmp_path, load_tool):
    """A user's own mmseg config (CustomDataset with classes and palette in a RepeatDataset, BN heads, class
    weights, gradient clipping, a smaller adapter) converts with the CLI, loads, and trains to an mIoU."""
    from vision_rwkv.seg.train import train_segmentor

    write_seg_folders(tmp_path / "data", n=3, size=(32, 40), dirs=("img", "ann"))
    src = _write(tmp_path / "mm", {"configs/custom.py": CUSTOM.format(root=tmp_path / "data", work=tmp_path / "run"),
                                   "_base_/default_runtime.py": "log_level = 'INFO'\ncudnn_benchmark = True\n"})
    dst = tmp_path / "custom.yaml"
    assert load_tool("convert_mmcv_config").main([str(src), str(dst)]) == 0
    cfg = load_seg_config(dst, ["train.tensorboard=false", "train.show_progress=false"])
    d, m, o = cfg.data, cfg.model, cfg.optim
    assert (d.type, d.root, d.img_dir, d.val_ann_dir, list(d.classes)) == \
        ("folder", str(tmp_path / "data"), "img/train", "ann/val", ["sky", "road", "tree"])
    assert (d.img_suffix, d.reduce_zero_label, d.palette[1], d.mean[0], d.num_workers) == \
        (".png", False, [128, 128, 128], 120.0, 0)
    assert (list(d.scale), list(d.ratio_range), d.photometric, list(cfg.test.scale)) == \
        ([48, 32], [0.8, 1.2], False, [48, 32])
    assert (m.backbone, dict(m.backbone_kwargs)) == ("vrwkv_tiny_patch16_224", dict(
        img_size=32, embed_dim=48, depth=4, drop_path_rate=0.1, wkv_mode="original", wkv_chunks=16))
    assert (list(m.class_weight), m.aux_weight, m.adapter.n_points, m.adapter.drop_path_rate) == \
        ([1.0, 2.0, 1.0], 0.3, 2, 0.1)
    assert (o.lr, o.layer_decay, o.clip_grad, o.power, o.min_lr, o.warmup_ratio, o.max_iters) == \
        (1e-3, 0.9, 1.0, 0.9, 1e-5, 0.1, 2)
    assert (cfg.train.keep_last, cfg.train.sync_bn, cfg.train.run_dir, cfg.train.precision) == \
        (0, False, str(tmp_path / "run"), "fp32")
    assert "RepeatDataset (times=10) is unwrapped" in dst.read_text()
    result = train_segmentor(cfg)
    assert result["step"] == 2 and 0.0 <= result["mIoU"] <= 100.0
    assert len(result["per_class"]) == 3


@pytest.mark.parametrize("body,expected", [
    ("model = dict(decode_head=dict(norm_cfg=None))", "decode_head.norm_cfg=None: the heads use batch norm"),
    ("model = dict(auxiliary_head=dict(num_convs=2))", "auxiliary_head.num_convs=2"),
    ("model = dict(auxiliary_head=dict(dropout_ratio=0.2))", "dropout_ratio=0.2 differs from the decode head's"),
    ("lr_config = dict(_delete_=True, policy='step', step=[1000])", "lr_config.policy='step'"),
    ("runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs=10, max_iters=1)", "iteration-based"),
    ("optimizer = dict(paramwise_cfg=dict(num_layers=6))", "num_layers=6: layer decay counts the backbone's 12"),
    ("optimizer = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.0)}))",
     "paramwise_cfg.custom_keys"),
    ("optimizer_config = dict(cumulative_iters=4)", "gradient accumulation"),
    ("optimizer_config = dict(type='DistOptimizerHook', update_interval=4, grad_clip=None, coalesce=True,"
     " bucket_size_mb=-1, use_fp16=False)", "optimizer_config.update_interval=4: gradient accumulation"),
    ("model = dict(auxiliary_head=dict(ignore_index=0))", "ignore_index=0 differs from the decode head's 255"),
    ("optimizer = dict(_delete_=True, type='AdamW', paramwise_cfg=dict(norm_decay_mult=0.0))",
     "norm_decay_mult=0.0, bias_decay_mult=1.0: norms and biases decay together here"),
    ("data = dict(train=dict(pipeline=[dict(type='LoadAnnotations', reduce_zero_label=False),"
     " dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)), dict(type='RandomCrop',"
     " crop_size=(512, 512)), dict(type='PhotoMetricDistortion', hue_delta=9), dict(type='Normalize',"
     " mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True), dict(type='Pad',"
     " size=(512, 512), seg_pad_val=0)]))",
     "hue_delta=9|seg_pad_val=0|reduce_zero_label=False"),
    ("data = dict(train=dict(pipeline=[dict(type='Resize', img_scale=[(2048, 512), (1024, 256)]),"
     " dict(type='RandomCrop', crop_size=(512, 512)), dict(type='Normalize', mean=[123.675, 116.28, 103.53],"
     " std=[58.395, 57.12, 57.375]), dict(type='RandomFlip', prob=0.5)]))",
     "one \\(long, short\\) scale converts|steps in the order Resize -> RandomCrop -> Normalize -> RandomFlip"),
    ("model = dict(decode_head=dict(num_classes=151))", "num_classes=151 but the dataset has 150 classes"),
    ("data = dict(val=dict(pipeline=[dict(type='MultiScaleFlipAug', img_scale=[(2048, 512), (2048, 640)],"
     " transforms=[dict(type='Resize', keep_ratio=True)])]))", "img_scale=\\[\\(2048, 512\\), \\(2048, 640\\)\\]"),
    ("data = dict(train=dict(pipeline=[dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),"
     " dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75, ignore_index=0), dict(type='Normalize',"
     " mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))", "RandomCrop.ignore_index=0"),
])
def test_each_setting_without_an_equivalent_is_named(tmp_path, body, expected):
    unsupported = "\n".join(_convert(_tiny_variant(tmp_path, body + "\n")).unsupported)
    for part in expected.split("|"):
        assert re.search(part, unsupported), (part, unsupported)


@pytest.mark.parametrize("optimizer,expected", [
    ("dict(_delete_=True, type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)",
     dict(lr=6e-5, weight_decay=0.01, decay_exempt="none", layer_decay=None)),
    ("dict(_delete_=True, type='AdamW', paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))",
     dict(lr=1e-3, weight_decay=0.01, decay_exempt="norm_bias", layer_decay=None)),
    ("dict(_delete_=True, type='AdamW', weight_decay=0.05, constructor='MyLayerDecayOptimizerConstructor',"
     " paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9))",
     dict(lr=1e-3, weight_decay=0.05, decay_exempt="timm", layer_decay=0.9)),
])
def test_the_optimizer_decays_what_mmcv_decays(tmp_path, optimizer, expected):
    """Without a paramwise_cfg mmcv decays every parameter (optim.decay_exempt=none; it was the 1-D / bias /
    position-embedding exemption, silently), norm / bias_decay_mult=0 exempts norms and biases, the layer-decay
    constructor keeps ours (noted); an lr the config leaves out is torch AdamW's 1e-3 (it was the schema's 6e-5)."""
    conversion = _convert(_tiny_variant(tmp_path, f"optimizer = {optimizer}\n"))
    assert conversion.unsupported == []
    optim = _loaded(conversion, tmp_path)["optim"]
    assert {k: optim[k] for k in expected} == expected and optim["betas"] == [0.9, 0.999]
    assert any("decay_exempt=timm" in n for n in conversion.notes) == (expected["decay_exempt"] == "timm")


@pytest.mark.parametrize("body,section", [
    ("data = dict(train=dict(pipeline=[dict(type='RandomCrop')]))", "data: .*missing key 'crop_size'"),
    ("optimizer = dict(betas=0.9)", "optimizer: .*TypeError"),
    ("data = dict(train=dict(pipeline=[1, 2]))", "data: .*AttributeError"),
    ("checkpoint_config = dict(interval='x')", "runtime: .*ValueError"),
    ("model = dict(test_cfg=dict(mode='slide', crop_size='512', stride=341))", "model: .*a pair of sizes"),
])
def test_values_of_the_wrong_type_are_config_errors(tmp_path, body, section, load_tool, capsys):
    """Each was a traceback from the converter (or, for the string crop size, a config of [5, 1, 2])."""
    path = _tiny_variant(tmp_path, body + "\n")
    with pytest.raises(MmcvConfigError, match=section):
        _convert(path)
    assert load_tool("convert_mmcv_config").main([str(path), str(tmp_path / "out.yaml")]) == 2
    assert re.search(section, capsys.readouterr().err) and not (tmp_path / "out.yaml").exists()


def test_cityscapes_configs_keep_their_layout(tmp_path):
    write_tree(tmp_path)
    path = _write(tmp_path, {"cityscapes/c.py": """\
_base_ = '../ade20k/upernet_vrwkv_adapter_tiny_512_160k_ade20k.py'
crop = (512, 1024)
norm = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
         dict(type='Resize', img_scale=(2048, 1024), ratio_range=(0.5, 2.0)),
         dict(type='RandomCrop', crop_size=crop, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
         dict(type='PhotoMetricDistortion'), dict(type='Normalize', **norm), dict(type='Pad', size=crop)]
test = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(2048, 1024), flip=True,
        img_ratios=[0.5, 1.0], transforms=[dict(type='Resize', keep_ratio=True), dict(type='Normalize', **norm)])]
model = dict(decode_head=dict(num_classes=19), auxiliary_head=dict(num_classes=19),
             test_cfg=dict(crop_size=crop, stride=(341, 683)))
data = dict(_delete_=True, samples_per_gpu=1,
            train=dict(type='CityscapesDataset', data_root='data/cityscapes/', img_dir='leftImg8bit/train',
                       ann_dir='gtFine/train', pipeline=train),
            val=dict(type='CityscapesDataset', data_root='data/cityscapes/', img_dir='leftImg8bit/val',
                     ann_dir='gtFine/val', pipeline=test))
"""})
    conversion = _convert(path)
    assert conversion.unsupported == []
    assert any("test.size_divisor=32" in n for n in conversion.notes)
    cfg = _loaded(conversion, tmp_path)
    d, t = cfg["data"], cfg["test"]
    assert (d["type"], d["root"], d["train_split"], d["val_split"], d["crop_size"], d["scale"]) == \
        ("cityscapes", "data/cityscapes/", "train", "val", [512, 1024], [2048, 1024])
    assert (t["crop_size"], t["stride"], t["scales"], t["flip"], t["size_divisor"]) == \
        ([512, 1024], [341, 683], [0.5, 1.0], True, 32)
