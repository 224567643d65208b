"""`fleetshard init`: machines from ~/.ssh/config or Ansible, the suite guessed, slots probed on the fleet,
the result loaded by fleetshard's own inventory loader."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import SshFleet

from fleetshard.init import Candidate, ansible_hosts, guess_suite, render
from fleetshard.inventory import load_inventory


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    return home


def test_from_ssh_config_probes_slots_and_loads(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    lines = []
    for name in ("h1", "h2"):
        m = fleet[name]
        lines += [f"Host {name}", f"  HostName {m.address}", f"  Port {m.port}"]
    lines.append("  LocalForward 39999 localhost:22")     # h2 needs the system ssh client
    address, port = fleet.unused_address()
    lines += ["Host gone", f"  HostName {address}", f"  Port {port}", "Host *.lan !secret.lan", "  User x",
              "Host *", f"  User {fleet.user}", f"  IdentityFile {fleet.client_key}",
              f"  UserKnownHostsFile {fleet.known_hosts}", "  ConnectTimeout 2"]
    (home / ".ssh" / "config").write_text("\n".join(lines) + "\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-q'\n")
    res = fleetshard("init", "--from-ssh-config", env={"HOME": str(home)}, cwd=project)
    assert res.code == 0, res.out + res.err
    text = (project / "machines.yaml").read_text()
    assert "runner: pytest" in text and "found [tool.pytest.ini_options] in pyproject.toml" in text
    assert "# not reachable during init" in text
    assert "add the line `.fleetshard/`" in res.out
    os.environ["HOME"], saved = str(home), os.environ["HOME"]
    try:
        inv = load_inventory(project / "machines.yaml")
    finally:
        os.environ["HOME"] = saved
    assert [m.name for m in inv.machines] == ["h1", "h2", "gone"]
    h1, h2, gone = inv.machines
    assert h1.slots is not None and h1.slots >= 1 and h2.slots == h1.slots
    assert (h1.transport, h2.transport) == ("ssh", "openssh")
    assert "# transport: openssh, since ~/.ssh/config uses LocalForward for it" in text
    assert gone.slots is None
    assert inv.suite is not None and inv.suite.runner == "pytest"

    again = fleetshard("init", "--from-ssh-config", "--no-probe", env={"HOME": str(home)}, cwd=project)
    assert again.code == 2 and "exists; not overwritten (use --force" in again.err
    assert (project / "machines.yaml").read_text() == text
    forced = fleetshard("init", "--from-ssh-config", "--no-probe", "--force", "--gitignore",
                        env={"HOME": str(home)}, cwd=project)
    assert forced.code == 0, forced.err
    assert "slots" not in (project / "machines.yaml").read_text()
    assert (project / ".gitignore").read_text() == ".fleetshard/\n"


def test_from_ansible_groups_become_tags(tmp_path: Path) -> None:
    if shutil.which("ansible-inventory") is None:
        pytest.skip("ansible-inventory not installed (pip install ansible-core)")
    hosts = tmp_path / "hosts.ini"
    hosts.write_text(textwrap.dedent("""\
        [web]
        web1 ansible_host=10.0.0.5 ansible_user=deploy
        web2 ansible_port=2222

        [db]
        db1.example.com ansible_ssh_private_key_file=~/.ssh/db_key

        [prod:children]
        web
        db
        """))
    res = fleetshard("init", "--from-ansible", hosts, "--no-probe", cwd=tmp_path)
    assert res.code == 0, res.out + res.err
    inv = load_inventory(tmp_path / "machines.yaml", ssh_config=_empty(tmp_path))
    by = {m.name: m for m in inv.machines}
    assert (by["web1"].host, by["web1"].user, set(by["web1"].tags)) == ("10.0.0.5", "deploy", {"web", "prod"})
    assert by["web2"].port == 2222
    assert set(by["db1.example.com"].tags) == {"db", "prod"}
    assert by["db1.example.com"].identity_files == (os.path.expanduser("~/.ssh/db_key"),)


def test_from_ansible_without_ansible_is_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    res = fleetshard("init", "--from-ansible", "hosts.ini", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert res.code == 2
    assert res.err.strip() == ("fleetshard: error: --from-ansible needs ansible-inventory, which is not installed "
                               "(pip install ansible-core); or list the machines with --from-ssh-config or by hand")
    assert not (tmp_path / "machines.yaml").exists()


def test_ansible_listing_parsed() -> None:
    listing = {
        "_meta": {"hostvars": {"a": {"ansible_host": "1.2.3.4", "ansible_port": 22022},
                               "b": {"ansible_connection": "local"}, "c d": {}}},
        "all": {"children": ["ungrouped", "linux"]},
        "linux": {"children": ["arm"], "hosts": ["a"]},
        "arm": {"hosts": ["a", "c d"]},
        "ungrouped": {"hosts": ["b"]},
    }
    got = {c.name: (c.keys, c.tags) for c in ansible_hosts(listing)}
    assert got == {"a": ({"host": "1.2.3.4", "port": 22022}, ["linux", "arm"]),
                   "b": ({"transport": "local"}, []),
                   "c-d": ({"host": "c d"}, ["linux", "arm"])}


@pytest.mark.parametrize(("files", "runner"), [
    ({"playwright.config.ts": "export default {}"}, "playwright"),
    ({"jest.config.js": "module.exports = {}"}, "jest"),
    ({"package.json": '{"name": "x", "jest": {}}'}, "jest"),
    ({"pytest.ini": "[pytest]\n"}, "pytest"),
    ({"setup.cfg": "[tool:pytest]\n"}, "pytest"),
    ({"tests/test_x.py": "def test(): pass\n"}, "pytest"),
    ({"README": "nothing"}, "command"),
])
def test_suite_guess_and_the_file_loads(tmp_path: Path, files: dict[str, str], runner: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    guess = guess_suite(tmp_path)
    assert guess.runner == runner
    out = tmp_path / "machines.yaml"
    out.write_text(render([Candidate("box", {"host": "box.lan", "slots": 4}, ["arm"])], guess, source="test"))
    inv = load_inventory(out, ssh_config=_empty(tmp_path))
    assert inv.machines[0].slots == 4 and inv.machines[0].tags == ("arm",)
    assert inv.suite is not None and (inv.suite.runner or "command") == runner


def test_no_machine_source_writes_a_local_machine(tmp_path: Path) -> None:
    res = fleetshard("init", cwd=tmp_path)
    assert res.code == 0, res.err
    inv = load_inventory(tmp_path / "machines.yaml", ssh_config=_empty(tmp_path))
    assert [m.transport for m in inv.machines] == ["local"]


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty_ssh_config"
    path.write_text("")
    return path
