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
