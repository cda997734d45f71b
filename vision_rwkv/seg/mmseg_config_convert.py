"""Convert an mmseg 0.x config of the original Vision-RWKV segmentation models into this package's YAML config.

``convert_mmseg_config(read_mmcv_config(path))`` maps each mmseg setting to a :class:`~.config.SegConfig` key:

=========================================================  =====================================================
mmseg (the original repo's ``segmentation/configs``)        ours (``configs/segmentation/*.yaml``)
=========================================================  =====================================================
``model.backbone`` ``VRWKV_Adapter`` (embed_dims, depth,    ``model.backbone`` (the registered VRWKV of that size),
init_values, post_norm, key_norm, drop_path_rate, ...)      ``model.backbone_kwargs`` (what differs from it, and the
                                                            original Bi-WKV function), ``model.neck: adapter``,
                                                            ``model.adapter.*``; ``with_cp``: ``grad_checkpointing``
``model.pretrained``                                        ``model.pretrained``
``decode_head`` (UPerHead) / ``auxiliary_head`` (FCNHead)   ``model.decode_channels`` / ``pool_scales`` /
                                                            ``dropout`` / ``aux_*`` / ``class_weight`` / ...
``test_cfg``                                                ``test.mode`` / ``crop_size`` / ``stride``
``data`` (ADE20K / Cityscapes / any folder dataset),        ``data.*``, ``test.scale`` / ``scales`` / ``flip`` /
its train and test pipelines                                ``size_divisor``
``optimizer`` (AdamW, layer decay), ``lr_config`` (poly),   ``optim.*``
``optimizer_config.grad_clip``, ``runner.max_iters``
``checkpoint_config`` / ``evaluation`` / ``log_config`` /   ``train.*``
``fp16`` / ``work_dir`` / ``resume_from``
=========================================================  =====================================================

Settings that would change the results and have no equivalent here (another loss, an extra augmentation, SGD, an
epoch runner, ...) are collected in ``Conversion.unsupported``; runtime settings without an effect on the results
(``dist_params``, ``cudnn_benchmark``, ...) and the approximations made are in ``Conversion.notes``.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Set

from vision_rwkv.engine.mmcv_config import MmcvConfigError
from vision_rwkv.engine.mmcv_convert import (Conversion, ConverterBase, FlowDict, conversion_text, pair,
                                             pretrained_checkpoint, registered_backbone, same_value)

__all__ = ["Conversion", "convert_mmseg_config", "conversion_yaml"]

# the original segmentation backbone ran the original CUDA kernel's function, 16 chunks (configs/segmentation/*.yaml)
ORIGINAL_WKV = {"wkv_mode": "original", "wkv_chunks": 16}
# VRWKV_Adapter's own arguments -> model.adapter keys (its defaults equal AdapterConfig's)
ADAPTER_KEYS = {"conv_inplane": "conv_inplane", "n_points": "n_points", "deform_num_heads": "deform_num_heads",
                "init_values_inject": "init_values", "interaction_indexes": "interaction_indexes",
                "with_cffn": "with_cffn", "cffn_ratio": "cffn_ratio", "deform_ratio": "deform_ratio",
                "add_rwkv_feature": "add_vit_feature", "use_extra_extractor": "use_extra_extractor"}
LAYER_DECAY_CONSTRUCTORS = ("MyLayerDecayOptimizerConstructor", "LayerDecayOptimizerConstructor")
# top-level mmcv runtime keys without an effect on the results
RUNTIME_KEYS = ("dist_params", "log_level", "workflow", "cudnn_benchmark", "gpu_ids", "opencv_num_threads",
                "default_scope",
                "mp_start_method", "auto_resume", "device", "custom_imports", "checkpoint_config", "evaluation",
                "log_config")
SECTIONS = ("model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "total_iters", "fp16",
            "work_dir", "resume_from", "load_from", "find_unused_parameters", "seed", "custom_hooks",
            "norm_cfg", "test_cfg", "train_cfg") + RUNTIME_KEYS
PHOTOMETRIC_DEFAULTS = {"brightness_delta": 32, "contrast_range": (0.5, 1.5), "saturation_range": (0.5, 1.5),
                        "hue_delta": 18}
# train-pipeline steps in the order this package's SegTrainTransform applies them
TRAIN_STEPS = ("LoadAnnotations", "Resize", "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "Normalize", "Pad")
# mmseg dataset type -> (ours, image folder, annotation folder, split names) when in that layout
LAYOUTS = {"ADE20KDataset": ("ade20k", "images/{}", "annotations/{}", ("training", "validation")),
           "CityscapesDataset": ("cityscapes", "leftImg8bit/{}", "gtFine/{}", ("train", "val", "test"))}
FORMAT_STEPS = ("LoadImageFromFile", "DefaultFormatBundle", "Collect", "ImageToTensor", "ToTensor")


class _Converter(ConverterBase):
    SECTIONS = SECTIONS
    KIND = "mmseg"

    def __init__(self, mm: Dict[str, Any], referenced: Optional[Set[str]] = None):
        super().__init__(mm, ("model", "data", "optim", "train", "test"), referenced)

    # ------------------------------------------------------------------ model
    def model(self) -> None:
        m = self.model_dict("EncoderDecoder")
        backbone = dict(m.get("backbone") or {})
        kind = backbone.pop("type", None)
        if kind not in ("VRWKV_Adapter", "VRWKV"):
            raise MmcvConfigError(f"model.backbone.type={kind!r}: the converter reads the original Vision-RWKV "
                                  f"segmentation backbones, VRWKV_Adapter and VRWKV")
        self.backbone(backbone, adapter=kind == "VRWKV_Adapter", pretrained=m.get("pretrained"))
        self.neck(m.get("neck"), adapter=kind == "VRWKV_Adapter")
        test_cfg = m.get("test_cfg", self.mm.get("test_cfg")) or {}
        self.test_cfg(test_cfg)
        decode = m.get("decode_head")
        if not isinstance(decode, dict):
            raise MmcvConfigError("model.decode_head must be a dict (one UPerHead)")
        self.decode_head(decode)
        self.aux_head(m.get("auxiliary_head"), decode)
        train_cfg = m.get("train_cfg", self.mm.get("train_cfg")) or {}
        if train_cfg:
            self.unsupported.append(f"model.train_cfg={train_cfg!r} has no equivalent here")
        self.leftovers(m, "model", ("type", "backbone", "pretrained", "neck", "decode_head", "auxiliary_head",
                                    "test_cfg", "train_cfg"), ignored=("init_cfg",))

    def backbone(self, b: Dict[str, Any], adapter: bool, pretrained: Any) -> None:
        from vision_rwkv.models.convert import model_kwargs_from_original

        own, init = b.pop("pretrained", None), pretrained_checkpoint(b.pop("init_cfg", None))
        if pretrained and (own or init):  # (mmseg's EncoderDecoder and the original VRWKV refuse both)
            self.unsupported.append(f"model.pretrained={pretrained!r} and the backbone's {own or init!r} are both "
                                    f"set (mmseg refuses that); set model.pretrained=None in the config")
        path = own or init or pretrained
        if isinstance(path, str) and "://" in path:
            self.notes.append(f"model.pretrained={path!r} is a URL: download it and set model.pretrained=PATH "
                              f"(nothing is downloaded here)")
        elif path:
            self.set("model", "pretrained", str(path))
            self.notes.append(f"model.pretrained={path!r} (ImageNet backbone weights, read when training starts): "
                              f"model.pretrained=null trains from scratch, also needed when you change the "
                              f"backbone's size")
        if b.pop("with_cp", False):
            self.set("model", "grad_checkpointing", True)
        adapter_args = {ours: b.pop(theirs) for theirs, ours in ADAPTER_KEYS.items() if theirs in b}
        b.pop("pretrain_size", None)  # (VRWKV_Adapter keeps it but its forward resizes from the stored grid)
        out_indices = b.pop("out_indices", None)
        if adapter:
            b.pop("final_norm", None)  # (VRWKV_Adapter drops the final norm)
        try:
            kwargs = model_kwargs_from_original(b, "vrwkv")
        except ValueError as err:
            raise MmcvConfigError(f"model.backbone: {err}") from None
        name, extra, notes = registered_backbone(kwargs, "vrwkv", head=False)
        self.notes += notes
        self.set("model", "backbone", name)
        self.set("model", "backbone_kwargs", {**extra, **ORIGINAL_WKV})
        if adapter:
            self.set("model", "neck", "adapter")
            args = {"conv_inplane": 64, "n_points": 4, "deform_num_heads": 6, "init_values": 0.0,
                    "with_cffn": True, "cffn_ratio": 0.25, "deform_ratio": 1.0, "add_vit_feature": True,
                    "use_extra_extractor": True, **adapter_args,
                    "drop_path_rate": kwargs.get("drop_path_rate", 0.0)}  # (VRWKV_Adapter passes its own)
            if args.get("interaction_indexes") is None:
                raise MmcvConfigError("model.backbone.interaction_indexes must be set for VRWKV_Adapter")
            self.set("model", "adapter", args)
            self.set("test", "size_divisor", None)  # (filled from the test pipeline; the adapter needs 32)
        else:
            if adapter_args:
                self.unsupported.append(f"model.backbone: {sorted(adapter_args)} are VRWKV_Adapter arguments")
            self.plain_out_indices(out_indices)

    def plain_out_indices(self, out_indices: Any) -> None:
        """The plain VRWKV's out_indices (the original's default -1) as the four levels here: block order (the
        original returns its features so), one index copied to the four levels (as mmseg's MultiLevelNeck does)."""
        depth = self.depth()
        given = [-1] if out_indices is None else [out_indices] if isinstance(out_indices, int) else list(out_indices)
        indices = sorted({int(i) + depth if int(i) < 0 else int(i) for i in given})
        if not all(0 <= i < depth for i in indices):
            raise MmcvConfigError(f"model.backbone.out_indices={out_indices!r}: the backbone has {depth} blocks")
        if len(indices) == 1:
            indices *= 4
            if out_indices is None:
                self.notes.append(f"model.backbone.out_indices: the original's default -1, block {depth - 1} for "
                                  f"the four levels")
        elif len(indices) != 4:
            self.unsupported.append(f"model.backbone.out_indices={out_indices!r}: the MultiLevelNeck takes one "
                                    f"block or four")
        self.set("model", "out_indices", indices)

    def neck(self, neck: Any, adapter: bool) -> None:
        if adapter:
            if neck:
                self.unsupported.append(f"model.neck={neck!r}: VRWKV_Adapter gives the four levels itself")
            return
        if not isinstance(neck, dict) or neck.get("type") != "MultiLevelNeck":
            raise MmcvConfigError(f"model.neck={neck!r}: a plain VRWKV backbone needs a MultiLevelNeck")
        self.set("model", "neck", "multilevel")
        patch = self.out["model"].get("backbone_kwargs", {}).get("patch_size", 16)
        scales = neck.get("scales", [0.5, 1, 2, 4])
        self.set("model", "strides", [int(round(patch / s)) for s in scales])
        if "out_channels" in neck:
            self.set("model", "neck_channels", int(neck["out_channels"]))
        self.unsupported.append("model.neck MultiLevelNeck becomes this package's multilevel neck: the same strides "
                                "and channels from other layers (2x2 transposed convs / max pooling for mmseg's "
                                "bilinear resizes), and the backbone's final norm is not applied to the last "
                                "level; mmseg checkpoints of it do not load")
        self.leftovers(neck, "model.neck", ("type", "in_channels", "out_channels", "scales"))

    def test_cfg(self, t: Dict[str, Any]) -> None:
        mode = t.get("mode", "whole")
        self.set("test", "mode", mode)
        if mode == "slide":
            if "crop_size" not in t or "stride" not in t:
                raise MmcvConfigError("model.test_cfg mode='slide' needs crop_size and stride")
            self.set("test", "crop_size", pair(t["crop_size"]))
            self.set("test", "stride", pair(t["stride"]))
        self.leftovers(t, "model.test_cfg", ("mode", "crop_size", "stride"))

    def _ce_loss(self, loss: Any, where: str) -> Dict[str, Any]:
        if isinstance(loss, (list, tuple)):
            if len(loss) != 1:
                self.unsupported.append(f"{where}: {len(loss)} losses; only one CrossEntropyLoss converts")
                return {}
            loss = loss[0]
        loss = dict(loss or {"type": "CrossEntropyLoss"})
        if loss.get("type") != "CrossEntropyLoss":
            self.unsupported.append(f"{where}.type={loss.get('type')!r}: only CrossEntropyLoss converts")
            return {}
        for key, value, why in (("use_sigmoid", False, "a sigmoid loss"), ("use_mask", False, "a mask loss"),
                                ("reduction", "mean", "another reduction")):
            self.expect(loss, key, value, where, why)
        self.leftovers(loss, where, ("type", "use_sigmoid", "use_mask", "reduction", "class_weight", "loss_weight",
                                     "avg_non_ignore"), ignored=("loss_name",))
        return loss

    def _norm(self, head: Dict[str, Any], where: str) -> None:
        norm = (head.get("norm_cfg") or {}).get("type")  # (mmseg's heads have no norm unless given one)
        if norm not in ("SyncBN", "BN"):
            self.unsupported.append(f"{where}.norm_cfg={head.get('norm_cfg')!r}: the heads use batch norm here")
        sync = norm == "SyncBN"
        if "sync_bn" in self.out["train"] and self.out["train"]["sync_bn"] != sync:
            self.unsupported.append(f"{where}.norm_cfg: the heads' norms differ (SyncBN and BN)")
        self.set("train", "sync_bn", sync)

    def decode_head(self, h: Dict[str, Any]) -> None:
        where = "model.decode_head"
        if h.get("type") != "UPerHead":
            raise MmcvConfigError(f"{where}.type={h.get('type')!r}: the converter builds UPerHead heads")
        self.expect(h, "in_index", [0, 1, 2, 3], where, "the UPerHead takes the four levels", default=-1)
        for key, ours, default in (("pool_scales", "pool_scales", (1, 2, 3, 6)), ("channels", "decode_channels", None),
                                   ("dropout_ratio", "dropout", 0.1), ("align_corners", "align_corners", False)):
            if key in h or default is not None:  # (mmseg's UPerHead / BaseDecodeHead defaults)
                self.set("model", ours, h.get(key, default))
        if "ignore_index" in h:
            self.set("data", "ignore_index", int(h["ignore_index"]))
        self._norm(h, where)
        loss = self._ce_loss(h.get("loss_decode"), f"{where}.loss_decode")
        self.expect(loss, "loss_weight", 1.0, f"{where}.loss_decode", "the decode loss has weight 1 here")
        if loss.get("class_weight") is not None:
            self.set("model", "class_weight", [float(w) for w in loss["class_weight"]])
        if loss.get("avg_non_ignore"):
            self.set("model", "avg_non_ignore", True)
        self.num_classes = h.get("num_classes")
        self.expect(h, "act_cfg", {"type": "ReLU"}, where, "the heads use ReLU")
        self.expect(h, "sampler", None, where, "pixel sampling")
        self.leftovers(h, where, ("type", "in_index", "pool_scales", "channels", "dropout_ratio", "align_corners",
                                  "ignore_index", "norm_cfg", "loss_decode", "num_classes", "act_cfg", "sampler"),
                       ignored=("in_channels", "input_transform", "conv_cfg", "init_cfg"))

    def aux_head(self, h: Any, decode: Dict[str, Any]) -> None:
        where = "model.auxiliary_head"
        if not h:
            self.set("model", "aux_weight", 0.0)
            self.notes.append("no auxiliary head: the FCN auxiliary head is built and trained with weight 0 "
                              "(model.aux_weight=0; it does not change the decode head's results)")
            return
        if not isinstance(h, dict) or h.get("type") != "FCNHead":
            self.unsupported.append(f"{where}: only one FCNHead converts, got {h!r}")
            return
        level = h.get("in_index", -1)  # (mmseg's default: the last of the four levels)
        if not isinstance(level, int) or not -4 <= level < 4:
            self.unsupported.append(f"{where}.in_index={level!r}: one of the four levels converts")
        else:
            self.set("model", "aux_level", level % 4)
        if "channels" in h:
            self.set("model", "aux_channels", int(h["channels"]))
        for key, value, default, why in (("num_convs", 1, 2, "one conv"),
                                         ("concat_input", False, True, "no input concatenation"),
                                         ("kernel_size", 3, 3, "3x3 conv"), ("dilation", 1, 1, "no dilation"),
                                         ("act_cfg", {"type": "ReLU"}, {"type": "ReLU"}, "ReLU")):
            self.expect(h, key, value, where, f"the auxiliary head has {why} here", default=default)
        defaults = {"dropout_ratio": 0.1, "align_corners": False, "ignore_index": 255}  # (mmseg's BaseDecodeHead)
        for key in ("dropout_ratio", "align_corners", "num_classes", "ignore_index"):
            ours, theirs = h.get(key, defaults.get(key)), decode.get(key, defaults.get(key))
            if not same_value(ours, theirs):
                self.unsupported.append(f"{where}.{key}={ours!r} differs from the decode head's {theirs!r}; one "
                                        f"value serves both heads here")
        self._norm(h, where)
        loss = self._ce_loss(h.get("loss_decode"), f"{where}.loss_decode")
        self.set("model", "aux_weight", float(loss.get("loss_weight", 1.0)))
        decode_loss = decode.get("loss_decode") or {}
        decode_weights = decode_loss.get("class_weight") if isinstance(decode_loss, dict) else None
        if not same_value(loss.get("class_weight"), decode_weights):
            self.unsupported.append(f"{where}.loss_decode.class_weight differs from the decode head's; one "
                                    f"model.class_weight serves both heads here")
        self.leftovers(h, where, ("type", "in_index", "channels", "num_convs", "concat_input", "kernel_size",
                                  "dilation", "act_cfg", "dropout_ratio", "align_corners", "num_classes",
                                  "norm_cfg", "loss_decode"),
                       ignored=("in_channels", "conv_cfg", "init_cfg", "sampler", "ignore_index"))

    # ------------------------------------------------------------------ data
    def data(self) -> None:
        d = self.data_loader("data.batch_size")
        train = self.unwrap(d.get("train"), "data.train")
        val = self.unwrap(d.get("val"), "data.val")
        test = self.unwrap(d.get("test"), "data.test") if d.get("test") else None
        kind = self.dataset(train, val)
        self.train_pipeline(train.get("pipeline") or [])
        if val is not None:
            self.test_pipeline(val.get("pipeline") or [])
            if test is not None and (not same_value(test.get("pipeline"), val.get("pipeline"))
                                     or test.get("img_dir") != val.get("img_dir")):
                self.notes.append("data.test differs from data.val: the converted config evaluates (training and "
                                  "test_seg.py) the data.val split with data.val's test pipeline")
        elif test is not None:
            self.test_pipeline(test.get("pipeline") or [])
        evaluated = bool(train.get("reduce_zero_label", train.get("type") == "ADE20KDataset"))
        if evaluated != self.train_reduce:
            self.unsupported.append(f"reduce_zero_label: LoadAnnotations's (training) is {self.train_reduce}, the "
                                    f"dataset's (mmseg's evaluation) {evaluated}; one data.reduce_zero_label "
                                    f"serves both here")
        if kind == "folder":
            self.set("data", "reduce_zero_label", self.train_reduce)
        else:
            self.out["data"].pop("reduce_zero_label", None)
            if (kind, self.train_reduce) in (("ade20k", False), ("cityscapes", True)):
                self.unsupported.append(f"LoadAnnotations(reduce_zero_label={self.train_reduce}) with {kind}: its "
                                        f"labels are read as {kind}'s own here (label 0 "
                                        f"{'ignored' if kind == 'ade20k' else 'a class'})")
        self.leftovers(d, "data", ("samples_per_gpu", "workers_per_gpu", "train", "val", "test"),
                       ignored=("train_dataloader", "val_dataloader", "test_dataloader", "shuffle",
                                "persistent_workers"))

    def unwrap(self, ds: Any, where: str) -> Optional[Dict[str, Any]]:
        if ds is None:
            return None
        if isinstance(ds, (list, tuple)):
            raise MmcvConfigError(f"{where}: a list of datasets (concatenated) does not convert; give one dataset")
        if ds.get("type") == "RepeatDataset":
            self.notes.append(f"{where}: RepeatDataset (times={ds.get('times')}) is unwrapped; iteration-based "
                              f"training draws batches until optim.max_iters either way")
            return self.unwrap(ds.get("dataset"), f"{where}.dataset")
        if ds.get("type") == "ConcatDataset":
            raise MmcvConfigError(f"{where}: ConcatDataset does not convert; give one dataset")
        return dict(ds)

    def dataset(self, train: Optional[Dict[str, Any]], val: Optional[Dict[str, Any]]) -> str:
        if train is None:
            raise MmcvConfigError("data.train must be set")
        kind = train.get("type", "CustomDataset")
        root = train.get("data_root")
        ours = self._layout(kind, train, val)
        self.set("data", "type", ours)
        if root is not None:
            self.set("data", "root", str(root))
        if val is not None and val.get("data_root") != root:  # (mmseg joins a dataset's own data_root only)
            val = self.rebase(val, root, ours)
        if ours in ("ade20k", "cityscapes"):
            for key, ds in (("train_split", train), ("val_split", val)):
                if ds is not None:
                    self.set("data", key, posixpath.normpath(str(ds["img_dir"])).split("/")[-1])
            if val is None:
                self.notes.append("no data.val: the converted config still names a validation split; "
                                  "set train.eval_every=null to train without evaluation")
            self.dataset_leftovers(train, "data.train", folder=False)
            if val is not None:
                self.dataset_leftovers(val, "data.val", folder=False)
            return ours
        for ds, where in ((train, "data.train"), (val, "data.val")):
            for key in ("img_dir", "ann_dir"):
                if ds is not None and not isinstance(ds.get(key), (str, type(None))):
                    raise MmcvConfigError(f"{where}.{key}={ds[key]!r}: one folder per split converts (several "
                                          f"image / annotation folders: make one of them)")
        self.set("data", "img_dir", train.get("img_dir"))
        self.set("data", "ann_dir", train.get("ann_dir"))
        if val is not None:
            self.set("data", "val_img_dir", val.get("img_dir"))
            self.set("data", "val_ann_dir", val.get("ann_dir"))
        for key in ("img_suffix", "seg_map_suffix", "reduce_zero_label", "palette"):
            if train.get(key) is not None:
                self.set("data", key, train[key])
        classes = train.get("classes")
        if kind in LAYOUTS:  # (the dataset type's own suffixes and label reduction, in any folder layout)
            from .classes import ADE20K_CLASSES, CITYSCAPES_CLASSES
            own = ADE20K_CLASSES if kind == "ADE20KDataset" else CITYSCAPES_CLASSES
            self.set("data", "img_suffix", train.get("img_suffix", ".jpg" if kind == "ADE20KDataset"
                                                     else "_leftImg8bit.png"))
            self.set("data", "seg_map_suffix", train.get("seg_map_suffix", ".png" if kind == "ADE20KDataset"
                                                         else "_gtFine_labelTrainIds.png"))
            self.set("data", "reduce_zero_label", bool(train.get("reduce_zero_label", kind == "ADE20KDataset")))
            if classes is not None and not same_value(list(classes) if isinstance(classes, (list, tuple))
                                                      else classes, list(own)):
                self.unsupported.append(f"data.train.classes: a subset of {kind}'s classes makes mmseg remap the "
                                        f"stored labels (its label_map); here labels are read as stored: give "
                                        f"them remapped, with a CustomDataset")
            classes = own if classes is None else classes
        if classes is None:
            self.unsupported.append(f"data.train type {kind!r} names no classes: mmseg's dataset classes carry "
                                    f"their own; set data.classes (a list of names or a text file)")
        else:
            self.set("data", "classes", list(classes) if isinstance(classes, (list, tuple)) else str(classes))
        self.dataset_leftovers(train, "data.train", folder=True)
        if val is not None:
            self.dataset_leftovers(val, "data.val", folder=True)
            for key in ("img_suffix", "seg_map_suffix", "reduce_zero_label", "classes", "palette"):
                if key in val and not same_value(val[key], train.get(key)):
                    self.unsupported.append(f"data.val.{key}={val[key]!r} differs from data.train's; one value "
                                            f"serves both here")
        return ours

    def rebase(self, val: Dict[str, Any], root: Optional[str], ours: str) -> Dict[str, Any]:
        """data.val under another data_root than data.train's (or none): its folders as paths under train's root
        (absolute ones stay; mmseg joins a dataset's own data_root only), else unsupported."""
        own = val.get("data_root")
        rebased = dict(val)
        for key in ("img_dir", "ann_dir"):
            folder = val.get(key)
            if not isinstance(folder, str):
                continue
            full = posixpath.join(str(own), folder) if own is not None else folder
            if posixpath.isabs(full) or root is None:
                rebased[key] = full
            elif posixpath.normpath(full).startswith(posixpath.normpath(str(root)) + "/"):
                rebased[key] = posixpath.relpath(posixpath.normpath(full), posixpath.normpath(str(root)))
            else:
                rebased[key] = None
        if ours != "folder" or any(val.get(k) is not None and rebased[k] is None for k in ("img_dir", "ann_dir")):
            self.unsupported.append(f"data.val.data_root={own!r} differs from data.train's {root!r}; one data.root "
                                    f"serves both here")
            return val
        return rebased

    @staticmethod
    def _layout(kind: str, train: Dict[str, Any], val: Optional[Dict[str, Any]]) -> str:
        """ade20k / cityscapes when both datasets are of that type in its own folders, else folder."""
        if kind not in LAYOUTS or (val is not None and val.get("type", "CustomDataset") != kind):
            return "folder"
        ours, img_fmt, ann_fmt, splits = LAYOUTS[kind]
        for ds in (train, val):
            if ds is None:
                continue
            img = posixpath.normpath(str(ds.get("img_dir", "")))
            split = img.split("/")[-1]
            if (split not in splits or img != img_fmt.format(split)
                    or posixpath.normpath(str(ds.get("ann_dir", ""))) != ann_fmt.format(split)):
                return "folder"  # another layout under data_root: read as plain folders
        return ours

    def dataset_leftovers(self, ds: Dict[str, Any], where: str, folder: bool) -> None:
        if ds.get("split"):
            self.unsupported.append(f"{where}.split={ds['split']!r}: split files do not convert; put the split's "
                                    f"images in their own folder")
        head = self.out["data"].get("ignore_index", 255)  # (the decode head's: mmseg's loss ignores it)
        if "ignore_index" in ds and int(ds["ignore_index"]) != head:  # (mmseg evaluates with the dataset's)
            self.unsupported.append(f"{where}.ignore_index={ds['ignore_index']!r} differs from the decode head's "
                                    f"{head} (mmseg's loss ignores the head's, its evaluation the dataset's); one "
                                    f"data.ignore_index serves both here")
        handled = ("type", "data_root", "img_dir", "ann_dir", "pipeline", "split", "ignore_index")
        handled += ("img_suffix", "seg_map_suffix", "reduce_zero_label", "classes", "palette") if folder else ()
        self.leftovers(ds, where, handled, ignored=("test_mode", "file_client_args", "gt_seg_map_loader_cfg"))

    def train_pipeline(self, pipeline: Sequence[Dict[str, Any]]) -> None:
        where = "data.train.pipeline"
        steps = self.pipeline_steps(pipeline, where, FORMAT_STEPS)
        known = [k for k in steps if k in TRAIN_STEPS]
        for kind in steps:
            if kind not in TRAIN_STEPS:
                self.unsupported.append(f"{where}: {kind} has no equivalent here (the train pipeline is "
                                        f"{' -> '.join(TRAIN_STEPS)})")
        if known != sorted(known, key=TRAIN_STEPS.index):
            self.unsupported.append(f"{where}: steps in the order {' -> '.join(known)}; this package applies "
                                    f"{' -> '.join(TRAIN_STEPS)}")
        # (training reads labels through LoadAnnotations, whose reduce_zero_label defaults to False; the dataset's
        # own flag is mmseg's evaluation's: compared in data())
        self.train_reduce = bool(steps.get("LoadAnnotations", {}).get("reduce_zero_label", False))
        resize = steps.get("Resize")
        if resize is None:
            self.unsupported.append(f"{where}: no Resize; the train pipeline here always rescales")
        else:
            scale = resize.get("img_scale")
            if isinstance(scale, list) and len(scale) == 1:
                scale = scale[0]
            if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(s, int) for s in scale)):
                self.unsupported.append(f"{where}: Resize img_scale={scale!r}; one (long, short) scale converts")
            else:
                self.set("data", "scale", list(scale))
            self.set("data", "ratio_range", resize.get("ratio_range"))
            self.expect(resize, "keep_ratio", True, f"{where}.Resize", "resizes keep the aspect ratio here")
            self.leftovers(resize, f"{where}.Resize", ("type", "img_scale", "ratio_range", "keep_ratio"),
                           ignored=("multiscale_mode",))
        crop = steps.get("RandomCrop")
        if crop is None:
            self.unsupported.append(f"{where}: no RandomCrop; the train pipeline here always crops")
        else:
            self.set("data", "crop_size", pair(crop["crop_size"]))
            self.set("data", "cat_max_ratio", float(crop.get("cat_max_ratio", 1.0)))
            crop_ignore = crop.get("ignore_index", 255)  # (mmseg's RandomCrop: only its cat_max_ratio reads it)
            if crop_ignore != self.out["data"].get("ignore_index", 255) and float(crop.get("cat_max_ratio", 1.0)) < 1:
                self.unsupported.append(f"{where}.RandomCrop.ignore_index={crop_ignore}: the crop's "
                                        f"cat_max_ratio leaves out data.ignore_index here")
            self.leftovers(crop, f"{where}.RandomCrop", ("type", "crop_size", "cat_max_ratio", "ignore_index"))
        flip = steps.get("RandomFlip")
        self.set("data", "flip_prob", float(flip.get("prob", flip.get("flip_ratio", 0.0))) if flip else 0.0)
        if flip:
            self.expect(flip, "direction", "horizontal", f"{where}.RandomFlip", "flips are horizontal here")
        photo = steps.get("PhotoMetricDistortion")
        self.set("data", "photometric", photo is not None)
        if photo:
            for key, value in PHOTOMETRIC_DEFAULTS.items():
                self.expect(photo, key, value, f"{where}.PhotoMetricDistortion", "mmseg's defaults only")
        self.normalize(steps.get("Normalize"), where)
        pad = steps.get("Pad")
        if pad is not None:
            if "size" in pad and crop is not None and pair(pad["size"]) != pair(crop["crop_size"]):
                self.unsupported.append(f"{where}.Pad.size={pad['size']!r} differs from the crop size")
            self.expect(pad, "pad_val", 0, f"{where}.Pad", "images are padded with 0 here")
            seg_pad = pad.get("seg_pad_val", 255)
            if seg_pad != self.out["data"].get("ignore_index", 255):
                self.unsupported.append(f"{where}.Pad.seg_pad_val={seg_pad}: labels are padded with "
                                        f"data.ignore_index here")

    def normalize(self, norm: Optional[Dict[str, Any]], where: str) -> None:
        if norm is None:
            self.unsupported.append(f"{where}: no Normalize; images are normalised here")
            return
        if not norm.get("to_rgb", True):
            self.unsupported.append(f"{where}.Normalize to_rgb=False: images are RGB here (mmseg reads BGR)")
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
        if "mean" in self.out["data"] and (mean, std) != (self.out["data"]["mean"], self.out["data"]["std"]):
            self.unsupported.append(f"{where}.Normalize: mean / std differ from the train pipeline's; one "
                                    f"data.mean / data.std serves both here")
        self.set("data", "mean", mean)
        self.set("data", "std", std)

    def test_pipeline(self, pipeline: Sequence[Dict[str, Any]]) -> None:
        where = "data.val.pipeline"
        aug = next((s for s in pipeline if s.get("type") == "MultiScaleFlipAug"), None)
        for step in pipeline:
            if step.get("type") not in FORMAT_STEPS + ("MultiScaleFlipAug",):
                self.unsupported.append(f"{where}: {step.get('type')} outside MultiScaleFlipAug")
        if aug is None:
            self.unsupported.append(f"{where}: no MultiScaleFlipAug")
            return
        scale = aug.get("img_scale")
        if isinstance(scale, list) and scale and isinstance(scale[0], (list, tuple)):
            if len(scale) > 1:
                self.unsupported.append(f"{where}.MultiScaleFlipAug.img_scale={scale!r}: one scale (with "
                                        f"img_ratios) converts")
            scale = scale[0]
        self.set("test", "scale", list(scale) if scale is not None else None)
        ratios = aug.get("img_ratios") or [1.0]
        self.set("test", "scales", [float(r) for r in ([ratios] if isinstance(ratios, (int, float)) else ratios)])
        self.set("test", "flip", bool(aug.get("flip", False)))
        self.expect(aug, "flip_direction", "horizontal", f"{where}.MultiScaleFlipAug", "test flips are horizontal")
        steps = self.pipeline_steps(aug.get("transforms", []), f"{where}.MultiScaleFlipAug.transforms", FORMAT_STEPS)
        for kind, step in steps.items():
            if kind == "Resize":
                self.expect(step, "keep_ratio", True, f"{where}.Resize", "test resizes keep the aspect ratio")
            elif kind == "ResizeToMultiple":
                self.set("test", "size_divisor", int(step.get("size_divisor", 32)))
            elif kind == "Normalize":
                self.normalize(step, where)
            elif kind != "RandomFlip":
                self.unsupported.append(f"{where}: {kind} in the test transforms has no equivalent here")
        if "Resize" not in steps and scale is not None:
            self.unsupported.append(f"{where}: MultiScaleFlipAug without a Resize")

    # ------------------------------------------------------------------ schedule and runtime
    def optimizer(self) -> None:
        o = dict(self.mm.get("optimizer") or {})
        where = "optimizer"
        if o.get("type") != "AdamW":
            self.unsupported.append(f"optimizer.type={o.get('type')!r}: the segmentation recipe here is AdamW")
        # (torch.optim.AdamW(**cfg), as mmcv builds it: torch's defaults for what the config leaves out)
        self.set("optim", "lr", float(o.get("lr", 1e-3)))
        self.set("optim", "weight_decay", float(o.get("weight_decay", 1e-2)))
        self.set("optim", "betas", [float(b) for b in o.get("betas", (0.9, 0.999))])
        self.expect(o, "eps", 1e-8, where, "AdamW's eps is 1e-8 here")
        self.expect(o, "amsgrad", False, where, "no AMSGrad")
        constructor = o.get("constructor")
        paramwise = dict(o.get("paramwise_cfg") or {})
        if constructor in LAYER_DECAY_CONSTRUCTORS:
            self.set("optim", "layer_decay", float(paramwise.pop("layer_decay_rate", 1.0)))
            layers = paramwise.pop("num_layers", None)
            depth = self.depth()
            if layers is not None and int(layers) != depth:
                self.unsupported.append(f"optimizer.paramwise_cfg.num_layers={layers}: layer decay counts the "
                                        f"backbone's {depth} blocks here")
            self.set("optim", "decay_exempt", "timm")
            self.notes.append("optim.decay_exempt=timm: no weight decay on 1-D parameters, biases and the backbone's "
                              "no_weight_decay() names (position embedding, decay / mix parameters); the layer-decay "
                              "constructor exempts biases and the parameters that are 1-D in the original layout")
        else:
            if constructor is not None:
                self.unsupported.append(f"optimizer.constructor={constructor!r} has no equivalent here")
            self.set("optim", "layer_decay", None)
            self.default_constructor_decay(paramwise)
        for key, value in paramwise.items():
            self.unsupported.append(f"optimizer.paramwise_cfg.{key}={value!r} has no equivalent here")
        self.leftovers(o, where, ("type", "lr", "weight_decay", "betas", "eps", "amsgrad", "constructor",
                                  "paramwise_cfg"))
        self.fp16_hook = self.optimizer_hook("gradient accumulation does not convert")

    def depth(self) -> int:
        from vision_rwkv.models.vrwkv import VARIANT_ARGS

        kwargs = self.out["model"].get("backbone_kwargs", {})
        return int(kwargs.get("depth", VARIANT_ARGS[self.out["model"]["backbone"]]["depth"]))

    def schedule(self) -> None:
        lr = dict(self.mm.get("lr_config") or {})
        where = "lr_config"
        if lr.get("policy") != "poly":
            self.unsupported.append(f"lr_config.policy={lr.get('policy')!r}: the schedule here is poly")
        self.expect(lr, "by_epoch", False, where, "the schedule is per iteration", default=True)
        self.set("optim", "power", float(lr.get("power", 1.0)))
        self.set("optim", "min_lr", float(lr.get("min_lr", 0.0)))
        warmup = lr.get("warmup")
        if warmup not in (None, "linear"):
            self.unsupported.append(f"lr_config.warmup={warmup!r}: the warm-up here is linear")
        if warmup and not lr.get("warmup_iters"):
            raise MmcvConfigError(f"lr_config warmup={warmup!r} needs warmup_iters > 0 (as mmcv does)")
        self.set("optim", "warmup_iters", int(lr.get("warmup_iters", 0)) if warmup else 0)
        if warmup:
            self.set("optim", "warmup_ratio", float(lr.get("warmup_ratio", 0.1)))
        self.expect(lr, "warmup_by_epoch", False, where, "the warm-up is per iteration")
        self.leftovers(lr, where, ("policy", "by_epoch", "power", "min_lr", "warmup", "warmup_iters",
                                   "warmup_ratio", "warmup_by_epoch"))
        runner = dict(self.mm.get("runner") or {})
        if runner.get("type", "IterBasedRunner") != "IterBasedRunner":
            self.unsupported.append(f"runner.type={runner['type']!r}: training here is iteration-based")
        iters = runner.get("max_iters", self.mm.get("total_iters"))
        if iters is None:
            raise MmcvConfigError("runner.max_iters (or total_iters) must be set")
        self.set("optim", "max_iters", int(iters))
        self.leftovers(runner, "runner", ("type", "max_iters"))

    def runtime(self, stem: str) -> None:
        evaluation = self.intervals("ckpt_every", "eval_every", by_epoch=False, eval_by_epoch=False)
        if self.mm.get("evaluation") is None:
            self.notes.append("no evaluation section: mmseg's tools/train.py evaluates every iteration (its hook's "
                              "default); train.eval_every keeps the schema's 16000")
        metric = evaluation.get("metric", "mIoU")
        if "mIoU" not in ([metric] if isinstance(metric, str) else list(metric)):
            self.notes.append(f"evaluation.metric={metric!r}: evaluations here report mIoU, mAcc and aAcc")
        log = self.mm.get("log_config") or {}
        hooks = [h.get("type") for h in log.get("hooks", [])]
        if "TensorboardLoggerHook" in hooks:
            self.set("train", "tensorboard", True)
        other = [h for h in hooks if h not in ("TextLoggerHook", "TensorboardLoggerHook")]
        if other:
            self.notes.append(f"log_config hooks {other}: logs go to the terminal, train_log.csv, curves and "
                              f"TensorBoard here")
        if self.mm.get("fp16") is not None or self.fp16_hook:
            self.set("train", "precision", "fp16")
            self.notes.append("fp16: mixed precision with dynamic loss scaling (torch's GradScaler) in place of "
                              "mmcv's loss scale; train.precision=bf16 or fp32 to change it")
        self.set("train", "run_dir", str(self.mm.get("work_dir") or f"runs/seg/{stem}"))
        if self.mm.get("resume_from"):
            self.set("train", "resume", str(self.mm["resume_from"]))
        if self.mm.get("load_from"):
            self.unsupported.append(f"load_from={self.mm['load_from']!r}: starting from a whole segmentor's "
                                    f"weights does not convert (model.pretrained takes a backbone)")
        if self.mm.get("find_unused_parameters") is not None:
            self.set("train", "find_unused_parameters", bool(self.mm["find_unused_parameters"]))
        if isinstance(self.mm.get("seed"), int):
            self.set("train", "seed", self.mm["seed"])
        if self.mm.get("custom_hooks"):
            self.unsupported.append(f"custom_hooks={self.mm['custom_hooks']!r} have no equivalent here")
        if self.mm.get("custom_imports"):
            self.notes.append("custom_imports are not needed: the models are built in")

    def classes_check(self) -> None:
        n = getattr(self, "num_classes", None)
        d = self.out["data"]
        known = {"ade20k": 150, "cityscapes": 19}.get(d.get("type"))
        if known is None and isinstance(d.get("classes"), list):
            known = len(d["classes"])
        if n is not None and known is not None and int(n) != known:
            self.unsupported.append(f"model.decode_head.num_classes={n} but the dataset has {known} classes")

    def run(self, stem: str) -> Conversion:
        if any(k in self.mm for k in ("train_dataloader", "optim_wrapper", "param_scheduler", "train_cfg")) \
                and "data" not in self.mm:
            raise MmcvConfigError("this is an mmseg 1.x config (train_dataloader / optim_wrapper / "
                                  "param_scheduler); the converter reads mmseg 0.x configs, the original "
                                  "Vision-RWKV repo's")
        self.convert_sections([("model", self.model), ("data", self.data), ("optimizer", self.optimizer),
                               ("lr_config / runner", self.schedule), ("runtime", lambda: self.runtime(stem)),
                               ("data classes", self.classes_check), ("top-level names", self.unread_top_keys)])
        if self.out["model"].get("neck") == "adapter" and self.out["test"].get("size_divisor") is None:
            self.set("test", "size_divisor", 32)
            self.notes.append("test.size_divisor=32 (the ViT-Adapter neck needs input sides that are multiples "
                              "of 32; the test pipeline has no ResizeToMultiple)")
        return Conversion({k: v for k, v in self.out.items() if v}, self.notes, self.unsupported)


