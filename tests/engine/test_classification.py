"""Classification library: layer-decay parameter groups vs hand-computed scales, overfitting a tiny VRWKV,
kill + resume with the full augmentation stack (RandAugment, random erasing, mixup/cutmix, drop path, EMA)."""
from pathlib import Path

import pytest
import timm
import torch

import vision_rwkv  # noqa: F401
from vision_rwkv.engine import ConfigError, load_checkpoint, load_config
from vision_rwkv.engine.classification import build_optimizer, build_scheduler, train_classifier

DEMO = Path(__file__).resolve().parents[2] / "configs" / "classification" / "demo_shapes.yaml"
TINY = ["model.kwargs.img_size=16", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=32", "model.kwargs.depth=2",
        "data.input_size=16", "data.shapes.image_size=16", "train.show_progress=false", "train.plot=false",
        "train.tensorboard=false"]


def test_layer_decay_groups_follow_group_matcher(tmp_path):
    cfg = load_config(DEMO, ["optim.layer_decay=0.5", "optim.lr=1.0", "optim.weight_decay=0.1",
                             "sched.warmup_epochs=0", "train.epochs=2"])
    model = timm.create_model("vrwkv_tiny_patch16_224", num_classes=8, img_size=16, patch_size=4, embed_dim=32,
                              depth=3)
    opt = build_optimizer(cfg, model, lr=1.0)
    # hand-computed from group_matcher: stem (pos_embed, patch_embed) = layer 0, blocks.i = layer i+1, the final
    # norm joins the last block (timm's MATCH_PREV_GROUP), the head is the top layer 4; scale = 0.5^(4 - layer)
    def expected_scale(name: str) -> float:
        if name.startswith(("pos_embed", "patch_embed")):
            return 0.5 ** 4
        if name.startswith("blocks."):
            return 0.5 ** (3 - int(name.split(".")[1]))
        if name.startswith("norm."):
            return 0.5 ** 1
        assert name.startswith("head."), name
        return 1.0

    no_wd = set(model.no_weight_decay())
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == len(names)
    for name, p in names.items():
        g = group_of[id(p)]
        assert g["lr_scale"] == pytest.approx(expected_scale(name)), name
        wd = 0.0 if (p.ndim <= 1 or name in no_wd or name.endswith(".bias")) else 0.1
        assert g["weight_decay"] == wd, name
    # the scheduler applies the scale: lr of each group = schedule value x its scale
    sched, _ = build_scheduler(cfg, opt, steps_per_epoch=5)
    sched.step_update(num_updates=3)
    peak = max(g["lr"] / g["lr_scale"] for g in opt.param_groups)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(peak * g["lr_scale"])
    assert 0.01 < peak < 1.0  # inside the cosine: below the peak lr 1.0, above the floor 0.05


@pytest.mark.parametrize("name", ["vrwkv_small_patch16_224", "vrwkv6_tiny_patch16_224"])
@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_original_recipe_decays_everything_but_norms_and_biases(name, layer_decay):
    """optim.decay_exempt=norm_bias (base.yaml, the original mmcv recipe): pos_embed, decays, bonuses, mix
    coefficients, layer scales and the v6 time_* LoRAs decay; norm weights and biases do not. timm's rule exempts
    every 1-D parameter and no_weight_decay() too."""
    over = ["optim.weight_decay=0.1"] + ([f"optim.layer_decay={layer_decay}"] if layer_decay else [])
    model = timm.create_model(name, num_classes=8, img_size=16, patch_size=4, embed_dim=64, depth=2)
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, norm_types)
             for p, _ in mod.named_parameters(recurse=False)}
    for rule in ("norm_bias", "timm", "none"):
        opt = build_optimizer(load_config(DEMO, over + [f"optim.decay_exempt={rule}"]), model, lr=1.0)
        wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        for n, p in model.named_parameters():
            if rule == "norm_bias":
                exempt = n in norms or n.endswith(".bias")
            elif rule == "none":  # (mmcv without a paramwise_cfg)
                exempt = False
            else:
                exempt = p.ndim <= 1 or n in model.no_weight_decay() or n.endswith(".bias")
            assert wd[id(p)] == (0.0 if exempt else 0.1), (rule, n)
    assert load_config(DEMO.with_name("base.yaml"), []).optim.decay_exempt == "norm_bias"


