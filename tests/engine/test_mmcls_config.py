"""The mmcls 0.x config converter (vision_rwkv.engine.mmcls_config_convert, tools/convert_mmcv_config.py): the
original repo's six ImageNet recipes convert to the shipped configs, a user's config converts and trains, and
settings without an equivalent are listed."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from file_tree import write_files as _write
from mmcls_config_tree import RECIPES, write_tree
from vision_rwkv.engine import load_config
from vision_rwkv.engine.mmcls_config_convert import convert_mmcls_config
from vision_rwkv.engine.mmcv_config import MmcvConfigError, read_mmcv_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "classification"


def _convert(path):
    return convert_mmcls_config(read_mmcv_config(path), Path(path).stem)


@pytest.mark.parametrize("family,size", sorted(RECIPES))
def test_the_released_recipes_convert_to_the_shipped_configs(tmp_path, family, size, load_tool):
    """The original repo's configs (rand_aug policies through {{_base_...}}, a list comprehension in hparams,
    mixup as two augments) give the shipped recipe: model, augmentation, optimizer and schedule; the lr as the
    config states it for its global batch (the shipped configs scale lr_base to it)."""
    src = write_tree(tmp_path / "original")[(family, size)]
    dst = tmp_path / "converted.yaml"
    assert load_tool("convert_mmcv_config").main([str(src), str(dst)]) == 0
    conversion = _convert(src)
    assert conversion.unsupported == []
    ours = OmegaConf.to_container(load_config(dst), resolve=True)
    shipped = OmegaConf.to_container(load_config(CONFIGS / f"{family}_{size}_in1k.yaml"), resolve=True)
    assert ours["model"] == dict(shipped["model"], num_classes=1000)
    for key in ("color_jitter",):  # (0.4 in base.yaml, which timm ignores under RandAugment; the original has none)
        assert shipped["aug"].pop(key) == 0.4 and ours["aug"].pop(key) == 0.0
    assert ours["aug"] == shipped["aug"]
    batch = RECIPES[(family, size)][3]
    gpus = 1024 // batch  # (the original's global batch is 1024)
    assert ours["optim"].pop("lr") == pytest.approx(shipped["optim"]["lr_base"] * batch * gpus / 512)
    assert (ours["optim"].pop("betas"), ours["optim"].pop("eps")) == ([0.9, 0.999], 1e-8)
    assert {k: v for k, v in ours["optim"].items() if k not in ("betas", "eps", "lr")} == \
        {k: v for k, v in shipped["optim"].items() if k not in ("betas", "eps", "lr")}
    assert ours["sched"] == shipped["sched"] and ours["ema"] == shipped["ema"]
    assert ours["data"]["train_dir"] == "data/imagenet/train" and ours["data"]["input_size"] == 224
    assert (ours["data"]["val_dir"], ours["data"]["val_ann_file"]) == \
        ("data/imagenet/val", "data/imagenet/meta/val.txt")
    train = {k: ours["train"][k] for k in ("batch_size", "epochs", "keep_last", "eval_every_epochs", "log_every",
                                           "precision")}
    assert train == dict(batch_size=batch, epochs=300, keep_last=2, eval_every_epochs=1, log_every=100,
                         precision="fp32")
    assert any("custom_keys['.absolute_pos_embed'] names no parameter" in n for n in conversion.notes)


RANDAUG = ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='RandAugment',"
           " policies={policies}, num_policies=2, total_level=10, magnitude_level=9{extra}), dict(type='Normalize',"
           " mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))")


def _variant(tmp_path, body):
    write_tree(tmp_path)
    return _write(tmp_path, {"vrwkv/variant.py": "_base_ = './vrwkv_tiny_8xb128_in1k.py'\n" + body + "\n"})


@pytest.mark.parametrize("body,expected", [
    ("model = dict(head=dict(loss=dict(mode='multi_label')))", "loss.mode='multi_label'"),
    ("model = dict(head=dict(loss=dict(_delete_=True, type='FocalLoss')))", "loss.type='FocalLoss'"),
    ("model = dict(neck=dict(type='GeneralizedMeanPooling'))", "GlobalAveragePooling"),
    ("model = dict(train_cfg=dict(augments=dict(type='BatchResizeMix', alpha=1.0)))", "BatchResizeMix"),
    ("optimizer = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.0)}))",
     "custom_keys\\['pos_embed'\\].*per-parameter"),
    ("optimizer = dict(paramwise_cfg=dict(norm_decay_mult=1.0))", "norm_decay_mult=1.0"),
    ("lr_config = dict(warmup_by_epoch=False)", "warm-up of 20 iterations"),
    ("optimizer = dict(paramwise_cfg=dict(custom_keys={'.pos_embed': dict(decay_mult=0.0),"
     " 'backbone': dict(lr_mult=0.1)}))", "custom_keys\\['.pos_embed'\\]|custom_keys\\['backbone'\\]"),
    ("lr_config = dict(_delete_=True, policy='Poly', power=1.0)", "policy='Poly'"),
    ("custom_hooks = [dict(type='PreciseBNHook')]", "PreciseBNHook"),
    ("optimizer_config = dict(cumulative_iters=2)", "train.grad_accum_steps"),
    ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='Lighting',"
     " eigval=[1, 1, 1], eigvec=[[1, 0, 0]] * 3), dict(type='Normalize', mean=[0, 0, 0], std=[1, 1, 1])]))",
     "Lighting has no equivalent|mean / std differ"),
    ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='RandomErasing',"
     " erase_prob=0.25, max_area_ratio=0.4), dict(type='Normalize', mean=[123.675, 116.28, 103.53],"
     " std=[58.395, 57.12, 57.375])]))", "max_area_ratio=0.4"),
    ("data = dict(val=dict(pipeline=[dict(type='Resize', size=(256, -1), adaptive_side='long'),"
     " dict(type='CenterCrop', crop_size=224, efficientnet_style=True)]))",
     "adaptive_side='long'|efficientnet_style=True"),
    ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224, efficientnet_style=True),"
     " dict(type='RandomErasing', erase_prob=0.25, mode='const', fill_color=(0, 0, 0), aspect_range=(0.5, 2.0)),"
     " dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))",
     "RandomResizedCrop.efficientnet_style|fill_color=\\(0, 0, 0\\)|aspect_range=\\(0.5, 2.0\\)"),
    ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='RandomErasing',"
     " mode='rand'), dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))",
     "mode='rand' with fill_color=None"),
    ("data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='RandAugment',"
     " policies={{_base_.rand_increasing_policies}}, num_policies=2, total_level=30, magnitude_level=10),"
     " dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4), dict(type='Normalize',"
     " mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))",
     "is 3.33333 of timm's 10|ColorJitter with RandAugment"),
    ("lr_config = dict(_delete_=True, policy='step', step=[30, 60], min_lr=1e-4)", "timm's step schedules"),
    ("custom_hooks = [dict(type='EMAHook', momentum=1e-4, interval=4)]", "EMAHook.interval=4"),
    ("model = dict(train_cfg=dict(augments=dict(type='BatchCutMix', alpha=1.0, prob=1.0, correct_lam=False)))",
     "correct_lam=False"),
    ("sampler = dict(type='RepeatAugSampler', selected_ratio=3)", "sampler.selected_ratio=3"),
    (RANDAUG.format(policies="{{_base_.rand_increasing_policies}}", extra=", hparams=dict(prob=1.0,"
                    " random_negative_prob=0.0)"), "hparams.prob=1.0: timm's ops|hparams.random_negative_prob=0.0"),
    (RANDAUG.format(policies="[dict(**p, prob=0.8) if p['type'] == 'Rotate' else p for p in"
                    " {{_base_.rand_increasing_policies}}]", extra=""), "policies\\[3\\].prob=0.8"),
    (RANDAUG.format(policies="[p if p['type'] != 'Shear' else dict(type='Shear', magnitude_key='magnitude',"
                    " magnitude_range=(0, 0.3), direction='horizontal') for p in"
                    " {{_base_.rand_increasing_policies}}]", extra=""), "policies other than timm's increasing set"),
    ("optimizer_config = dict(type='DistOptimizerHook', update_interval=8, grad_clip=dict(max_norm=5.0))",
     "optimizer_config.update_interval=8: set train.grad_accum_steps"),
    ("optimizer = dict(constructor='LayerDecayOptimizerConstructor', paramwise_cfg=dict(num_layers=6,"
     " layer_decay_rate=0.9))", "num_layers=6: layer decay counts the backbone's 12 blocks"),
    ("sampler = dict(type='InfiniteSampler')", "sampler=.*RepeatAugSampler or DistributedSampler convert"),
])
def test_each_setting_without_an_equivalent_is_named(tmp_path, body, expected):
    import re
    unsupported = "\n".join(_convert(_variant(tmp_path, body)).unsupported)
    for part in expected.split("|"):
        assert re.search(part, unsupported), (part, unsupported)


@pytest.mark.parametrize("body,message", [
    ("model = dict(backbone=dict(_delete_=True, type='ResNet', depth=50))", r"backbone.type='ResNet'"),
    ("optimizer = dict(_delete_=True, type='Adafactor', lr=1e-3)", r"optimizer.type='Adafactor'"),
    ("runner = dict(_delete_=True, type='IterBasedRunner', max_iters=10)", "EpochBasedRunner with max_epochs"),
    ("model = dict(backbone=dict(shift_pixel=2))", "shift_pixel=2 is not supported"),
])
def test_configs_that_give_no_model_or_schedule_are_errors(tmp_path, body, message):
    with pytest.raises(MmcvConfigError, match=message):
        _convert(_variant(tmp_path, body))


@pytest.mark.parametrize("body,repeats", [
    ("sampler = dict(type='RepeatAugSampler')", (3.0, 256)),
    ("sampler = dict(type='RepeatAugSampler', num_repeats=2, selected_round=0, seed=5)", (2.0, 0)),
    ("sampler = dict(type='DistributedSampler', shuffle=True)", None),
])
def test_the_sampler_converts_to_repeated_augmentation(tmp_path, body, repeats):
    """mmcls's RepeatAugSampler (the same order, rounding and sharding as timm's) is aug.repeats /
    aug.repeats_round; DistributedSampler is the default."""
    conversion = _convert(_variant(tmp_path, body))
    assert conversion.unsupported == []
    aug = conversion.config["aug"]
    assert (None if "repeats" not in aug else (aug["repeats"], aug["repeats_round"])) == repeats


def test_random_erasing_takes_a_single_aspect(tmp_path):
    """mmcls reads aspect_range=a as (a, 1 / a): 0.3 is timm's own range (it was a TypeError)."""
    conversion = _convert(_variant(tmp_path, (
        "data = dict(train=dict(pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='RandomErasing',"
        " erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3, aspect_range=0.3,"
        " fill_color=[103.53, 116.28, 123.675], fill_std=[57.375, 57.12, 58.395]), dict(type='Normalize',"
        " mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])]))")))
    assert conversion.unsupported == [] and conversion.config["aug"]["re_prob"] == 0.25


