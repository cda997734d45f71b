"""The command-line form shared by the config-driven tools (train, train_seg, train_clip, eval, test_seg).

    tool.py CONFIG [key=value ...] [--resume latest|PATH] [--checkpoint PATH]
    tool.py --config CONFIG [key=value ...]          (the same; ``--config`` is an alias of the positional)

The first positional argument is the config file unless it looks like an override (``key=value``,
``+key=value``, ``~key``); every other positional must be an override. Options that stand for a config key
(``--resume`` -> ``train.resume``, ``--checkpoint`` -> ``eval.checkpoint``, ...) are appended as overrides; giving
both the option and an override of its key is an error. Options and positionals may be interleaved.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

from ..models.convert import CheckpointMismatchError, CheckpointReadError
from .checkpoint import CheckpointWriteError
from .config import ConfigError, override_key
from .distributed import launch_rank
from .files import OutputPathError
from .stopping import hold_after_stop

# omegaconf's errors for a key the running job reads but the config lacks (deleted with ~key, or a config of
# another tool): reported like a ConfigError
_MISSING_KEY_ERRORS = (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue)
# errors a tool prints as one line: a bad config (status 2; a run folder in use too), a missing file (1), a checkpoint
# file that does not fit the model (2), one that cannot be read (1: truncated, not a checkpoint), an output path that
# cannot be written (2), a checkpoint that cannot be written (1: a full disk)
_ONE_LINE_ERRORS = (ConfigError, FileNotFoundError, CheckpointMismatchError, CheckpointReadError, OutputPathError,
                    CheckpointWriteError, *_MISSING_KEY_ERRORS)

__all__ = ["run_tool", "exit_status", "home_expanded_option", "run_config_job", "ConfigArgs", "config_arg_parser",
           "parse_config_args", "add_predict_options", "parse_predict_args"]

RESUME_HELP = "'latest' (newest checkpoint of the run folder) or a checkpoint path"


@dataclass
class ConfigArgs:
    """Parsed command line: the config file (or None), the overrides in order, and the parsed options."""
    config: str | None
    overrides: list[str] = field(default_factory=list)
    options: argparse.Namespace = field(default_factory=argparse.Namespace)


def _is_override(arg: str) -> bool:
    return "=" in arg or arg.startswith("~")


def config_arg_parser(description: str, config_help: str, *, config_required: bool = True, resume: bool = False,
                      checkpoint: str | None = None, epilog: str | None = None,
                      target: str = "CONFIG") -> argparse.ArgumentParser:
    """An ArgumentParser with ``CONFIG [key=value ...]`` positionals and ``--config`` (``config_required=False``:
    the config may be left out); ``resume`` adds ``--resume latest|PATH``; ``checkpoint`` (its help text) adds
    ``--checkpoint PATH``; ``target``: the first positional's name in usage and errors (e.g. ``MODEL_OR_CONFIG``
    for the tools that also take a model name). Tools may add their own options; parse with
    :func:`parse_config_args`."""
    config = target if config_required else f"[{target}]"
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     usage=f"%(prog)s {config} [key=value ...] [options]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(config_required=config_required, config_target=target)
    parser.add_argument("args", nargs="*", metavar=f"{target} key=value",
                        help=f"{config_help}, then config overrides (key=value, +new.key=value, ~key)")
    parser.add_argument("--config", dest="config_option", metavar="CONFIG", default=None,
                        help="the config file (alias of the positional CONFIG)")
    if resume:
        parser.add_argument("--resume", default=None, metavar="latest|PATH", help=RESUME_HELP)
    if checkpoint:
        parser.add_argument("--checkpoint", default=None, metavar="PATH", help=checkpoint)
    return parser


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
                      option_keys: Mapping[str, str] | None = None) -> ConfigArgs:
    """Parse ``argv`` (``None``: sys.argv[1:]); ``option_keys`` maps an option's dest to the config key it sets
    (e.g. ``{"resume": "train.resume"}``). Usage errors exit with status 2 (argparse), among them a key set three
    or more times (an unquoted brace or glob pattern the shell expanded into words); set twice, the last value
    wins, with a warning."""
    ns = parser.parse_intermixed_args(argv)
    positional = list(ns.args)
    config = positional.pop(0) if positional and not _is_override(positional[0]) else None
    if ns.config_option is not None:
        if config is not None:
            parser.error(f"the config is given twice ({config!r} and --config {ns.config_option!r}); give it once")
        config = ns.config_option
    if config is None and ns.config_required:
        target = ns.config_target
        parser.error(f"a {'CONFIG file' if target == 'CONFIG' else target} is required (first positional argument, "
                     f"or --config {target})")
    sets: dict[str, list[str]] = {}
    for arg in positional:
        if not _is_override(arg):
            parser.error(f"{arg!r} is not a key=value override (only the first argument may be the config file)")
        if not arg.startswith("~"):  # (deleting a key and setting it again is fine)
            sets.setdefault(override_key(arg), []).append(arg)
    for key, args in sets.items():  # an unquoted shard-{000..009}.tar reaches us as ten words setting one key
        hint = "an unquoted brace or glob pattern expands into several words: quote it"
        if len(args) > 2:
            parser.error(f"config key {key!r} is set {len(args)} times ({args[0]!r}, {args[1]!r}, ...); {hint}")
        if len(args) == 2 and launch_rank() == 0:  # (under torchrun: once, not once per process)
            print(f"warning: config key {key!r} is set twice; the last value wins ({args[1]!r}); if {hint}",
                  file=sys.stderr)
    overrides = positional
    for dest, key in (option_keys or {}).items():
        value = getattr(ns, dest, None)
        if value is None:
            continue
        clash = [o for o in overrides if override_key(o) == key]
        if clash:
            parser.error(f"--{dest.replace('_', '-')} and the override {clash[0]!r} both set {key}; give one")
        quoted = str(value).replace("'", "''")  # a YAML single-quoted string: the path/word as given
        overrides = [*overrides, f"{key}='{quoted}'"]
    return ConfigArgs(config, overrides, ns)


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    """The options of every prediction tool (tools/predict.py, tools/predict_seg.py): ``--images`` (files and
    folders), ``--num-classes``, ``--device``, ``--precision``, ``--channels-last``, ``--no-progress``."""
    parser.add_argument("--images", nargs="+", required=True, help="image files and folders")
    parser.add_argument("--num-classes", type=int, default=None, help="class count when the checkpoint has none")
    parser.add_argument("--device", default="cpu", type=device_arg, help="cpu (default), cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true",
                        help="convolution weights and images in channels-last order (timm's --channels-last)")
    parser.add_argument("--no-progress", action="store_true")


def device_arg(value: str) -> str:
    """A ``--device`` value this machine has (argparse's usage error, status 2, otherwise): a torch device string,
    and a CUDA one only where CUDA is available."""
    import torch
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (cpu, cuda, cuda:N): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{value!r}: there are {torch.cuda.device_count()} CUDA devices")
    return value


def parse_predict_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """:func:`parse_config_args` for a prediction tool: its options, with ``target`` (the first positional: a config,
    or for tools.predict a model name) and ``overrides``."""
    parsed = parse_config_args(parser, argv)
    args = parsed.options
    args.target, args.overrides = parsed.config, parsed.overrides
    return args


def missing_key_error(err: Exception) -> ConfigError:
    """The :class:`ConfigError` for omegaconf's missing-key error ``err``, naming the full key."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or str(err).splitlines()[0]
    return ConfigError(f"the config has no value for '{key}', which this tool needs (deleted with ~{key}? "
                       f"'{key}=null' unsets a value; or a config written for another tool?)")


def _error_status(err: Exception, missing_file: int = 1) -> int:
    """Print ``err`` as one ``error:`` line; the exit status for it: 2 for a config error, a checkpoint that does
    not fit the model or an output path that cannot be written, ``missing_file`` for a missing file. Under torchrun
    a config error (the same in every process) is printed by rank 0 alone, any other error by each process that
    meets it, with its rank."""
    if isinstance(err, _MISSING_KEY_ERRORS):
        err = missing_key_error(err)
    rank = launch_rank()
    if rank == 0 or not isinstance(err, ConfigError):
        print(f"error: {f'[rank {rank}] ' if rank else ''}{err}", file=sys.stderr)
    return 2 if isinstance(err, (ConfigError, CheckpointMismatchError, OutputPathError)) else missing_file


def run_config_job(load: Callable[[], Any], job: Callable[[Any], Any]) -> tuple[int, Any]:
    """``job(load())`` for a tool's ``main``: (exit status, the job's result or None). A config error gives status 2
    - while loading (a missing config file too) or while running (a setting only checkable with the data at hand,
    e.g. a key a data.type needs) - and a file missing while running 1, each as one ``error:`` line."""
    try:
        cfg = load()
    except _ONE_LINE_ERRORS as err:
        return _error_status(err, missing_file=2), None
    try:
        return 0, job(cfg)
    except _ONE_LINE_ERRORS as err:
        return _error_status(err), None


def run_tool(main: Callable[[list[str]], Any]) -> None:
    """Run a tool's ``main(argv)`` as a command: a config error or a checkpoint that does not fit the model exits
    with status 2, a missing file with 1, each
    as one ``error:`` line instead of a traceback; an int result is the exit status, a run stopped by a signal
    exits 128 + its number (:func:`exit_status`), anything else exits 0.
    ``--option=~/path`` gets its ``~`` expanded (:func:`home_expanded_option`); a full disk (ENOSPC) is one line
    too (exit 1).
    Text the terminal's encoding cannot show (a class name with an emoji on a cp1252 console) is printed escaped."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    hold_after_stop()  # (a run stopped by a signal: this process ends with it, no later signal cuts that short)
    try:
        result = main([home_expanded_option(a) for a in sys.argv[1:]])
    except _ONE_LINE_ERRORS as err:
        sys.exit(_error_status(err))
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        rank = launch_rank()  # (a full disk: what was written before it is whole; say so in one line)
        print(f"error: {f'[rank {rank}] ' if rank else ''}no space left on the device"
              f"{f' writing {err.filename}' if err.filename else ''}: {err}", file=sys.stderr)
        sys.exit(1)
    finally:  # (the handlers a stop left ignoring stay so; the flag is for this tool's run only)
        hold_after_stop(False)
    sys.exit(exit_status(result))


def exit_status(result: Any) -> int:
    """A tool's exit status from its ``main``'s result: an int is the status; a training run a signal stopped
    (``exit_status`` in its result dict: 128 + the signal's number) exits with that; anything else 0."""
    if isinstance(result, int):
        return result
    if isinstance(result, Mapping) and isinstance(result.get("exit_status"), int):
        return int(result["exit_status"])
    return 0


def home_expanded_option(arg: str) -> str:
    """``--option=~/path`` (``~user/path``) with the home folder expanded, as the shell does for ``--option ~/path``
    but not after ``=``; any other argument as it is (``key=~/path`` overrides: the config loader expands them)."""
    name, eq, value = arg.partition("=")
    if not (arg.startswith("--") and eq and value.startswith("~")):
        return arg
    expanded = os.path.expanduser(value)
    return f"{name}={expanded}" if expanded != value else arg