def test_tiny_vrwkv_overfits_64_images(tmp_path):
    cfg = load_config(DEMO, TINY + [
        f"run_dir={tmp_path}", "data.shapes.train_length=64", "data.shapes.val_length=64",
        "data.shapes.val_split=train",
        "aug.hflip=0.0", "aug.vflip=0.0", "train.batch_size=16", "train.epochs=25", "optim.lr=1e-2",
        "optim.weight_decay=0.0", "sched.warmup_epochs=1", "train.eval_every_epochs=25",
        "train.ckpt_every_epochs=25", "model.kwargs.embed_dim=48"])
    result = train_classifier(cfg)
    assert result["top1"] == 100.0, result  # evaluated on the 64 training images (no augmentation)
    assert result["train_loss"] < 0.3 and result["loss"] < 0.3


def test_training_leaves_the_process_as_it_found_it(tmp_path, modules_left_by, process_snapshot):
    """No reference cycle keeps the model after train_classifier returns (mixup's loss function asks the trainer
    for the epoch, and the trainer holds the loss function), and the caller's threads, random states and
    determinism settings come back (the run sets 1 thread, seeds everything, asks for deterministic kernels)."""
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path}", "data.shapes.train_length=16", "data.shapes.val_length=8",
                                    "train.batch_size=8", "train.epochs=1", "aug.mixup=0.8", "ema.enabled=true",
                                    "num_threads=1", "deterministic=true"])
    before = process_snapshot()
    assert modules_left_by(lambda: train_classifier(cfg)) == []
    assert process_snapshot() == before


def test_kill_and_resume_gives_same_weights_with_full_augmentation(tmp_path):
    common = TINY + ["data.shapes.train_length=48", "data.shapes.val_length=16", "train.batch_size=8",
                     "train.epochs=2", "aug.auto_augment=rand-m9-n2-mstd0.5-inc1", "aug.re_prob=0.25",
                     "aug.mixup=0.8", "aug.cutmix=1.0", "aug.label_smoothing=0.1", "model.drop_path_rate=0.1",
                     "ema.enabled=true", "ema.decay=0.9", "train.ckpt_every_steps=4", "deterministic=true"]
    full = train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'full'}"]))
    assert full["step"] == 12
    stopped = train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'b'}", "train.stop_after_steps=10"]))
    assert stopped.get("stopped")
    resumed = train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'b'}", "resume=latest"]))
    assert resumed["step"] == 12
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt_00000012.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "ckpt_00000012.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert full["top1"] == resumed["top1"] and full["ema_top1"] == resumed["ema_top1"]


def test_randaugment_posterize_zero_bits_does_not_crash():
    # timm's "inc" RandAugment asks Pillow for 0-bit posterize at magnitude 10; Pillow >= 13 raises on it
    import numpy as np
    from PIL import Image
    from timm.data import auto_augment

    from vision_rwkv.engine.classification import build_transforms
    cfg = load_config(DEMO, ["aug.auto_augment=rand-m10-n2-mstd0-inc1"])
    train_tf, _ = build_transforms(cfg)
    ra = next(t for t in train_tf.transforms if isinstance(t, auto_augment.RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob = 1.0
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0  # 0 bits kept -> black, as Pillow < 13 did


def test_model_checkpoint_loads_like_timm_pretrained(tmp_path, capsys):
    """model.checkpoint (fine-tuning weights): an original .pth, its conversion or a training checkpoint, into a
    model with another class count; original weights switch a v4 model to the Bi-WKV function they were trained
    with unless the config names wkv_mode; other mismatches are errors listing the keys."""
    from vision_rwkv.engine.classification import create_classifier
    from vision_rwkv.models.convert import convert_file, ours_to_original
    kw = dict(img_size=16, patch_size=4, embed_dim=32, depth=2)
    torch.manual_seed(0)
    src = timm.create_model("vrwkv_tiny_patch16_224", num_classes=5, **kw)
    with torch.no_grad():
        src.pos_embed.normal_()
    orig = tmp_path / "orig.pth"
    torch.save({"state_dict": {("" if k.startswith("head.") else "backbone.") + k: v
                               for k, v in ours_to_original(src.state_dict()).items()}}, orig)
    converted = tmp_path / "converted.safetensors"
    convert_file(orig, converted)
    trained = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "ema": None, "step": 3}, trained)
    over = [f"model.kwargs.{k}={v}" for k, v in dict(kw, img_size=24).items()]  # another grid: pos_embed resampled
    for path, mode in ((orig, "original"), (converted, "original"), (trained, "exact")):
        cfg = load_config(DEMO, over + [f"model.checkpoint={path}"])
        model = create_classifier(cfg, num_classes=3)
        assert model.head.out_features == 3 and model.wkv_mode == mode and model.wkv_chunks == 32, path
        assert torch.equal(model.blocks[1].spatial_mix.key.weight, src.blocks[1].spatial_mix.key.weight)
        assert model.pos_embed.shape[1] == 36
        assert "classifier ['head.bias', 'head.weight'] newly initialised" in capsys.readouterr().out
        same = create_classifier(cfg, num_classes=5)  # same class count: the classifier loads too
        assert torch.equal(same.head.weight, src.head.weight)
    kept = create_classifier(load_config(DEMO, over + [f"model.checkpoint={orig}", "+model.kwargs.wkv_mode=exact"]), 3)
    assert kept.wkv_mode == "exact"
    torch.save({"model": {k: v for k, v in src.state_dict().items() if "blocks.1.ffn" not in k
                          and "blocks.1.channel_mix" not in k}}, tmp_path / "bad.pt")
    with pytest.raises((RuntimeError, KeyError), match=r"missing keys \(blocks.1.channel_mix"):
        create_classifier(load_config(DEMO, over + [f"model.checkpoint={tmp_path / 'bad.pt'}"]), 3)


