"""``train.compile``: the training forward runs through torch.compile (graphs are really compiled), the run matches
the eager one, checkpoints keep the plain module's keys and resume without compilation; bad settings name the key."""
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch import nn

from vision_rwkv.engine import COMPILE_MODES, compile_for_training, load_checkpoint, load_config, read_metrics_csv
from vision_rwkv.engine.classification import train_classifier

DEMO = Path(__file__).resolve().parents[2] / "configs" / "classification" / "demo_shapes.yaml"
TINY = ["model.kwargs.img_size=16", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=32", "model.kwargs.depth=2",
        "data.input_size=16", "data.shapes.image_size=16", "data.shapes.train_length=32",
        "data.shapes.val_length=8", "train.batch_size=8", "train.epochs=1", "train.show_progress=false",
        "train.plot=false", "train.tensorboard=false", "train.log_every=1", "deterministic=true"]


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_disabled_returns_the_model():
    model = nn.Linear(2, 2)
    assert compile_for_training(model, False, backend="no-such-backend", mode="no-such-mode") is model


@pytest.mark.parametrize("backend,mode,key", [("no_such_backend", None, "train.compile_backend"),
                                              ("inductor", "fastest", "train.compile_mode"),
                                              ("aot_eager", "reduce-overhead", "train.compile_mode")])
def test_bad_settings_name_the_key(backend, mode, key):
    with pytest.raises(ValueError, match=key):
        compile_for_training(nn.Linear(2, 2), True, backend=backend, mode=mode)


def test_cuda_graph_mode_off_cuda_warns(recwarn):
    """compile_mode=reduce-overhead on CPU trained (27x slower to start than eager) with no word that CUDA graphs
    were not used."""
    with pytest.warns(UserWarning, match="train.compile_mode='reduce-overhead' replays CUDA graphs.*on cpu"):
        compile_for_training(nn.Linear(2, 2), True, mode="reduce-overhead")
    compile_for_training(nn.Linear(2, 2), True, mode="max-autotune-no-cudagraphs")
    assert not [w for w in recwarn if "CUDA graphs" in str(w.message)]


def test_import_tags_the_compile_caches_with_the_ops_sources():
    """A graph cached against older custom ops must not be replayed: importing vision_rwkv adds a hash of
    vision_rwkv/ops to torch's compile-cache key, after a tag the user set (fresh process)."""
    import os
    import subprocess
    import sys

    from vision_rwkv.engine.compiling import ops_cache_tag

    code = "import torch, vision_rwkv; print(torch.compiler.config.cache_key_tag)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TORCH_COMPILE_CACHE_KEY_TAG="mine"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"mine+{ops_cache_tag()}"


def test_compiling_tags_the_compile_caches_with_the_ops_sources():
    """compile_for_training adds the tag again if it was reset since the import, once."""
    from vision_rwkv.engine.compiling import ops_cache_tag

    tag = ops_cache_tag()
    assert tag.startswith("vision_rwkv-") and len(tag) == len("vision_rwkv-") + 16 and tag == ops_cache_tag()
    before = torch.compiler.config.cache_key_tag
    # (torch's own patch, not pytest's monkeypatch: pytest >= 9.2 restores a config module's attribute by deleting
    # it, which leaves torch.compiler.config without the key for every later test in the process)
    with torch.compiler.config.patch(cache_key_tag="mine"):
        compile_for_training(nn.Linear(2, 2), True, backend="eager")
        compile_for_training(nn.Linear(2, 2), True, backend="eager")
        assert torch.compiler.config.cache_key_tag == f"mine+{tag}"
    assert torch.compiler.config.cache_key_tag == before


def test_modes_are_torch_modes():
    from torch._inductor import list_mode_options

    for mode in COMPILE_MODES:
        list_mode_options(mode)  # raises for a mode torch does not know


def test_compiled_classifier_training_matches_eager_and_resumes_plain(tmp_path):
    eager = train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path / 'eager'}"]))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path / 'compiled'}", "train.compile=true",
                                                          "train.compile_backend=aot_eager"]))
    assert compiled_graphs() >= 1  # the training forward really went through dynamo
    assert eager["step"] == compiled["step"] == 4
    loss_e = [r["loss"] for r in read_metrics_csv(tmp_path / "eager" / "train_metrics.csv")]
    loss_c = [r["loss"] for r in read_metrics_csv(tmp_path / "compiled" / "train_metrics.csv")]
    assert len(loss_e) == 4 and loss_c == pytest.approx(loss_e, rel=1e-5, abs=1e-6)
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "ckpt_00000004.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "ckpt_00000004.pt")["model"]
    assert sorted(a) == sorted(b)  # no "_orig_mod." prefixes
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # a compiled run's checkpoint resumes in an eager run (and runs on to the next epoch)
    with pytest.warns(UserWarning, match="schedule follows the new length"):
        resumed = train_classifier(load_config(DEMO, TINY + [f"run_dir={tmp_path / 'compiled'}", "resume=latest",
                                                             "train.epochs=2"]))
    assert resumed["step"] == 8
