"""The docs stay true to the code: every environment variable the package reads and every kernel launch setting
(with its default) is listed in docs/environment.md, nothing listed there is gone from the code, and the files the
README and docs/ point at exist."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_DOC = ROOT / "docs" / "environment.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [*(p for d in ("vision_rwkv", "clip") for p in sorted((ROOT / d).rglob("*.py"))),
           ROOT / "tests" / "conftest.py"]
# names in quotes in the sources: what the code reads or sets (docstrings mention them in backticks instead)
ENV_NAME = re.compile(r"""["'](VRWKV_[A-Z0-9_]+)["']""")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|")

# Each kernel module's CONFIG as built from `config_from_env(defaults, VAR)` at import, with no VRWKV_TRITON_* set:
# the function is wrapped before the modules import it, so every family that takes settings from the environment
# is found, not only the ones this test knows of - and which op name of `vision_rwkv.benchmark.kernel_configs` (the
# sweeps' `--kernel-config OP.KEY=VAL`) holds that very dict.
_DUMP_CONFIGS = r"""
import importlib, json, sys
from pathlib import Path
import vision_rwkv.ops._triton_utils as tu
found, made = {}, {}
original = tu.config_from_env
def recording(config, var):
    found[var] = dict(config)
    made[var] = original(config, var)
    return made[var]
tu.config_from_env = recording
root = Path(sys.argv[1])
for path in sorted((root / "vision_rwkv" / "ops").rglob("*.py")):
    if "config_from_env(" in path.read_text() and path.name != "_triton_utils.py":
        importlib.import_module(".".join(path.relative_to(root).with_suffix("").parts))
from vision_rwkv.benchmark import kernel_configs
ops = {id(config): op for op, config in kernel_configs().items()}
print(json.dumps({"configs": found, "ops": {var: ops.get(id(config)) for var, config in made.items()}}))
"""


def _sections(text: str) -> dict:
    """``### `NAME` ...`` or ``## Title`` headings -> the table rows (first cell, second cell) under each."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            m = re.match(r"#+\s*`([^`]+)`", line)
            current = m.group(1) if m else line.lstrip("#").strip()
            out.setdefault(current, [])
        elif current is not None and (m := ROW.match(line)):
            out[current].append((m.group(1), m.group(2).strip("`")))
    return out


def _documented_variables() -> set:
    rows = [name for section, table in _sections(ENV_DOC.read_text()).items()
            if section in ("Switches", "Paths") for name, _ in table]
    return {name for name in rows if name.startswith("VRWKV_")}


def _variables_in_sources() -> set:
    read = {name for path in SOURCES for name in ENV_NAME.findall(path.read_text())}
    assert read, "no VRWKV_* variable found in the sources: the pattern is stale"
    return read


def test_every_variable_read_is_documented():
    missing = sorted(_variables_in_sources() - _documented_variables() - set(_kernel_configs()))
    assert not missing, f"variables read by the code but not in docs/environment.md: {missing}"


def test_every_documented_variable_is_read():
    stale = sorted(_documented_variables() - _variables_in_sources())
    assert not stale, f"docs/environment.md lists variables the code no longer reads: {stale}"


_CONFIGS: dict = {}
_OPS: dict = {}


def _kernel_configs() -> dict:
    """VRWKV_TRITON_* variable -> its family's default settings."""
    if not _CONFIGS:
        pytest.importorskip("triton")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VRWKV_TRITON_")}
        proc = subprocess.run([sys.executable, "-c", _DUMP_CONFIGS, str(ROOT)], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dump = json.loads(proc.stdout.strip().splitlines()[-1])
        _CONFIGS.update(dump["configs"])
        _OPS.update(dump["ops"])
    return _CONFIGS


def test_every_kernel_family_is_sweepable():
    """Each family's live CONFIG is one of ``kernel_configs()`` (so ``--kernel-config`` can set it and a benchmark's
    metadata records it), under a name docs/environment.md gives."""
    _kernel_configs()
    missing = sorted(var for var, op in _OPS.items() if op is None)
    assert not missing, f"kernel families absent from vision_rwkv.benchmark.kernel_configs(): {missing}"
    headings = {line.split("`")[1]: line for line in ENV_DOC.read_text().splitlines() if line.startswith("### `")}
    undocumented = sorted(f"{var} ({op})" for var, op in _OPS.items()
                          if f"`{op}.KEY=VAL`" not in headings.get(var, ""))
    assert not undocumented, f"docs/environment.md does not give these families' --kernel-config names: {undocumented}"


def _shown(value) -> str:
    return '""' if value == "" else str(value)


def test_kernel_settings_documented_with_their_defaults():
    configs = _kernel_configs()
    assert {"VRWKV_TRITON_V4", "VRWKV_TRITON_V6"} <= set(configs), sorted(configs)
    sections = _sections(ENV_DOC.read_text())
    problems = []
    for var, config in sorted(configs.items()):
        table = dict(sections.get(var, []))
        if not table:
            problems.append(f"{var}: no '### `{var}`' table")
            continue
        problems += [f"{var}: key {k!r} not documented" for k in sorted(set(config) - set(table))]
        problems += [f"{var}: documented key {k!r} is not a setting" for k in sorted(set(table) - set(config))]
        problems += [f"{var}: {k} documented default {table[k]!r}, code {_shown(v)!r}"
                     for k, v in config.items() if k in table and table[k] != _shown(v)]
    assert not problems, "\n".join(problems)


_PATH = re.compile(r"^(?:tools|benchmarks|docs|vision_rwkv|clip|configs|tests)/[\w./-]+$")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_files_named_in_docs_exist(doc):
    text = doc.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # markdown links
        if "://" not in target and not (doc.parent / target).exists():
            missing.append(target)
    for token in set(re.findall(r"`([^`\s]+)`", text)):  # repository paths in code spans
        if _PATH.match(token) and not (ROOT / token).exists():
            missing.append(token)
    assert not missing, f"{doc.name} names files that do not exist: {sorted(missing)}"


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"
