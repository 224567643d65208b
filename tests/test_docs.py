"""The user docs and examples stay true: inventories in them load, CLI options they name exist, links resolve,
and the GitHub Actions example has the structure docs/ci.md describes."""

from __future__ import annotations

import json
import re
import textwrap
from functools import cache
from pathlib import Path

import pytest
import yaml
from clihelp import fleetshard

from fleetshard.inventory import load_inventory
from fleetshard.suite import PLACEHOLDERS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
WORKFLOW = ROOT / "examples" / "github-actions" / "fleetshard.yml"
COMMANDS = ("init", "health", "plan", "run", "history", "report", "serve")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def code_blocks(path: Path, lang: str | None = None) -> list[tuple[int, str, str]]:
    """(line, language, dedented body) of every fenced block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        if lang is None or m.group("lang") == lang:
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((line, m.group("lang"), textwrap.dedent(m.group("body"))))
    return blocks


def inventory_blocks() -> list[tuple[str, str]]:
    found = []
    for page in [*doc_pages(), README]:
        for line, _, body in code_blocks(page, "yaml"):
            if re.search(r"^machines:", body, re.MULTILINE):
                found.append((f"{page.relative_to(ROOT)}:{line}", body))
    return found


@pytest.fixture
def empty_ssh_config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text("", encoding="utf-8")
    return path


# --- the GitHub Actions workflow ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[object, object]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _steps(workflow: dict[object, object]) -> list[dict[str, object]]:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict) and jobs
    steps: list[dict[str, object]] = []
    for job in jobs.values():
        assert "runs-on" in job
        steps.extend(job["steps"])
    return steps


def _runs(steps: list[dict[str, object]], needle: str) -> list[dict[str, object]]:
    return [s for s in steps if needle in " ".join(str(s.get("run", "")).split())]


def test_workflow_is_scheduled_and_dispatchable(workflow: dict[object, object]) -> None:
    triggers = workflow.get("on", workflow.get(True))      # YAML 1.1 reads a bare `on` as true
    assert isinstance(triggers, dict)
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert crons and all(len(c.split()) == 5 for c in crons)
    assert "workflow_dispatch" in triggers


def test_workflow_steps(workflow: dict[object, object]) -> None:
    steps = _steps(workflow)
    uses = [str(s.get("uses", "")) for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    assert any(u.startswith("actions/setup-python@") for u in uses)
    assert _runs(steps, "pip install .")

    keys = [s for s in steps if "secrets." in json.dumps(s.get("env", {}))]
    assert keys, "the SSH key and known_hosts come from secrets"
    script = " ".join(str(s.get("run", "")) for s in keys)
    assert "chmod 600" in script and "known_hosts" in script

    health = _runs(steps, "fleetshard health")
    run = _runs(steps, "fleetshard run --max-retries=3")
    assert health and run
    assert steps.index(health[0]) < steps.index(run[0]) < len(steps)
    command = " ".join(str(run[0]["run"]).split())
    for option in ("--junit results/junit.xml", "--json-report results/report.json", "--html results/report.html"):
        assert option in command
    assert not run[0].get("continue-on-error"), "fleetshard's exit code must fail the job"

    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload and steps.index(upload[0]) > steps.index(run[0])
    assert str(upload[0].get("if", "")).replace(" ", "") in ("always()", "${{always()}}")
    assert "results/" in str(upload[0]["with"]["path"])


def test_workflow_options_exist(workflow: dict[object, object]) -> None:
    for step in _steps(workflow):
        for command, option in _mentions(" ".join(str(step.get("run", "")).split())):
            assert option in help_options(command), f"fleetshard {command or ''} {option}"


# --- inventories in the docs and examples ------------------------------------------------------------


def test_docs_have_inventory_examples() -> None:
    assert len(inventory_blocks()) >= 10


@pytest.mark.parametrize("body", [pytest.param(body, id=where) for where, body in inventory_blocks()])
def test_inventory_example_loads(body: str, tmp_path: Path, empty_ssh_config: Path) -> None:
    path = tmp_path / "machines.yaml"
    path.write_text(body, encoding="utf-8")
    inv = load_inventory(path, ssh_config=empty_ssh_config)
    assert inv.machines


@pytest.mark.parametrize("name", ["examples/machines.yaml", "machines.yaml"])
def test_example_inventories_load(name: str, empty_ssh_config: Path) -> None:
    inv = load_inventory(ROOT / name, ssh_config=empty_ssh_config)
    assert inv.machines and inv.suite is not None


def test_multi_host_example(empty_ssh_config: Path) -> None:
    inv = load_inventory(ROOT / "examples" / "machines.yaml", ssh_config=empty_ssh_config)
    transports = {m.transport for m in inv.machines}
    assert transports == {"ssh", "local"} and len(inv.machines) >= 4
    assert inv.suite is not None and inv.suite.runner == "playwright" and "{tests}" in (inv.suite.command or "")


def test_ssh_config_alias_in_inventory_docs(tmp_path: Path) -> None:
    """docs/inventory.md: an alias resolved through ~/.ssh/config, the inventory winning over it."""
    config = tmp_path / "config"
    config.write_text("Host pi\n    HostName pi.lan\n    User pi\n    ProxyJump ci@gateway.example.net:2222\n"
                      "Host *\n    User nobody\n", encoding="utf-8")
    inventory = tmp_path / "machines.yaml"
    inventory.write_text("defaults: {user: ci}\nmachines:\n  pi: {speed: 0.3}\n  box: {host: box.lan}\n"
                         "  mac: {host: pi, user: admin}\n", encoding="utf-8")
    pi, box, mac = load_inventory(inventory, ssh_config=config).machines
    assert (pi.host, pi.alias, pi.user) == ("pi.lan", "pi", "pi")
    assert pi.jump is not None and (pi.jump.host, pi.jump.port, pi.jump.user) == ("gateway.example.net", 2222, "ci")
    assert box.user == "nobody"                             # Host * wins over defaults, as documented
    assert mac.user == "admin"


def test_error_message_format(tmp_path: Path, empty_ssh_config: Path) -> None:
    from fleetshard.errors import ConfigError

    path = tmp_path / "machines.yaml"
    path.write_text("machines:\n  box: {host: box.lan}\n  pi:\n    host: pi.lan\n    slots: four\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_inventory(path, ssh_config=empty_ssh_config)
    assert str(err.value) == f'{path}:5: machines.pi.slots: expected a positive integer, got "four"'
    assert 'machines.pi.slots: expected a positive integer, got "four"' in (DOCS / "inventory.md").read_text()


# --- the CLI reference -------------------------------------------------------------------------------


@cache
def help_options(command: str | None) -> frozenset[str]:
    args = [command, "--help"] if command else ["--help"]
    res = fleetshard(*args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.code == 0, res.err
    options = res.out.split("Options:", 1)[1].split("Commands:", 1)[0]
    return frozenset(_OPTION.findall(options))


def _mentions(text: str) -> list[tuple[str | None, str]]:
    """(command or None for the top level, option) for every `fleetshard ...` command line in text."""
    found: list[tuple[str | None, str]] = []
    for m in re.finditer(r"(?<![\w./-])(?<!-[A-Za-z] )fleetshard((?: +[^\s`|&;)]+)+)", text):
        words = m.group(1).split()
        command = words[0] if words[0] in COMMANDS else None
        if command is None and not words[0].startswith("-"):
            continue                                        # prose: "fleetshard never prompts"
        for word in words[1:] if command else words:
            if word == "--":
                break                                       # the test command follows
            for option in _OPTION.findall(word.strip("[]")):
                if word.strip("[]").startswith(option):
                    found.append((command, option))
    return found


def _section_options(text: str) -> list[tuple[str, str]]:
    """Options in code spans starting with `-` in each `## fleetshard <command>` section (its option table)."""
    found = []
    for m in re.finditer(r"^## fleetshard (\w+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL):
        for span in re.findall(r"`(-[^`]*)`", m.group(2)):
            found.extend((m.group(1), option) for option in _OPTION.findall(span))
    return found


def test_cli_reference_options_exist() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    mentions = _mentions(text) + _section_options(text)
    assert len({c for c, _ in mentions}) == len(COMMANDS) + 1
    missing = [f"fleetshard {c or ''} {o}" for c, o in mentions if o not in help_options(c)]
    assert not missing, f"docs/cli.md names options that do not exist: {missing}"


def test_every_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    documented = {(c, o) for c, o in _mentions(text) + _section_options(text)}
    for command in (None, *COMMANDS):
        for option in help_options(command) - {"-h", "--help"}:
            assert (command, option) in documented or (command is None and f"`{option}`" in text), \
                f"fleetshard {command or ''} {option} is not in docs/cli.md"


def test_option_mentions_in_all_docs_exist() -> None:
    for page in [*doc_pages(), README]:
        for command, option in _mentions(page.read_text(encoding="utf-8")):
            assert option in help_options(command), f"{page.name}: fleetshard {command or ''} {option}"


def test_placeholders_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    table = re.search(r"^## Placeholders\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert table is not None
    listed = re.findall(r"^\| `\{(\w+)\}` \|", table.group(1), re.MULTILINE)
    assert sorted(listed) == sorted(PLACEHOLDERS)


def test_exit_codes_documented() -> None:
    from fleetshard import model

    text = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    for code in (model.EXIT_OK, model.EXIT_TESTS_FAILED, model.EXIT_USAGE, model.EXIT_INFRA, model.EXIT_INTERRUPTED):
        assert f"| **{code}** |" in text


# --- links -------------------------------------------------------------------------------------------


def test_readme_links_every_docs_page() -> None:
    readme = README.read_text(encoding="utf-8")
    targets = set(_LINK.findall(readme))
    for page in doc_pages():
        assert f"docs/{page.name}" in targets, f"README.md does not link docs/{page.name}"


def test_readme_keeps_its_first_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# fleetshard"
    assert "pip install -e . && fleetshard run" in lines[:12]
    assert "pip install -e '.[test]' && python -m pytest" in lines[:20]


def _slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = _FENCE.sub("", text)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def test_json_examples_parse() -> None:
    blocks = [(page, line, body) for page in doc_pages() for line, _, body in code_blocks(page, "json")]
    assert blocks
    for page, line, body in blocks:
        try:
            json.loads(body)
        except ValueError as exc:
            pytest.fail(f"{page.name}:{line}: {exc}")
