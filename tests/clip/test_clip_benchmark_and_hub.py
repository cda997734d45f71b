"""`python -m rwkv_clip.clip_benchmark` (clip_benchmark's CLI with the RWKV-CLIP names known to open_clip) and
`python -m rwkv_clip.hub` (a checkpoint as an open_clip hub folder)."""
import json
import os
import subprocess
import sys
import textwrap

import open_clip
import pytest
import torch

import rwkv_clip
from rwkv_clip.clip_benchmark import topk_accuracy

NAME = "RWKV-CLIP-Tiny-demo"

# clip_benchmark as far as the entry point uses it: cli.main() reading sys.argv and building the model through
# open_clip (as clip_benchmark does), and an accuracy() that fails as clip_benchmark 1.6's does under numpy 2
FAKE = {
    "clip_benchmark/__init__.py": "",
    "clip_benchmark/metrics/__init__.py": "",
    "clip_benchmark/metrics/zeroshot_classification.py": """
        def accuracy(output, target, topk=(1,)):
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
    """,
    "clip_benchmark/cli.py": """
        import json, sys
        import open_clip, torch
        from clip_benchmark.metrics import zeroshot_classification as zc

        def main():
            model, _, preprocess = open_clip.create_model_and_transforms(sys.argv[2])
            logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
            acc = zc.accuracy(logits, torch.tensor([1, 2, 0]), topk=(1, 2))
            json.dump(dict(argv=sys.argv[1:], model=type(model).__name__, acc=acc), open(sys.argv[3], "w"))
    """,
}


def test_the_entry_point_runs_clip_benchmark_with_the_rwkv_clip_names(tmp_path):
    """clip_benchmark's own command imports only open_clip: "Model config for 'RWKV-CLIP-...' not found"."""
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "rwkv_clip.clip_benchmark", "eval", NAME, str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["argv"] == ["eval", NAME, str(out)] and result["model"] == "RWKVCLIP"
    assert result["acc"] == pytest.approx([1 / 3, 1.0])  # (the numpy-2 accuracy replaced)


def test_without_clip_benchmark_the_entry_point_says_what_to_install(monkeypatch, capsys):
    from rwkv_clip import clip_benchmark
    monkeypatch.setitem(sys.modules, "clip_benchmark", None)
    assert clip_benchmark.main(["eval"]) == 2
    assert "pip install clip_benchmark" in capsys.readouterr().err


def test_topk_accuracy():
    torch.manual_seed(0)
    logits, target = torch.randn(50, 7), torch.randint(0, 7, (50,))
    order = logits.argsort(dim=1, descending=True)
    for k, acc in zip((1, 3, 7), topk_accuracy(logits, target, (1, 3, 7))):
        expected = sum(int(target[i]) in order[i, :k].tolist() for i in range(50)) / 50
        assert acc == pytest.approx(expected)
    assert topk_accuracy(logits, target, (7,)) == [1.0]


def test_a_checkpoint_becomes_a_local_dir_folder(tmp_path, capsys):
    from rwkv_clip import hub
    torch.manual_seed(0)
    src = rwkv_clip.create_model(NAME)
    ckpt = tmp_path / "weights.pt"
    torch.save(src.state_dict(), ckpt)
    out = tmp_path / "folder"
    assert hub.main(["--model", NAME, "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in src.state_dict().items())
    # rwkv_clip's tokenizer takes the folder too, with open_clip's arguments (it refused the name and cache_dir)
    tokenizer = rwkv_clip.get_tokenizer(f"local-dir:{out}", cache_dir=None)
    assert tokenizer(["a red circle"]).shape == open_clip.get_tokenizer(f"local-dir:{out}")(["x"]).shape == \
        (1, model.context_length)
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        rwkv_clip.get_tokenizer(f"local-dir:{tmp_path / 'none'}")
    assert hub.main(["--model", NAME, "--checkpoint", str(ckpt), "--out", str(out)]) == 2  # not empty
    assert hub.main(["--model", NAME, "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def _image(height: int, width: int):
    from PIL import Image
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy())


def _run_folder(tmp_path, kwargs: dict, steps=(2, 4)):
    """A train_clip run folder as the trainer leaves it: config.yaml (model.name, model.kwargs, eval.zero_shot) and
    checkpoints of the model those build (a different one per step; best.pt the first)."""
    import yaml
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": NAME, "kwargs": kwargs},
                                                     "eval": {"zero_shot": {"data": "none"}}}))
    models = {}
    for step in steps:
        torch.manual_seed(step)
        models[step] = rwkv_clip.create_model(NAME, **kwargs)
        torch.save({"model": models[step].state_dict()}, run / "checkpoints" / f"ckpt_{step:08d}.pt")
    os.link(run / "checkpoints" / f"ckpt_{steps[0]:08d}.pt", run / "checkpoints" / "best.pt")
    return run, models


def test_a_train_clip_run_with_model_kwargs_becomes_a_folder_that_reloads(tmp_path, capsys):
    """The folder recorded the registered config, not the run's model.kwargs: it did not reload (missing keys), or
    reloaded with the wrong preprocessing size (32 for a model trained at 48); a run could not be given at all."""
    from rwkv_clip import hub
    kwargs = {"vision_cfg": {"image_size": 48}, "text_cfg": {"layers": 2}}
    run, models = _run_folder(tmp_path, kwargs)
    assert hub.main(["--run-dir", str(run), "--out", str(tmp_path / "a")]) == 0
    model, _, val = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'a'}")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in models[2].state_dict().items())  # best.pt's
    assert model.visual.image_size == (48, 48) and val(_image(64, 80)).shape == (3, 48, 48)
    assert json.loads((tmp_path / "a" / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["layers"] == 2
    ckpt = run / "checkpoints" / "ckpt_00000004.pt"  # --model with --checkpoint gives the registered config: refused
    assert hub.main(["--model", NAME, "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")]) == 2
    assert "does not match the model" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert hub.main(["--run-dir", str(run), "--checkpoint", str(ckpt), "--out", str(tmp_path / "c")]) == 0
    model = open_clip.create_model(f"local-dir:{tmp_path / 'c'}")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in models[4].state_dict().items())


def test_save_for_hf_writes_the_config_the_model_was_built_with(tmp_path):
    from rwkv_clip.model import RWKVCLIP
    src = rwkv_clip.create_model(NAME, force_image_size=(48, 64), text_cfg={"layers": 2})
    rwkv_clip.save_for_hf(src, tmp_path / "a")  # (no name needed: the model records its config)
    assert open_clip.create_model(f"local-dir:{tmp_path / 'a'}").visual.image_size == (48, 64)
    cfg = rwkv_clip.get_model_config(NAME)
    cfg["text_cfg"]["layers"] = 3
    plain = RWKVCLIP(**cfg)  # built without create_model: the name's config is used, and must fit
    with pytest.raises(ValueError, match="does not rebuild this model's weights: 56 unexpected keys"):
        rwkv_clip.save_for_hf(plain, tmp_path / "b", NAME)
    with pytest.raises(ValueError, match="records no config"):
        rwkv_clip.save_for_hf(plain, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_hub_module_runs_without_a_runpy_warning():
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "rwkv_clip.hub", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "RuntimeWarning" not in done.stderr, done.stderr
