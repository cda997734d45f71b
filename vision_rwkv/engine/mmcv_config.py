"""Read an mmcv 1.x Python config (mmseg / mmcls 0.x) and its ``_base_`` files into a plain dict, without running it.

mmcv executes a config file as Python. This reader evaluates the subset configs are written in - assignments of
literals, ``dict(...)`` / ``list(...)`` / ``tuple(...)`` calls and pure builtins (``round``, ``min``, ``range``,
...), names assigned earlier in the same file, ``**`` unpacking, arithmetic, comparisons, ``a if c else b``,
indexing, list comprehensions, f-strings and ``{{_base_.key}}`` references - and refuses anything else (imports,
other calls, attribute access, lambdas) with an error naming the file and line, so reading a config never runs
code; values are bounded (ranges, repeated sequences and comprehensions of at most a million items, integer powers
of at most 4096 bits), and an evaluation error (a missing key, a division by zero) names the line too. mmcv's
``{{ fileBasenameNoExtension }}`` and its other file-name variables are substituted as mmcv does.

Inheritance follows mmcv's ``Config.fromfile``: the ``_base_`` files (a path or a list, relative to the file) are
read first, no key may repeat among them, and the file's dicts are merged into theirs key by key unless
they carry ``_delete_=True``, which replaces the base's dict; other values replace. Top-level names starting with
``__`` are dropped, as mmcv drops them.
"""
from __future__ import annotations

import ast
import copy
import operator
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from vision_rwkv.engine.config import ConfigError

__all__ = ["MmcvConfigError", "read_mmcv_config", "merge_mmcv"]

DELETE_KEY = "_delete_"
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CALLS = {"dict": dict, "list": list, "tuple": tuple}
# pure builtins configs use on values (e.g. ``[round(x) for x in img_norm_cfg['mean'][::-1]]``)
_PURE = {"round": round, "int": int, "float": float, "str": str, "bool": bool, "min": min, "max": max, "abs": abs,
         "len": len, "sum": sum, "sorted": sorted, "range": lambda *a: _bounded(range(*a)),
         "reversed": lambda x: list(reversed(x)), "zip": lambda *a: list(zip(*a)),
         "enumerate": lambda x: list(enumerate(x))}


MAX_ITEMS = 1_000_000  # the longest range / sequence / comprehension a config may build (a config is small data)
MAX_WORK = 10_000_000  # evaluation steps (and items walked by builtins) of one file
MAX_INT_BITS = 4096


def _bounded(items: Any) -> Any:
    if len(items) > MAX_ITEMS:
        raise ValueError(f"a sequence of {len(items)} items (a config builds at most {MAX_ITEMS})")
    return items


class MmcvConfigError(ConfigError):
    """An mmcv config that cannot be read or converted (the message names the file, line or key)."""