def test_mixup_gets_an_even_batch_after_skipped_images():
    """A corrupt image dropped from a batch leaves it odd; timm's Mixup asserts an even batch."""
    from timm.data import Mixup

    from vision_rwkv.engine.classification import even_batch
    mix = Mixup(mixup_alpha=0.8, num_classes=4)
    for n in (1, 5, 6):
        x, y = even_batch(torch.randn(n, 3, 4, 4), torch.arange(n) % 4)
        assert len(x) == len(y) == (2 if n == 1 else n - n % 2)
        xm, ym = mix(x, y)
        assert xm.shape == x.shape and ym.shape == (len(x), 4)
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(even_batch(x, torch.arange(5))[0], x[:4])


def test_eval_labels_follow_the_checkpoints_classes(tmp_path):
    """An eval folder whose class folders differ from training ({dog} of [cat, dog]) is scored in the model's
    class order; a class the model never saw is an error instead of a silent re-mapping."""
    import numpy as np
    from PIL import Image

    from vision_rwkv.engine.classification import build_eval_dataset, checkpoint_classes
    for name in ("dog", "zebra"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / name / "a.png")
    torch.save({"model": {}, "extra": {"classes": ["cat", "dog"]}}, tmp_path / "ckpt.pt")
    assert checkpoint_classes(tmp_path / "ckpt.pt") == ["cat", "dog"]
    cfg = load_config(DEMO, TINY + ["data.type=imagefolder", f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match=r"\['zebra'\] are not the model's 2 classes"):
        build_eval_dataset(cfg, ["cat", "dog"])
    (tmp_path / "val" / "zebra" / "a.png").unlink()
    (tmp_path / "val" / "zebra").rmdir()
    ds, classes = build_eval_dataset(cfg, ["cat", "dog"])
    assert classes == ["cat", "dog"] and [t for _, t in ds.samples] == [1]
    assert build_eval_dataset(cfg)[1] == ["dog"]  # no checkpoint classes: the folder's own


def test_a_fresh_run_refuses_a_folder_with_checkpoints_before_writing(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt_00000002.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="ckpt_00000002.pt.*--resume latest"):
        train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path}"]))
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("override,key", [
    ("train.epochs=0", "train.epochs"), ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ("train.batch_size=-1", "train.batch_size"), ("train.precision=fp8", "train.precision"),
    ("train.best_metric=top3", "train.best_metric"), ("aug.scale=[0.5]", "aug.scale"),
    ("aug.ratio=[1.3,0.7]", "aug.ratio"), ("aug.mean=[0.5,0.5]", "aug.mean"), ("model.name=", "model.name"),
    ("data.type=shape", "data.type"), ("data.type=csv", "data.type=csv needs data.train_csv"),
    ("optim.lr=-1", "optim.lr must be positive"), ("optim.lr_base=0", "optim.lr_base"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("optim.decay_exempt=all", "optim.decay_exempt"),
    ("train.compile=true train.compile_mode=bogus", "train.compile_mode='bogus'"),
    ("optim.clip_mode=agcc", "optim.clip_mode must be one of norm, value, agc"),
    ("sched.sched=plateau", "steps once an epoch on a validation metric"), ("sched.sched=cosin", "sched.sched"),
    ("aug.mixup_off_epoch=-1", "aug.mixup_off_epoch"), ("aug.bce_target_thresh=1.5", "aug.bce_target_thresh"),
    ("aug.bce_pos_weight=0", "aug.bce_pos_weight"), ("aug.repeats=0.5", "aug.repeats must be 0"),
    ("aug.repeats_round=-1", "aug.repeats_round"), ("train.batch_size=4096", "train.batch_size: dataset of"),
    ("aug.repeats=3 data.shapes.train_length=200 train.batch_size=256",
     "train.batch_size, aug.repeats: dataset of 200 samples gives no batch of 256")])
def test_bad_values_are_config_errors_before_training(tmp_path, override, key):
    from vision_rwkv.engine import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path}", *override.split()]))
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()


