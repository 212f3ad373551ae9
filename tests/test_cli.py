"""The `txl` command line: dispatch, help, one-line errors with the documented exit codes."""
from __future__ import annotations

import sys
import types

import pytest

from pipelines import cli
from pipelines.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, DataWarning, UserError


@pytest.fixture
def fake_command(monkeypatch):
    """Register a command `fake` whose run() does whatever the test puts in `behaviour`."""
    behaviour = {}
    module = types.ModuleType("tests_fake_command", "Do fake things.\n\nLonger description.")
    module.add_arguments = lambda p: p.add_argument("--x", default="1")
    module.run = lambda args: behaviour["run"](args)
    monkeypatch.setitem(sys.modules, "tests_fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", "tests_fake_command")
    return behaviour


def run_fake(fake_command, capsys, action) -> tuple[int, str]:
    fake_command["run"] = action
    code = cli.main(["fake"])
    return code, capsys.readouterr().err


def raise_(error):
    def action(args):
        raise error
    return action


def test_run_result_and_arguments_reach_the_command(fake_command, capsys):
    fake_command["run"] = lambda args: 0 if (args.x, args.command) == ("7", "fake") else 5
    assert cli.main(["fake", "--x", "7"]) == 0


def test_user_error_is_one_line_exit_2(fake_command, capsys):
    code, err = run_fake(fake_command, capsys, raise_(UserError("data.csv has no column 'text'; use --text-column")))
    assert code == EXIT_USAGE == 2
    assert err == "txl fake: error: data.csv has no column 'text'; use --text-column\n"


def test_internal_error_is_one_line_without_traceback(fake_command, capsys, monkeypatch):
    monkeypatch.delenv("TXL_DEBUG", raising=False)
    code, err = run_fake(fake_command, capsys, raise_(ZeroDivisionError("division by zero\nsecond line")))
    assert code == EXIT_INTERNAL == 1
    assert err.strip() == ("txl fake: internal error: ZeroDivisionError: division by zero second line "
                           "(rerun with TXL_DEBUG=1 for the traceback)")


def test_debug_shows_the_traceback(fake_command, capsys, monkeypatch):
    monkeypatch.setenv("TXL_DEBUG", "1")
    code, err = run_fake(fake_command, capsys, raise_(RuntimeError("boom")))
    assert code == 1 and "Traceback" in err and err.strip().endswith("internal error: RuntimeError: boom")


def test_keyboard_interrupt(fake_command, capsys):
    code, err = run_fake(fake_command, capsys, raise_(KeyboardInterrupt()))
    assert code == EXIT_INTERRUPTED == 130 and err == "txl fake: interrupted\n"


def test_data_warnings_print_as_one_line(fake_command, capsys):
    import warnings

    def action(args):
        warnings.warn("skipped 2 rows", DataWarning)
        warnings.warn("skipped 2 rows", DataWarning)  # printed each time, not once per process
        return 0
    code, err = run_fake(fake_command, capsys, action)
    assert code == 0 and err == "txl fake: warning: skipped 2 rows\n" * 2


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "baseline" in capsys.readouterr().err


def test_top_help_lists_commands_without_importing_them(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "pipelines.commands.train", raising=False)
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "TF-IDF" in out and "train" in out
    assert "pipelines.commands.train" not in sys.modules


def test_baseline_help(capsys):
    assert cli.main(["baseline", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: txl baseline" in out and "--train-split" in out and "--text-column" in out


def test_bad_arguments_exit_2(capsys):
    assert cli.main(["baseline", "--train", "x.csv"]) == 2
    assert "required: --test" in capsys.readouterr().err


def test_missing_module_is_unavailable_and_breaks_nothing(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", "pipelines.no_such_module")
    assert cli.main(["--help"]) == 0
    assert "not available" in capsys.readouterr().out
    assert cli.main(["ghost"]) == 2
    assert capsys.readouterr().err == "txl ghost: error: this command is not available in this version of txl\n"
    assert cli.main(["baseline", "--help"]) == 0


def test_missing_dependency_names_the_package(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "needy", "tests_needs_dep")

    def failing_import(name, *a, **k):
        raise ModuleNotFoundError("No module named 'somepkg'", name="somepkg")
    monkeypatch.setattr(cli.importlib, "import_module", failing_import)
    assert cli.main(["needy"]) == 2 and "'somepkg'" in capsys.readouterr().err


def test_usage_errors_reach_a_real_command(tmp_path, capsys):
    code = cli.main(["baseline", "--train", str(tmp_path / "none.csv"), "--test", str(tmp_path / "none.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not found" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "--train", "x.csv", "--out", "y", "--precision", "bf17"], ["frobnicate"],
                                  ["baseline", "--train", "x"], ["classify", "--top-k", "two"],
                                  ["train", "--train", "x.csv", "--out", "y", "--class-weights", "inverse"],
                                  ["classify", "--model", "m", "--input", "i", "--output", "o", "--chunk-rows", "0"],
                                  ["classify", "--model", "m", "--input", "i", "--output", "o", "--batch-size", "0"],
                                  ["evaluate", "--model", "m", "--data", "d", "--out", "o", "--chunk-rows", "-3"],
                                  ["train", "--train", "x.csv", "--out", "y", "--batch-size", "0"],
                                  ["train", "--train", "x.csv", "--out", "y", "--lr", "-0.5"],
                                  ["train", "--train", "x.csv", "--out", "y", "--dropout", "1.5"],
                                  ["train", "--train", "x.csv", "--out", "y", "--vocab-size", "100"],
                                  ["pretrain", "--text", "x.txt", "--out", "y", "--segment-len", "0"],
                                  ["baseline", "--train", "x", "--test", "y", "--C", "0"],
                                  ["app", "--port", "70000"]])
def test_argument_errors_are_one_line_that_points_to_help(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err, err
    if "-" in argv[-1] or argv[-1].replace(".", "").replace("e", "").isdigit():  # an out-of-bounds number
        assert "must be" in err and argv[-2] in err, err
