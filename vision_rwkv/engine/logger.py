"""Run logging: tqdm progress on rank 0, CSV metrics per split, optional TensorBoard, PNG curves (matplotlib Agg).

``MetricLogger(run_dir)`` writes ``<run_dir>/<split>_metrics.csv`` (one row per ``log`` call, columns = ``step``,
``epoch`` and the union of metric names; the file is rewritten when a new column appears) and, with
``tensorboard=True``, event files under ``<run_dir>/tb``. ``plot()`` draws every metric against ``step`` into
``<run_dir>/curves.png``. On ranks other than 0 all methods are no-ops.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from .distributed import is_main_process
from .files import name_text, write_text_atomic

__all__ = ["MetricLogger", "progress", "read_metrics_csv", "curve_names", "plot_curves", "subplots", "save_figure",
           "json_text", "short_text", "wrapped_text"]


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool | None = None, **kwargs):
    """``tqdm`` over ``iterable`` on rank 0 (or when ``enabled``), the plain iterable elsewhere."""
    if enabled is None:
        enabled = is_main_process()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, **kwargs)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``obj``: NaN and infinities written as ``null`` (Python's bare ``NaN`` is refused by most
    JSON parsers: a segmentation class absent from the data has no IoU), other objects as ``str``."""
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=indent, default=str, allow_nan=False)


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a metrics CSV as dicts of floats (empty cells skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs):
    """``(figure, axes)`` as ``matplotlib.pyplot.subplots`` makes them, but drawn by Agg without pyplot: files only,
    no display needed, and the process's pyplot - its backend (a notebook's inline one), its current figure - is
    left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as ``path`` (parent folders created; atomically) and close it; returns the path. Texts holding
    a file name's undecodable bytes (a non-ASCII class folder under ``LANG=C``) are drawn decoded
    (:func:`name_text`): matplotlib cannot draw them as they are."""
    from matplotlib.text import Text

    for axis in (a for ax in fig.axes for a in (ax.xaxis, ax.yaxis)):
        for minor in (False, True):  # (tick labels are formatted again at each draw: set them decoded)
            labels = [t.get_text() for t in axis.get_ticklabels(minor=minor)]
            if any(name_text(t) != t for t in labels):
                axis.set_ticklabels([name_text(t) for t in labels], minor=minor)
    for text in fig.findobj(Text):
        label = text.get_text()
        if isinstance(label, str) and name_text(label) != label:
            text.set_text(name_text(label))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem[:64]}.{os.getpid()}.tmp{path.suffix}")  # (the format follows the suffix)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)  # (a full disk leaves the earlier plot, not an empty file)
    finally:
        tmp.unlink(missing_ok=True)
        plt = sys.modules.get("matplotlib.pyplot")  # (a figure of the caller's pyplot: closed, as pyplot keeps it)
        if plt is not None and getattr(fig.canvas, "manager", None) is not None:
            plt.close(fig)
    return path


# Bookkeeping columns logged next to the metrics (sample counts, chance levels): not curves.
_NOT_CURVES = re.compile(r"(^|_)num_|(^|_)chance(_|$)")


def curve_names(series: dict[str, list[dict[str, float]]], x: str = "step") -> list[str]:
    """The metric names `plot_curves` draws: every column of every split in first-seen order, except the x axis,
    ``epoch`` and bookkeeping columns (``num_*`` / ``*_num_*`` counts, ``*chance*`` reference levels)."""
    names: list[str] = []
    for rows in series.values():
        for row in rows:
            names += [k for k in row if k not in (x, "epoch") and k not in names and not _NOT_CURVES.search(k)]
    return names