def test_repeated_augmentation_reaches_the_training_loader(tmp_path, monkeypatch):
    """aug.repeats=2 (timm's --aug-repeats): the epoch's keys hold each image twice, with copy numbers 0 and 1 (so
    that each copy is augmented anew), and the epoch keeps its number of steps."""
    from vision_rwkv.engine import SeededSamples
    keys = []
    real_getitem = SeededSamples.__getitem__

    def recording_getitem(self, key):
        keys.append(tuple(key))
        return real_getitem(self, key)

    monkeypatch.setattr(SeededSamples, "__getitem__", recording_getitem)
    result = train_classifier(load_config(DEMO, TINY + [
        f"run_dir={tmp_path}", "data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=8",
        "train.epochs=1", "aug.repeats=2", "aug.repeats_round=0", "data.num_workers=0"]))
    assert result["step"] == 2 and len(keys) == 16 and len(set(keys)) == 16
    assert sorted(k[2] for k in keys) == [0] * 8 + [1] * 8 and len({k[0] for k in keys}) == 8


def test_best_loss_keeps_the_lowest(tmp_path):
    """train.best_metric=loss: lower is better (best.pt holds the lowest validation loss)."""
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path}", "data.shapes.train_length=16", "data.shapes.val_length=16",
                                    "train.batch_size=8", "train.epochs=4", "train.best_metric=loss",
                                    "optim.lr=0.05", "sched.warmup_epochs=0", "train.eval_every_epochs=1",
                                    "train.ckpt_every_epochs=1"])
    train_classifier(cfg)
    from vision_rwkv.engine import read_metrics_csv
    losses = {int(r["step"]): r["loss"] for r in read_metrics_csv(tmp_path / "val_metrics.csv")}
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["best"]
    assert len(set(losses.values())) > 1 and best["mode"] == "min"
    assert best["value"] == pytest.approx(min(losses.values())) and losses[best["step"]] == best["value"]


def test_training_checkpoints_record_their_wkv_mode_and_conversion_keeps_it(tmp_path):
    """A training checkpoint records the Bi-WKV function its v4 model ran (extra.wkv_mode / wkv_chunks);
    convert_checkpoint keeps that mode instead of stamping 'original' on every v4 file, so an exact-mode run's
    weights, converted, still load in exact mode through model.checkpoint (and original-mode ones in theirs)."""
    from safetensors import safe_open

    from vision_rwkv.engine.classification import create_classifier
    from vision_rwkv.models.convert import convert_file
    short = TINY + ["data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=8",
                    "train.epochs=1", "train.ckpt_every_epochs=1"]
    for mode, extra in (("exact", []), ("original", ["+model.kwargs.wkv_mode=original",
                                                     "+model.kwargs.wkv_chunks=16"])):
        run = tmp_path / mode
        train_classifier(load_config(DEMO, short + extra + [f"run_dir={run}"]))
        best = run / "checkpoints" / "best.pt"
        chunks = 16 if extra else 32
        assert load_checkpoint(best)["extra"] == {"classes": load_checkpoint(best)["extra"]["classes"],
                                                  "wkv_mode": mode, "wkv_chunks": chunks}
        converted = tmp_path / f"{mode}.safetensors"
        convert_file(best, converted)
        with safe_open(str(converted), "pt") as f:
            assert (f.metadata()["wkv_mode"], f.metadata()["wkv_chunks"]) == (mode, str(chunks))
        for path in (best, converted):
            model = create_classifier(load_config(DEMO, short + [f"model.checkpoint={path}"]), 8)
            assert (model.wkv_mode, model.wkv_chunks) == (mode, chunks), path


def test_eval_throughput_counts_every_rank_over_the_slowest(monkeypatch):
    """``throughput`` of a sharded evaluation: the images of all ranks over the forward time of the slowest rank
    (the ranks run side by side), not the images over the ranks' summed times (a per-process rate)."""
    import vision_rwkv.engine.classification as cls
    from vision_rwkv.engine import collate_drop_none
    data = torch.utils.data.TensorDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate_drop_none)
    seen = []
    monkeypatch.setattr(cls, "all_gather_object", lambda x: seen.append(x) or [x, 100.0])  # a slower rank 1
    r = cls.evaluate_loader(torch.nn.Linear(3, 2), loader, 2, torch.device("cpu"))
    assert r["num_samples"] == 6 and 0 < seen[0] < 100.0
    assert r["throughput"] == pytest.approx(6 / 100.0)