def test_an_optimizer_without_lr_takes_torchs_default(tmp_path):
    """mmcv builds torch.optim.AdamW(**cfg): 1e-3 without an lr (the converter failed with KeyError); torch 1.x's
    SGD had no default lr."""
    conversion = _convert(_variant(tmp_path, "optimizer = dict(_delete_=True, type='AdamW', weight_decay=0.05)"))
    assert conversion.config["optim"]["lr"] == 1e-3 and conversion.unsupported == []
    with pytest.raises(MmcvConfigError, match="optimizer.type='SGD' needs an lr"):
        _convert(_variant(tmp_path / "sgd", "optimizer = dict(_delete_=True, type='SGD', momentum=0.9)"))
    with pytest.raises(MmcvConfigError, match="data: .*ValueError"):
        _convert(_variant(tmp_path / "batch", "data = dict(samples_per_gpu='{{_base_.data.samples_per_gpu}}')"))


def test_step_schedules_sgd_and_ema_convert(tmp_path):
    conversion = _convert(_variant(tmp_path, "\n".join([
        "optimizer = dict(_delete_=True, type='SGD', lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,"
        " paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))",
        "lr_config = dict(_delete_=True, policy='Step', step=[30, 60], gamma=0.2)",
        "custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]",
        "fp16 = dict(loss_scale=512.)",
        "load_from = 'pretrained/vrwkv_t_in1k_224.pth'",
        "work_dir = 'work_dirs/mine'",
    ])))
    c = conversion.config
    assert c["optim"]["opt"] == "nesterov" and c["optim"]["lr"] == 0.1 and c["optim"]["momentum"] == 0.9
    assert (c["sched"]["sched"], c["sched"]["decay_milestones"], c["sched"]["decay_rate"], c["sched"]["on_updates"],
            c["sched"]["warmup_epochs"]) == ("multistep", [31, 61], 0.2, False, 0)
    # (timm's multistep decays for milestone m from epoch m - 1, mmcv's Step from epoch m: the lr drops at 30, 60)
    import timm.scheduler
    import torch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = timm.scheduler.MultiStepLRScheduler(opt, decay_t=c["sched"]["decay_milestones"], decay_rate=0.2)
    lrs = []
    for epoch in range(62):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[29] == 1.0 and lrs[30] == pytest.approx(0.2) and lrs[59] == pytest.approx(0.2)
    assert lrs[60] == pytest.approx(0.04)
    assert c["ema"] == {"enabled": True, "decay": pytest.approx(1 - 4e-5)}
    assert (c["train"]["precision"], c["model"]["checkpoint"], c["run_dir"]) == \
        ("fp16", "pretrained/vrwkv_t_in1k_224.pth", "work_dirs/mine")
    assert not any("EMAHook warm_up" in n for n in conversion.notes)  # (4e-5 x 100 < 1: mmcls never warms up)


