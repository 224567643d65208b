"""Command-line rough edges: -V, one-line usage errors, completion, JSON outputs."""

from __future__ import annotations

from pathlib import Path

from clihelp import fleetshard

from fleetshard import __version__


def test_dash_v_is_version() -> None:
    for flag in ("-V", "--version"):
        res = fleetshard(flag)
        assert (res.code, res.out) == (0, f"fleetshard {__version__}\n")


def test_usage_errors_are_one_line() -> None:
    res = fleetshard("health", "--bogus")
    assert res.code == 2
    assert res.err == "fleetshard: error: No such option: --bogus (see `fleetshard health -h`)\n"
    res = fleetshard("history", "-n", "x")
    assert res.code == 2 and len(res.err.splitlines()) == 1 and res.err.startswith("fleetshard: error: ")
    res = fleetshard("nosuch")
    assert res.code == 2 and res.err.startswith("fleetshard: error: No such command 'nosuch'")


def test_no_arguments_prints_help(tmp_path: Path) -> None:
    res = fleetshard()
    assert res.code == 2 and "Usage: fleetshard" in res.out and "init" in res.out