def test_unreadable_validation_images_are_counted_in_the_val_metrics(tmp_path):
    """Validation during training drops unreadable images (warned); val_metrics.csv says how many, since its top-1
    is then over fewer images (the count was only in the warning)."""
    import numpy as np
    from PIL import Image

    from vision_rwkv.engine import read_metrics_csv
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / split / name / f"{i}.png")
    for bad in ("val/cat/1.png", "val/dog/3.png"):
        (tmp_path / bad).write_bytes(b"not an image")
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path / 'run'}", "data.type=imagefolder",
                                    f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}",
                                    "model.num_classes=2", "train.batch_size=4", "train.epochs=1"])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        train_classifier(cfg)
    rows = read_metrics_csv(tmp_path / "run" / "val_metrics.csv")
    assert [r["skipped_samples"] for r in rows] == [2.0]


def test_diverged_weights_give_strict_json_results(tmp_path):
    """Evaluating weights gone NaN gives a NaN loss: metrics.json writes it as null (bare NaN is not JSON, and a
    strict parser - jq, JavaScript, ``json.loads(parse_constant=...)`` - rejected the whole file)."""
    import json

    from vision_rwkv.engine.classification import create_classifier, evaluate_classifier
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path}", "data.shapes.val_length=8", "eval.batch_size=4"])
    model = create_classifier(cfg, 8)  # the 8 Shapes classes
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, tmp_path / "nan.pt")
    cfg = load_config(DEMO, TINY + [f"run_dir={tmp_path}", "data.shapes.val_length=8", "eval.batch_size=4",
                                    f"eval.checkpoint={tmp_path / 'nan.pt'}"])
    result = evaluate_classifier(cfg)
    assert result["loss"] != result["loss"]  # NaN

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["loss"] is None and metrics["num_samples"] == 8


def test_warmup_prefix_and_cooldown_epochs_are_trained(tmp_path):
    """timm's create_scheduler_v2 lengthens the run by the cooldown (and a prefixed warmup); its train.py trains
    those epochs. They were dropped: the cosine ended at 8e-4 where timm goes on to 1.3e-4, the cooldown never ran."""
    from timm.scheduler import create_scheduler_v2
    over = TINY + [f"run_dir={tmp_path}", "train.epochs=2", "sched.warmup_epochs=1", "sched.warmup_prefix=true",
                   "sched.cooldown_epochs=1", "data.shapes.train_length=32", "train.batch_size=8",
                   "data.shapes.val_length=8", "train.log_every=1", "optim.lr=0.001", "sched.min_lr=1.0e-5"]
    result = train_classifier(load_config(DEMO, over))
    assert result["epoch"] == 4 and result["step"] == 16  # 2 + 1 warmup + 1 cooldown epochs of 4 steps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    sched, epochs = create_scheduler_v2(opt, sched="cosine", num_epochs=2, warmup_epochs=1, warmup_prefix=True,
                                        cooldown_epochs=1, min_lr=1e-5, warmup_lr=1e-6, step_on_epochs=False,
                                        updates_per_epoch=4)
    want = []
    for step in range(epochs * 4):
        want.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=step + 1)
    from vision_rwkv.engine import read_metrics_csv
    logged = [r["lr"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")]
    assert epochs == 4 and logged == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("noise", [[0.25, 1.0], 0.5])
def test_lr_noise_cycles_and_k_decay_follow_timm(tmp_path, noise):
    """timm's --lr-noise / --lr-noise-pct / --lr-noise-std / --lr-cycle-* / --lr-k-decay as sched.* keys: the logged
    rates are timm's scheduler's, noise seeded by `seed`, two cosine cycles trained (the run doubles its epochs)."""
    from timm.scheduler import create_scheduler_v2

    from vision_rwkv.engine import read_metrics_csv
    over = TINY + [f"run_dir={tmp_path}", "train.epochs=2", "sched.warmup_epochs=0", f"sched.noise={noise}",
                   "sched.noise_pct=0.5", "sched.noise_std=0.8", "sched.cycle_limit=2", "sched.cycle_decay=0.5",
                   "sched.k_decay=2.0", "data.shapes.train_length=32", "train.batch_size=8", "seed=7",
                   "data.shapes.val_length=8", "train.log_every=1", "optim.lr=0.001", "sched.min_lr=1.0e-5"]
    result = train_classifier(load_config(DEMO, over))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    sched, epochs = create_scheduler_v2(opt, sched="cosine", num_epochs=2, warmup_epochs=0, min_lr=1e-5,
                                        warmup_lr=1e-6, step_on_epochs=False, updates_per_epoch=4, noise=noise,
                                        noise_pct=0.5, noise_std=0.8, noise_seed=7, cycle_limit=2, cycle_decay=0.5,
                                        k_decay=2.0)
    assert epochs == 4 and result["step"] == 16
    want = []
    for step in range(epochs * 4):
        want.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=step + 1)
    logged = [r["lr"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")]
    assert logged == pytest.approx(want, rel=1e-6)
    quiet, _ = create_scheduler_v2(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.001), sched="cosine",
                                   num_epochs=2, min_lr=1e-5, step_on_epochs=False, updates_per_epoch=4,
                                   cycle_limit=2, cycle_decay=0.5, k_decay=2.0)
    assert any(abs(quiet._get_lr(t)[0] - w) > 1e-9 for t, w in enumerate(want))  # (the noise is on)


@pytest.mark.parametrize("override, message", [
    ("sched.noise=[0.9,0.4]", "sched.noise"), ("sched.noise=[0.1,0.2,0.3]", "sched.noise"),
    ("sched.noise=-0.5", "sched.noise"), ("sched.noise_pct=0", "sched.noise_pct"),
    ("sched.cycle_limit=0", "sched.cycle_limit"), ("sched.cycle_limit=1.5", "sched.cycle_limit"),
    ("sched.k_decay=-1", "sched.k_decay")])
def test_lr_noise_and_cycle_settings_out_of_range_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path}", override]))


def test_adaptive_gradient_clipping_as_timm_dispatches_it():
    from timm.utils import dispatch_clip_grad

    from vision_rwkv.engine import clip_gradients
    grads = []
    for ours in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
        (model(torch.randn(5, 4)) * 100).sum().backward()
        params = list(model.parameters())
        if ours:
            norm = clip_gradients(params, 0.01, "agc")
            assert norm > 0
        else:
            dispatch_clip_grad(params, 0.01, mode="agc")
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown clip mode 'bogus'"):
        clip_gradients(params, 1.0, "bogus")


def test_top1_breaks_ties_as_top5_and_timm_do():
    """Tied logits (bf16-rounded outputs): top-1 came from argmax, top-5 and timm's accuracy from topk, which may
    pick another of the tied classes (2.25% against 1.25% in the audit)."""
    from timm.utils import accuracy

    from vision_rwkv.engine.classification import evaluate_loader
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (400, 10), generator=g).float()  # many ties at the top
    labels = torch.randint(0, 10, (400,), generator=g)
    model = torch.nn.Identity()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, labels), batch_size=64,
                                         collate_fn=lambda b: (torch.utils.data.default_collate(b), 0))
    r = evaluate_loader(model, loader, 10, torch.device("cpu"))
    top1, top5 = accuracy(logits, labels, topk=(1, 5))
    assert r["top1"] == pytest.approx(float(top1)) and r["top5"] == pytest.approx(float(top5))