class _Evaluator:
    """Evaluates one config file's module body; ``names`` holds its assignments so far."""

    def __init__(self, path: Path, base: Dict[str, Any], referenced: Optional[Set[str]] = None):
        self.path, self.base = path, base
        self.names: Dict[str, Any] = {}
        self.referenced = referenced if referenced is not None else set()
        self.work = 0  # evaluation steps, and items the builtins walk (MAX_WORK bounds the whole file)

    def fail(self, node: ast.AST, what: str) -> MmcvConfigError:
        return MmcvConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {what} is not supported in a config "
                               f"read without running it (literals, dict() / list() / tuple() and pure builtins "
                               f"such as round(), names assigned above, arithmetic, comparisons, indexing, list "
                               f"comprehensions, f-strings and {{{{_base_.key}}}} are)")

    def run(self, tree: ast.Module) -> Dict[str, Any]:
        for stmt in tree.body:
            try:
                self.statement(stmt)
            except MmcvConfigError:
                raise
            except (ArithmeticError, TypeError, ValueError, LookupError, MemoryError, RecursionError) as err:
                raise MmcvConfigError(f"{self.path}:{stmt.lineno}: {type(err).__name__}: {err}") from None
        return self.names

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value)
            for target in stmt.targets:
                self.assign(target, value)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            self.assign(stmt.target, self.eval(stmt.value))
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            pass  # a docstring or a bare literal
        else:
            raise self.fail(stmt, f"the statement {type(stmt).__name__}")

    def assign(self, target: ast.AST, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(t, ast.Name) for t in target.elts):
            values = list(value)
            if len(values) != len(target.elts):
                raise self.fail(target, f"unpacking {len(values)} values into {len(target.elts)} names")
            for name, item in zip(target.elts, values):
                self.names[name.id] = item
        else:
            raise self.fail(target, f"assigning to {type(target).__name__}")

    def eval(self, node: ast.AST) -> Any:
        self.charge(node, 1)
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"the expression {type(node).__name__}")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def charge(self, node: ast.AST, steps: int) -> None:
        self.work += steps
        if self.work > MAX_WORK:
            raise self.fail(node, f"a config that takes more than {MAX_WORK} evaluation steps")

    def _Name(self, node: ast.Name) -> Any:
        self.referenced.add(node.id)
        if node.id in self.names:
            return copy.deepcopy(self.names[node.id])
        raise MmcvConfigError(f"{self.path}:{node.lineno}: name {node.id!r} is not assigned above in this file "
                              f"(a base file's value is {{{{_base_.{node.id}}}}})")

    def _List(self, node: ast.List) -> list:
        return [self.eval(e) for e in node.elts]

    def _Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.eval(e) for e in node.elts)

    def _Dict(self, node: ast.Dict) -> dict:
        out: dict = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # {**other}
                out.update(self._mapping(value))
            else:
                out[self.eval(key)] = self.eval(value)
        return out

    def _mapping(self, node: ast.AST) -> dict:
        value = self.eval(node)
        if not isinstance(value, dict):
            raise self.fail(node, f"** of a {type(value).__name__}")
        return value

    def _Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in _PURE and name not in self.names:
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise self.fail(node, f"{name}() with keywords or *arguments")
            args = [self.eval(a) for a in node.args]
            self.charge(node, sum(len(a) for a in args if isinstance(a, (str, list, tuple, dict, range))))
            return _PURE[name](*args)
        if name not in _CALLS:
            raise self.fail(node, f"calling {ast.unparse(node.func)}()")
        if name == "dict":
            if node.args:
                raise self.fail(node, "dict() with positional arguments")
            out: dict = {}
            for kw in node.keywords:
                if kw.arg is None:
                    out.update(self._mapping(kw.value))
                else:
                    out[kw.arg] = self.eval(kw.value)
            return out
        if node.keywords or len(node.args) > 1:
            raise self.fail(node, f"{name}() with keywords or several arguments")
        return _CALLS[name](self.eval(node.args[0]) if node.args else ())

    def _ListComp(self, node: ast.ListComp) -> list:
        """[expr for names in iterable if cond ...]: the loop names are bound only inside (as in Python 3)."""
        saved = dict(self.names)
        out: list = []
        steps = [0]

        def loop(i: int) -> None:
            if i == len(node.generators):
                out.append(self.eval(node.elt))
                return
            gen = node.generators[i]
            if gen.is_async:
                raise self.fail(node, "an async comprehension")
            for item in self.eval(gen.iter):
                steps[0] += 1
                if steps[0] > MAX_ITEMS:
                    raise self.fail(node, f"a comprehension of more than {MAX_ITEMS} steps")
                self.assign(gen.target, item)
                if all(self.eval(cond) for cond in gen.ifs):
                    loop(i + 1)

        try:
            loop(0)
        finally:
            self.names = saved
        return out

    def _Compare(self, node: ast.Compare) -> bool:
        ops = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
               ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
        left = self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.eval(right_node)
            if not ops[type(op)](left, right):
                return False
            left = right
        return True

    def _BoolOp(self, node: ast.BoolOp) -> Any:  # (short-circuit, as Python's and / or)
        value: Any = None
        for operand in node.values:
            value = self.eval(operand)
            if bool(value) == isinstance(node.op, ast.Or):
                return value
        return value

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.fail(node, f"the operator {type(node.op).__name__}")
        left, right = self.eval(node.left), self.eval(node.right)
        seq = (str, list, tuple)
        if isinstance(node.op, ast.Mod) and isinstance(left, str):
            raise self.fail(node, "%-formatting of a string")
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) \
                and abs(left) > 1 and right * max(abs(left).bit_length(), 1) > MAX_INT_BITS:
            raise self.fail(node, f"an integer power beyond {MAX_INT_BITS} bits ({left} ** {right})")
        if isinstance(node.op, ast.Mult) and isinstance(left, seq + (int,)) and isinstance(right, seq + (int,)):
            items, times = (left, right) if isinstance(left, seq) else (right, left)
            if isinstance(items, seq) and isinstance(times, int) and len(items) * times > MAX_ITEMS:
                raise self.fail(node, f"a sequence of {len(items) * times} items (at most {MAX_ITEMS})")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise self.fail(node, f"an integer beyond {MAX_INT_BITS} bits")
        return op(left, right)

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.fail(node, f"the operator {type(node.op).__name__}")
        return op(self.eval(node.operand))

    def _Subscript(self, node: ast.Subscript) -> Any:
        return self.eval(node.value)[self.eval(node.slice)]

    def _Slice(self, node: ast.Slice) -> slice:
        part = [None if p is None else self.eval(p) for p in (node.lower, node.upper, node.step)]
        return slice(*part)

    def _JoinedStr(self, node: ast.JoinedStr) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion != -1:
                    raise self.fail(value, "an f-string field with a format or conversion")
                parts.append(str(self.eval(value.value)))
            else:
                parts.append(str(self.eval(value)))
        return "".join(parts)

    def _Set(self, node: ast.Set) -> Any:  # {{_base_.a.b}}: mmcv's reference to a base file's value
        inner = node.elts[0] if len(node.elts) == 1 else None
        ref = inner.elts[0] if isinstance(inner, ast.Set) and len(inner.elts) == 1 else None
        keys: List[str] = []
        while isinstance(ref, ast.Attribute):
            keys.insert(0, ref.attr)
            ref = ref.value
        if not (isinstance(ref, ast.Name) and ref.id == "_base_" and keys):
            raise self.fail(node, "a set literal (other than {{_base_.key}})")
        self.referenced.add(keys[0])
        value: Any = self.base
        for i, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                raise MmcvConfigError(f"{self.path}:{node.lineno}: {{{{_base_.{'.'.join(keys)}}}}}: the base files "
                                      f"define no {'.'.join(keys[:i + 1])}")
            value = value[key]
        return copy.deepcopy(value)


