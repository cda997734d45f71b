"""What the mmcv config converters share (mmseg: ``vision_rwkv.seg.mmseg_config_convert``; mmcls:
``vision_rwkv.engine.mmcls_config_convert``): the result type, a converter base that records every setting as
mapped, noted or unsupported, and the YAML writer."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import yaml

from .mmcv_config import MmcvConfigError

__all__ = ["Conversion", "ConverterBase", "same_value", "plain", "pair", "conversion_text", "FlowDict",
           "registered_backbone", "pretrained_checkpoint"]


@dataclass
class Conversion:
    """A converted config: ``config`` (nested dict of our config keys), ``notes`` (approximations and settings
    without an effect here) and ``unsupported`` (settings that change the results and have no equivalent)."""
    config: Dict[str, Any]
    notes: List[str] = field(default_factory=list)
    unsupported: List[str] = field(default_factory=list)


def same_value(a: Any, b: Any) -> bool:
    """Equality of config values with tuples as lists (at any depth of lists / tuples; dicts compare with ==)
    and ints as floats (1 == 1.0)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def plain(value: Any) -> Any:
    """Tuples as lists (YAML / OmegaConf hold lists)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def pair(value: Any) -> List[int]:
    """An int or a two-element sequence as [a, b] (anything else: TypeError)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value), int(value)]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"expected a size or a pair of sizes, got {value!r}")
    return [int(v) for v in value]


_UNSET = object()


