"""vision_rwkv.engine.files.write_text_atomic: result files, replaced whole."""
import threading

from vision_rwkv.engine.files import write_text_atomic


def test_concurrent_writers_modes_links_and_long_names(tmp_path):
    """Threads of one process shared one temporary name (one truncated the other's, os.replace then failed); an
    existing file keeps its mode, a symbolic link its target, and a long name still fits."""
    out, errors = tmp_path / "metrics.json", []

    def write(i):
        for _ in range(30):
            try:
                write_text_atomic(out, f"{i}\n" * 200)
            except OSError as err:
                errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = out.read_text()
    assert not errors and len(set(text.split())) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    out.chmod(0o640)
    write_text_atomic(out, "x")
    assert out.stat().st_mode & 0o777 == 0o640
    target, link = tmp_path / "real.csv", tmp_path / "link.csv"
    target.write_text("old")
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    long = tmp_path / ("n" * 240 + ".csv")
    assert write_text_atomic(long, "ok") == long and long.read_text() == "ok"


def test_name_text_decodes_a_c_locale_file_name():
    from vision_rwkv.engine.files import name_text
    as_listed = "caf\u00e9 \U0001f431".encode().decode("ascii", "surrogateescape")  # (what LANG=C gives)
    assert as_listed != "caf\u00e9 \U0001f431" and name_text(as_listed) == "caf\u00e9 \U0001f431"
    assert name_text("caf\u00e9") == "caf\u00e9" and name_text("plain") == "plain"
    assert name_text(b"\xff".decode("ascii", "surrogateescape")) == "\ufffd"  # (not UTF-8 either)


def test_output_checks_name_the_option_and_the_reason(tmp_path, monkeypatch):
    import os

    import pytest

    from vision_rwkv.engine.files import OutputPathError, check_output_dir, check_output_file
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match="--output .*file.txt is a file, not a folder"):
        check_output_file(a_file / "out.json")
    with pytest.raises(OutputPathError, match="run_dir .* is a file, not a folder"):
        check_output_dir(a_file / "run", "run_dir")
    with pytest.raises(OutputPathError, match="--output .* is a folder; name a file"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "new" / "out.json")
    check_output_dir(tmp_path / "new" / "run")
    real_access = os.access  # (a read-only file system: root's writes fail there whatever the mode bits say)
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(OutputPathError, match=f"folder {tmp_path} is not writable"):
        check_output_dir(tmp_path / "new" / "run", "test.out_dir")


def test_save_figure_draws_c_locale_file_names(tmp_path):
    """Texts, legends and tick labels holding a file name's undecodable bytes (class folders listed under
    LANG=C): matplotlib's font code rejects them (TypeError); save_figure draws them decoded."""
    from vision_rwkv.engine.logger import save_figure, subplots
    name = "caf\u00e9".encode().decode("ascii", "surrogateescape")
    fig, ax = subplots()
    ax.set_title(name)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([name, "b"], fontsize=5)
    from matplotlib.lines import Line2D
    ax.legend(handles=[Line2D([], [], label=name)])
    out = save_figure(fig, tmp_path / "f.png")
    assert out.stat().st_size > 0
    assert ax.get_title() == "caf\u00e9" and ax.get_xticklabels()[0].get_text() == "caf\u00e9"
    assert ax.get_xticklabels()[0].get_fontsize() == 5
