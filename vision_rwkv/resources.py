"""Where the repository's data folders are: the source checkout's (or editable install's) `configs/` and
`benchmarks/anchors/`, else the copies a wheel installs inside the package (`vision_rwkv/configs`,
`vision_rwkv/anchors`; see pyproject.toml)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["configs_dir", "anchors_dir"]

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent if (_PACKAGE.parent / "pyproject.toml").is_file() else None


def _find(in_checkout: str, installed: str) -> Path:
    if _CHECKOUT is not None and (_CHECKOUT / in_checkout).is_dir():
        return _CHECKOUT / in_checkout
    return _PACKAGE / installed


def configs_dir() -> Path:
    """The configs folder (classification/, clip/, segmentation/)."""
    return _find("configs", "configs")


def anchors_dir() -> Path:
    """The original implementations' benchmark numbers (kernels.json, backbones.json)."""
    return _find("benchmarks/anchors", "anchors")