class ConverterBase:
    """State of one conversion: the mmcv dict ``mm``, the output sections, the notes and the unsupported settings.
    ``SECTIONS``: the top-level keys a subclass reads (others must be helper variables, see unread_top_keys)."""

    SECTIONS: Sequence[str] = ()
    KIND = "mmcv"

    def __init__(self, mm: Dict[str, Any], sections: Sequence[str], referenced: Optional[Set[str]] = None):
        self.mm = mm
        self.referenced = referenced
        self.out: Dict[str, Dict[str, Any]] = {s: {} for s in sections}
        self.notes: List[str] = []
        self.unsupported: List[str] = []

    def convert_sections(self, steps: Sequence[Tuple[str, Callable[[], None]]]) -> None:
        """Run each ``(section, step)`` of the conversion; a missing key or a value of the wrong type that a step
        meets (mmcv would fail on it too) is an MmcvConfigError naming the section, not a traceback."""
        for section, step in steps:
            try:
                step()
            except MmcvConfigError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
                what = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
                raise MmcvConfigError(f"{section}: a missing key or a value of the wrong type ({what})") from None

    def leftovers(self, d: Dict[str, Any], where: str, handled: Sequence[str], ignored: Sequence[str] = ()) -> None:
        """Every key of `d` not handled or ignored is unsupported (a setting this converter cannot carry over)."""
        for key in d:
            if key not in handled and key not in ignored:
                self.unsupported.append(f"{where}.{key}={d[key]!r} has no equivalent here")

    def expect(self, d: Dict[str, Any], key: str, allowed: Any, where: str, why: str, default: Any = _UNSET) -> None:
        """`d[key]` must equal `allowed`, else it is unsupported (`why`); a missing key is mmcv's `default` (given)
        or not checked."""
        if key not in d and default is _UNSET:
            return
        value = d.get(key, default)
        if not same_value(value, allowed):
            shown = f"{value!r}" if key in d else f"{value!r} (mmcv's default)"
            self.unsupported.append(f"{where}.{key}={shown}: {why}")

    def set(self, section: str, key: str, value: Any) -> None:
        """Output key `section.key` = `value` (tuples as lists)."""
        self.out[section][key] = plain(value)

    def pipeline_steps(self, pipeline: Sequence[Dict[str, Any]], where: str,
                       skip: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        """The pipeline's steps by type, without the formatting ones (`skip`); a repeated step is unsupported."""
        steps: Dict[str, Dict[str, Any]] = {}
        for i, step in enumerate(pipeline):
            kind = step.get("type")
            if kind in skip:
                continue
            if kind in steps:
                self.unsupported.append(f"{where}[{i}]: a second {kind}")
            steps[kind] = dict(step)
        return steps

    def model_dict(self, model_type: str) -> Dict[str, Any]:
        """The ``model`` dict (an error without one); a type other than `model_type` is unsupported."""
        m = self.mm.get("model")
        if not isinstance(m, dict):
            raise MmcvConfigError(f"the {self.KIND} config has no `model` dict")
        if m.get("type", model_type) != model_type:
            self.unsupported.append(f"model.type={m['type']!r}: only {model_type} models convert")
        return m

    def data_loader(self, batch_key: str) -> Dict[str, Any]:
        """The ``data`` dict; its ``samples_per_gpu`` -> `batch_key` (section.key), ``workers_per_gpu`` ->
        data.num_workers, as ``data.train_dataloader`` overrides them (mmseg / mmcls 0.x)."""
        d = self.mm.get("data")
        if not isinstance(d, dict):
            raise MmcvConfigError(f"the {self.KIND} config has no `data` dict")
        loader = d.get("train_dataloader") or {}
        self.leftovers(loader, "data.train_dataloader", ("samples_per_gpu", "workers_per_gpu"),
                       ignored=("persistent_workers", "pin_memory"))
        loader = {**d, **loader}
        if "samples_per_gpu" in loader:
            self.set(*batch_key.split("."), int(loader["samples_per_gpu"]))
        if "workers_per_gpu" in loader:
            self.set("data", "num_workers", int(loader["workers_per_gpu"]))
        return d

    def optimizer_hook(self, accumulation_hint: str) -> bool:
        """``optimizer_config``: ``grad_clip`` -> optim.clip_grad (null without one); accumulation is unsupported.
        Returns whether the hook trains in fp16 (mmcv's Fp16OptimizerHook, or a DistOptimizerHook with use_fp16)."""
        hook = dict(self.mm.get("optimizer_config") or {})
        fp16 = hook.get("type") == "Fp16OptimizerHook" or bool(hook.pop("use_fp16", False))
        clip = hook.pop("grad_clip", None)
        self.set("optim", "clip_grad", float(clip["max_norm"]) if clip else None)
        if clip:
            self.expect(clip, "norm_type", 2, "optimizer_config.grad_clip", "the clip is by the L2 norm")
        for key in ("cumulative_iters", "update_interval"):  # (GradientCumulative / Swin's DistOptimizerHook)
            steps = hook.pop(key, 1)
            if steps != 1:
                self.unsupported.append(f"optimizer_config.{key}={steps!r}: {accumulation_hint}")
        hook.pop("type", None)
        self.leftovers(hook, "optimizer_config", (), ignored=("loss_scale", "distributed", "coalesce",
                                                              "bucket_size_mb"))
        return fp16

    def default_constructor_decay(self, paramwise: Dict[str, Any]) -> None:
        """mmcv's DefaultOptimizerConstructor: every parameter decays unless ``norm_decay_mult`` /
        ``bias_decay_mult`` are 0 (popped from `paramwise`); both 0 is optim.decay_exempt=norm_bias, both 1 none."""
        norm, bias = paramwise.pop("norm_decay_mult", 1.0), paramwise.pop("bias_decay_mult", 1.0)
        if (norm, bias) == (0.0, 0.0):
            self.set("optim", "decay_exempt", "norm_bias")
        elif (norm, bias) == (1.0, 1.0):
            self.set("optim", "decay_exempt", "none")
        else:
            self.unsupported.append(f"optimizer.paramwise_cfg norm_decay_mult={norm}, bias_decay_mult={bias}: "
                                    f"norms and biases decay together here (both 0 or both 1)")

    def intervals(self, ckpt_key: str, eval_key: str, by_epoch: bool, eval_by_epoch: bool) -> Dict[str, Any]:
        """``checkpoint_config`` / ``evaluation`` / ``log_config`` intervals -> train.`ckpt_key` / `eval_key` /
        log_every, max_keep_ckpts -> train.keep_last (-1: 0, keep all). The intervals count epochs
        (``by_epoch=True``) or iterations here; ``eval_by_epoch``: the evaluation hook's default (mmseg's counts
        iterations, mmcls's epochs; mmcv's checkpoint hook epochs). Returns the evaluation dict."""
        unit = "epochs" if by_epoch else "iterations"
        ckpt = self.mm.get("checkpoint_config")
        evaluation = self.mm.get("evaluation")
        if ckpt is None:  # (mmcv: no checkpoint hook; here the run's last state is still saved)
            self.set("train", ckpt_key, None if not by_epoch else 0)
            self.notes.append("no checkpoint_config: mmcv saves no checkpoints; here only the final one")
        else:
            self.expect(ckpt, "by_epoch", by_epoch, "checkpoint_config", f"the interval counts {unit} here",
                        default=True)
            interval = int(ckpt.get("interval", -1))  # (mmcv's default -1: the last one only)
            self.set("train", ckpt_key, interval if interval > 0 else (None if not by_epoch else 0))
            keep = int(ckpt.get("max_keep_ckpts", -1))  # (mmcv keeps every checkpoint unless told)
            self.set("train", "keep_last", 0 if keep < 0 else keep)
        if evaluation is not None:
            self.expect(evaluation, "by_epoch", by_epoch, "evaluation", f"the interval counts {unit} here",
                        default=eval_by_epoch)
            self.set("train", eval_key, int(evaluation.get("interval", 1)))  # (the hooks' default: every one)
        log = self.mm.get("log_config")
        if log is not None:
            if "interval" not in log:
                raise MmcvConfigError("log_config needs an interval (as mmcv does)")
            self.set("train", "log_every", int(log["interval"]))
        return evaluation or {}

    def unread_top_keys(self) -> None:
        """Top-level names outside the sections read must be helper variables (norm_cfg, crop_size, ...): names the
        config reads (``referenced``, from read_mmcv_config). Any other is unsupported - a misspelt section would
        be lost silently. Without ``referenced``, a name whose value appears inside a section counts as read, and
        the others are notes."""
        import difflib

        sections = [self.mm.get(k) for k in self.SECTIONS if k in self.mm]

        def occurs(value: Any, tree: Any) -> bool:  # (a dict counts when it was unpacked into one: **norm_cfg)
            if same_value(value, tree) or (isinstance(value, dict) and isinstance(tree, dict) and value
                                           and all(k in tree and same_value(tree[k], v) for k, v in value.items())):
                return True
            if isinstance(tree, dict):
                return any(occurs(value, v) for v in tree.values())
            if isinstance(tree, (list, tuple)):
                return any(occurs(value, v) for v in tree)
            return False

        for key, value in self.mm.items():
            if key in self.SECTIONS:
                continue
            read = key in self.referenced if self.referenced is not None else any(occurs(value, s) for s in sections)
            if read:
                continue
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            close = difflib.get_close_matches(key, self.SECTIONS, n=1, cutoff=0.75)
            text = (f"top-level {key}={shown} is not an {self.KIND} setting the converter knows"
                    + (f" (a misspelt {close[0]}?)" if close else ""))
            (self.unsupported if self.referenced is not None else self.notes).append(text)


def _comment(lines: Sequence[str], bullet: str = "- ", width: int = 116) -> List[str]:
    out = []
    for line in lines:
        wrapped = textwrap.wrap(line, width=width - 4, break_long_words=False, break_on_hyphens=False) or [""]
        out += [f"# {bullet}{wrapped[0]}"] + [f"# {' ' * len(bullet)}{w}" for w in wrapped[1:]]
    return out


class FlowDict(dict):
    """A mapping written on one line (e.g. model.backbone_kwargs, as the shipped configs write it)."""


class _Dumper(yaml.SafeDumper):
    """Sections and their dicts as blocks, lists (and FlowDict) on one line each."""


_Dumper.add_representer(FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def conversion_text(config: Dict[str, Any], conversion: Conversion, source: str, tool: str, schema: str,
                    base: Optional[str] = None) -> str:
    """YAML text of an (ordered) ``config``: a header naming ``source`` and ``tool``, the notes and (when allowed)
    the unsupported settings as comments, ``_base_: base`` when given, then the keys."""
    head = _comment([f"Converted from {source} by {tool}. Unset keys take the defaults of {schema}."], bullet="")
    if conversion.unsupported:
        head += ["# NOT carried over (these change the results; edit the config to decide):"]
        head += _comment(conversion.unsupported)
    if conversion.notes:
        head += ["# Notes:"] + _comment(conversion.notes)
    body = yaml.dump(({"_base_": base} if base else {}) | config, Dumper=_Dumper, sort_keys=False, width=116)
    return "\n".join(head) + "\n" + body


# the architecture arguments of VRWKV / VRWKV6 an original config sets (model_kwargs_from_original's output); one it
# leaves out has the original's default, which is our class's default too (not the matched variant's)
ARCH_KEYS = ("patch_size", "in_chans", "embed_dim", "depth", "pos_drop_rate", "drop_path_rate", "post_norm",
             "key_norm", "init_values", "mlp_ratio", "final_norm", "head_size")
# None cannot pass through timm.create_model (it drops None kwargs): the "off" value each of these takes instead
_OFF = {"init_values": False, "head_hidden_size": 0}


def pretrained_checkpoint(init_cfg: Any) -> Optional[str]:
    """The checkpoint of an mmcv ``init_cfg`` (a dict or a list of them) of type Pretrained, else None."""
    for init in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
        if isinstance(init, dict) and init.get("type") == "Pretrained" and init.get("checkpoint"):
            return str(init["checkpoint"])
    return None


def registered_backbone(kwargs: Dict[str, Any], family: str,
                        head: bool = True) -> tuple[str, Dict[str, Any], List[str]]:
    """The registered VRWKV (``family='vrwkv'``) / VRWKV6 model that our constructor ``kwargs`` (from
    ``model_kwargs_from_original``) describe, the kwargs that differ from it, and notes. The size is matched on
    width, depth, patch (and head size); without a match the smallest model takes those as kwargs. Architecture
    arguments the config leaves out are the original's defaults (pre-norm, no layer scale, ...), given as kwargs
    where the matched model differs. ``head=False`` (a segmentation backbone): the classifier's arguments are not
    compared. ``img_size`` is kept only where it changes the grid the position embedding is stored on."""
    import inspect

    from vision_rwkv.models import vrwkv, vrwkv6

    module, cls = (vrwkv, vrwkv.VRWKV) if family == "vrwkv" else (vrwkv6, vrwkv6.VRWKV6)
    defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
    keys = ("embed_dim", "depth", "patch_size") + (("head_size",) if family == "vrwkv6" else ())
    wanted = {k: kwargs.get(k, defaults[k]) for k in keys}
    name = next((n for n, a in module.VARIANT_ARGS.items()
                 if all(same_value({**defaults, **a}[k], v) for k, v in wanted.items())), None)
    notes = []
    if name is None:
        name = next(iter(module.VARIANT_ARGS))
        notes.append(f"no registered {family.upper()} has {', '.join(f'{k}={v}' for k, v in wanted.items())}: "
                     f"{name} with those in its kwargs")
    variant = {**defaults, **module.VARIANT_ARGS[name]}
    kwargs = dict(kwargs)
    patch = kwargs.get("patch_size", defaults["patch_size"])
    grid = [s // patch for s in pair(kwargs.pop("img_size", defaults["img_size"]))]
    default_grid = pair(variant["pos_embed_grid"] or [s // variant["patch_size"] for s in pair(variant["img_size"])])
    full = {k: defaults[k] for k in ARCH_KEYS if k in defaults}
    full.update(kwargs)
    if head:
        full.setdefault("head_hidden_size", defaults["head_hidden_size"])
    else:
        full.pop("num_classes", None)
    extra = {k: v for k, v in full.items() if not same_value(variant.get(k), v)}
    extra = {k: _OFF.get(k, v) if v is None else v for k, v in extra.items()}
    if grid != default_grid:  # the position embedding is stored on this grid (resampled to each input)
        extra["img_size"] = [g * patch for g in grid] if grid[0] != grid[1] else grid[0] * patch
        if variant["pos_embed_grid"] is not None:
            extra["pos_embed_grid"] = grid if grid[0] != grid[1] else grid[0]
    return name, extra, notes