def merge_mmcv(child: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    """mmcv's merge of a config into its base: dicts merge key by key unless the child's carries ``_delete_=True``
    (it then replaces the base's); any other value replaces. Returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and not value.get(DELETE_KEY, False) and isinstance(out.get(key), dict):
            value = {k: v for k, v in value.items() if k != DELETE_KEY}
            out[key] = merge_mmcv(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_delete(v) for v in value)
    return value


def _read(path: Path, stack: List[Path], referenced: Set[str]) -> Dict[str, Any]:
    path = Path(os.path.abspath(path))  # (bases are relative to the file as named, as in mmcv: links not followed)
    if path.resolve() in [p.resolve() for p in stack]:
        chain = " -> ".join(str(p) for p in stack + [path])
        raise MmcvConfigError(f"config _base_ files form a cycle: {chain}")
    if path.suffix != ".py":
        raise MmcvConfigError(f"{path}: only Python (.py) mmcv configs are read; convert .json / .yaml bases "
                              f"to .py or inline them")
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (a _base_ of {stack[-1]})" if stack else ""
        raise MmcvConfigError(f"mmcv config file not found: {path}{where}") from None
    source = _predefined_vars(source, path)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as err:
        raise MmcvConfigError(f"{path}:{err.lineno}: not valid Python: {err.msg}") from None
    except (MemoryError, RecursionError) as err:
        raise MmcvConfigError(f"{path}: too deeply nested to read ({type(err).__name__})") from None
    base_files = _base_list(tree, path)
    base: Dict[str, Any] = {}
    owner: Dict[str, Path] = {}
    for name in base_files:
        base_path = (path.parent / os.path.expanduser(name))
        part = _read(base_path, stack + [path], referenced)
        for key in part:
            if key in base:
                raise MmcvConfigError(f"{path}: key {key!r} is set by two of its _base_ files ({owner[key]} and "
                                      f"{os.path.abspath(base_path)}); mmcv does not allow duplicate keys among "
                                      f"bases")
            owner[key] = Path(os.path.abspath(base_path))
        base.update(part)
    names = _Evaluator(path, base, referenced).run(tree)
    names.pop("_base_", None)
    names = {k: v for k, v in names.items() if not k.startswith("__")}
    # (markers are this file's business with its bases: a child's {{_base_.x}} copies the merged dict without them)
    return _strip_delete(merge_mmcv(names, base))


def _predefined_vars(source: str, path: Path) -> str:
    """mmcv's text substitution of ``{{ fileDirname }}``, ``{{ fileBasename }}``, ``{{ fileBasenameNoExtension }}``
    and ``{{ fileExtname }}`` (the config file's own)."""
    values = {"fileDirname": path.parent.as_posix(), "fileBasename": path.name,
              "fileBasenameNoExtension": path.stem, "fileExtname": path.suffix}
    for key, value in values.items():
        source = re.sub(r"\{\{\s*" + key + r"\s*\}\}", lambda _: value, source)
    return source


def _base_list(tree: ast.Module, path: Path) -> List[str]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in stmt.targets):
            value = _Evaluator(path, {}).eval(stmt.value)
            files = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
            if files is None or not all(isinstance(f, str) for f in files):
                raise MmcvConfigError(f"{path}:{stmt.lineno}: _base_ must be a path or a list of paths")
            return files
    return []


def read_mmcv_config(path: str | os.PathLike, referenced: Optional[Set[str]] = None) -> Dict[str, Any]:
    """The merged settings of an mmcv (mmseg / mmcls 0.x) Python config and its ``_base_`` chain as a plain dict
    (module docstring); ``_delete_`` markers are applied and removed. ``referenced``, if given, receives the names
    any file of the chain reads (helper variables such as ``img_norm_cfg``; ``{{_base_.x}}`` counts as ``x``).
    Raises MmcvConfigError naming the file and line of anything it will not evaluate, a missing base file, a cycle
    or a key two bases both set."""
    return _read(Path(path), [], referenced if referenced is not None else set())
