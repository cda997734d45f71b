"""Built-in zero-shot class sets: (class names, prompt templates).

* `shapes`: the embedded Shapes dataset's 8 classes with its prompt templates (`vision_rwkv.data.shapes`).
* `imagenet`: ImageNet-1k class names with OpenAI's 80 templates (from open_clip's metadata).
* `imagenet-simple`: ImageNet-1k with open_clip's short template set.
* `cifar10`: CIFAR-10 class names with a few generic templates.
"""
from __future__ import annotations

from typing import Callable, Union

__all__ = ["BUILTIN_SETS", "get_set"]

_GENERIC_TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.",
                      "a low resolution photo of a {}.", "a close-up photo of a {}.")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _shapes():
    from vision_rwkv.data.shapes import CLASS_NAMES, ZERO_SHOT_TEMPLATES
    return list(CLASS_NAMES), list(ZERO_SHOT_TEMPLATES)


def _imagenet():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def _imagenet_simple():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, SIMPLE_IMAGENET_TEMPLATES
    return list(IMAGENET_CLASSNAMES), list(SIMPLE_IMAGENET_TEMPLATES)


BUILTIN_SETS = {
    "shapes": _shapes,
    "imagenet": _imagenet,
    "imagenet-simple": _imagenet_simple,
    "cifar10": lambda: (list(_CIFAR10), list(_GENERIC_TEMPLATES)),
}


def get_set(name: str) -> tuple[list[str], list[Union[str, Callable]]]:
    """(class names, templates) of a built-in set; templates are "{}" strings or callables."""
    if name not in BUILTIN_SETS:
        raise KeyError(f"unknown built-in class set {name!r}; known: {sorted(BUILTIN_SETS)}")
    return BUILTIN_SETS[name]()
