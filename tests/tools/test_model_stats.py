"""tools/model_stats.py: the parameters / MACs table, its JSON and plot, and the arithmetic rates the anchors imply."""
import json

import pytest


def test_table_json_plot_and_anchor_rates(tmp_path, load_tool, capsys):
    tool = load_tool("model_stats")
    anchors = tmp_path / "anchors.json"
    anchors.write_text(json.dumps({"inference": [
        {"model": "DeiT-T", "res": 64, "dtype": "bf16", "img_per_s": 1000.0},
        {"model": "DeiT-T", "res": 64, "dtype": "bf16", "img_per_s": 2000.0},  # (the best run counts)
        {"model": "DeiT-T", "res": 64, "dtype": "fp32", "img_per_s": 9000.0},
        {"model": "VRWKV-T", "res": 64, "dtype": "bf16", "img_per_s": 50.0}]}))
    out, png = tmp_path / "stats.json", tmp_path / "stats.png"
    assert tool.main(["--models", "VRWKV-T", "DeiT-T", "--res", "64", "128", "--out", str(out), "--plot", str(png),
                      "--anchors", str(anchors)]) == 0
    table = capsys.readouterr().out
    assert "| VRWKV-T | 64 | 16 |" in table and "x DeiT's rate" in table
    rows = {(r["label"], r["res"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {("VRWKV-T", 64), ("VRWKV-T", 128), ("DeiT-T", 64), ("DeiT-T", 128)}
    v, d = rows[("VRWKV-T", 64)], rows[("DeiT-T", 64)]
    assert v["of_deit"] == pytest.approx(v["GMACs"] / d["GMACs"])
    assert d["tflops"] == pytest.approx(2000.0 * 2 * d["total_macs"] / 1e12)
    assert v["tflops_for_2x"] == pytest.approx(2 * 2000.0 * 2 * v["total_macs"] / 1e12)
    assert v["rate_vs_deit"] == pytest.approx(v["tflops_for_2x"] / d["tflops"])
    assert "tflops_for_2x" not in rows[("VRWKV-T", 128)]  # (no anchor at 128 px)
    assert png.stat().st_size > 10_000


def test_errors_are_one_line(tmp_path, load_tool, capsys):
    tool = load_tool("model_stats")
    assert tool.main(["--models", "vrwkv_tiyn", "--res", "64", "--anchors", ""]) == 2
    assert "unknown model 'vrwkv_tiyn'" in capsys.readouterr().err
    assert tool.main(["--models", "VRWKV-T", "--res", "64", "--anchors", str(tmp_path / "none.json")]) == 2
    assert "--anchors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--res", "0"])
    assert "--res: resolutions must be positive" in capsys.readouterr().err
    assert tool.main(["--models", "DeiT-T", "--res", "8", "--anchors", ""]) == 2  # (smaller than a patch)
    assert capsys.readouterr().err.startswith("error: DeiT-T at 8 px:")
