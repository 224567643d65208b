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


def _complete(cwd: Path, words: str) -> list[str]:
    res = fleetshard(env={"_FLEETSHARD_COMPLETE": "complete_bash", "COMP_WORDS": words,
                          "COMP_CWORD": str(len(words.split(" ")) - 1)}, cwd=cwd)
    assert res.code == 0, res.err
    return res.out.split()


def test_completion_of_machine_names_tags_and_run_ids(tmp_path: Path) -> None:
    import json

    (tmp_path / "machines.yaml").write_text(
        "health: {max_load_per_core: 1000}\n"
        "machines:\n  alpha: {transport: local, slots: 1, tags: [fast]}\n  beta: {transport: local, slots: 1}\n"
        "suite: {command: 'true', shards: 1}\n")
    report = tmp_path / "r.json"
    assert fleetshard("run", "--no-live", "--json-report", report, cwd=tmp_path).code == 0
    run_id = json.loads(report.read_text())["run_id"]
    assert _complete(tmp_path, "fleetshard run -m ") == ["alpha", "beta", "fast"]
    assert _complete(tmp_path, "fleetshard health -m alpha,b") == ["alpha,beta"]
    assert _complete(tmp_path, "fleetshard report ") == [run_id]
    assert _complete(tmp_path, f"fleetshard run --resume {run_id[:8]}") == [run_id]
    assert _complete(tmp_path, "fleetshard report nope") == []
