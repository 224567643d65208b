"""The command line: parse, call one function, map FleetshardError to a message and an exit code.

Heavy modules (asyncssh, rich) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from . import __version__
from .errors import FleetshardError

if TYPE_CHECKING:
    from .inventory import Inventory

app = typer.Typer(
    name="fleetshard",
    help="Split a slow test suite across the machines you can SSH into.\n\n"
         "Exit codes: 0 all passed, 1 tests failed, 2 usage or configuration error, "
         "3 infrastructure failure, 130 interrupted.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Strategy(StrEnum):
    static = "static"
    dynamic = "dynamic"


InventoryOpt = Annotated[Path | None, typer.Option(
    "-i", "--inventory", help="Inventory file [default: ./machines.yaml, or $FLEETSHARD_INVENTORY].",
    show_default=False)]
def _completion_inventory(ctx: typer.Context) -> Inventory | None:
    """The inventory named on the command line being completed (or the default), quietly."""
    try:
        return _history_inventory(ctx.params.get("inventory"))
    except Exception:                           # completion never fails loudly
        return None


def complete_machines(ctx: typer.Context, incomplete: str) -> list[str]:
    """Machine names and tags of the inventory, after the commas already typed."""
    inv = _completion_inventory(ctx)
    if inv is None:
        return []
    done, comma, last = incomplete.rpartition(",")
    prefix = done + comma
    words = [m.name for m in inv.machines] + sorted({t for m in inv.machines for t in m.tags})
    return [prefix + w for w in dict.fromkeys(words) if w.startswith(last)]


def complete_runs(ctx: typer.Context, incomplete: str) -> list[str]:
    """Recorded run ids, newest first."""
    from .history import History
    from .report import history_path

    inv = _completion_inventory(ctx)
    if inv is None:
        return []
    path = history_path(inv)
    if not path.is_file():
        return []
    try:
        with History(path) as history:
            return [r.id for r in history.runs(100) if r.id.startswith(incomplete)]
    except Exception:
        return []


MachinesOpt = Annotated[str | None, typer.Option(
    "-m", "--machines", help="Only these machines: comma-separated names or tags.",
    autocompletion=complete_machines)]
AcceptOpt = Annotated[bool, typer.Option(
    "--accept-new-host-keys", help="Record host keys of machines not yet in known_hosts "
    "(a changed key is always refused).")]


def _fail(error: FleetshardError) -> NoReturn:
    typer.echo(f"fleetshard: error: {error}", err=True)
    raise typer.Exit(error.exit_code)


def _finish(call: Callable[[], int]) -> NoReturn:
    """Run a command and exit with its code; the one place errors become messages and exit codes."""
    from .errors import NothingToResume

    try:
        code = call()
    except NothingToResume as exc:              # not an error: said on stdout, exit 0
        typer.echo(f"fleetshard: {exc}")
        raise typer.Exit(0) from None
    except FleetshardError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        _internal(exc)
    raise typer.Exit(code)


def _load(inventory: Path | None, selector: str | None = None, *, warn: bool = True) -> Inventory:
    """Load the inventory; say once per machine (of those selected) what its ssh_config asks that its
    transport does not do."""
    from .inventory import load_inventory, select_machines

    inv = load_inventory(inventory)
    if warn:
        for machine in select_machines(inv, selector):
            for text in machine.warnings:
                typer.echo(f"fleetshard: warning: {machine.name}: {text}", err=True)
    return inv


def _history_inventory(inventory: Path | None) -> Inventory:
    """The inventory whose history to read. Without -i, $FLEETSHARD_INVENTORY or ./machines.yaml, but with
    a ./.fleetshard/history.db (a run made with -i other.yaml), that history is read all the same."""
    import os

    from .inventory import (
        DEFAULT_INVENTORY,
        INVENTORY_ENV,
        HealthThresholds,
        Inventory,
        RetryPolicyConfig,
        load_inventory,
    )

    if (inventory is None and not os.environ.get(INVENTORY_ENV) and not Path(DEFAULT_INVENTORY).exists()
            and (Path(".fleetshard") / "history.db").is_file()):
        return Inventory(path=Path(DEFAULT_INVENTORY), machines=(), health=HealthThresholds(),
                         retry=RetryPolicyConfig(), suite=None)
    return load_inventory(inventory)


def _internal(exc: Exception) -> NoReturn:
    """A bug, not the user's input: one line, exit 3 (CI must not read it as "tests failed")."""
    import os
    import traceback

    if os.environ.get("FLEETSHARD_DEBUG"):
        traceback.print_exc()
    typer.echo(f"fleetshard: internal error: {type(exc).__name__}: {exc} "
               f"(set FLEETSHARD_DEBUG=1 for the traceback)", err=True)
    raise typer.Exit(3)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetshard {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("-V", "--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Split a slow test suite across the machines you can SSH into."""


@app.command()
def health(
    inventory: InventoryOpt = None,
    machines: MachinesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Probe every machine at once: cores, load, memory, disk, latency. Exit 3 if any is unhealthy."""
    from .health import health_command
    from .inventory import select_machines

    def call() -> int:
        inv = _load(inventory, machines)
        return health_command(inv, select_machines(inv, machines), as_json=as_json,
                              accept_new_host_keys=accept_new_host_keys)

    _finish(call)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    inventory: InventoryOpt = None,
    machines: MachinesOpt = None,
    max_retries: Annotated[int | None, typer.Option(
        "--max-retries", min=0, help="Retries of a shard after infrastructure failures [default: 2].")] = None,
    strategy: Annotated[Strategy | None, typer.Option(
        "--strategy", help="static: shards split by slots up front; dynamic: a queue [default: dynamic].")]
        = None,
    shards: Annotated[int | None, typer.Option("--shards", min=1, help="Number of shards [default: auto].")]
        = None,
    skip_health_checks: Annotated[bool, typer.Option("--skip-health-checks",
                                                     help="Do not probe machines first.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first test failure.")] = False,
    retry_failed_tests: Annotated[int, typer.Option(
        "--retry-failed-tests", min=0, help="Rerun a shard whose tests failed up to N times (flaky).")] = 0,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1,
                                                  help="Per-shard timeout in seconds.")] = None,
    speculate: Annotated[bool, typer.Option(
        "--speculate", help="Run backup copies of stragglers on idle faster machines.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write the merged JUnit XML here.")] = None,
    json_report: Annotated[Path | None, typer.Option("--json-report", help="Write a JSON report here.")]
        = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="Plain progress lines, even in a terminal.")]
        = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print every output line, tagged.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only failures and the verdict.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="More detail.")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="Run only what did not pass in RUN.",
                                               autocompletion=complete_runs)]
        = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    commit: Annotated[str | None, typer.Option("--commit", help="FLEETSHARD_COMMIT [default: git HEAD].")]
        = None,
    notify: Annotated[str | None, typer.Option("--notify", help="POST a JSON summary to this URL.")] = None,
    accept_new_host_keys: AcceptOpt = False,
    serve: Annotated[str | None, typer.Option(
        "--serve", metavar="[HOST:]PORT",
        help="Serve the run's live page in a browser here (HOST defaults to 127.0.0.1).")] = None,
    serve_grace: Annotated[float, typer.Option(
        "--serve-grace", min=0, metavar="SECONDS",
        help="After the run, serve its report until open pages have it, at most this long.")] = 30.0,
    keep_remote_dir: Annotated[bool, typer.Option(
        "--keep-remote-dir", help="Keep each machine's .fleetshard/RUN_ID directory (debugging).")] = False,
) -> None:
    """Run the suite in shards across the machines. Anything after `--` replaces suite.command."""
    from .runner import RunOptions, run_command

    def call() -> int:
        from .outfile import check_output_path

        for option, path in (("--junit", junit), ("--json-report", json_report), ("--html", html)):
            if path is not None:
                check_output_path(path, option)
        if notify is not None:
            from .ci import check_webhook_url

            check_webhook_url(notify, "--notify")
        inv = _load(inventory, machines)
        opts = RunOptions(
            selector=machines, max_retries=max_retries, strategy=strategy.value if strategy else None,
            shards=shards, skip_health_checks=skip_health_checks, fail_fast=fail_fast,
            retry_failed_tests=retry_failed_tests, timeout=timeout, speculate=speculate, junit=junit,
            json_report=json_report, html=html, live=False if no_live else None, stream=stream,
            quiet=quiet, verbose=verbose, resume=resume, dry_run=dry_run, commit=commit, notify=notify,
            accept_new_host_keys=accept_new_host_keys, command=_extra_command(ctx.args),
            keep_remote_dir=keep_remote_dir,
            argv=tuple(sys.argv[1:]), serve=serve, serve_grace=serve_grace)
        if serve is not None:
            from .web import require_aiohttp
            from .web.server import parse_address

            parse_address(serve)                # a bad address or a missing extra: exit 2 before anything runs
            require_aiohttp()
        return run_command(inv, opts)

    _finish(call)


def _extra_command(args: list[str]) -> str | None:
    if not args:
        return None
    from .errors import UsageError
    from .suite import command_from_argv

    if "--" not in sys.argv:
        raise UsageError(f"unexpected argument {args[0]!r} (put a test command after `--`)")
    return command_from_argv(args)


@app.command()
def plan(
    inventory: InventoryOpt = None,
    machines: MachinesOpt = None,
    strategy: Annotated[Strategy | None, typer.Option("--strategy")] = None,
    shards: Annotated[int | None, typer.Option("--shards", min=1)] = None,
    skip_health_checks: Annotated[bool, typer.Option(
        "--skip-health-checks", help="Do not judge machines by the health thresholds (machines without "
        "slots are still contacted for their core count).")]
        = False,
    accept_new_host_keys: AcceptOpt = False,
    what_if: Annotated[list[str] | None, typer.Option(
        "--what-if", metavar="CHANGES",
        help="Simulate the last recorded run on changed machines instead: without:NAME, like:NAME=NEW, "
             "slots:NAME=N, speed:NAME=X (comma-separated or repeated). Probes nothing.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as JSON on stdout (messages on stderr).")]
        = False,
) -> None:
    """Show which machine gets which shard, the expected makespan and its lower bound. Runs nothing."""
    from .runner import RunOptions, run_command

    def call() -> int:
        inv = _load(inventory, machines)
        if what_if:
            from .whatif import what_if_command

            return what_if_command(inv, what_if)
        console = None
        if as_json:
            from .console import make_console

            console = make_console(sys.stderr)      # notices and probe lines; stdout holds the JSON alone
        return run_command(inv, RunOptions(selector=machines, strategy=strategy.value if strategy else None,
                                           shards=shards, skip_health_checks=skip_health_checks,
                                           dry_run=True, accept_new_host_keys=accept_new_host_keys,
                                           as_json=as_json, console=console, live=False if as_json else None))

    _finish(call)


@app.command()
def history(
    inventory: InventoryOpt = None,
    machines: MachinesOpt = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, help="How many runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    flaky: Annotated[bool, typer.Option("--flaky", help="The flakiest tests of those runs instead.")] = False,
) -> None:
    """Recent runs: id, when, duration, passed / failed / flaky, machines, exit code."""
    from .report import history_command

    def call() -> int:
        return history_command(_history_inventory(inventory), limit=limit, as_json=as_json, selector=machines,
                               flaky=flaky)

    _finish(call)


@app.command()
def report(
    run_id: Annotated[str | None, typer.Argument(metavar="[RUN]", help="Run id [default: the latest].",
                                                 autocompletion=complete_runs)]
        = None,
    inventory: InventoryOpt = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The run's record as JSON, in the JSON report's format.")]
        = False,
) -> None:
    """A run's summary in the terminal, or as an HTML page with a per-machine timeline."""
    from .report import report_command

    def call() -> int:
        from .outfile import check_output_path

        if html is not None:
            check_output_path(html, "--html")
        return report_command(_history_inventory(inventory), run_id, html=html, as_json=as_json)

    _finish(call)


@app.command()
def serve(
    address: Annotated[str, typer.Argument(metavar="[HOST:]PORT",
                                           help="Where to serve [HOST defaults to 127.0.0.1].")],
    inventory: InventoryOpt = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, help="How many recent runs the pages cover.")]
        = 50,
) -> None:
    """Serve the history dashboard: runs, reports, flaky tests, machine speeds, slowest tests, what if."""
    from .web.historyapp import serve_command

    def call() -> int:
        return serve_command(_history_inventory(inventory), address, limit=limit)

    _finish(call)


@app.command()
def init(
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")] = Path("machines.yaml"),
    from_ssh_config: Annotated[bool, typer.Option(
        "--from-ssh-config", help="Machines from the Host aliases of ~/.ssh/config (patterns skipped).")] = False,
    from_ansible: Annotated[str | None, typer.Option(
        "--from-ansible", metavar="INVENTORY",
        help="Machines from an Ansible inventory (needs ansible-inventory); groups become tags.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="Do not probe machines to fill in slots.")]
        = False,
    gitignore: Annotated[bool, typer.Option("--gitignore", help="Add .fleetshard/ to .gitignore.")] = False,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Write a commented machines.yaml for the project in this directory. Never overwrites without --force."""
    from .init import init_command

    def call() -> int:
        return init_command(output=output, from_ssh_config=from_ssh_config, from_ansible=from_ansible,
                            force=force, probe=not no_probe, gitignore=gitignore,
                            accept_new_host_keys=accept_new_host_keys, echo=typer.echo)

    _finish(call)


def main() -> None:
    """Run the CLI; a usage error (unknown option, bad value) is one line, ``fleetshard: error: …``, exit 2."""
    try:                                    # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as click_exc
    except ImportError:                     # pragma: no cover - older typer on click
        from click import exceptions as click_exc  # type: ignore[no-redef]

    from .quickparams import install

    install()                               # plain option values need no pydantic (typer >= 0.2x)
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="fleetshard", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(2)
    except click_exc.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "fleetshard"
        typer.echo(f"fleetshard: error: {exc.format_message()} (see `{where} -h`)", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except click_exc.ClickException as exc:
        typer.echo(f"fleetshard: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    _exit_now(code if isinstance(code, int) else 0)


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter tearing down every module it imported (a tenth of a second and more on
    a busy machine, after the run is over): everything a command writes is closed by the time it
    returns; the exit hooks (OpenSSH control masters) run and stdio is flushed here."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