def test_mmcls_and_torch_defaults_are_the_ones_converted(tmp_path):
    """Defaults a config leaves out are mmcls's / torch's: SGD without nesterov or momentum (timm's "sgd" is
    Nesterov), AdamW's weight decay 0.01, RandAugment's total_level 30, an int Resize as a square (squash), a
    lower-case mmcv policy, decay on every parameter without a paramwise_cfg; classes from a file, Identity among
    the augments, fp16 through the optimizer hook."""
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    conversion = _convert(_variant(tmp_path, "\n".join([
        "optimizer = dict(_delete_=True, type='SGD', lr=0.1)",
        "lr_config = dict(_delete_=True, policy='step', step=30, gamma=0.5)",
        "optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.)",
        "model = dict(train_cfg=dict(augments=[dict(type='BatchMixup', alpha=0.2, prob=0.4),"
        " dict(type='Identity', prob=0.6)]))",
        f"data = dict(train=dict(classes='{tmp_path / 'classes.txt'}', pipeline=[dict(type='RandomResizedCrop',"
        " size=224), dict(type='RandAugment', policies={{_base_.rand_increasing_policies}}, num_policies=2,"
        " magnitude_level=15, magnitude_std=0.6), dict(type='Normalize', mean=[123.675, 116.28, 103.53],"
        " std=[58.395, 57.12, 57.375])]), val=dict(pipeline=[dict(type='Resize', size=256),"
        " dict(type='CenterCrop', crop_size=224), dict(type='Normalize', mean=[123.675, 116.28, 103.53],"
        " std=[58.395, 57.12, 57.375])]))"])))
    assert conversion.unsupported == []
    c = conversion.config
    assert (c["optim"]["opt"], c["optim"]["momentum"], c["optim"]["weight_decay"], c["optim"]["decay_exempt"]) == \
        ("momentum", 0.0, 0.0, "none")
    assert (c["sched"]["sched"], c["sched"]["decay_epochs"], c["sched"]["decay_rate"]) == ("step", 30.0, 0.5)
    assert (c["aug"]["auto_augment"], c["aug"]["crop_mode"], c["aug"]["crop_pct"]) == \
        ("rand-m5-n2-mstd0.2-inc1", "squash", 0.875)
    assert (c["aug"]["mixup"], c["aug"]["mixup_prob"], c["aug"]["cutmix"]) == (0.2, 0.4, 0.0)
    assert (c["data"]["classes"], c["train"]["precision"]) == (["cat", "dog"], "fp16")
    adamw = _convert(_variant(tmp_path, "optimizer = dict(_delete_=True, type='AdamW', lr=1e-3)")).config
    assert adamw["optim"]["weight_decay"] == 0.01


