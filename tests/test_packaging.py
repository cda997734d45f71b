"""Packaging: the package list in pyproject.toml names every package folder (non-editable installs need it); CI runs
the README's test command, and that command runs the slow tests too."""
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the package itself supports 3.10)

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, folder in (("vision_rwkv", "vision_rwkv"), ("rwkv_clip", "clip")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((top, *rel)))
    assert found <= listed, f"package folders missing from pyproject.toml: {sorted(found - listed)}"


def test_both_import_packages_import():
    import rwkv_clip  # noqa: F401
    import vision_rwkv  # noqa: F401


def test_ci_runs_the_readme_test_command_with_the_slow_tests():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands  # install + demo, install + tests
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]], (ci, commands[1])
    assert "pytest" in commands[1] and "--run-slow" in commands[1].split(), commands[1]


def test_configs_and_anchors_ship_in_the_wheel():
    """The demos' default configs and the benchmark anchors are read at run time: a wheel installs configs/ and
    benchmarks/anchors/ inside vision_rwkv, and every file there matches the package-data patterns."""
    from pathlib import PurePosixPath

    from vision_rwkv.resources import anchors_dir, configs_dir
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    assert dirs["vision_rwkv.configs"] == "configs" and dirs["vision_rwkv.anchors"] == "benchmarks/anchors"
    assert {"vision_rwkv.configs", "vision_rwkv.anchors"} <= set(cfg["packages"])
    patterns = cfg["package-data"]["vision_rwkv.configs"]
    for f in (ROOT / "configs").rglob("*.yaml"):
        rel = PurePosixPath(f.relative_to(ROOT / "configs").as_posix())
        assert any(rel.match(p) and len(rel.parts) == len(PurePosixPath(p).parts) for p in patterns), rel
    assert sorted(p.name for p in (ROOT / "benchmarks" / "anchors").glob("*.json")) == ["backbones.json",
                                                                                       "kernels.json"]
    assert configs_dir() == ROOT / "configs" and anchors_dir() == ROOT / "benchmarks" / "anchors"  # a checkout


def test_the_timm_floor_excludes_the_releases_the_package_breaks_on():
    """An audit installed the lowest versions the requirements admitted: numpy 1.26, open_clip 3.0, albumentations
    2.0 and omegaconf 2.3 pass the suite, timm below 1.0.31 does not (import errors below 1.0.17; then the original
    recipe's weight-decay rule, the wsd / rsqrt schedules, meta-device MAC counts and timm's model args)."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    deps = {Requirement(d).name: Requirement(d) for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    timm = deps["timm"].specifier
    assert "1.0.30" not in timm and "1.0.31" in timm and version("timm") in timm