def convert_mmseg_config(mm: Dict[str, Any], name: str = "converted",
                         referenced: Optional[Set[str]] = None) -> Conversion:
    """Map the settings of a read mmseg config (``read_mmcv_config``) to SegConfig keys (module docstring).
    ``name`` names the default ``train.run_dir`` (``runs/seg/<name>``) when the config sets no ``work_dir``;
    ``referenced``: the names the config reads (read_mmcv_config's), so that an unknown top-level name is
    listed as unsupported rather than noted. Raises MmcvConfigError for configs that cannot give a model at all
    (another backbone or head type)."""
    return _Converter(mm, referenced).run(Path(name).stem)


def _schema_order(config: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Sections and keys in the order of the SegConfig dataclasses (model.backbone_kwargs on one line)."""
    from dataclasses import fields

    from .config import SegConfig

    out: Dict[str, Dict[str, Any]] = {}
    for section in fields(SegConfig):
        values = config.get(section.name)
        if values:
            order = [f.name for f in fields(section.default_factory())]
            out[section.name] = {k: values[k] for k in sorted(values, key=order.index)}
    if "backbone_kwargs" in out.get("model", {}):
        out["model"]["backbone_kwargs"] = FlowDict(out["model"]["backbone_kwargs"])
    return out


def conversion_yaml(conversion: Conversion, source: str) -> str:
    """The converted config as YAML text: a header naming ``source``, the notes and (when allowed) the unsupported
    settings as comments, then the keys in schema order (unset keys take the schema defaults)."""
    return conversion_text(_schema_order(conversion.config), conversion, f"the mmseg config {source}",
                           "tools/convert_mmcv_config.py", "the schema (vision_rwkv/seg/config.py)")