@pytest.mark.parametrize("n", [100, 1000])
def test_confusion_matrix_names_as_many_classes_as_can_be_read(tmp_path, captured_figures, n):
    """Above 40 classes the matrix had no names and no key (ticks of numbers only); now names while a class gets
    4 points of the axis, else indices that the title ties to per_class.csv. The colour bar says what it shows."""
    import numpy as np

    import vision_rwkv.engine.classification as cls
    figures = captured_figures(cls)
    names = [f"class_{i}" for i in range(n)]
    cls.plot_confusion_matrix(np.eye(n, dtype=int).tolist(), names, tmp_path / "cm.png")
    ax, bar = figures[0].axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    if n == 100:
        assert labels == names and "per_class.csv" not in ax.get_title()
    else:
        assert labels[:2] == ["0", "25"] and "the rows of per_class.csv" in ax.get_title()
    assert "share of the true class" in bar.get_ylabel()


@pytest.mark.parametrize("mix,smoothing,thresh,bce_sum,pos_weight", [
    (True, 0.1, None, False, None), (True, 0.1, 0.2, True, 2.0), (False, 0.1, None, False, None),
    (False, 0.1, 0.2, False, 3.0), (False, 0.0, None, True, None)])
def test_bce_loss_is_timms_binary_cross_entropy(mix, smoothing, thresh, bce_sum, pos_weight):
    """aug.bce_loss: timm's BinaryCrossEntropy with timm train.py's arguments (smoothing only without mixup, whose
    soft targets hold it) on the targets the mixup gives; not the softmax losses."""
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy

    from vision_rwkv.engine.classification import build_mixup_and_loss
    over = TINY + [f"aug.mixup={0.8 if mix else 0.0}", f"aug.label_smoothing={smoothing}", "aug.bce_loss=true",
                   f"aug.bce_target_thresh={'null' if thresh is None else thresh}", f"aug.bce_sum={bce_sum}",
                   f"aug.bce_pos_weight={'null' if pos_weight is None else pos_weight}"]
    mixup, loss = build_mixup_and_loss(load_config(DEMO, over), 5)
    assert isinstance(loss, BinaryCrossEntropy) and (mixup is not None) == mix
    torch.manual_seed(0)
    x, logits, y = torch.randn(6, 3, 4, 4), torch.randn(6, 5), torch.randint(0, 5, (6,))
    want_loss = BinaryCrossEntropy(smoothing=0.0 if mix else smoothing, target_threshold=thresh, sum_classes=bce_sum,
                                   pos_weight=None if pos_weight is None else torch.tensor(pos_weight))
    if mix:
        import numpy as np
        np.random.seed(0)
        _, targets = mixup(x.clone(), y.clone())
        np.random.seed(0)
        _, want_targets = Mixup(mixup_alpha=0.8, label_smoothing=smoothing, num_classes=5)(x.clone(), y.clone())
        torch.testing.assert_close(targets, want_targets)
    else:
        targets = want_targets = y
    got, want = loss(logits, targets), want_loss(logits, want_targets)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    softmax_ce = torch.nn.functional.cross_entropy(logits, want_targets, label_smoothing=0.0 if mix else smoothing)
    assert not torch.allclose(got, softmax_ce)


