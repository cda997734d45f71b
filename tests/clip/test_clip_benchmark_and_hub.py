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
