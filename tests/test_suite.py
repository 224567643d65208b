"""Suite resolution, discovery listings, and command templates (pure)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from fleetshard.inventory import SuiteConfig
from fleetshard.model import Shard
from fleetshard.suite import Suite, command_from_argv, files_from_listing, render, shard_command


def test_render_quotes_every_value() -> None:
    files = ["a b.py", "it's.py", "$(rm -rf ~).py", "x;y.py"]
    line = render("run {files} --shard={shard}/{total} --out {junit}", {
        "files": files, "shard": "2", "total": "5", "junit": "out dir/j.xml"})
    assert shlex.split(line) == ["run", *files, "--shard=2/5", "--out", "out dir/j.xml"]


def test_unknown_braces_are_left_alone() -> None:
    assert render("echo ${HOME} {nope} {shard}", {"shard": "1"}) == "echo ${HOME} {nope} 1"


def test_command_from_argv_keeps_placeholders_live() -> None:
    cmd = command_from_argv(["npx", "playwright", "test", "--shard={shard}/{total}", "it's here"])
    assert render(cmd, {"shard": "3", "total": "8"}) == "npx playwright test --shard=3/8 'it'\"'\"'s here'"
    assert command_from_argv(["pytest {files}"]) == "pytest {files}"       # one word: a shell line as typed


def test_shard_command() -> None:
    suite = Suite(config=SuiteConfig(command="pytest {files} --junitxml={junit}", tests=("t/*.py",)),
                  command="pytest {files} --junitxml={junit}", mode="files", source="x")
    shard = Shard(id="s002", index=2, total=4, files=("t/a b.py",))
    assert shard_command(suite, shard=shard, machine="m", run_id="r", attempt=1, junit="j.xml") == \
        "pytest 't/a b.py' --junitxml=j.xml"


@pytest.mark.parametrize(("listing", "files"), [
    ("tests/test_a.py::test_one\ntests/test_a.py::test_two[x-1]\ntests/sub/test_b.py::TestK::test_c\n\n"
     "3 tests collected in 0.02s\n", ["tests/test_a.py", "tests/sub/test_b.py"]),
    ("tests/test_a.py: 2\ntests/sub/test_b.py: 1\n", ["tests/test_a.py", "tests/sub/test_b.py"]),
    ("Listing tests:\n  [chromium] › login.spec.ts:3:5 › logs in\n  [chromium] › cart/add item.spec.ts:10:1 › adds\n"
     "  [firefox] › login.spec.ts:3:5 › logs in\nTotal: 3 tests in 2 files\n",
     ["login.spec.ts", "cart/add item.spec.ts"]),
    ("/abs/a.test.js\n/abs/b.test.js\n", ["/abs/a.test.js", "/abs/b.test.js"]),
])
def test_files_from_runner_listings(listing: str, files: list[str]) -> None:
    assert files_from_listing(listing) == files


def test_discover_command_runs_in_the_inventory_dir(tmp_path: Path) -> None:
    from fleetshard.suite import discover_files

    (tmp_path / "t").mkdir()
    for name in ("b.py", "a.py"):
        (tmp_path / "t" / name).write_text("")
    suite = Suite(config=SuiteConfig(command="x {files}", discover="ls t/*.py"), command="x {files}",
                  mode="files", source="x")
    assert discover_files(suite, tmp_path) == ["t/a.py", "t/b.py"]
    glob_suite = Suite(config=SuiteConfig(command="x {files}", tests=("t/**/*.py",)), command="x {files}",
                       mode="files", source="x")
    assert discover_files(glob_suite, tmp_path) == ["t/a.py", "t/b.py"]