def test_loss_forms_and_the_loader_batch(tmp_path):
    """classy_vision smoothing is the original form with e / (1 + e); use_sigmoid is timm's binary cross-entropy;
    data.train_dataloader's samples_per_gpu overrides data's (mmcls 0.x)."""
    conversion = _convert(_variant(tmp_path, "\n".join([
        "model = dict(head=dict(loss=dict(mode='classy_vision', use_sigmoid=True)))",
        "data = dict(train_dataloader=dict(samples_per_gpu=32))"])))
    assert conversion.unsupported == []
    c = conversion.config
    assert (c["aug"]["label_smoothing"], c["aug"]["bce_loss"], c["train"]["batch_size"]) == \
        (pytest.approx(0.1 / 1.1), True, 32)


def test_head_keys_loader_keys_and_total_epochs(tmp_path):
    """custom_keys on VisionTransformerClsHead's own names (head.layers.*) act in mmcls (they were "no effect");
    train_dataloader's other keys are read too; total_epochs must equal runner.max_epochs (mmcls asserts it)."""
    text = "\n".join(_convert(_variant(tmp_path, "\n".join([
        "model = dict(head=dict(_delete_=True, type='VisionTransformerClsHead', num_classes=1000, in_channels=192,"
        " hidden_dim=768, loss=dict(type='CrossEntropyLoss')))",
        "optimizer = dict(paramwise_cfg=dict(custom_keys={'head.layers': dict(lr_mult=10.0)}))",
        "data = dict(train_dataloader=dict(samples_per_gpu=8, shuffle=False))"]))).unsupported)
    assert "custom_keys['head.layers']" in text and "data.train_dataloader.shuffle=False" in text
    with pytest.raises(MmcvConfigError, match="total_epochs=100 and runner.max_epochs=300 differ"):
        _convert(_variant(tmp_path, "total_epochs = 100"))


