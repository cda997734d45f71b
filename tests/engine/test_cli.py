"""The shared tool command line: CONFIG [key=value ...] with --config / --resume / --checkpoint options."""
import pytest

from vision_rwkv.engine.cli import config_arg_parser, parse_config_args


def _parse(argv, required=True, **keys):
    parser = config_arg_parser("t", "cfg", config_required=required, resume=True, checkpoint="ckpt")
    return parse_config_args(parser, argv, option_keys=keys or {"resume": "train.resume"})


def test_positional_config_overrides_and_options_interleaved():
    a = _parse(["--resume", "latest", "c.yaml", "a.b=1", "+new.k=2", "~x.y"])
    assert a.config == "c.yaml" and a.overrides == ["a.b=1", "+new.k=2", "~x.y", "train.resume='latest'"]
    a = _parse(["a.b=1", "--config", "c.yaml"])
    assert a.config == "c.yaml" and a.overrides == ["a.b=1"] and a.options.resume is None


def test_option_values_are_literal_strings():
    from omegaconf import OmegaConf
    path = "runs/a b/it's: 1.pt"
    a = _parse(["c.yaml", "--resume", path])
    assert OmegaConf.from_dotlist(a.overrides).train.resume == path
    assert OmegaConf.from_dotlist(_parse(["c.yaml", "--resume", "123"]).overrides).train.resume == "123"


def test_a_key_set_twice_warns_and_the_last_value_wins(capsys):
    """(`script.sh` passing defaults, then "$@"); deleting a key and setting it again is no repeat."""
    assert _parse(["c.yaml", "a.b=1", "a.b=2"]).overrides == ["a.b=1", "a.b=2"]
    assert "'a.b' is set twice; the last value wins ('a.b=2')" in capsys.readouterr().err
    assert _parse(["c.yaml", "~a.b", "+a.b=2"]).overrides == ["~a.b", "+a.b=2"]
    assert capsys.readouterr().err == ""


def test_config_may_be_optional():
    a = _parse(["k=1"], required=False)
    assert a.config is None and a.overrides == ["k=1"]


@pytest.mark.parametrize("argv,message", [
    (["k=1"], "CONFIG file is required"),
    (["c.yaml", "--config", "d.yaml"], "given twice"),
    (["c.yaml", "d.yaml"], "not a key=value override"),
    (["c.yaml", "train.resume=x", "--resume", "latest"], "both set train.resume"),
    (["c.yaml", "+train.resume=x", "--resume", "latest"], "both set train.resume"),
    # an unquoted `data.train=shard-{0..2}.tar`: the shell hands over three words setting one key
    (["c.yaml"] + [f"data.train=shard-{i}.tar" for i in range(3)], "'data.train' is set 3 times"),
    (["c.yaml", "+extra.a=1", "extra.a=2", "extra.a=3"], "quote it"),
])
def test_usage_errors_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_run_tool_turns_config_and_file_errors_into_one_line_and_a_status(monkeypatch, capsys):
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.engine.cli import run_tool
    from vision_rwkv.models.convert import CheckpointFileMismatchError
    monkeypatch.setattr("sys.argv", ["tool", "a=1"])

    def raising(err):
        def main(argv):
            assert argv == ["a=1"]
            raise err
        return main

    for main, status, message in ((raising(ConfigError("unknown config key 'x'")), 2, "error: unknown config key"),
                                  (raising(FileNotFoundError("image folder root not found: /d")), 1, "not found: /d"),
                                  (raising(CheckpointFileMismatchError("checkpoint c.pt does not match the model")), 2,
                                   "error: checkpoint c.pt does not match"),
                                  (lambda argv: 3, 3, ""), (lambda argv: {"top1": 1.0}, 0, "")):
        with pytest.raises(SystemExit) as exc:
            run_tool(main)
        err = capsys.readouterr().err
        assert exc.value.code == status and message in err and "Traceback" not in err
    with pytest.raises(ValueError):  # other errors keep their traceback
        run_tool(raising(ValueError("bug")))


