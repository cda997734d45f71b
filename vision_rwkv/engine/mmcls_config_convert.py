"""Convert an mmcls 0.x config of the original Vision-RWKV classification models into this package's YAML config
(``configs/classification/base.yaml`` keys; tools/train.py).

``convert_mmcls_config(read_mmcv_config(path))`` maps:

======================================================  =========================================================
mmcls (the original repo's ``classification/configs``)  ours
======================================================  =========================================================
``model.backbone`` VRWKV / VRWKV6 (embed_dims, depth,   ``model.name`` (the registered model of that size),
num_heads, init_values, post_norm, drop_path_rate...)   ``model.drop_path_rate``, ``model.kwargs`` (what differs)
``model.head`` (Linear / VisionTransformer ClsHead)     ``model.num_classes``, ``model.kwargs.head_hidden_size``
``head.loss`` LabelSmoothLoss, ``train_cfg.augments``   ``aug.label_smoothing``, ``aug.mixup`` / ``cutmix`` /
(BatchMixup / BatchCutMix)                              ``mixup_prob`` / ``mixup_switch_prob``
train pipeline (RandomResizedCrop, RandomFlip,          ``data.input_size``, ``aug.scale`` / ``ratio`` / ``hflip``
RandAugment, ColorJitter, RandomErasing, Normalize)     / ``vflip`` / ``auto_augment`` / ``color_jitter`` /
                                                        ``re_*`` / ``mean`` / ``std`` / ``train_interpolation``
test pipeline (Resize, CenterCrop)                      ``aug.crop_pct`` / ``interpolation``
``data`` (samples_per_gpu, data_prefix)                 ``train.batch_size``, ``data.train_dir`` / ``val_dir``
``sampler`` RepeatAugSampler (num_repeats, ...)         ``aug.repeats`` / ``aug.repeats_round``
``optimizer`` (+ ``paramwise_cfg``), ``grad_clip``      ``optim.*``
``lr_config`` (CosineAnnealing / Step + linear warm-up) ``sched.*``
``runner.max_epochs``, ``checkpoint_config``,           ``train.*``, ``ema.*``, ``run_dir``, ``resume``,
``evaluation``, ``fp16``, EMAHook, ``work_dir``, ...    ``model.checkpoint`` (``load_from``)
======================================================  =========================================================

As for mmseg (``vision_rwkv.seg.mmseg_config_convert``), settings that would change the results without an
equivalent here are listed in ``Conversion.unsupported`` and the rest in ``Conversion.notes``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from .mmcv_config import MmcvConfigError
from .mmcv_convert import (Conversion, ConverterBase, FlowDict, conversion_text, pretrained_checkpoint,
                           registered_backbone, same_value)

__all__ = ["convert_mmcls_config", "mmcls_conversion_yaml"]

SECTIONS = ("model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config",
            "evaluation", "log_config", "fp16", "work_dir", "resume_from", "load_from", "custom_hooks", "seed",
            "dist_params", "log_level", "workflow", "cudnn_benchmark", "gpu_ids", "opencv_num_threads",
            "mp_start_method", "auto_resume", "device", "custom_imports", "paramwise_cfg", "find_unused_parameters",
            "total_epochs", "default_scope", "sampler")
# mmcv optimizer type -> timm's name: the ones whose torch defaults timm builds alike (RMSprop: timm's alpha 0.9 and
# momentum; Lamb: timm's trust-ratio variant and mmcls's weight decay 0.01 - neither converts)
OPTIMIZERS = {"AdamW": "adamw", "Adam": "adam", "SGD": "sgd"}
# timm's RandAugment "increasing" op set (rand-...-inc1), as mmcls writes it: (type, magnitude range)
RAND_INCREASING = [("AutoContrast", None), ("Equalize", None), ("Invert", None), ("Rotate", (0, 30)),
                   ("Posterize", (4, 0)), ("Solarize", (256, 0)), ("SolarizeAdd", (0, 110)),
                   ("ColorTransform", (0, 0.9)), ("Contrast", (0, 0.9)), ("Brightness", (0, 0.9)),
                   ("Sharpness", (0, 0.9)), ("Shear", (0, 0.3)), ("Shear", (0, 0.3)), ("Translate", (0, 0.45)),
                   ("Translate", (0, 0.45))]
FORMAT_STEPS = ("LoadImageFromFile", "ImageToTensor", "ToTensor", "Collect", "DefaultFormatBundle")
TRAIN_STEPS = ("RandomResizedCrop", "RandomFlip", "RandAugment", "ColorJitter", "RandomErasing", "Normalize")


class _Converter(ConverterBase):
    SECTIONS = SECTIONS
    KIND = "mmcls"

    def __init__(self, mm: Dict[str, Any], referenced: Optional[Set[str]] = None):
        super().__init__(mm, ("top", "model", "data", "aug", "optim", "sched", "ema", "train"), referenced)

    # ------------------------------------------------------------------ model
    def model(self) -> None:
        from vision_rwkv.models.convert import model_kwargs_from_original

        m = self.model_dict("ImageClassifier")
        b = dict(m.get("backbone") or {})
        kind = b.pop("type", None)
        family = {"VRWKV": "vrwkv", "VRWKV6": "vrwkv6"}.get(kind)
        if family is None:
            raise MmcvConfigError(f"model.backbone.type={kind!r}: the converter reads the original Vision-RWKV "
                                  f"classification backbones, VRWKV and VRWKV6")
        if b.pop("with_cp", False):
            self.set("model", "grad_checkpointing", True)
        self.expect(b, "final_norm", True, "model.backbone", "the classifier pools the final norm's output")
        b.pop("final_norm", None)
        weights = b.pop("pretrained", None) or pretrained_checkpoint(b.pop("init_cfg", None))
        if weights:  # (backbone weights: model.checkpoint takes a backbone or a whole classifier, new head if needed)
            self.set("model", "checkpoint", str(weights))
        try:
            kwargs = model_kwargs_from_original(b, family)
        except ValueError as err:
            raise MmcvConfigError(f"model.backbone: {err}") from None
        name, extra, notes = registered_backbone(kwargs, family)
        drop_path = kwargs.get("drop_path_rate", 0.0)  # (model.drop_path_rate, as the shipped configs)
        extra.pop("drop_path_rate", None)
        self.notes += notes
        self.set("model", "name", name)
        self.set("model", "drop_path_rate", float(drop_path))
        if family == "vrwkv":
            self.notes.append("v4 backbones train with the exact Bi-WKV (the paper's formula), as the shipped "
                              "configs; model.kwargs.wkv_mode=original gives the original CUDA kernel's function")
        neck = m.get("neck")
        if not (isinstance(neck, dict) and neck.get("type") == "GlobalAveragePooling"):
            self.unsupported.append(f"model.neck={neck!r}: the classifier averages the tokens (GlobalAveragePooling)")
        self.head(m.get("head") or {}, extra)
        self.kwargs = extra
        self.augments((m.get("train_cfg") or {}).get("augments"))
        self.leftovers(m, "model", ("type", "backbone", "neck", "head", "train_cfg"),
                       ignored=("init_cfg", "pretrained"))
        whole = pretrained_checkpoint(m.get("init_cfg"))  # (the layer inits are the model's own here)
        if whole:
            self.set("model", "checkpoint", str(whole))
        if m.get("pretrained"):
            self.set("model", "checkpoint", str(m["pretrained"]))

    def head(self, h: Dict[str, Any], extra: Dict[str, Any]) -> None:
        kind = h.get("type")
        if kind == "VisionTransformerClsHead" and h.get("hidden_dim"):
            extra["head_hidden_size"] = int(h["hidden_dim"])
            self.expect(h, "act_cfg", {"type": "Tanh"}, "model.head", "the pre-logits layer uses tanh")
        elif kind not in ("LinearClsHead", "VisionTransformerClsHead"):
            self.unsupported.append(f"model.head.type={kind!r}: only LinearClsHead / VisionTransformerClsHead convert")
        if "num_classes" in h:
            self.set("model", "num_classes", int(h["num_classes"]))
        loss = dict(h.get("loss") or {"type": "CrossEntropyLoss"})
        self.expect(loss, "reduction", "mean", "model.head.loss", "the loss is the batch mean")
        if loss.get("type") == "LabelSmoothLoss":
            eps = float(loss.get("label_smooth_val", 0.0))
            mode = loss.get("mode", "original")
            if mode == "classy_vision":  # ((one-hot + e / classes) / (1 + e)): the original form with e / (1 + e)
                eps = eps / (1.0 + eps)
            elif mode != "original":
                self.unsupported.append(f"model.head.loss.mode={mode!r}: 'original' or 'classy_vision' convert")
            self.set("aug", "label_smoothing", round(eps, 9))
        elif loss.get("type") == "CrossEntropyLoss":
            self.set("aug", "label_smoothing", 0.0)
        else:
            self.unsupported.append(f"model.head.loss.type={loss.get('type')!r}: only CrossEntropyLoss / "
                                    f"LabelSmoothLoss convert")
        if loss.get("use_sigmoid"):  # (binary cross-entropy on the smoothed / mixed targets: timm's BCE)
            self.set("aug", "bce_loss", True)
        self.expect(loss, "loss_weight", 1.0, "model.head.loss", "the loss has weight 1")
        self.leftovers(loss, "model.head.loss", ("type", "mode", "label_smooth_val", "use_sigmoid", "loss_weight",
                                                 "reduction"), ignored=("num_classes", "loss_name"))
        self.leftovers(h, "model.head", ("type", "num_classes", "loss", "hidden_dim", "act_cfg"),
                       ignored=("in_channels", "init_cfg", "cal_acc", "topk"))

    def augments(self, augments: Any) -> None:
        items = [augments] if isinstance(augments, dict) else list(augments or [])
        probs = {"BatchMixup": 0.0, "BatchCutMix": 0.0}
        for a in items:
            kind = a.get("type")
            if kind == "Identity":  # (the remaining probability: no mixing)
                continue
            if kind not in probs:
                self.unsupported.append(f"model.train_cfg.augments: {kind} has no equivalent here")
                continue
            probs[kind] = float(a.get("prob", 1.0))
            self.set("aug", "mixup" if kind == "BatchMixup" else "cutmix", float(a.get("alpha", 1.0)))
            if kind == "BatchCutMix" and a.get("cutmix_minmax") is not None:
                self.set("aug", "cutmix_minmax", list(a["cutmix_minmax"]))
            self.expect(a, "correct_lam", True, f"model.train_cfg.augments.{kind}", "timm corrects lambda for "
                        "the clipped box")
            self.leftovers(a, f"model.train_cfg.augments.{kind}", ("type", "alpha", "prob", "cutmix_minmax",
                                                                   "correct_lam"), ignored=("num_classes",))
        total = sum(probs.values())
        self.set("aug", "mixup", self.out["aug"].get("mixup", 0.0))
        self.set("aug", "cutmix", self.out["aug"].get("cutmix", 0.0))
        if total > 0:  # (mmcls draws one augment by its prob, none with the rest: timm's prob and switch prob)
            self.set("aug", "mixup_prob", min(total, 1.0))
            self.set("aug", "mixup_switch_prob", probs["BatchCutMix"] / total)

    # ------------------------------------------------------------------ data
    def data(self) -> None:
        d = self.data_loader("train.batch_size")
        train, val = d.get("train") or {}, d.get("val") or {}
        self.set("data", "type", "imagefolder")
        for ds, key, where in ((train, "train_dir", "data.train"), (val, "val_dir", "data.val")):
            if ds.get("type") not in ("ImageNet", "CustomDataset", None):
                self.notes.append(f"{where}.type={ds.get('type')!r} is read as a class-per-folder image folder")
            if ds.get("data_prefix"):
                self.set("data", key, str(ds["data_prefix"]))
            if ds.get("ann_file"):  # (its class indices count the training folder's sorted classes, as mmcls's)
                self.set("data", key.replace("_dir", "_ann_file"), str(ds["ann_file"]))
            if ds.get("classes") is not None:
                self.set("data", "classes", self.class_names(ds["classes"], where))
            self.leftovers(ds, where, ("type", "data_prefix", "ann_file", "classes", "pipeline"),
                           ignored=("test_mode", "file_client_args"))
        self.train_pipeline(train.get("pipeline") or [])
        self.test_pipeline(val.get("pipeline") or [])
        self.sampler(self.mm.get("sampler"))
        self.leftovers(d, "data", ("samples_per_gpu", "workers_per_gpu", "train", "val", "test"),
                       ignored=("train_dataloader", "val_dataloader", "test_dataloader", "persistent_workers"))

    def sampler(self, sampler: Any) -> None:
        """mmcls's training sampler: RepeatAugSampler is timm's repeated augmentation (the same order, rounding and
        sharding); DistributedSampler is the default."""
        if sampler is None:
            return
        if not isinstance(sampler, dict) or sampler.get("type") not in ("RepeatAugSampler", "DistributedSampler"):
            self.unsupported.append(f"sampler={sampler!r}: RepeatAugSampler or DistributedSampler convert")
            return
        if sampler["type"] == "RepeatAugSampler":
            self.set("aug", "repeats", float(sampler.get("num_repeats", 3)))
            self.set("aug", "repeats_round", int(sampler.get("selected_round", 256)))
            self.expect(sampler, "selected_ratio", 0, "sampler", "each process keeps 1 / world of the images",
                        default=0)
        self.expect(sampler, "shuffle", True, "sampler", "training shuffles", default=True)
        self.leftovers(sampler, "sampler", ("type", "num_repeats", "selected_round", "selected_ratio", "shuffle"),
                       ignored=("seed",))

    @staticmethod
    def class_names(classes: Any, where: str) -> List[str]:
        """A list of names, or (as mmcls reads a str) the lines of that text file."""
        if isinstance(classes, (list, tuple)):
            return [str(c) for c in classes]
        try:
            lines = Path(str(classes)).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise MmcvConfigError(f"{where}.classes={classes!r}: cannot read the class file ({err})") from None
        return [line.strip() for line in lines if line.strip()]

    def train_pipeline(self, pipeline: Sequence[Dict[str, Any]]) -> None:
        where = "data.train.pipeline"
        steps = self.pipeline_steps(pipeline, where, FORMAT_STEPS)
        for kind in steps:
            if kind not in TRAIN_STEPS:
                self.unsupported.append(f"{where}: {kind} has no equivalent here (timm's train transform: "
                                        f"{', '.join(TRAIN_STEPS)})")
        crop = steps.get("RandomResizedCrop")
        if crop is None:
            self.unsupported.append(f"{where}: no RandomResizedCrop; the train transform here always takes one")
        else:
            size = crop.get("size", 224)
            sizes = [size, size] if isinstance(size, int) else list(size)
            if sizes[0] != sizes[1]:
                self.unsupported.append(f"{where}.RandomResizedCrop.size={size!r}: square crops here")
            self.set("data", "input_size", int(sizes[0]))
            self.set("aug", "scale", [float(v) for v in crop.get("scale", (0.08, 1.0))])
            self.set("aug", "ratio", [round(float(v), 7) for v in crop.get("ratio", (3 / 4, 4 / 3))])
            self.train_interpolation = crop.get("interpolation", "bilinear")  # (mmcls's default)
            self.expect(crop, "efficientnet_style", False, f"{where}.RandomResizedCrop", "timm's crop sampler")
            if crop.get("backend", "cv2") != "pillow":
                self.notes.append(f"{where}.RandomResizedCrop backend={crop.get('backend', 'cv2')!r}: timm resizes "
                                  f"with PIL here (the same interpolation, slightly different pixels)")
            self.leftovers(crop, f"{where}.RandomResizedCrop", ("type", "size", "scale", "ratio", "interpolation",
                                                                "efficientnet_style"),
                           ignored=("backend", "max_attempts", "min_covered", "crop_padding"))
        flip = steps.get("RandomFlip")
        prob = float(flip.get("flip_prob", 0.5)) if flip else 0.0
        direction = flip.get("direction", "horizontal") if flip else "horizontal"
        if direction not in ("horizontal", "vertical"):
            self.unsupported.append(f"{where}.RandomFlip.direction={direction!r}: one direction per flip here")
        self.set("aug", "hflip", prob if direction == "horizontal" else 0.0)
        self.set("aug", "vflip", prob if direction == "vertical" else 0.0)
        self.rand_augment(steps.get("RandAugment"), where)
        jitter = steps.get("ColorJitter")
        if jitter:
            values = {float(jitter.get(k, 0.0)) for k in ("brightness", "contrast", "saturation")}
            if len(values) != 1:
                self.unsupported.append(f"{where}.ColorJitter: brightness / contrast / saturation differ; timm's "
                                        f"color_jitter is one strength")
            self.set("aug", "color_jitter", max(values))
            self.expect(jitter, "hue", 0.0, f"{where}.ColorJitter", "no hue jitter")
            if "RandAugment" in steps:
                self.unsupported.append(f"{where}: ColorJitter with RandAugment: timm's transform drops the jitter "
                                        f"when RandAugment is on")
        else:
            self.set("aug", "color_jitter", 0.0)
        self.erasing(steps.get("RandomErasing"), where)
        self.normalize(steps.get("Normalize"), where)

    def rand_augment(self, ra: Optional[Dict[str, Any]], where: str) -> None:
        if ra is None:
            self.set("aug", "auto_augment", None)
            return
        where = f"{where}.RandAugment"
        policies = ra.get("policies") or []
        ops = [(p.get("type"), tuple(p["magnitude_range"]) if "magnitude_range" in p else None) for p in policies]
        directions = [p.get("direction", "horizontal") for p in policies if p.get("type") in ("Shear", "Translate")]
        if ops != RAND_INCREASING or directions != ["horizontal", "vertical"] * 2:
            self.unsupported.append(f"{where}: policies other than timm's increasing set (rand-...-inc1)")
        # (timm applies each op with probability 0.5 and negates half of the magnitudes, mmcls's op defaults; the
        # fill and interpolation are the pipeline's)
        same = ("type", "magnitude_key", "magnitude_range", "direction", "pad_val", "interpolation")
        for i, p in enumerate(policies):
            for key, value in p.items():
                if key not in same and not (key in ("prob", "random_negative_prob") and same_value(value, 0.5)):
                    self.unsupported.append(f"{where}.policies[{i}].{key}={value!r}: timm's ops apply with "
                                            f"probability 0.5 and negate half of the magnitudes")
        for key, value in (ra.get("hparams") or {}).items():
            if key not in same and not (key in ("prob", "random_negative_prob") and same_value(value, 0.5)):
                self.unsupported.append(f"{where}.hparams.{key}={value!r}: timm's ops apply with probability 0.5 "
                                        f"and negate half of the magnitudes")
        # magnitudes are levels of total_level (mmcls's default 30); timm's of 10
        scale = 10.0 / float(ra.get("total_level", 30))
        level = float(ra.get("magnitude_level", 9)) * scale
        if abs(level - round(level)) > 1e-6:
            self.unsupported.append(f"{where}: magnitude_level={ra.get('magnitude_level', 9)} of total_level="
                                    f"{ra.get('total_level', 30)} is {level:g} of timm's 10 (timm takes whole levels)")
        std = float(ra.get("magnitude_std", 0.0)) * scale
        mstd = "101" if math.isinf(std) else f"{std:g}"  # (timm: mstd above 100 draws the magnitude uniformly)
        name = f"rand-m{round(level)}-n{int(ra.get('num_policies', 2))}-mstd{mstd}-inc1"
        self.set("aug", "auto_augment", name)
        self.leftovers(ra, where, ("type", "policies", "total_level", "magnitude_std", "magnitude_level",
                                   "num_policies"), ignored=("hparams",))

    def erasing(self, er: Optional[Dict[str, Any]], where: str) -> None:
        if er is None:
            self.set("aug", "re_prob", 0.0)
            return
        where = f"{where}.RandomErasing"
        self.set("aug", "re_prob", float(er.get("erase_prob", 0.5)))
        mode = er.get("mode", "const")
        # mmcls erases before Normalize (BGR images): 'rand' with fill_color / fill_std = the mean / std draws each
        # pixel from the normalised N(0, 1) of timm's 'pixel' mode; 'const' with fill_color = the mean is 0 after
        # normalising, timm's 'const'. Other fills (mmcls's defaults: 128 grey, uniform noise) have no equivalent.
        self.set("aug", "re_mode", {"rand": "pixel", "const": "const"}.get(mode, "pixel"))
        mean, std = self.bgr_stats()
        if mode == "rand" and not (same_value(er.get("fill_color"), mean) and same_value(er.get("fill_std"), std)):
            self.unsupported.append(f"{where}: mode='rand' with fill_color={er.get('fill_color')!r}, fill_std="
                                    f"{er.get('fill_std')!r}: timm's 'pixel' noise is the normalised N(0, 1) (fill "
                                    f"= the Normalize mean / std, BGR)")
        elif mode == "const" and not same_value(er.get("fill_color"), mean):
            self.unsupported.append(f"{where}: mode='const' with fill_color={er.get('fill_color', (128, 128, 128))!r}:"
                                    f" timm's 'const' fills with the mean colour")
        elif mode not in ("rand", "const"):
            self.unsupported.append(f"{where}.mode={mode!r}: 'rand' or 'const' convert")
        aspect = er.get("aspect_range", (0.3, 1 / 0.3))
        if isinstance(aspect, (int, float)):  # (mmcls: a float a is the range (a, 1 / a))
            aspect = (float(aspect), 1 / float(aspect))
        if not all(math.isclose(float(a), b, rel_tol=1e-3) for a, b in zip(aspect, (0.3, 1 / 0.3))):
            self.unsupported.append(f"{where}.aspect_range={aspect!r}: timm erases boxes of aspect 0.3 to 1/0.3")
        self.expect(er, "min_area_ratio", 0.02, where, "timm erases 2% to 1/3 of the area")
        if not math.isclose(float(er.get("max_area_ratio", 0.4)), 1 / 3, rel_tol=1e-3):
            self.unsupported.append(f"{where}.max_area_ratio={er.get('max_area_ratio', 0.4)!r}: timm erases up to "
                                    f"1/3 of the area")
        self.leftovers(er, where, ("type", "erase_prob", "mode", "min_area_ratio", "max_area_ratio", "fill_color",
                                   "fill_std", "aspect_range"))

    def bgr_stats(self) -> tuple:
        """The train pipeline's Normalize mean / std in the BGR order mmcls's fill values use."""
        steps = {s.get("type"): s for s in ((self.mm.get("data") or {}).get("train") or {}).get("pipeline", [])}
        norm = steps.get("Normalize") or {}
        mean, std = list(norm.get("mean", [])), list(norm.get("std", []))
        return (mean[::-1], std[::-1]) if norm.get("to_rgb", True) else (mean, std)

    def normalize(self, norm: Optional[Dict[str, Any]], where: str) -> None:
        if norm is None:
            self.unsupported.append(f"{where}: no Normalize; images are normalised here")
            return
        if not norm.get("to_rgb", True):
            self.unsupported.append(f"{where}.Normalize to_rgb=False: images are RGB here (mmcls reads BGR)")
        mean = [round(float(v) / 255, 6) for v in norm["mean"]]
        std = [round(float(v) / 255, 6) for v in norm["std"]]
        if "mean" in self.out["aug"] and (mean, std) != (self.out["aug"]["mean"], self.out["aug"]["std"]):
            self.unsupported.append(f"{where}.Normalize: mean / std differ from the train pipeline's")
        self.set("aug", "mean", mean)
        self.set("aug", "std", std)

    def test_pipeline(self, pipeline: Sequence[Dict[str, Any]]) -> None:
        where = "data.val.pipeline"
        steps = self.pipeline_steps(pipeline, where, FORMAT_STEPS)
        resize, crop = steps.get("Resize"), steps.get("CenterCrop")
        for kind in steps:
            if kind not in ("Resize", "CenterCrop", "Normalize"):
                self.unsupported.append(f"{where}: {kind} has no equivalent here (resize, center crop, normalise)")
        input_size = self.out["data"].get("input_size", 224)
        interpolation = (resize or {}).get("interpolation", "bilinear")
        if crop is not None:
            size = crop.get("crop_size", 224)
            side = size if isinstance(size, int) else size[0]
            if int(side) != input_size:
                self.unsupported.append(f"{where}.CenterCrop.crop_size={size!r} differs from the train crop "
                                        f"{input_size}; set eval.input_size")
            self.expect(crop, "efficientnet_style", False, f"{where}.CenterCrop", "a plain centre crop")
            self.leftovers(crop, f"{where}.CenterCrop", ("type", "crop_size", "efficientnet_style"),
                           ignored=("crop_padding", "interpolation", "backend"))
        if resize is None:
            self.set("aug", "crop_pct", 1.0)
            self.notes.append(f"{where}: no Resize: evaluation resizes the image to data.input_size here (mmcls "
                              f"crops the image as read)")
        else:
            size = resize.get("size")
            self.expect(resize, "adaptive_side", "short", f"{where}.Resize", "the short side is resized")
            if isinstance(size, int) or (size[0] == size[1] and size[1] != -1):  # (mmcls: an int is (size, size))
                short = size if isinstance(size, int) else size[0]
                self.set("aug", "crop_mode", "squash")
            else:
                short = size[0] if size[1] == -1 else None
            if short is None:
                self.unsupported.append(f"{where}.Resize.size={size!r}: a short-side or a square resize converts")
            else:
                crop_side = input_size if crop is not None else short
                self.set("aug", "crop_pct", round(crop_side / float(short), 6))
                if crop is None:
                    self.notes.append(f"{where}: Resize without CenterCrop: evaluation takes the {input_size} px "
                                      f"centre of the resized image here (mmcls the whole image)")
            self.leftovers(resize, f"{where}.Resize", ("type", "size", "interpolation", "adaptive_side"),
                           ignored=("backend",))
        self.set("aug", "interpolation", interpolation)
        train = getattr(self, "train_interpolation", interpolation)
        self.set("aug", "train_interpolation", None if train == interpolation else train)
        self.normalize(steps.get("Normalize"), where)

    # ------------------------------------------------------------------ optimizer, schedule, runtime
    def optimizer(self) -> None:
        o = dict(self.mm.get("optimizer") or {})
        where = "optimizer"
        opt = OPTIMIZERS.get(o.get("type"))
        if opt is None:
            raise MmcvConfigError(f"optimizer.type={o.get('type')!r}: converts are {', '.join(OPTIMIZERS)}")
        if opt == "sgd":  # (timm's "sgd" is Nesterov; torch's SGD is not unless told, and has no momentum)
            opt = "nesterov" if o.get("nesterov") else "momentum"
            self.set("optim", "momentum", float(o.get("momentum", 0.0)))
        self.set("optim", "opt", opt)
        if "lr" not in o and opt not in ("adamw", "adam"):  # (torch 1.x's SGD has no default lr)
            raise MmcvConfigError(f"optimizer.type={o['type']!r} needs an lr (torch's SGD has no default)")
        lr = float(o.get("lr", 1e-3))  # (torch.optim.Adam / AdamW's default, as mmcv builds them)
        self.set("optim", "lr", lr)
        self.notes.append(f"optim.lr={lr:g} is the config's, for its global batch (samples_per_gpu x "
                          f"GPUs); optim.lr=null scales optim.lr_base with the batch instead")
        self.set("optim", "weight_decay", float(o.get("weight_decay", 0.01 if opt == "adamw" else 0.0)))
        for key in ("betas", "eps", "momentum"):
            if key in o:
                self.set("optim", key, [float(b) for b in o[key]] if key == "betas" else float(o[key]))
        paramwise = dict(o.get("paramwise_cfg") or {})
        self.default_constructor_decay(paramwise)
        self.custom_keys(paramwise.pop("custom_keys", {}) or {})
        if o.get("constructor") in ("LayerDecayOptimizerConstructor", "MyLayerDecayOptimizerConstructor"):
            self.set("optim", "layer_decay", float(paramwise.pop("layer_decay_rate", 1.0)))
            layers, depth = paramwise.pop("num_layers", None), self.depth()
            if layers is not None and int(layers) != depth:
                self.unsupported.append(f"optimizer.paramwise_cfg.num_layers={layers}: layer decay counts the "
                                        f"backbone's {depth} blocks here")
        elif o.get("constructor") is not None:
            self.unsupported.append(f"optimizer.constructor={o['constructor']!r} has no equivalent here")
        for key, value in paramwise.items():
            self.unsupported.append(f"optimizer.paramwise_cfg.{key}={value!r} has no equivalent here")
        self.leftovers(o, where, ("type", "lr", "weight_decay", "betas", "eps", "momentum", "nesterov",
                                  "paramwise_cfg", "constructor"))
        self.fp16_hook = self.optimizer_hook("set train.grad_accum_steps (the lr and schedule count optimizer "
                                             "steps here)")

    def depth(self) -> int:
        """The converted model's number of blocks."""
        from vision_rwkv.models import vrwkv, vrwkv6

        variants = {**vrwkv.VARIANT_ARGS, **vrwkv6.VARIANT_ARGS}
        return int(self.kwargs.get("depth", variants[self.out["model"]["name"]]["depth"]))

    def custom_keys(self, keys: Dict[str, Any]) -> None:
        """A custom key that names no parameter of the model (in mmcls's names: ``backbone.layers.0.att...``,
        ``head.fc...``) changes nothing (the Swin keys of the original's schedule base); others are unsupported."""
        import timm
        import torch

        from vision_rwkv.models.convert import ours_to_original

        with torch.device("meta"):  # (the names mmcv matches: the original layout under backbone. / head.)
            model = timm.create_model(self.out["model"]["name"], **self.kwargs)
        names = [n if n.startswith("head.") else f"backbone.{n}" for n in ours_to_original(model.state_dict())]
        if (self.mm["model"].get("head") or {}).get("type") == "VisionTransformerClsHead":  # (its own layout)
            layers = ("head", "pre_logits") if self.kwargs.get("head_hidden_size") else ("head",)
            names = [n for n in names if not n.startswith("head.")]
            names += [f"head.layers.{layer}.{p}" for layer in layers for p in ("weight", "bias")]
        for key, value in keys.items():
            if any(key in n for n in names):
                self.unsupported.append(f"optimizer.paramwise_cfg.custom_keys[{key!r}]={value!r}: per-parameter "
                                        f"multipliers have no equivalent here")
            else:
                self.notes.append(f"optimizer.paramwise_cfg.custom_keys[{key!r}] names no parameter of the model "
                                  f"(no effect)")

    def schedule(self) -> None:
        lr = dict(self.mm.get("lr_config") or {})
        policy = lr.get("policy")
        if isinstance(policy, str) and policy == policy.lower():  # (mmcv: 'step' is StepLrUpdaterHook)
            policy = policy.title()
        base_lr = self.out["optim"]["lr"]
        if policy == "CosineAnnealing":
            self.set("sched", "sched", "cosine")
            if lr.get("min_lr") is not None:
                self.set("sched", "min_lr", float(lr["min_lr"]))
            elif lr.get("min_lr_ratio") is not None:
                self.set("sched", "min_lr_ratio", float(lr["min_lr_ratio"]))
            else:
                raise MmcvConfigError("lr_config CosineAnnealing needs min_lr or min_lr_ratio (as mmcv does)")
        elif policy == "Step":
            step = lr.get("step")
            if isinstance(step, (list, tuple)):
                self.set("sched", "sched", "multistep")  # (timm decays for milestone m from epoch m - 1; mmcv
                # from epoch m)
                self.set("sched", "decay_milestones", [int(s) + 1 for s in step])
            else:
                self.set("sched", "sched", "step")
                self.set("sched", "decay_epochs", float(step))
            self.set("sched", "decay_rate", float(lr.get("gamma", 0.1)))
            if lr.get("min_lr"):
                self.unsupported.append(f"lr_config.min_lr={lr['min_lr']}: timm's step schedules have no floor")
            if not lr.get("by_epoch", True):
                self.unsupported.append("lr_config Step with by_epoch=False: the steps count epochs here")
        elif policy == "Fixed":
            self.set("sched", "sched", "constant")
        else:
            self.unsupported.append(f"lr_config.policy={policy!r}: CosineAnnealing, Step or fixed convert")
        self.set("sched", "on_updates", not lr.get("by_epoch", True))
        warmup = lr.get("warmup")
        if warmup is None:
            self.set("sched", "warmup_epochs", 0)
        elif warmup != "linear":
            self.unsupported.append(f"lr_config.warmup={warmup!r}: the warm-up here is linear")
        else:
            if not lr.get("warmup_iters"):
                raise MmcvConfigError(f"lr_config warmup={warmup!r} needs warmup_iters > 0 (as mmcv does)")
            if lr.get("warmup_by_epoch", False):
                self.set("sched", "warmup_epochs", int(lr.get("warmup_iters", 0)))
            else:
                self.set("sched", "warmup_epochs", 0)
                self.unsupported.append(f"lr_config warm-up of {lr.get('warmup_iters', 0)} iterations: the warm-up "
                                        f"counts epochs here (set sched.warmup_epochs)")
            if lr.get("by_epoch", True):
                self.notes.append("mmcv warms up per iteration also on a per-epoch schedule; with "
                                  "sched.on_updates=false the warm-up steps once an epoch here")
            self.set("sched", "warmup_lr", base_lr * float(lr.get("warmup_ratio", 0.1)))
            self.notes.append("the warm-up ramps linearly from sched.warmup_lr to the lr (timm); mmcv scales the "
                              "decayed lr by the same ramp, a difference of the decay over the warm-up (about 1% at "
                              "20 of 300 cosine epochs)")
        self.leftovers(lr, "lr_config", ("policy", "min_lr", "min_lr_ratio", "step", "gamma", "by_epoch", "warmup",
                                         "warmup_iters", "warmup_ratio", "warmup_by_epoch"))
        total = self.mm.get("total_epochs")
        runner = dict(self.mm.get("runner") or {"type": "EpochBasedRunner", "max_epochs": total})
        if total is not None and runner.get("max_epochs") != total:
            raise MmcvConfigError(f"total_epochs={total} and runner.max_epochs={runner.get('max_epochs')} differ "
                                  f"(mmcv requires them equal)")
        if runner.get("type", "EpochBasedRunner") != "EpochBasedRunner" or runner.get("max_epochs") is None:
            raise MmcvConfigError(f"runner={runner!r}: an EpochBasedRunner with max_epochs converts")
        self.set("train", "epochs", int(runner["max_epochs"]))

    def runtime(self, stem: str) -> None:
        self.intervals("ckpt_every_epochs", "eval_every_epochs", by_epoch=True, eval_by_epoch=True)
        fp16 = self.mm.get("fp16") is not None or self.fp16_hook
        self.set("train", "precision", "fp16" if fp16 else "fp32")
        if not fp16:
            self.notes.append("train.precision=fp32 as the config trains (the shipped configs use bf16 autocast)")
        for hook in self.mm.get("custom_hooks") or []:
            if hook.get("type") == "EMAHook":
                self.set("ema", "enabled", True)
                self.set("ema", "decay", 1.0 - float(hook.get("momentum", 0.0002)))
                momentum, warm = float(hook.get("momentum", 0.0002)), int(hook.get("warm_up", 100))
                if warm and momentum * warm > 1:  # (mmcls: min(momentum, (1 + t) / (warm_up + t)) per step)
                    self.notes.append(f"EMAHook warm_up={warm}: mmcls's EMA starts faster for its first steps; "
                                      f"timm's EMA has its own warm-up (ema.warmup) or none")
                self.expect(hook, "interval", 1, "custom_hooks.EMAHook", "the EMA updates every step")
                self.leftovers(hook, "custom_hooks.EMAHook", ("type", "momentum", "warm_up", "interval"),
                               ignored=("priority", "resume_from", "evaluate_on_ema", "evaluate_on_origin"))
            else:
                self.unsupported.append(f"custom_hooks: {hook.get('type')} has no equivalent here")
        self.set("top", "run_dir", str(self.mm.get("work_dir") or f"runs/classification/{stem}"))
        if self.mm.get("resume_from"):
            self.set("top", "resume", str(self.mm["resume_from"]))
        if self.mm.get("load_from"):
            self.set("model", "checkpoint", str(self.mm["load_from"]))
        if isinstance(self.mm.get("seed"), int):
            self.set("top", "seed", self.mm["seed"])

    def run(self, stem: str) -> Conversion:
        if any(k in self.mm for k in ("train_dataloader", "optim_wrapper", "param_scheduler")) \
                and "data" not in self.mm:
            raise MmcvConfigError("this is an mmpretrain / mmcls 1.x config (train_dataloader / optim_wrapper); "
                                  "the converter reads mmcls 0.x configs, the original Vision-RWKV repo's")
        self.convert_sections([("model", self.model), ("data", self.data), ("optimizer", self.optimizer),
                               ("lr_config / runner", self.schedule), ("runtime", lambda: self.runtime(stem)),
                               ("top-level names", self.unread_top_keys)])
        if self.kwargs:
            self.set("model", "kwargs", self.kwargs)
        top = self.out.pop("top")
        return Conversion({**top, **{k: v for k, v in self.out.items() if v}}, self.notes, self.unsupported)


def convert_mmcls_config(mm: Dict[str, Any], name: str = "converted",
                         referenced: Optional[Set[str]] = None) -> Conversion:
    """Map the settings of a read mmcls 0.x config (``read_mmcv_config``) to our classification config keys
    (module docstring); ``name`` names the default ``run_dir``; ``referenced`` as for convert_mmseg_config.
    Raises MmcvConfigError for configs that give no model or schedule here (another backbone, optimizer or
    runner)."""
    return _Converter(mm, referenced).run(Path(name).stem)


def mmcls_conversion_yaml(conversion: Conversion, source: str, base: str) -> str:
    """The converted config as YAML text over ``_base_: base`` (the path of configs/classification/base.yaml
    from where the file is written)."""
    config = dict(conversion.config)
    if "kwargs" in config.get("model", {}):
        config["model"] = dict(config["model"], kwargs=FlowDict(config["model"]["kwargs"]))
    return conversion_text(config, conversion, f"the mmcls config {source}", "tools/convert_mmcv_config.py",
                           "configs/classification/base.yaml", base=base)