def test_backbone_weights_become_the_fine_tuning_checkpoint(tmp_path):
    """init_cfg=dict(type='Pretrained') (mmcls's way to start from backbone weights) was dropped silently."""
    conversion = _convert(_variant(tmp_path, "model = dict(backbone=dict(init_cfg=dict(type='Pretrained', "
                                             "checkpoint='vrwkv_t_in1k_224.pth', prefix='backbone.')))"))
    assert conversion.config["model"]["checkpoint"] == "vrwkv_t_in1k_224.pth"
    whole = _convert(_variant(tmp_path, "model = dict(init_cfg=dict(type='Pretrained', checkpoint='cls.pth'))"))
    assert whole.config["model"]["checkpoint"] == "cls.pth"


def test_arguments_a_config_leaves_out_are_the_originals_not_the_matched_models(tmp_path):
    """A 384-wide VRWKV without post_norm / init_values is pre-norm without layer scale (the original's defaults);
    it converted to vrwkv_small_patch16_224's post-norm and layer scale."""
    import timm
    conversion = _convert(_variant(tmp_path, "model = dict(backbone=dict(embed_dims=384))"))
    model = conversion.config["model"]
    assert (model["name"], model["kwargs"], model["drop_path_rate"]) == \
        ("vrwkv_small_patch16_224", {"post_norm": False, "init_values": False}, 0.0)
    net = timm.create_model(model["name"], num_classes=0, **model["kwargs"])
    assert not any("gamma" in n for n, _ in net.named_parameters()) and not net.blocks[0].post_norm


def test_other_optimizers_are_errors(tmp_path):
    """timm's rmsprop / lamb are not torch's RMSprop (alpha, momentum) / mmcls's Lamb (weight decay)."""
    for kind in ("RMSprop", "Lamb"):
        with pytest.raises(MmcvConfigError, match=f"optimizer.type='{kind}'"):
            _convert(_variant(tmp_path, f"optimizer = dict(_delete_=True, type='{kind}', lr=1e-3)"))


def test_a_misspelt_section_stops_the_conversion(tmp_path, load_tool, capsys):
    """evalution = dict(interval=1) was dropped without a word (its value occurs in checkpoint_config)."""
    src = _variant(tmp_path, "evalution = dict(interval=5)")
    assert load_tool("convert_mmcv_config").main([str(src), str(tmp_path / "out.yaml")]) == 2
    assert "top-level evalution={'interval': 5} is not an mmcls setting the converter knows (a misspelt " \
           "evaluation?)" in capsys.readouterr().err


def test_an_mmpretrain_config_is_named(tmp_path):
    path = _write(tmp_path, {"c.py": "model = dict(type='ImageClassifier')\ntrain_dataloader = dict()\n"
                                     "optim_wrapper = dict()\n"})
    with pytest.raises(MmcvConfigError, match="mmcls 1.x config"):
        _convert(path)


