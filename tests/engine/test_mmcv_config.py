"""The mmcv config reader (vision_rwkv.engine.mmcv_config): mmcv's _base_ merge, and no code runs."""
import pytest

from file_tree import write_files as _write
from vision_rwkv.engine.mmcv_config import MmcvConfigError, read_mmcv_config


def test_the_reader_merges_bases_as_mmcv_does(tmp_path):
    path = _write(tmp_path, {
        "child.py": "_base_ = ['b1.py', 'sub/b2.py']\n"
                    "a = dict(y=dict(w=3), x=5)\n"
                    "r = dict(_delete_=True, only=1)\n"
                    "size = {{_base_.crop}}\n"
                    "first, second = (1, 2)\n"
                    "name = f'run_{first}'\n"
                    "calc = [2 ** 3, 10 // 4, -first, (4, 5)[1], [1, 2, 3][1:]]\n"
                    "d = dict(**a, extra=tuple([1]))\n"
                    "pad = [round(x) for x in [1.4, 2.6, 3.5][::-1] if x > 2]\n"
                    "pairs = [(i, j) for i, j in zip(range(2), 'ab')]\n"
                    "pick = 'big' if max(calc[0], 3) >= 8 and 1 not in [2] else 'small'\n",
        "b1.py": "a = dict(x=1, y=dict(z=2))\nr = dict(gone=True)\n",
        "sub/b2.py": "crop = (512, 1024)\nlst = [1, 2]\n__hidden = 1\n",
    })
    cfg = read_mmcv_config(path)
    assert cfg["a"] == {"x": 5, "y": {"z": 2, "w": 3}}
    assert cfg["r"] == {"only": 1}  # _delete_ replaced the base's dict (and the marker is gone)
    assert cfg["size"] == (512, 1024) and cfg["lst"] == [1, 2] and "__hidden" not in cfg
    assert (cfg["first"], cfg["second"], cfg["name"]) == (1, 2, "run_1")
    assert cfg["calc"] == [8, 2, -1, 5, [2, 3]]
    assert cfg["d"] == {"x": 5, "y": {"w": 3}, "extra": (1,)}  # (the file's own a, before the merge)
    assert (cfg["pad"], cfg["pairs"], cfg["pick"]) == ([4, 3], [(0, "a"), (1, "b")], "big")
    assert "i" not in cfg and "x" not in cfg  # (comprehension names stay inside)


@pytest.mark.parametrize("files,message", [
    ({"c.py": "_base_ = 'missing.py'\n"}, r"not found: .*missing.py \(a _base_ of .*c.py\)"),
    ({"c.py": "_base_ = 'b.py'\n", "b.py": "_base_ = 'c.py'\n"}, r"form a cycle: .*c.py -> .*b.py -> .*c.py"),
    ({"c.py": "_base_ = ['a.py', 'b.py']\n", "a.py": "k = 1\n", "b.py": "k = 2\n"},
     r"key 'k' is set by two of its _base_ files"),
    ({"c.py": "x = {{_base_.nope}}\n"}, r"c.py:1: \{\{_base_.nope\}\}: the base files define no nope"),
    ({"c.py": "x = y\n"}, r"c.py:1: name 'y' is not assigned above"),
    ({"c.py": "x = (\n"}, r"c.py:\d+: not valid Python"),
    ({"c.json": "{}"}, r"only Python \(.py\) mmcv configs"),
])
def test_reader_errors_name_the_file(tmp_path, files, message):
    with pytest.raises(MmcvConfigError, match=message):
        read_mmcv_config(_write(tmp_path, files))


@pytest.mark.parametrize("line,what", [
    ("import os", "the statement Import"),
    ("x = __import__('os').system('touch {flag}')", r"calling __import__\('os'\).system\(\)"),
    ("x = open('{flag}', 'w')", r"calling open\(\)"),
    ("x = dict().keys()", r"calling dict\(\).keys\(\)"),
    ("x = (lambda: 1)()", r"calling lambda: 1\(\)"),
    ("x = (i for i in range(3))", "the expression GeneratorExp"),
    ("x = sorted([2, 1], key=len)", r"sorted\(\) with keywords or \*arguments"),
    ("def f():\n    pass", "the statement FunctionDef"),
    ("x = os.path", "the expression Attribute"),
])
def test_reading_a_config_never_runs_its_code(tmp_path, line, what):
    flag = tmp_path / "ran"
    path = _write(tmp_path, {"c.py": "a = 1\n" + line.format(flag=flag) + "\n"})
    with pytest.raises(MmcvConfigError, match=rf"c.py:2: {what} is not supported"):
        read_mmcv_config(path)
    assert not flag.exists()


