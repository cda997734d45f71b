"""tools/eval_zeroshot.py: a train_clip run folder on held-out Shapes, and a plain open_clip model on CSV data."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

TINY = dict(embed_dim=32,
            vision_cfg=dict(embed_dim=32, depth=1, image_size=16, patch_size=4, head_size=16, mlp_ratio=2.0),
            text_cfg=dict(width=32, layers=1, head_size=16, hidden_dim=64, context_length=16))


def _fake_run(run_dir: Path) -> dict:
    """A run folder as train_clip leaves it: config.yaml + checkpoints/ckpt_*.pt (training-state dict)."""
    import rwkv_clip
    from rwkv_clip.train import load_clip_config
    from vision_rwkv.engine import save_config
    cfg = load_clip_config(None, [f"run_dir={run_dir}"])
    cfg.model.kwargs = TINY
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(3)
    model = rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", **TINY)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": 7}, run_dir / "checkpoints" / "ckpt_00000007.pt")
    return model.state_dict()


def test_eval_cli_on_run_folder(tmp_path):
    import eval_zeroshot as cli
    run = tmp_path / "run"
    weights = _fake_run(run)
    out = tmp_path / "res" / "metrics.json"
    metrics = cli.main(["--run-dir", str(run), "--shapes-image-size", "16", "--zeroshot-length", "16",
                        "--retrieval-length", "8", "--batch-size", "8", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["zeroshot_num_samples"] == 16 and saved["num_images"] == 8 and saved["num_texts"] == 40
    for k in ("zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall", "image_retrieval_recall@1",
              "image_retrieval_recall@5", "image_retrieval_recall@10", "text_retrieval_recall@1",
              "text_retrieval_recall@5", "text_retrieval_recall@10"):
        assert 0.0 <= saved[k] <= 1.0, k
    assert saved["image_retrieval_recall@10"] == 1.0  # text->image over 8 images: always in the top 10
    assert (out.parent / "retrieval_grid.png").is_file()
    assert metrics["zeroshot_acc1"] == saved["zeroshot_acc1"]
    # the evaluated model is the checkpoint's: same features as the saved weights give
    from rwkv_clip.evaluate import load_model_for_eval
    model, tok, _ = load_model_for_eval(run_dir=run)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert tok(["x"]).shape == (1, 16)


def test_eval_cli_defaults_to_the_runs_eval_settings(tmp_path):
    """--run-dir evaluates as the run's training-time evaluation did (its `eval:` section), options given on the
    command line win, and without a run the EvalCfg defaults apply."""
    import eval_zeroshot as cli
    from omegaconf import OmegaConf
    run = tmp_path / "run"
    _fake_run(run)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.eval.shapes_image_size, cfg.eval.zero_shot.length, cfg.eval.retrieval.num_captions = 24, 40, 3
    cfg.eval.retrieval.caption_keys = ["a", "b"]
    OmegaConf.save(cfg, run / "config.yaml")
    got = cli.eval_config(cli.build_parser().parse_args(["--run-dir", str(run), "--zeroshot-length", "16"]))
    assert (got.shapes_image_size, got.zero_shot.length, got.retrieval.num_captions) == (24, 16, 3)
    assert list(got.retrieval.caption_keys) == ["a", "b"] and got.grid_png
    plain = cli.eval_config(cli.build_parser().parse_args(["--model", "x", "--caption-keys", "t, u", "--split",
                                                           "val", "--no-grid"]))
    assert (plain.shapes_image_size, plain.zero_shot.length, plain.retrieval.length) == (64, 400, 200)
    assert list(plain.retrieval.caption_keys) == ["t", "u"] and not plain.grid_png
    assert plain.zero_shot.split == plain.retrieval.split == "val"
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        cli.eval_config(cli.build_parser().parse_args(["--run-dir", str(tmp_path / "nope")]))
    # a run trained without evaluation: nothing to evaluate is an error (it wrote {"model": ...} and exited 0)
    cfg.eval.zero_shot.data = cfg.eval.retrieval.data = "none"
    OmegaConf.save(cfg, run / "config.yaml")
    from vision_rwkv.engine import ConfigError
    with pytest.raises(ConfigError, match=r"nothing to evaluate: the run's eval: section .* --zeroshot-data"):
        cli.eval_config(cli.build_parser().parse_args(["--run-dir", str(run)]))
    got = cli.eval_config(cli.build_parser().parse_args(["--run-dir", str(run), "--zeroshot-data", "shapes"]))
    assert got.zero_shot.data == "shapes" and got.retrieval.data == "none"


def test_eval_cli_plain_open_clip_model_on_csv(tmp_path):
    import open_clip

    import eval_zeroshot as cli
    cfg = tmp_path / "Tiny-ViT-cli-test.json"
    cfg.write_text(json.dumps({"embed_dim": 16,
                               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 16},
                               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                            "layers": 1}}))
    open_clip.add_model_config(cfg)
    rng = np.random.default_rng(0)
    lines = ["filepath\tlabel\ttitle\talt"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\t{['circle', 'star'][i % 2]}\tpicture {i}\tphoto {i}")
    (tmp_path / "data.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.json"
    metrics = cli.main(["--model", "Tiny-ViT-cli-test", "--zeroshot-data", "csv", "--zeroshot-path",
                        str(tmp_path / "data.tsv"), "--classes", "shapes", "--retrieval-data", "csv",
                        "--retrieval-path", str(tmp_path / "data.tsv"), "--caption-keys", "title,alt",
                        "--output", str(out), "--no-grid"])
    assert metrics["zeroshot_num_samples"] == 6 and metrics["num_texts"] == 12
    assert not (tmp_path / "retrieval_grid.png").exists()
    with pytest.raises(FileNotFoundError, match="local file"):
        cli.main(["--model", "Tiny-ViT-cli-test", "--pretrained", "laion2b_s34b_b79k", "--output", str(out)])


def test_eval_cli_refuses_torchrun(monkeypatch, capsys):
    """Under torchrun every process would evaluate everything and write the same files: refused, said once."""
    import eval_zeroshot as mod
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            mod.main(["--model", "ViT-B-32", "--pretrained", "w.pt"])
        assert exc.value.code == 2 and ("not torchrun" in capsys.readouterr().err) == said


def test_eval_cli_channels_last_follows_the_run_unless_told(tmp_path, monkeypatch):
    """--channels-last / --no-channels-last, else the run's train.channels_last (else off); the channels-last image
    tower gives the plain one's metrics."""
    import eval_zeroshot as cli
    from omegaconf import OmegaConf

    import vision_rwkv.engine as engine
    run = tmp_path / "run"
    _fake_run(run)
    parse = cli.build_parser().parse_args
    assert not cli.channels_last(parse(["--run-dir", str(run)]))  # (the run's default: false)
    assert not cli.channels_last(parse(["--model", "x"])) and cli.channels_last(parse(["--model", "x",
                                                                                       "--channels-last"]))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.train.channels_last = True
    OmegaConf.save(cfg, run / "config.yaml")
    assert cli.channels_last(parse(["--run-dir", str(run)]))
    assert not cli.channels_last(parse(["--run-dir", str(run), "--no-channels-last"]))
    del cfg.train["channels_last"]  # (a run from before the key)
    OmegaConf.save(cfg, run / "config.yaml")
    assert not cli.channels_last(parse(["--run-dir", str(run)]))

    converted = []
    real = engine.to_channels_last
    monkeypatch.setattr(engine, "to_channels_last", lambda m: converted.append(m) or real(m))
    common = ["--run-dir", str(run), "--shapes-image-size", "16", "--zeroshot-length", "16", "--retrieval-length",
              "8", "--batch-size", "8", "--no-grid"]
    plain = cli.main(common + ["--output", str(tmp_path / "plain.json")])
    assert converted == []
    last = cli.main(common + ["--channels-last", "--output", str(tmp_path / "last.json")])
    conv = next(m for m in converted[0].modules() if isinstance(m, torch.nn.Conv2d))  # (the patch embedding)
    assert len(converted) == 1 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in plain.items():
        if isinstance(v, float):
            assert last[k] == pytest.approx(v, abs=1e-6), k
