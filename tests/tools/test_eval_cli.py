"""tools/eval.py: a training checkpoint or a timm model name, any resolution; metrics, per-class CSV, PNG."""
import json

import pytest

from tool_helpers import DEMO, TINY, load_tool


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = load_tool("train").main([str(DEMO), *TINY, f"run_dir={run}", "train.plot=false"])
    return run, result


def test_eval_checkpoint_reproduces_training_metric(trained, tmp_path):
    run, result = trained
    r = load_tool("eval").main([str(DEMO), *TINY, f"run_dir={run}", "eval.weights=model",
                                f"eval.out_dir={tmp_path}", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    assert r["top1"] == pytest.approx(result["top1"]) and r["loss"] == pytest.approx(result["loss"], rel=1e-5)
    assert r["num_samples"] == 16 and r["throughput"] > 0
    assert len(r["per_class_accuracy"]) == 8 and sum(r["per_class_count"]) == 16
    assert sum(map(sum, r["confusion_matrix"])) == 16
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert len((tmp_path / "per_class.csv").read_text().splitlines()) == 9
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == r["top1"]


def test_eval_other_resolution_and_test_split(trained, tmp_path):
    run, _ = trained
    r = load_tool("eval").main([str(DEMO), *TINY, f"run_dir={run}", "eval.input_size=28", "eval.split=test",
                                f"eval.out_dir={tmp_path}", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    assert r["input_size"] == 28 and r["num_samples"] == 16


def test_eval_plain_timm_model(tmp_path):
    r = load_tool("eval").main([str(DEMO), *TINY, "model.name=resnet10t", "~model.kwargs.img_size",
                                "~model.kwargs.patch_size", "~model.kwargs.embed_dim", "~model.kwargs.depth",
                                f"eval.out_dir={tmp_path}", f"run_dir={tmp_path}"])
    assert r["num_samples"] == 16 and 0 <= r["top1"] <= 100


def test_eval_wrong_checkpoint_names_keys(trained, tmp_path):
    run, _ = trained
    with pytest.raises(RuntimeError, match="missing keys"):
        load_tool("eval").main([str(DEMO), *TINY, "model.kwargs.depth=2", f"eval.out_dir={tmp_path}",
                                "--checkpoint", str(run / "checkpoints" / "best.pt")])


@pytest.mark.parametrize("argv_tail", [["--checkpoint", "runs/x/best.pt", "eval.input_size=40"],
                                       ["eval.input_size=40", "--checkpoint", "runs/x/best.pt"]])
@pytest.mark.parametrize("config_form", ["positional", "option"])
def test_eval_command_line_forms(monkeypatch, config_form, argv_tail):
    """CONFIG positionally or with --config; --checkpoint PATH is eval.checkpoint=PATH, anywhere on the line."""
    mod = load_tool("eval")
    seen = []
    monkeypatch.setattr(mod, "evaluate_classifier", lambda cfg: seen.append(cfg) or {})
    head = [str(DEMO)] if config_form == "positional" else ["--config", str(DEMO)]
    mod.main([*head, *argv_tail])
    (cfg,) = seen
    assert cfg.eval.checkpoint == "runs/x/best.pt" and cfg.eval.input_size == 40


def test_eval_command_line_errors(monkeypatch, capsys):
    mod = load_tool("eval")
    monkeypatch.setattr(mod, "evaluate_classifier", lambda cfg: pytest.fail("must not evaluate"))
    for argv, message in [([str(DEMO), "eval.checkpoint=a.pt", "--checkpoint", "b.pt"], "both set eval.checkpoint"),
                          (["eval.split=test"], "CONFIG file is required")]:
        with pytest.raises(SystemExit) as exc:
            mod.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_zeroshot_checkpoint_is_an_alias_of_pretrained():
    parser = load_tool("eval_zeroshot").build_parser()
    assert parser.parse_args(["--model", "ViT-B-32", "--checkpoint", "w.pt"]).pretrained == "w.pt"
    assert parser.parse_args(["--model", "ViT-B-32", "--pretrained", "w.pt"]).pretrained == "w.pt"
