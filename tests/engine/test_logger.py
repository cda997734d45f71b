"""Metric logging: CSV round trip and which columns the curves PNG draws."""
import pytest

from vision_rwkv.engine import MetricLogger, read_metrics_csv
from vision_rwkv.engine.logger import curve_names, plot_curves


def test_curve_names_skip_axis_and_bookkeeping_columns():
    series = {
        "train": [{"step": 1, "epoch": 0, "loss": 2.0, "lr": 1e-3, "skipped_images": 0}],
        "val": [{"step": 1, "zeroshot_acc1": 0.3, "zeroshot_num_samples": 400, "zeroshot_chance_acc1": 0.125,
                 "num_images": 200, "num_texts": 1000, "image_retrieval_recall@1": 0.4, "loss": 1.5}],
    }
    assert curve_names(series) == ["loss", "lr", "skipped_images", "zeroshot_acc1", "image_retrieval_recall@1"]
    assert curve_names({"val": [{"step": 1, "num_images": 3}]}) == []


def test_logger_csv_and_png(tmp_path):
    log = MetricLogger(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.log(step, {"loss": 1.0 / step})
    log.log(3, {"acc1": 0.5, "num_images": 10}, split="val")
    rows = read_metrics_csv(tmp_path / "train_metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [1.0, 0.5, 1.0 / 3]
    png = log.plot()
    assert png is not None and png.is_file() and png.stat().st_size > 1000
    assert plot_curves({"val": [{"step": 1, "num_images": 3}]}, tmp_path / "none.png") is None


def test_json_text_is_strict_json():
    """A class absent from the data has no IoU (NaN): written as null, since Python's bare NaN is no JSON and
    strict parsers (JavaScript's JSON.parse, jq --strict) refuse the file."""
    import json
    import math

    import numpy as np

    from vision_rwkv.engine import json_text
    text = json_text({"mIoU": 41.5, "per_class": {"wall": {"IoU": math.nan, "Acc": np.float64("inf")}},
                      "sizes": (1, 2), "path": __import__("pathlib").Path("/x")})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: 1 / 0) == {
        "mIoU": 41.5, "per_class": {"wall": {"IoU": None, "Acc": None}}, "sizes": [1, 2], "path": "/x"}


def test_curves_skip_zero_counters_and_put_wide_ranges_on_a_log_axis(tmp_path, captured_figures):
    """The demo's first CLIP grad norm (2152 over a median of 3) flattened the rest of its curve at zero, and
    counters that never moved (no skipped images) took panels of their own."""
    import vision_rwkv.engine.logger as logger
    figures = captured_figures(logger)
    rows = [{"step": s, "loss": 2.0 / s, "grad_norm": g, "skipped_images": 0.0}
            for s, g in enumerate([2152.0, 3.0, 2.5, 3.5, 2.0], start=1)]
    plot_curves({"train": rows}, tmp_path / "c.png")
    axes = [ax for ax in figures[0].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["loss", "grad_norm (log scale)"]
    assert [ax.get_yscale() for ax in axes] == ["linear", "log"]


def test_short_and_wrapped_labels():
    from vision_rwkv.engine.logger import short_text, wrapped_text
    assert short_text("photos/2024/a_very_long_file_name_indeed.jpg", 20) == "photos/20\u2026indeed.jpg"
    assert len(short_text("x" * 100, 21)) == 21 and short_text("short", 21) == "short"
    assert wrapped_text("German short-haired pointer", 24, 2) == "German short-haired\npointer"
    assert wrapped_text("a b c d e f g h i j k l", 5, 2).endswith("\u2026")


def test_training_accuracy_shares_the_validation_panel(tmp_path, captured_figures):
    """train_top1 (training) and top1 (validation) were two panels, while the losses shared one."""
    import vision_rwkv.engine.logger as logger
    figures = captured_figures(logger)
    series = {"train": [{"step": s, "loss": 1.0 / s, "train_top1": 10.0 * s} for s in (1, 2, 3)],
              "val": [{"step": 3, "loss": 0.5, "top1": 25.0, "top5": 80.0}]}
    plot_curves(series, tmp_path / "c.png")
    axes = {ax.get_title(): ax for ax in figures[0].axes if ax.get_title()}
    assert list(axes) == ["loss", "top1", "top5"]
    assert [line.get_label() for line in axes["top1"].get_lines()] == ["train", "val"]
    assert series["train"][0]["train_top1"] == 10.0  # (the caller's rows are left as they are)


def test_non_finite_values_are_marked_not_left_as_gaps(tmp_path, captured_figures):
    """A diverged loss (NaN from step 3) left an unmarked gap, which reads as "not logged"."""
    import vision_rwkv.engine.logger as logger
    figures = captured_figures(logger)
    rows = [{"step": s, "loss": v} for s, v in enumerate([2.0, 1.5, float("nan"), float("inf"), float("nan")], 1)]
    plot_curves({"train": rows, "val": [{"step": 2, "loss": 1.7}]}, tmp_path / "c.png")
    ax = next(ax for ax in figures[0].axes if ax.get_title() == "loss")
    marks = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert marks["train: 3 NaN/inf"] == [3, 4, 5] and "val" in marks
    assert not any("NaN" in label and label.startswith("val") for label in marks)
    assert "train: 3 NaN/inf" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_full_disk_leaves_no_half_row_and_no_empty_plot(tmp_path, monkeypatch):
    """ENOSPC in the middle of a metrics-CSV append left a cut-off last row; in savefig, a 0-byte curves.png."""
    import builtins
    import io as _io

    from vision_rwkv.engine.logger import MetricLogger, save_figure, subplots
    log = MetricLogger(tmp_path)
    log.log(1, {"loss": 1.0})
    before = (tmp_path / "train_metrics.csv").read_bytes()
    real_open = builtins.open

    class _Full(_io.StringIO):
        def __init__(self, fh):
            super().__init__()
            self.fh = fh

        def write(self, text):
            self.fh.write(text[:5])  # (part of the row reaches the disk, then it is full)
            self.fh.flush()
            raise OSError(28, "No space left on device")

        def __exit__(self, *a):
            self.fh.close()

    def full_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return _Full(fh) if "a" in mode and str(path).endswith("_metrics.csv") else fh
    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(OSError, match="No space"):
        log.log(2, {"loss": 0.5})
    monkeypatch.setattr(builtins, "open", real_open)
    assert (tmp_path / "train_metrics.csv").read_bytes() == before

    fig, ax = subplots()
    ax.plot([1, 2])
    first = save_figure(fig, tmp_path / "curves.png").read_bytes()
    fig, ax = subplots()
    ax.plot([2, 1])

    def full_savefig(self, path, **kw):
        open(path, "wb").close()
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(fig), "savefig", full_savefig)
    with pytest.raises(OSError, match="No space"):
        save_figure(fig, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png", "train_metrics.csv"]


def _tensorboard_run(run_dir, steps) -> None:
    """A first run with TensorBoard: ``loss`` = the step at each of ``steps``."""
    first = MetricLogger(run_dir, tensorboard=True)
    for step in steps:
        first.log(step, {"loss": float(step)})
    first.close()


def _scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of TensorBoard's ``tag`` events under ``run_dir/tb``, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_hides_the_events_a_resume_logs_again(tmp_path):
    """A crash after step 5, a resume from step 3: the CSV was truncated, TensorBoard showed steps 4-5 twice (and the
    step going backwards) - it now gets purge_step, so the later events of the crashed run are hidden."""
    pytest.importorskip("tensorboard")
    _tensorboard_run(tmp_path, range(1, 6))
    resumed = MetricLogger(tmp_path, tensorboard=True)
    resumed.truncate_after(3)
    for step in range(4, 8):
        resumed.log(step, {"loss": 10.0 + step})
    resumed.close()
    seen = _scalars(tmp_path, "train/loss")
    assert seen == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0), (7, 17.0)]


