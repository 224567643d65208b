"""Report paths: atomic regular files with the umask's mode, symlinks followed, special files written
through (never replaced), directories and missing parents refused with exit 2."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory

from fleetshard.outfile import OutputPathError, check_output_path, write_output


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_mode(tmp_path: Path, umask_027: None) -> None:
    out = tmp_path / "r.json"
    write_output(out, b"{}")
    assert out.read_bytes() == b"{}" and mode(out) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]       # no temporary file left


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("old")
    out.chmod(0o604)
    write_output(out, b"new")
    assert out.read_text() == "new" and mode(out) == 0o604


def test_a_symlink_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.xml"
    link = tmp_path / "link.xml"
    link.symlink_to(target)                   # dangling: the target is created
    write_output(link, b"<a/>")
    assert link.is_symlink() and target.read_bytes() == b"<a/>"
    write_output(link, b"<b/>")
    assert link.is_symlink() and target.read_bytes() == b"<b/>"


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, b"x" * 200_000)
    reader.join(10)
    assert got == [b"x" * 200_000] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_dev_full_is_a_clear_error_and_stays_a_device() -> None:
    with pytest.raises(OutputPathError, match="No space left on device"):
        write_output(Path("/dev/full"), b"data")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_directories_and_missing_parents_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_path(tmp_path, "--junit")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "r.json", "--json-report")
    check_output_path(Path("/dev/stdout"))
    check_output_path(tmp_path / "fine.json")


def test_run_report_paths_end_to_end(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    """Against real sshd: refused paths exit 2 before anything runs; /dev/stdout and /dev/full are
    written through; the automatic report.json respects the umask."""
    inv = fleet_inventory(machines=["h1"], suite={"command": "true", "shards": 1})
    for option, path, why in (("--junit", tmp_path, "is a directory"),
                              ("--json-report", tmp_path / "missing" / "r.json", "does not exist")):
        res = fleetshard("run", "-i", inv, option, path)
        assert res.code == 2 and why in res.err and "Traceback" not in res.err, res.err
    assert not (tmp_path / ".fleetshard").exists()             # refused before the run started
    res = fleetshard("run", "-i", inv, "--json-report", "/dev/stdout", "--no-live", "-q")
    assert res.code == 0, res.err
    start = res.out.index("{\n")
    data, _ = json.JSONDecoder().raw_decode(res.out[start:])
    assert data["exit_code"] == 0
    res = fleetshard("run", "-i", inv, "--json-report", "/dev/full", "--no-live")
    assert res.code == 0 and "No space left on device" in res.out + res.err
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    auto = next((tmp_path / ".fleetshard" / "runs").glob("*/report.json"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode(auto) == 0o666 & ~umask