def test_mixup_off_epoch_stops_mixing_from_that_epoch_and_after_a_resume(tmp_path, monkeypatch):
    """aug.mixup_off_epoch=1 (timm's --mixup-off-epoch): epoch 0 mixes, epochs 1 and 2 do not, also when the run
    is resumed inside epoch 1; the loss stays the soft-target one (targets one-hot, smoothed)."""
    from timm.data import Mixup
    calls = []
    real_call = Mixup.__call__

    def recording_call(self, x, target):
        before = x.clone()
        out_x, out_t = real_call(self, x, target)
        calls.append((self.mixup_enabled, torch.equal(out_x, before)))
        return out_x, out_t

    monkeypatch.setattr(Mixup, "__call__", recording_call)
    common = TINY + ["data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=8",
                     "train.epochs=3", "aug.mixup=0.8", "aug.mixup_prob=1.0", "aug.mixup_off_epoch=1",
                     "train.ckpt_every_steps=1", "sched.warmup_epochs=0"]
    train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'full'}"]))
    assert [enabled for enabled, _ in calls] == [True, True, False, False, False, False]
    assert [same for _, same in calls] == [False, False, True, True, True, True]
    calls.clear()
    train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'b'}", "train.stop_after_steps=3"]))
    train_classifier(load_config(DEMO, common + [f"run_dir={tmp_path / 'b'}", "resume=latest"]))
    # (the stop saves nothing: the resume starts after step 2, the first of epoch 1)
    assert [enabled for enabled, _ in calls] == [True, True, False] + [False] * 4


def test_bce_training_runs_with_a_positive_weight(tmp_path):
    """The loss module goes to the training device (BinaryCrossEntropy's pos_weight is a buffer, as in timm's
    train.py's train_loss_fn.to(device))."""
    result = train_classifier(load_config(DEMO, TINY + [
        f"run_dir={tmp_path}", "data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=8",
        "train.epochs=1", "aug.bce_loss=true", "aug.bce_pos_weight=2.0", "aug.mixup=0.8"]))
    assert result["step"] == 2 and result["train_loss"] == result["train_loss"]  # (finite)


def test_layer_decay_keeps_the_cosine_floor_at_min_lr_ratio_of_the_lr():
    """With layer decay the floor was min_lr_ratio x lr / min(lr_scale) (1.35e-3 for lr 5e-4 at 0.65 over 12
    blocks): the lr rose through training."""
    cfg = load_config(DEMO, TINY + ["optim.layer_decay=0.65", "optim.lr=5e-4", "sched.min_lr=null",
                                    "sched.min_lr_ratio=0.01"])
    model = timm.create_model("vrwkv_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=12,
                              num_classes=3)
    optimizer = build_optimizer(cfg, model, 5e-4)
    sched, epochs = build_scheduler(cfg, optimizer, steps_per_epoch=4)
    assert sched.lr_min == pytest.approx(5e-6)
    sched.step_update(num_updates=4 * epochs)  # the end of the cosine: every group at the floor times its scale
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(5e-6 * g["lr_scale"], rel=1e-3)


