"""An attempt's output sink: the log keeps every byte, the tail and the terminal get cut lines, and a
failing log or view is one warning, never a stop."""

from __future__ import annotations

from pathlib import Path

from fleetshard.output import ShardOutput, Tail


def test_tail_keeps_the_last_lines_cut() -> None:
    tail = Tail(n=3, limit=5)
    tail.write("one\ntwo\nthr")
    tail.write("ee\n" + "y" * 20 + "\nfour\nfive\nsix")
    tail.flush()
    assert list(tail.lines) == ["four", "five", "six"]
    tail = Tail(n=3, limit=5)
    tail.write("a\r\n" + "b" * 7)
    tail.write("b" * 3 + "\n")
    assert list(tail.lines) == ["a", "bbbbb … [5 more characters]"]


def test_the_log_keeps_long_lines_whole(tmp_path: Path) -> None:
    shown: list[str] = []
    out = ShardOutput(tmp_path / "a.log", warn=shown.append, stream=shown.append)
    out.note("# h1: cmd")
    for _ in range(100):
        out.write("z" * 10_000)
    out.write("\nend")
    out.flush()
    out.close()
    assert (tmp_path / "a.log").read_text() == "# h1: cmd\n" + "z" * 1_000_000 + "\nend"
    assert shown[0].endswith(f"… [{1_000_000 - 4096} more characters]") and shown[1] == "end"
    assert list(out.tail.lines) == [shown[0], "end"]


def test_a_full_disk_is_one_warning_and_the_tail_is_kept() -> None:
    warnings: list[str] = []
    out = ShardOutput(Path("/dev/full"), warn=warnings.append)
    for i in range(1000):
        out.write(f"line {i}\n" * 100)
    out.note("# passed")
    out.close()
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert out.tail.lines[-1] == "line 999"


def test_a_failing_view_stops_streaming_only(tmp_path: Path) -> None:
    warnings: list[str] = []

    def broken(line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    out = ShardOutput(tmp_path / "b.log", warn=warnings.append, stream=broken)
    out.write("a\nb\nc\n")
    out.close()
    assert len(warnings) == 1 and "Broken pipe" in warnings[0]
    assert (tmp_path / "b.log").read_text() == "a\nb\nc\n" and list(out.tail.lines) == ["a", "b", "c"]
