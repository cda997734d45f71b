"""JSON model configs of RWKV-CLIP (open_clip's format: embed_dim, vision_cfg, text_cfg).

`vision_cfg` names a timm model (`timm_model_name`) plus constructor overrides; `text_cfg` holds the
`rwkv_clip.text_model.TextRWKV` arguments. They are registered with `open_clip.add_model_config` on
`import rwkv_clip`, so `open_clip.list_models()` / `open_clip.get_tokenizer()` know them; build the models with
`rwkv_clip.create_model` (open_clip's own factory has no RWKV text tower).
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
