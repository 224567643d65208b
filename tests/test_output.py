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


def test_a_log_opened_in_the_background_keeps_everything_in_order(tmp_path: Path) -> None:
    import asyncio

    async def go() -> None:
        out = ShardOutput(tmp_path / "c.log", warn=lambda _: None, background=True)
        out.note("# h1: cmd")
        out.write("one\ntw")
        await asyncio.sleep(0.05)
        out.write("o\n")
        out.note("# passed")
        await out.aclose()

    asyncio.run(go())
    assert (tmp_path / "c.log").read_text() == "# h1: cmd\none\ntwo\n# passed\n"


def test_a_log_that_cannot_be_created_in_the_background_is_one_warning() -> None:
    import asyncio

    warnings: list[str] = []

    async def go() -> ShardOutput:
        out = ShardOutput(Path("/nonexistent/dir/x.log"), warn=warnings.append, background=True)
        out.write("text\n")
        await out.aclose()
        return out

    out = asyncio.run(go())
    assert len(warnings) == 1 and "not fully written" in warnings[0] and list(out.tail.lines) == ["text"]
