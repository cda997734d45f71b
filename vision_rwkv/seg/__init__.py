"""Semantic segmentation: any timm backbone with `forward_intermediates` (VRWKV / VRWKV6 first) -> multi-level
neck (or, for VRWKV / VRWKV6, the ViT-Adapter of the released models) -> UperNet + FCN auxiliary head, mmseg's
ADE20K recipe without mmseg.

Public API::

    Segmentor, create_segmentor(model_cfg, num_classes), seg_param_groups(model, wd, layer_decay)
    MultiLevelNeck, ViTAdapter, MSDeformAttn, UperNetHead, FCNHead
    convert_original_segmentor(state_dict)                          # released mmseg checkpoints -> our names
    load_segmentor_weights(model, path)                             # strict, mismatches counted and capped
    whole_inference, slide_inference, inference, predict            # test-time inference
    SegMetric, confusion_matrix, metrics_from_confusion, format_table
    FolderSegDataset, ADE20KDataset, CityscapesDataset, ShapesSegDataset
    SegTrainTransform, SegTestTransform                              # albumentations pipelines
    PolyWarmupLR, build_optimizer
    load_seg_config(path, overrides), train_segmentor(cfg), test_segmentor(cfg), evaluate_segmentor(...)
    run_demo(out_dir)                                                # the README's Shapes demo
    read_mmcv_config(path), convert_mmseg_config(cfg), conversion_yaml(conversion, source)
                                                                     # mmseg 0.x configs -> our YAML
    predict_images.load_segmentor, load_trained_segmentor, segment_files, save_label_png  (import
    vision_rwkv.seg.predict_images)
                                                                     # label maps of image files (predict_seg.py)
"""
from .adapter import ViTAdapter
from .config import SegConfig, load_seg_config
from .convert import convert_original_segmentor, load_segmentor_weights
from .datasets import ADE20KDataset, CityscapesDataset, FolderSegDataset, SegDataset, ShapesSegDataset
from .deform_attn import MSDeformAttn
from .heads import FCNHead, UperNetHead
from .inference import inference, predict, slide_inference, whole_inference
from .metrics import SegMetric, confusion_matrix, format_table, metrics_from_confusion
from .mmseg_config_convert import Conversion, conversion_yaml, convert_mmseg_config
from vision_rwkv.engine.mmcv_config import MmcvConfigError, read_mmcv_config
from .neck import MultiLevelNeck
from .optim import PolyWarmupLR, build_optimizer, poly_warmup_factor
from .segmentor import Segmentor, create_segmentor, evenly_spaced_indices, load_backbone_weights, seg_param_groups
from .train import build_datasets, build_segmentor, evaluate_segmentor, test_segmentor, train_segmentor


def __getattr__(name: str):
    # the transforms import albumentations / OpenCV (slow); load them on first use
    if name in ("SegTrainTransform", "SegTestTransform"):
        from . import transforms
        return getattr(transforms, name)
    if name == "run_demo":
        from .demo import run_demo
        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
