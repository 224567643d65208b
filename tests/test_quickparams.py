"""Option values converted without pydantic give exactly what typer's own conversion gives, errors included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from fleetshard.cli import app
from fleetshard.quickparams import QuickParam, install

try:
    from typer._coercion import build_runtime_param
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - typer on click: nothing to compare
    pytest.skip("this typer has no per-parameter converter", allow_module_level=True)

VALUES: list[Any] = [None, "", "abc", "4", "04", "-1", "0", "+3", " 4", "1_000", "1.5", ".5", "1e3", "nan", "inf",
                     "static", "STATIC", "dynamic", "x y", "a\x00b", "~/x", "/", "/nonexistent/file", 0, 3, 30.0,
                     True, Path("machines.yaml"), Path("/")]


def _outcome(converter: Any, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    try:
        value = converter.coerce(value, param=param, ctx=ctx)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return type(value).__name__, value


def _params() -> list[tuple[str, Any]]:
    command = typer.main.get_command(app)
    found = []
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        ctx = sub.make_context(name, ["--help"], resilient_parsing=True)
        for param in sub.get_params(ctx):
            if isinstance(param, _TyperParameter):
                found.append((f"{name} {param.name}", param))
    return found


@pytest.mark.parametrize(("label", "param"), _params(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_converts_as_typer_does(label: str, param: Any) -> None:
    ctx = typer.main.get_command(app).make_context("fleetshard", ["run"], resilient_parsing=True)
    quick = QuickParam(param.type_descriptor)
    real = build_runtime_param(param.type_descriptor)
    for value in VALUES:
        expected = _outcome(real, value, param, ctx)
        got = _outcome(quick, value, param, ctx)
        assert got == expected, (label, value)


def test_a_run_parses_without_pydantic(tmp_path: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text("machines:\n  here: {transport: local, slots: 1}\nsuite: {command: 'true'}\n")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('pydantic' in sys.modules))\n"
            "from fleetshard.cli import main\n"
            f"sys.argv = ['fleetshard', 'run', '-i', {str(inv)!r}, '--dry-run', '--shards', '2', '--strategy',"
            " 'static', '--timeout', '5', '--json-report', 'r.json', '-m', 'here', '--skip-health-checks']\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_install_is_idempotent() -> None:
    assert install() is install()
