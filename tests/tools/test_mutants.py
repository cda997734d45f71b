"""tools/mutants.py: every mutant still applies to the kernels as they are; the runner catches and misses mutants of
a toy package as it should, and leaves the source untouched."""
import subprocess
import sys

from tool_helpers import ROOT, load_tool

mutants = load_tool("mutants")


def test_every_mutant_applies_once_to_the_current_source():
    for name, mset in mutants.SETS.items():
        assert mset.mutants and mset.tests, name
        assert mutants.check_applies(mset) == [], name
        for test in mset.tests + tuple(t for m in mset.mutants for t in m.tests):
            assert (ROOT / test).is_file(), test
        for m in mset.mutants:
            assert m.old != m.new, m.name


def test_check_applies_names_a_rotten_mutant(tmp_path):
    (tmp_path / "mod.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "other.py").write_text("y = 2\n")
    mset = mutants.MutantSet("mod.py", ("t.py",), (mutants.Mutant("gone", "y = 2", "y = 3"),
                                                   mutants.Mutant("twice", "x = 1", "x = 2"),
                                                   mutants.Mutant("gone", "x = 1\nx", "x = 2\nx"),
                                                   mutants.Mutant("own_file", "y = 2", "y = 3", "other.py"),
                                                   mutants.Mutant("own_file_gone", "x = 1", "x = 2", "other.py")))
    problems = mutants.check_applies(mset, tmp_path)
    assert any(p.startswith("gone: its text occurs 0 times in mod.py") for p in problems)
    assert any(p.startswith("twice: its text occurs 2 times") for p in problems)
    assert "gone: repeated name" in problems
    assert not any(p.startswith("own_file:") for p in problems)  # (looked up in its own file, where it occurs once)
    assert any(p.startswith("own_file_gone: its text occurs 0 times in other.py") for p in problems)


def _toy_repo(root):
    (root / "toy").mkdir()
    (root / "toy" / "__init__.py").write_text("")
    (root / "toy" / "ops.py").write_text("OFFSET = 0\n\n\ndef add(a, b):\n    return a + b\n\n\n"
                                         "def clip(x):\n    return max(x, 0)\n")
    (root / "toy" / "more.py").write_text("def neg(x):\n    return -x\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_ops.py").write_text(
        "import pytest\n\nfrom toy.ops import add, clip\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_clip():\n    assert clip(-1) == 0 and clip(2) == 2\n\n\n"
        "@pytest.fixture\ndef offset():\n    from toy.ops import OFFSET\n    return OFFSET\n\n\n"
        "def test_offset(offset):\n    assert offset == 0\n\n\n"
        "def test_neg():\n    from toy.more import neg\n    assert neg(2) == -2\n")
    (root / "tests" / "test_more.py").write_text(
        "from toy.more import neg\n\n\ndef test_neg_of_zero():\n    assert neg(0) == 0\n")


def test_run_sets_catches_and_misses_toy_mutants(tmp_path):
    _toy_repo(tmp_path)
    before = (tmp_path / "toy" / "ops.py").read_text()
    mset = mutants.MutantSet("toy/ops.py", ("tests/test_ops.py",), (
        mutants.Mutant("sub", "return a + b", "return a - b"),  # caught by test_add
        mutants.Mutant("swap", "return a + b", "return b + a"),  # equivalent: survives
        mutants.Mutant("clip_at_1", "max(x, 0)", "max(x, 1)"),  # caught by test_clip
        mutants.Mutant("offset_gone", "OFFSET = 0", "OFFSET_ = 0"),  # test_offset's fixture raises: an ERROR
        mutants.Mutant("neg_gone", "return -x", "return x", "toy/more.py"),  # another file: caught by test_neg
        # its own tests (test_more.py only, which does not see it; the set's test_neg would)
        mutants.Mutant("neg_own_tests", "return -x", "return -x * x", "toy/more.py", ("tests/test_more.py",)),
        mutants.Mutant("neg_one", "return -x", "return 1 - x", "toy/more.py", ("tests/test_more.py",)),
    ))
    rows = mutants.run_sets(["toy"], root=tmp_path, sets={"toy": mset}, pytest_args=())
    by = {r["mutant"]: r for r in rows}
    assert by["sub"]["caught"] is True and by["sub"]["failed"] == ["tests/test_ops.py::test_add"]
    assert by["swap"]["caught"] is False and by["swap"]["failed"] == []
    assert by["clip_at_1"]["caught"] is True and by["clip_at_1"]["failed"] == ["tests/test_ops.py::test_clip"]
    assert by["offset_gone"]["caught"] is True and by["offset_gone"]["failed"] == ["tests/test_ops.py::test_offset"]
    assert by["neg_gone"]["caught"] is True and by["neg_gone"]["failed"] == ["tests/test_ops.py::test_neg"]
    assert by["neg_own_tests"]["caught"] is False
    assert by["neg_one"]["caught"] is True and by["neg_one"]["failed"] == ["tests/test_more.py::test_neg_of_zero"]
    assert (tmp_path / "toy" / "ops.py").read_text() == before  # (mutated in a copy only)
    assert (tmp_path / "toy" / "more.py").read_text() == "def neg(x):\n    return -x\n"
    # several workers, each in its own copy: the same verdicts, in the same order
    par = mutants.run_sets(["toy"], root=tmp_path, sets={"toy": mset}, pytest_args=(), workers=3)
    assert [(r["mutant"], r["caught"], r["failed"]) for r in par] == [(r["mutant"], r["caught"], r["failed"])
                                                                       for r in rows]
    rows = mutants.run_sets(["toy"], only=["swap"], root=tmp_path, sets={"toy": mset}, pytest_args=())
    assert [r["mutant"] for r in rows] == ["swap"]
    table = mutants.format_table(rows)
    assert "| toy | swap | **no** | 0 |" in table


def test_run_mutant_reports_a_broken_test_run(tmp_path):
    _toy_repo(tmp_path)
    (tmp_path / "tests" / "test_ops.py").write_text("import nowhere_to_be_found\n")  # collection error: exit 2
    mset = mutants.MutantSet("toy/ops.py", ("tests/test_ops.py",), (mutants.Mutant("sub", "a + b", "a - b"),))
    row = mutants.run_mutant(tmp_path, mset, mset.mutants[0], pytest_args=())
    assert row["caught"] is None and "pytest exit 2" in row["error"]
    assert "a + b" in (tmp_path / "toy" / "ops.py").read_text()


def test_cli_list_and_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "mutants.py"), "--list"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in mutants.SETS:
        assert proc.stdout.count(f"{name}: ") == 1
    assert "PROBLEM" not in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "mutants.py"), "v5_nothing"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "unknown mutant set" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "mutants.py"), "v4_seq", "--only", "nope"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no mutant named ['nope']" in proc.stderr
