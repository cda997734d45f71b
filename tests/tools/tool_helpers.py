"""Shared helpers of the classification tool tests: the demo config, tiny-run overrides, loading tools/<name>.py."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "classification" / "demo_shapes.yaml"
TINY = ["model.kwargs.img_size=16", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=16", "model.kwargs.depth=1",
        "data.input_size=16", "data.shapes.image_size=16", "data.shapes.train_length=32",
        "data.shapes.val_length=16", "train.batch_size=8", "train.epochs=1", "train.show_progress=false",
        "train.eval_every_epochs=1", "train.ckpt_every_epochs=1"]


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