def short_text(text: str, width: int) -> str:
    """``text`` of at most ``width`` characters: longer ones keep both ends around an ellipsis (file names keep their
    folder and extension). A file name's undecodable bytes are decoded (:func:`name_text`: plots cannot draw them)."""
    text = name_text(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def wrapped_text(text: str, width: int, lines: int) -> str:
    """``text`` wrapped at ``width`` characters on at most ``lines`` lines (an ellipsis ends what is cut), decoded
    as :func:`short_text` does."""
    import textwrap
    return textwrap.fill(name_text(text), width, max_lines=lines, placeholder=" \u2026")


def _values(series: dict[str, list[dict[str, float]]], name: str) -> list[float]:
    return [float(r[name]) for rows in series.values() for r in rows if name in r]


def _wide_positive(values: list[float]) -> bool:
    """Finite positive values whose largest is over 100x their median (a first grad norm of 2152 over a median of
    3 flattened the rest of the curve): drawn on a log axis."""
    finite = sorted(v for v in values if math.isfinite(v))
    return bool(finite) and finite[0] > 0 and finite[-1] > 100 * finite[len(finite) // 2]


def _shared_panels(series: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """The training split's ``train_<m>`` columns (``train_top1``) renamed ``<m>`` when another split logs ``<m>``
    (``top1``) and training does not: both lines in one panel, as the losses are."""
    train = series.get("train") or []
    own = {k for r in train for k in r}
    others = {k for split, rows in series.items() if split != "train" for r in rows for k in r}
    rename = {k: k[len("train_"):] for k in own if k.startswith("train_") and k[len("train_"):] in others - own}
    if not rename:
        return series
    return {**series, "train": [{rename.get(k, k): v for k, v in r.items()} for r in train]}


def plot_curves(series: dict[str, list[dict[str, float]]], path: str | os.PathLike, x: str = "step") -> Path | None:
    """One subplot per metric name (see `curve_names`), one line per split; returns the PNG path (None if nothing
    to plot). Training's ``train_<m>`` shares the panel of the other splits' ``<m>``; counters that stayed 0 (no
    skipped images) get no panel; a positive metric spanning orders of magnitude is drawn on a log axis; NaN / inf
    values (a diverged loss) are crosses along the panel's foot, counted in the legend."""
    series = _shared_panels(series)
    names = [n for n in curve_names(series, x) if any(v != 0 for v in _values(series, n))]
    if not names:
        return None
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split, rows in series.items():
            pts = [(r[x], r[name]) for r in rows if name in r and x in r]
            if pts:
                xs, ys = zip(*pts)
                line, = ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=split)
                bad = [px for px, py in pts if not math.isfinite(py)]
                if bad:  # (a gap in the line alone reads as "not logged"): crosses along the panel's foot
                    ax.plot(bad, [0.03] * len(bad), "x", color=line.get_color(), transform=ax.get_xaxis_transform(),
                            clip_on=False, label=f"{split}: {len(bad)} NaN/inf")
        if _wide_positive(_values(series, name)):
            ax.set_yscale("log")
            name += " (log scale)"
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


class MetricLogger:
    """CSV (+ optional TensorBoard) metric logging for one run directory."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False, enabled: bool | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = is_main_process() if enabled is None else enabled
        self._tb = None
        # (a resume of a run logged without TensorBoard fills its events in from the CSVs: truncate_after)
        self._tb_had_events = any((self.run_dir / "tb").glob("events.out.tfevents.*"))
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError as err:  # tensorboard is optional
                    print(f"[logger] TensorBoard disabled: {err}")

    def csv_path(self, split: str) -> Path:
        return self.run_dir / f"{split}_metrics.csv"

    def log(self, step: int, metrics: dict[str, Any], split: str = "train", epoch: int | None = None) -> None:
        """Append one row of metrics (numbers) for ``split`` at ``step``."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": int(step)}
        if epoch is not None:
            row["epoch"] = int(epoch)
        row.update({k: float(v) for k, v in metrics.items()})
        path = self.csv_path(split)
        header = _read_header(path)
        if header is None or any(k not in header for k in row):
            rows = _read_rows(path)
            header = list(header or []) + [k for k in row if k not in (header or [])]
            _write_rows(path, header, rows + [row])
        else:
            size = path.stat().st_size
            try:
                with open(path, "a", newline="", encoding="utf-8") as f:
                    csv.DictWriter(f, fieldnames=header).writerow(row)
            except OSError:  # (a full disk: no half row left at the end of the log)
                os.truncate(path, size)
                raise
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def truncate_after(self, step: int, rescale: float = 1.0, drop_at: tuple[str, ...] = ()) -> None:
        """Drop rows logged after ``step`` (a resumed run re-logs them), and those of the ``drop_at`` splits logged
        at ``step`` (an evaluation of that step the resumed run makes); with ``rescale`` the kept rows' steps are
        multiplied by it (rounded): a resume whose steps are of another size (another batch or world size) keeps one
        unit along the x axis. TensorBoard's events after the step are purged as well (its ``purge_step``); with
        ``rescale`` its events (those of earlier runs too, when this one has TensorBoard off) are rewritten from the
        rescaled CSVs (which hold every logged value), so its x axis keeps one unit too (the rewritten events carry
        the time of the resume). A resume with TensorBoard on of a run logged without it writes the kept rows'
        events from the CSVs too."""
        if not self.enabled:
            return
        kept: dict[str, list[dict[str, Any]]] = {}
        for path in self.run_dir.glob("*_metrics.csv"):
            header = _read_header(path)
            split = path.name[: -len("_metrics.csv")]
            last = step - 1 if split in drop_at else step
            rows = [r for r in _read_rows(path) if float(r.get("step", 0)) <= last]
            if rescale != 1.0:
                rows = _rescaled(rows, rescale)
            _write_rows(path, header or [], rows)
            kept[split] = rows
        folder = self.run_dir / "tb"
        if self._tb is None:
            if rescale != 1.0 and folder.is_dir():  # (TensorBoard off in this run: a later one that turns it on
                try:                                  # keeps one unit)
                    _rewrite_tensorboard(folder, kept)
                except ImportError as err:  # tensorboard is optional
                    print(f"[logger] TensorBoard events in {folder} keep the old step units: {err}")
            return
        import shutil

        from torch.utils.tensorboard import SummaryWriter
        self._tb.close()
        old = folder.with_name(folder.name + ".old")
        if rescale != 1.0:  # (the earlier events, in the old step units, give way to the rescaled CSV rows)
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        # TensorBoard hides the events of the later steps too (they are logged again). The kept rows go into this
        # writer's own file, ahead of what the run logs next: written by another writer, the two files could be read
        # in either order (their names differ in a per-process counter, compared as text)
        self._tb = SummaryWriter(str(folder), purge_step=round(step * rescale) + 1)
        if rescale != 1.0 or not self._tb_had_events:  # (rescaled, or the run so far had TensorBoard off)
            _add_rows(self._tb, kept)
            self._tb.flush()
        shutil.rmtree(old, ignore_errors=True)

    def plot(self, filename: str = "curves.png") -> Path | None:
        """Draw all splits' metrics to ``<run_dir>/<filename>``."""
        if not self.enabled:
            return None
        series = {p.name[: -len("_metrics.csv")]: read_metrics_csv(p) for p in sorted(self.run_dir.glob("*_metrics.csv"))}
        return plot_curves(series, self.run_dir / filename)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _add_rows(writer, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Write ``splits``' CSV rows as TensorBoard scalars (``<split>/<column>`` at each row's step, as
    :meth:`MetricLogger.log` writes them)."""
    for split, rows in splits.items():
        for row in rows:
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    writer.add_scalar(f"{split}/{key}", float(value), int(float(row["step"])))


def _rewrite_tensorboard(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Replace the event files of ``folder`` by one holding ``splits``' rows (``<split>/<column>`` at each row's
    step, as :meth:`MetricLogger.log` writes them). Written into a new folder, then swapped in: a crash leaves the
    old events or the new ones."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter
    fresh, old = folder.with_name(folder.name + ".rewrite"), folder.with_name(folder.name + ".old")
    for stale in (fresh, old):
        shutil.rmtree(stale, ignore_errors=True)
    writer = SummaryWriter(str(fresh))
    _add_rows(writer, splits)
    writer.close()
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _rescaled(rows: list[dict[str, Any]], rescale: float) -> list[dict[str, Any]]:
    """``rows`` with their steps multiplied by ``rescale``, rounded, at least 1; where rows of a coarser step size
    land on one step, the last of them stands for it (one row per step, as the resumed run logs them)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r.get("step") in (None, ""):
            out.append(r)
            continue
        step = max(1, round(float(r["step"]) * rescale))
        if out and out[-1].get("step") not in (None, "") and out[-1]["step"] == step:
            out.pop()
        out.append({**r, "step": step})
    return out


def _read_header(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