@pytest.mark.parametrize("opt,over,want", [
    ("lion", ["optim.betas=[0.95,0.98]"], dict(betas=(0.95, 0.98))),
    ("adan", ["optim.betas=[0.9,0.9,0.9]", "optim.eps=1e-6"], dict(betas=(0.9, 0.9, 0.9), eps=1e-6)),
    ("lamb", [], dict(eps=1e-6, betas=(0.9, 0.999))),  # (null: the optimizer's own, as timm's train.py)
    ("adamw", [], dict(eps=1e-8, betas=(0.9, 0.999))),
])
def test_optimizer_betas_and_eps_reach_every_optimizer(opt, over, want):
    """optim.betas / eps were passed only to names ending in adam / adamw and to lamb (lion, adan, adabelief, ...
    silently kept their defaults); and base.yaml's eps 1e-8 replaced Lamb's own 1e-6."""
    cfg = load_config(DEMO, TINY + [f"optim.opt={opt}", *over])
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), 1e-3)
    for key, value in want.items():
        got = optimizer.defaults[key]
        assert (tuple(got) if key == "betas" else got) == pytest.approx(value), key


def test_drop_path_follows_the_models_default_unless_set():
    """base.yaml's drop_path_rate 0.0 replaced VRWKV-S's 0.3 (timm's, the original's)."""
    from vision_rwkv.engine.classification import create_classifier
    over = TINY + ["model.name=vrwkv_small_patch16_224"]
    default = create_classifier(load_config(DEMO, over + ["model.drop_path_rate=null"]), 3)
    assert max(getattr(m, "drop_prob", 0.0) for m in default.modules()) == pytest.approx(0.3)
    off = create_classifier(load_config(DEMO, over + ["model.drop_path_rate=0.0"]), 3)
    assert max(getattr(m, "drop_prob", 0.0) for m in off.modules()) == 0.0
    base = load_config(Path(DEMO).with_name("base.yaml"))
    assert base.model.drop_path_rate is None


def test_training_interpolation_may_be_timms_random():
    from vision_rwkv.engine.classification import build_transforms
    train, val = build_transforms(load_config(DEMO, TINY + ["aug.train_interpolation=random"]))
    crop = train.transforms[0]
    assert isinstance(crop.interpolation, (tuple, list)) and len(crop.interpolation) == 2


@pytest.mark.parametrize("override,key", [
    ("aug.interpolation=random", "aug.interpolation"), ("aug.train_interpolation=foo", "aug.train_interpolation"),
    ("aug.mixup_mode=element", "aug.mixup_mode"), ("aug.crop_mode=foo", "aug.crop_mode"),
    ("aug.re_mode=foo", "aug.re_mode"), ("aug.hflip=2", "aug.hflip"),
    ("aug.label_smoothing=1.5", "aug.label_smoothing"),
    ("ema.enabled=true ema.decay=1.5", "ema.decay"), ("sched.warmup_epochs=-1", "sched.warmup_epochs"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.opt=adamww", "optim.opt"),
    ("sched.sched=wsd sched.decay_epochs=400", "wsd schedule requires"),
    ("sched.sched=none", "sched.sched=none leaves every group's lr as built"),
    ("+aug.aug_repeats=3", "unknown config key 'aug.aug_repeats'"),
    ("model.kwargs.pretrained_cfg_overlay={file:/x}", "YAML needs a space after the colon"),
])
def test_out_of_range_and_unread_values_are_config_errors(tmp_path, override, key):
    """Each ran silently (another mode, no warm-up, an extrapolating EMA, a key no tool reads) or failed with a bare
    traceback from timm / torch after the data was built."""
    from vision_rwkv.engine import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path}", *override.split()]))


@pytest.mark.parametrize("sched", ["wsd", "rsqrt", "none", "step"])
def test_more_of_timms_schedules_and_epoch_stepping(tmp_path, sched):
    """timm's wsd / rsqrt / none schedules, a fractional decay_epochs (EfficientNet's 2.4; wsd / rsqrt: a fraction of
    the run), and sched.on_updates=false (timm's default: the lr changes once an epoch)."""
    result = train_classifier(load_config(DEMO, TINY + [
        f"run_dir={tmp_path}", "data.shapes.train_length=16", "data.shapes.val_length=8", "train.batch_size=4",
        "train.epochs=3", "train.log_every=1", f"sched.sched={sched}",
        f"sched.decay_epochs={1.5 if sched == 'step' else 0.5}",
        "sched.on_updates=false", f"sched.warmup_epochs={0 if sched == 'none' else 1}", "optim.lr=1e-3"]))
    from vision_rwkv.engine import read_metrics_csv
    lrs = [r["lr"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")]
    assert result["step"] == 12 and all(len(set(lrs[i:i + 4])) == 1 for i in (0, 4, 8))  # (constant in an epoch)
    assert (lrs[0] == lrs[4]) == (sched == "none")
