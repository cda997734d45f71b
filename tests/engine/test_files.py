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
