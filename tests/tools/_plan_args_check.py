"""Run by tests/tools/test_device_plans.py: check the argument lists of a device plan's Python commands without
running them. Reads JSON ``[[script, arg, ...], ...]`` on stdin; for each, the script's argparse parser parses the
arguments (the script stops right after: :class:`_Parsed`), ``--kernel-config`` items are applied (unknown ops /
keys are errors) and ``benchmarks/sweep.py``'s verbs and config names, ``device_summary.py``'s and
``sanitize_ops.py``'s arguments are checked (those three read ``sys.argv`` themselves). Prints JSON
``[{"cmd": [...], "error": str or None}, ...]``."""
import argparse
import json
import runpy
import sys


class _Parsed(Exception):
    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _check_sweep(args: list) -> None:
    sys.path.insert(0, "benchmarks")
    import sweep

    if args[:1] == ["warm"]:
        if len(args) not in (2, 3):
            raise ValueError(f"sweep.py warm takes a config name and optional dtypes, got {args[1:]}")
        sweep.named_config(args[1])
        for dt in args[2].split(",") if len(args) > 2 else ():
            if dt not in ("fp32", "bf16"):
                raise ValueError(f"sweep.py warm: unknown dtype {dt!r}")
    elif args[:1] == ["time"]:
        if len(args) < 3:
            raise ValueError("sweep.py time OUT SECONDS [OPS [CONFIGS [DTYPES]]]")
        float(args[2])
        for op in args[3].split(",") if len(args) > 3 else ():
            if op not in ("v4", "v6"):
                raise ValueError(f"sweep.py time: unknown op {op!r}")
        for name in args[4].split(",") if len(args) > 4 else ():
            sweep.named_config(name)
        for dt in args[5].split(",") if len(args) > 5 else ():
            if dt not in ("fp32", "bf16", "fp16"):
                raise ValueError(f"sweep.py time: unknown dtype {dt!r}")
    else:
        raise ValueError(f"sweep.py: unknown verb {args[:1]}")


def check(cmd: list) -> None:
    script, args = cmd[0], cmd[1:]
    if script.endswith("benchmarks/sweep.py"):
        return _check_sweep(args)
    if script.endswith("benchmarks/device_summary.py"):  # (positional: OUT [LOG_DIR])
        if not 1 <= len(args) <= 2:
            raise ValueError(f"device_summary.py takes OUT [LOG_DIR], got {args}")
        return None
    if script.endswith("benchmarks/sanitize_ops.py"):  # (positional: [DEVICE]; it runs its cases at import)
        if args not in ([], ["cuda"], ["cpu"]):
            raise ValueError(f"sanitize_ops.py takes [cuda|cpu], got {args}")
        return None
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, a=None, namespace=None):
        raise _Parsed(real(self, a, namespace))
    argparse.ArgumentParser.parse_args = parse_and_stop
    sys.argv = [script] + args
    try:
        runpy.run_path(script, run_name="__main__")
    except _Parsed as done:
        items = getattr(done.namespace, "kernel_config", None)
        if items:
            from vision_rwkv.benchmark import apply_kernel_config

            apply_kernel_config(items)
        return
    except SystemExit as e:
        raise ValueError(f"exited with {e.code} while parsing its arguments") from None
    finally:
        argparse.ArgumentParser.parse_args = real
    raise ValueError("never parsed its arguments with argparse")


def main() -> int:
    rows = []
    for cmd in json.load(sys.stdin):
        try:
            check(cmd)
            rows.append({"cmd": cmd, "error": None})
        except (Exception, SystemExit) as e:  # (reported per command; sweep.py's errors are SystemExits)
            rows.append({"cmd": cmd, "error": f"{type(e).__name__}: {e}"[:300]})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
