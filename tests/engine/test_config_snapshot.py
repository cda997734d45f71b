"""Every classification / segmentation config under configs/ loads to exactly the values recorded in
config_snapshot.json (taken with the loaders before the schema-first merge, when the segmentation configs still
inherited every key from a _base_/default.yaml). A deliberate config change updates the snapshot:

    python tests/engine/test_config_snapshot.py --update
"""
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("config_snapshot.json")
FAMILIES = ("classification", "segmentation")


def _load(rel: str) -> dict:
    if rel.startswith("configs/segmentation/"):
        from vision_rwkv.seg import load_seg_config
        cfg = load_seg_config(ROOT / rel)
    else:
        from vision_rwkv.engine import load_config
        cfg = load_config(ROOT / rel)
    return OmegaConf.to_container(cfg, resolve=True)


def _config_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for fam in FAMILIES for p in (ROOT / "configs" / fam).rglob("*.yaml"))


def test_snapshot_covers_every_config_file():
    assert sorted(json.loads(SNAPSHOT.read_text())) == _config_files()


@pytest.mark.parametrize("rel", _config_files(), ids=lambda r: r.split("configs/", 1)[1])
def test_loaded_config_matches_snapshot(rel):
    expected = json.loads(SNAPSHOT.read_text())[rel]
    assert _load(rel) == expected


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    SNAPSHOT.write_text(json.dumps({rel: _load(rel) for rel in _config_files()}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
