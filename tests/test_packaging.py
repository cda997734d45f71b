"""The package list in pyproject.toml must name every package folder (non-editable installs need it)."""
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, folder in (("vision_rwkv", "vision_rwkv"), ("rwkv_clip", "clip")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((top, *rel)))
    assert found <= listed, f"package folders missing from pyproject.toml: {sorted(found - listed)}"


def test_both_import_packages_import():
    import rwkv_clip  # noqa: F401
    import vision_rwkv  # noqa: F401