@pytest.mark.parametrize("line,message", [
    ("x = dict(a=1)['b']", r"c.py:2: KeyError: 'b'"),
    ("x = 1 / 0", r"c.py:2: ZeroDivisionError"),
    ("x = 1 + 'a'", r"c.py:2: TypeError"),
    ("x = (1, 2)[2]", r"c.py:2: IndexError"),
    ("x, y = 1", r"c.py:2: TypeError"),
    ("x = int('abc')", r"c.py:2: ValueError"),
])
def test_evaluation_errors_name_the_line(tmp_path, line, message):
    """A typo such as img_norm_cfg['sdt'] was a bare KeyError traceback."""
    with pytest.raises(MmcvConfigError, match=message):
        read_mmcv_config(_write(tmp_path, {"c.py": "a = 1\n" + line + "\n"}))


@pytest.mark.parametrize("line,message", [
    ("x = sum(range(10 ** 12))", r"ValueError: a sequence of 1000000000000 items"),
    ("x = 10 ** 10 ** 9", r"an integer power beyond 4096 bits"),
    ("x = [i for i in range(10 ** 6) for j in range(10)]", r"a comprehension of more than 1000000 steps"),
    ("x = 'a' * 10 ** 11", r"a sequence of 100000000000 items"),
    ("x = [0] * 10 ** 7", r"a sequence of 10000000 items"),
    ("x = '%*d' % (10 ** 10, 1)", r"%-formatting of a string"),
])
def test_configs_cannot_make_the_reader_hang_or_exhaust_memory(tmp_path, line, message):
    with pytest.raises(MmcvConfigError, match=rf"c.py:2: .*{message}"):
        read_mmcv_config(_write(tmp_path, {"c.py": "a = 1\n" + line + "\n"}))


def test_mmcv_file_name_variables_are_substituted(tmp_path):
    path = _write(tmp_path, {"configs/my_run.py": "work_dir = './work_dirs/{{ fileBasenameNoExtension }}'\n"
                                                  "where = '{{fileDirname}}/{{ fileBasename }}{{fileExtname}}'\n"})
    cfg = read_mmcv_config(path)
    assert cfg["work_dir"] == "./work_dirs/my_run"
    assert cfg["where"] == f"{(tmp_path / 'configs').as_posix()}/my_run.py.py"


@pytest.mark.parametrize("lines,message", [
    (["x = [sum(range(10 ** 6)) for i in range(10 ** 6)]"], "more than 10000000 evaluation steps"),
    (["x = 2 ** 2000"] + ["x = x * x"] * 30, "c.py:3: an integer beyond 4096 bits"),
])
def test_work_and_integer_size_are_bounded(tmp_path, lines, message):
    """Each step was bounded but not their product: hours of work, or a ~1 GB integer from repeated squaring."""
    with pytest.raises(MmcvConfigError, match=message):
        read_mmcv_config(_write(tmp_path, {"c.py": "\n".join(lines) + "\n"}))


def test_unreadable_nesting_is_a_config_error(tmp_path):
    with pytest.raises(MmcvConfigError, match="too deeply nested to read"):
        read_mmcv_config(_write(tmp_path, {"c.py": "x = " + "+".join(["1"] * 100000) + "\n"}))


def test_a_bases_delete_marker_does_not_travel_with_its_value(tmp_path):
    """{{_base_.x}} copied a base's dict with its _delete_ marker, so the copy replaced where it should merge."""
    path = _write(tmp_path, {"c.py": "_base_ = 'b.py'\nz = {{_base_.x}}\n",
                             "b.py": "_base_ = 'a.py'\nx = dict(_delete_=True, k=1)\nz = dict(m=1)\n",
                             "a.py": "x = dict(j=2)\n"})
    cfg = read_mmcv_config(path)
    assert cfg["x"] == {"k": 1} and cfg["z"] == {"m": 1, "k": 1}


def test_bases_are_relative_to_the_file_as_named_and_names_read_are_recorded(tmp_path):
    """mmcv resolves _base_ from the config's own folder without following links (a linked config reads the bases
    beside the link); the names the files read are recorded for the converters' check of unknown keys."""
    _write(tmp_path, {"real/c.py": "_base_ = 'b.py'\nuse = {{_base_.helper}}\nlocal = 1\ntotal = local + 1\n",
                      "real/b.py": "helper = 'real'\n", "linked/b.py": "helper = 'linked'\n"})
    (tmp_path / "linked" / "c.py").symlink_to(tmp_path / "real" / "c.py")
    referenced = set()
    assert read_mmcv_config(tmp_path / "linked" / "c.py", referenced)["use"] == "linked"
    assert referenced == {"helper", "local"}
