"""vision_rwkv.engine.predict.plot_predictions: what each tile of the predictions grid says."""
import numpy as np
from PIL import Image


def test_prediction_tiles_name_the_class_and_the_file(tmp_path, captured_figures):
    """Class names were cut at 24 characters mid-word ("German short-haired poin") and no tile said which file it
    showed."""
    import vision_rwkv.engine.predict as predict
    figures = captured_figures(predict)
    path = tmp_path / ("holiday_photo_number_" + "7" * 30 + ".png")
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(path)
    rows = [{"file": str(path), "topk": [[3, "German short-haired pointer", 0.9]]},
            {"file": str(tmp_path / "bad.png"), "error": "unreadable"}]
    predict.plot_predictions(rows, tmp_path / "grid.png")
    title = figures[0].axes[0].get_title()
    assert title.startswith("German short-haired\npointer 90.0%\n") and title.endswith("777.png")
    assert len(title.splitlines()[-1]) == 26


def test_a_file_name_that_is_not_text_in_the_locale_is_drawn(tmp_path):
    """Under LC_ALL=C PYTHONUTF8=0 an image ``ïmg 0.png`` lists with surrogates; the grid's title (laid out by
    tight_layout before the figure is saved) failed with matplotlib's TypeError. Here Latin-1 bytes under UTF-8
    give the same kind of name."""
    import os

    import vision_rwkv.engine.predict as predict
    raw = os.path.join(os.fsencode(tmp_path), b"\xefmg 0.png")
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(raw.decode("utf-8", "surrogateescape"), format="PNG")
    name = os.fsdecode(raw)
    assert "\udcef" in name
    out = predict.plot_predictions([{"file": name, "topk": [[1, "caf\u00e9", 0.5]]}], tmp_path / "grid.png")
    assert out.stat().st_size > 0
