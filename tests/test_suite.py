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


# --- runners -------------------------------------------------------------------------------------------

FIX = Path(__file__).parent / "fixtures" / "runners"


def _inventory(tmp_path: Path, suite: str) -> Path:
    path = tmp_path / "machines.yaml"
    path.write_text("machines:\n  local: {transport: local}\nsuite:\n" + suite)
    return path


def test_a_two_line_pytest_suite_gets_the_runners_command(tmp_path: Path) -> None:
    from fleetshard.inventory import load_inventory
    from fleetshard.suite import resolve_suite

    inv = load_inventory(_inventory(tmp_path, "  runner: pytest\n  args: -m smoke\n"))
    suite = resolve_suite(inv)
    assert suite.runner == "pytest" and suite.mode == "files"
    assert "-m smoke" in suite.command and "{tests}" in suite.command and "{junit}" in suite.command
    assert suite.ok_exit_codes == {0, 5}
    assert suite.listing_command is not None and suite.listing_command.endswith("--collect-only -q -rsE")
    assert "-m smoke" in suite.listing_command          # a selection applies to discovery


def test_runner_discovery_keeps_collection_skips_and_errors(tmp_path: Path) -> None:
    from fleetshard.inventory import load_inventory
    from fleetshard.suite import assign_tests, discover, resolve_suite

    (tmp_path / "listing.txt").write_text((FIX / "pytest-collect-import-error.txt").read_text())
    inv = load_inventory(_inventory(tmp_path, "  runner: pytest\n  discover: cat listing.txt; exit 2\n"))
    found = discover(resolve_suite(inv), tmp_path)
    assert "networkx/algorithms/tree/tests/test_broken_import.py" in found.files
    assert "networkx/drawing/tests/test_pylab.py" in found.files
    assert found.counts()["networkx/algorithms/tree/tests/test_coding.py"] > 1
    shards = assign_tests([Shard(id="s001", index=1, total=1, files=(
        "networkx/algorithms/tree/tests/test_coding.py", "networkx/drawing/tests/test_pylab.py"))], found.listing)
    assert shards[0].tests[-1] == "networkx/drawing/tests/test_pylab.py"     # a skipped file stands for itself
    assert all("::" in t for t in shards[0].tests[:-1])


def test_runner_discovery_that_cannot_list_is_a_usage_error(tmp_path: Path) -> None:
    from fleetshard.errors import UsageError
    from fleetshard.inventory import load_inventory
    from fleetshard.suite import discover, resolve_suite

    inv = load_inventory(_inventory(tmp_path, "  runner: pytest\n  discover: \"echo 'ERROR - bad option'; exit 4\"\n"))
    with pytest.raises(UsageError, match="exited with 4: ERROR - bad option"):
        discover(resolve_suite(inv), tmp_path)


def test_tests_placeholder_and_long_lists_through_a_file() -> None:
    from fleetshard.runners import adapter_for
    from fleetshard.suite import shard_invocation

    command = "python3 -m pytest {tests} --junitxml={junit}"
    suite = Suite(config=SuiteConfig(command=command, runner="pytest"), command=command, mode="files",
                  source="x", adapter=adapter_for("pytest"))
    shard = Shard(id="s001", index=1, total=1, files=("t/a.py",), tests=("t/a.py::test_x[a b]",))
    inv = shard_invocation(suite, shard=shard, machine="m", run_id="r1", attempt=1, junit="j.xml")
    assert shlex.split(inv.command) == ["python3", "-m", "pytest", "t/a.py::test_x[a b]", "--junitxml=j.xml"]
    assert not inv.files
    many = tuple(f"t/a.py::test_{i:05d}_with_a_longish_name" for i in range(1000))
    inv = shard_invocation(suite, shard=Shard(id="s001", index=1, total=1, files=("t/a.py",), tests=many),
                           machine="m", run_id="r1", attempt=2, junit="j.xml")
    assert shlex.split(inv.command)[3] == "@.fleetshard/r1/tests-s001-2.txt"
    assert inv.files[".fleetshard/r1/tests-s001-2.txt"].splitlines() == list(many)
    rerun = shard_invocation(suite, shard=shard, machine="m", run_id="r1", attempt=3, junit="j.xml",
                             only=["t/a.py::test_y"])
    assert shlex.split(rerun.command)[3] == "t/a.py::test_y"


def test_native_rerun_drops_the_shard_words() -> None:
    from fleetshard.runners import adapter_for
    from fleetshard.suite import shard_invocation

    command = "PLAYWRIGHT_JUNIT_OUTPUT_FILE={junit} npx playwright test --shard={shard}/{total} --reporter=junit"
    suite = Suite(config=SuiteConfig(command=command, runner="playwright"), command=command, mode="native",
                  source="x", adapter=adapter_for("playwright"))
    inv = shard_invocation(suite, shard=Shard(id="s002", index=2, total=3), machine="m", run_id="r", attempt=2,
                           junit="j.xml", only=["[chromium] › a.spec.ts:3:5 › t"])
    assert inv.command == ("PLAYWRIGHT_JUNIT_OUTPUT_FILE=j.xml npx playwright test --reporter=junit "
                           "--test-list .fleetshard/r/tests-s002-2.txt 'a\\.spec\\.ts'")
    assert inv.files == {".fleetshard/r/tests-s002-2.txt": "[chromium] › a.spec.ts:3:5 › t\n"}