CUSTOM = """\
_base_ = ['../_base_/default_runtime.py']
norm = dict(mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True)
model = dict(type='ImageClassifier',
             backbone=dict(type='VRWKV6', img_size=32, patch_size=8, embed_dims=64, depth=2, num_heads=1),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=2, in_channels=64, loss=dict(type='CrossEntropyLoss')))
train_pipeline = [dict(type='LoadImageFromFile'),
                  dict(type='RandomResizedCrop', size=32, scale=(0.5, 1.0), interpolation='bicubic'),
                  dict(type='RandomFlip', flip_prob=0.5), dict(type='ColorJitter', brightness=0.2, contrast=0.2,
                  saturation=0.2), dict(type='Normalize', **norm), dict(type='ImageToTensor', keys=['img']),
                  dict(type='Collect', keys=['img', 'gt_label'])]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', size=(36, -1), interpolation='bicubic'),
                 dict(type='CenterCrop', crop_size=32), dict(type='Normalize', **norm),
                 dict(type='Collect', keys=['img'])]
data = dict(samples_per_gpu=4, workers_per_gpu=0,
            train=dict(type='CustomDataset', data_prefix='{root}/train', pipeline=train_pipeline),
            val=dict(type='CustomDataset', data_prefix='{root}/val', pipeline=test_pipeline))
optimizer = dict(type='AdamW', lr=1e-3, weight_decay=0.05, paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='CosineAnnealing', min_lr=1e-5, warmup='linear', warmup_iters=1, warmup_ratio=0.1,
                 warmup_by_epoch=True, by_epoch=False)
runner = dict(type='EpochBasedRunner', max_epochs=2)
checkpoint_config = dict(interval=1, max_keep_ckpts=1)
evaluation = dict(interval=1, metric='accuracy')
custom_hooks = [dict(type='EMAHook', momentum=0.001, warm_up=0)]
work_dir = '{work}'
"""


def test_a_users_config_converts_and_trains(tmp_path, load_tool):
    import numpy as np
    from PIL import Image

    from vision_rwkv.engine.classification import train_classifier

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / cls / f"{i}.png")
    src = _write(tmp_path / "mm", {"configs/custom.py": CUSTOM.format(root=tmp_path / "data", work=tmp_path / "run"),
                                   "_base_/default_runtime.py": "log_config = dict(interval=1, hooks=[])\n"})
    dst = tmp_path / "out" / "custom.yaml"
    assert load_tool("convert_mmcv_config").main([str(src), str(dst)]) == 0
    cfg = load_config(dst, ["train.show_progress=false", "train.plot=false", "train.tensorboard=false"])
    assert (cfg.model.name, dict(cfg.model.kwargs)) == ("vrwkv6_tiny_patch16_224", dict(
        img_size=32, patch_size=8, embed_dim=64, depth=2))
    assert (cfg.aug.crop_pct, cfg.aug.color_jitter, list(cfg.aug.scale), cfg.aug.auto_augment, cfg.aug.re_prob) == \
        (pytest.approx(32 / 36), 0.2, [0.5, 1.0], None, 0.0)
    assert (list(cfg.aug.mean), cfg.optim.clip_grad, cfg.sched.min_lr, cfg.sched.warmup_lr, cfg.ema.decay) == \
        ([0.5, 0.5, 0.5], None, 1e-5, pytest.approx(1e-4), pytest.approx(0.999))
    result = train_classifier(cfg)
    assert result["run_dir"] == str(tmp_path / "run") and 0.0 <= result["top1"] <= 100.0
    # ImageNet's validation layout: a flat folder and meta/val.txt, indices of the training folder's classes
    from vision_rwkv.engine.classification import build_datasets, build_eval_dataset
    flat = tmp_path / "data" / "flat"
    flat.mkdir()
    lines = []
    for i, cls in enumerate(("cat", "dog", "cat")):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(flat / f"v{i}.png")
        lines.append(f"v{i}.png {['cat', 'dog'].index(cls)}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    flat_cfg = load_config(dst, [f"data.val_dir={flat}", f"data.val_ann_file={tmp_path / 'val.txt'}"])
    _, val, classes = build_datasets(flat_cfg)
    assert classes == ["cat", "dog"] and [t for _, t in val.samples] == [0, 1, 0]
    ds, names = build_eval_dataset(flat_cfg, ["cat", "dog"])
    assert names == ["cat", "dog"] and [t for _, t in ds.samples] == [0, 1, 0]
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.engine.classification import check_training_config
    (tmp_path / "bad.txt").write_text("v0.png 5\n")  # (a config error: one line from the tools, not a traceback)
    with pytest.raises(ConfigError, match=r"data.val_ann_file: .*bad.txt line 1: class index 5 is past the 2"):
        build_datasets(load_config(dst, [f"data.val_dir={flat}", f"data.val_ann_file={tmp_path / 'bad.txt'}"]))
    with pytest.raises(ConfigError, match="data.val_ann_file lists images under an image folder"):
        check_training_config(load_config(dst, ["data.type=csv", "data.val_ann_file=x.txt"]))
