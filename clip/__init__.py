"""rwkv_clip: RWKV-CLIP (RWKV-6 image and text towers) with the open_clip interface.

    import rwkv_clip
    model, preprocess_train, preprocess_val = rwkv_clip.create_model_and_transforms("RWKV-CLIP-B-32")
    tokenizer = rwkv_clip.get_tokenizer("RWKV-CLIP-B-32")
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)

Importing the package registers the VRWKV timm models and the RWKV-CLIP model configs with open_clip
(`open_clip.list_models()`, `open_clip.get_tokenizer(name)`), and routes open_clip's `create_model`,
`create_model_and_transforms` and `create_model_from_pretrained` to rwkv_clip for the RWKV-CLIP names
(`open_clip_routes`), so code written against open_clip builds these models by name once it imports rwkv_clip
(`python -m rwkv_clip.clip_benchmark` is clip_benchmark's CLI so; `rwkv_clip.save_for_hf` / `python -m
rwkv_clip.hub` write hub folders for `local-dir:` / `hf-hub:`).
"""
from .convert import build_from_original, convert_original_state_dict
from .factory import (create_model, create_model_and_transforms, get_model_config, get_tokenizer, image_transforms,
                      list_models, load_checkpoint, load_state_dict, register_model_configs)
from .model import LOGIT_SCALE_MAX, ImageTower, RWKVCLIP
from .open_clip_routes import install_open_clip_routes
from .text_model import TextRWKV

__all__ = [
    "RWKVCLIP", "ImageTower", "TextRWKV", "LOGIT_SCALE_MAX", "create_model", "create_model_and_transforms",
    "get_tokenizer", "get_model_config", "list_models", "load_checkpoint", "load_state_dict", "image_transforms",
    "register_model_configs", "build_from_original", "convert_original_state_dict", "install_open_clip_routes",
    "save_for_hf",
]

install_open_clip_routes()


def __getattr__(name: str):
    """``rwkv_clip.save_for_hf``, imported when first used (importing ``.hub`` here made ``python -m rwkv_clip.hub``
    warn that the module was in sys.modules before it ran)."""
    if name == "save_for_hf":
        from .hub import save_for_hf
        return save_for_hf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