def test_under_torchrun_config_errors_print_once_and_other_errors_name_their_rank(monkeypatch, capsys):
    """Every process meets a config error (a run folder in use too): rank 0 alone prints it; an error of one
    process (a file it cannot read) is printed by that process, with its rank; the statuses stay."""
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.engine.checkpoint import RunDirInUseError
    from vision_rwkv.engine.cli import run_tool
    monkeypatch.setattr("sys.argv", ["tool", "a=1", "a=2"])

    def raising(err):
        def main(argv):
            parse_config_args(config_arg_parser("tool", "c", config_required=False), argv)  # (a=1 a=2: a warning)
            raise err
        return main

    for rank, err, status, printed in ((0, ConfigError("bad value"), 2, "error: bad value\n"),
                                       (1, ConfigError("bad value"), 2, ""),
                                       (1, RunDirInUseError("run_dir r already holds"), 2, ""),
                                       (0, RunDirInUseError("run_dir r already holds"), 2, "error: run_dir r already"),
                                       (1, FileNotFoundError("no /d"), 1, "error: [rank 1] no /d\n")):
        monkeypatch.setenv("RANK", str(rank))
        with pytest.raises(SystemExit) as exc:
            run_tool(raising(err))
        out = capsys.readouterr().err
        assert exc.value.code == status
        assert out.endswith(printed) if printed.endswith("\n") else printed in out
        assert ("is set twice" in out) == (rank == 0) and (printed != "" or out.count("\n") == 0), out


def test_target_name_in_usage_and_errors(capsys):
    parser = config_arg_parser("tool", "a model name or a config", target="MODEL_OR_CONFIG")
    assert parser.format_usage().startswith("usage: ") and "MODEL_OR_CONFIG [key=value ...]" in parser.format_usage()
    with pytest.raises(SystemExit):
        parse_config_args(parser, [])
    assert "a MODEL_OR_CONFIG is required" in capsys.readouterr().err
    assert parse_config_args(parser, ["vrwkv_tiny_patch16_224", "a=1"]).config == "vrwkv_tiny_patch16_224"


def test_a_key_the_job_needs_but_the_config_lacks_is_one_error_line(capsys):
    from omegaconf import OmegaConf

    from vision_rwkv.engine.cli import run_config_job
    cfg = OmegaConf.create({"train": {"batch_size": 2}})
    OmegaConf.set_struct(cfg, True)
    status, result = run_config_job(lambda: cfg, lambda c: c.train.epochs)
    err = capsys.readouterr().err
    assert status == 2 and result is None
    assert "error: the config has no value for 'train.epochs'" in err and "Traceback" not in err
    assert "'train.epochs=null' unsets a value" in err  # (the audit deleted a key to unset it)


def test_run_tool_expands_home_in_option_values_and_reports_unwritable_outputs(monkeypatch, capsys):
    from vision_rwkv.engine.cli import run_tool
    from vision_rwkv.engine.files import OutputPathError
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setattr("sys.argv", ["tool", "--checkpoint=~/w.pt", "--x=a~/b", "key=~/d", "--flag", "~/e"])
    seen = []
    with pytest.raises(SystemExit) as exc:
        run_tool(lambda argv: seen.append(argv))
    assert exc.value.code == 0  # (key=~/d: the config loader's; ~/e: the shell's)
    assert seen == [["--checkpoint=/home/someone/w.pt", "--x=a~/b", "key=~/d", "--flag", "~/e"]]

    def unwritable(argv):
        raise OutputPathError("--output /ro/x.json: folder /ro is not writable")
    with pytest.raises(SystemExit) as exc:
        run_tool(unwritable)
    assert exc.value.code == 2 and capsys.readouterr().err == "error: --output /ro/x.json: folder /ro is not writable\n"


def test_run_tool_prints_what_the_console_encoding_cannot_show_escaped():
    """A per-class table with an emoji class name crashed the seg tools on a cp1252 console after all the work."""
    import subprocess
    import sys
    code = ("from vision_rwkv.engine.cli import run_tool\n"
            "run_tool(lambda argv: print('class \\U0001f431 caf\\u00e9'))\n")
    env = {**__import__("os").environ, "PYTHONIOENCODING": "cp1252"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode("cp1252").strip() == "class \\U0001f431 caf\u00e9"


def test_a_full_disk_is_one_error_line(monkeypatch, capsys):
    """ENOSPC anywhere in a tool (a metrics row, the final metrics) ended it with a traceback; other OSErrors keep
    theirs."""
    import errno

    from vision_rwkv.engine.cli import run_tool
    monkeypatch.setattr("sys.argv", ["tool"])

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/run/train_metrics.csv")
    with pytest.raises(SystemExit) as exc:
        run_tool(full)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("error: no space left on the device writing /run/train_metrics.csv")

    def denied(argv):
        raise OSError(errno.EACCES, "Permission denied")
    with pytest.raises(OSError, match="Permission denied"):
        run_tool(denied)