def test_a_resume_with_tensorboard_on_fills_in_the_steps_logged_without_it(tmp_path):
    """A run logged without TensorBoard, resumed with it: the events of the earlier steps (those kept in the CSVs)
    are written from the CSVs, where they were missing; a run that had events gets none twice."""
    pytest.importorskip("tensorboard")
    first = MetricLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        first.log(step, {"loss": float(step)})
        if step == 4:
            first.log(step, {"top1": 40.0}, split="val")
    first.close()
    assert not (tmp_path / "tb").exists()
    resumed = MetricLogger(tmp_path, tensorboard=True)
    resumed.truncate_after(4)
    for step in range(5, 7):
        resumed.log(step, {"loss": 10.0 + step})
    resumed.close()
    assert _scalars(tmp_path, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 15.0), (6, 16.0)]
    assert _scalars(tmp_path, "val/top1") == [(4, 40.0)]
    again = MetricLogger(tmp_path, tensorboard=True)  # (a second resume: the events are there already)
    again.truncate_after(6)
    again.close()
    assert [step for step, _ in _scalars(tmp_path, "train/loss")] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_is_rescaled_with_the_csvs(tmp_path):
    """A resume with steps of another size (another batch or world size) rescales the CSVs' steps; TensorBoard kept
    the old units for the earlier events (a jump on its x axis). Its events are now those of the rescaled CSVs."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    first = MetricLogger(tmp_path, tensorboard=True)
    for step in range(1, 9):
        first.log(step, {"loss": float(step), "lr": 0.1 * step}, epoch=step // 4)
        if step % 4 == 0:
            first.log(step, {"top1": 10.0 * step}, split="val")
    first.close()
    resumed = MetricLogger(tmp_path, tensorboard=True)
    resumed.truncate_after(6, rescale=0.5)  # (steps twice as big: step 6 is now step 3)
    for step in range(4, 6):
        resumed.log(step, {"loss": 100.0 + step, "lr": 1.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr", "val/top1"]
    for tag in ("train/loss", "train/lr", "val/top1"):
        split, column = tag.split("/")
        rows = read_metrics_csv(tmp_path / f"{split}_metrics.csv")
        assert _scalars(tmp_path, tag) == [(int(r["step"]), pytest.approx(r[column])) for r in rows], tag
    assert [step for step, _ in _scalars(tmp_path, "train/loss")] == [1, 2, 3, 4, 5]
    assert [value for _, value in _scalars(tmp_path, "val/top1")] == [40.0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tb")) == ["tb"]
    # one event file, the rescaled rows first: written by another writer, the rows' file and the resumed run's were
    # read in either order (named by a per-process counter compared as text, "...10" before "...9")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_events_are_rescaled_by_a_resume_without_tensorboard(tmp_path):
    """The resume that changed the step size ran with TensorBoard off: the earlier events kept the old units, and a
    later resume with TensorBoard on mixed them with the new ones."""
    pytest.importorskip("tensorboard")
    _tensorboard_run(tmp_path, range(1, 7))
    quiet = MetricLogger(tmp_path, tensorboard=False)
    quiet.truncate_after(6, rescale=0.5)
    quiet.log(4, {"loss": 40.0})
    quiet.close()
    loud = MetricLogger(tmp_path, tensorboard=True)
    loud.truncate_after(4)
    loud.log(5, {"loss": 50.0})
    loud.close()
    seen = sorted(_scalars(tmp_path, "train/loss"))  # (files of one second: any order)
    assert seen == [(1, 2.0), (2, 5.0), (3, 6.0), (5, 50.0)]  # (step 4 was logged with TensorBoard off: CSV only)


def test_a_rescaled_resume_without_tensorboard_installed_keeps_its_events(tmp_path, monkeypatch, capsys):
    """tensorboard uninstalled between runs: the CSVs are rescaled, the old events stay as they were, and a line says
    so (no ImportError ends the resume)."""
    import sys
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.old").write_bytes(b"old events")
    logger = MetricLogger(tmp_path)
    for step in range(1, 5):
        logger.log(step, {"loss": float(step)})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # (its import now raises ImportError)
    logger.truncate_after(4, rescale=0.5)
    assert [r["step"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1, 2]
    assert (tmp_path / "tb" / "events.out.tfevents.old").read_bytes() == b"old events"
    assert "keep the old step units" in capsys.readouterr().out


def test_plots_leave_the_callers_pyplot_alone(tmp_path):
    """Drawing a run's figures neither switches the process's matplotlib backend (a notebook's inline one) nor
    touches pyplot's figures: a fresh interpreter on the svg backend keeps it, and its current figure."""
    import subprocess
    import sys
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
mine = plt.figure()
from vision_rwkv.engine.logger import MetricLogger
log = MetricLogger({str(tmp_path)!r})
log.log(1, {{"loss": 1.0}}); log.log(2, {{"loss": 0.5}})
assert log.plot() is not None
print(matplotlib.get_backend(), plt.get_fignums(), plt.gcf() is mine)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "[1]", "True"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
