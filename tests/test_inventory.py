"""Loading machines.yaml: models, defaults, ~/.ssh/config, and one-line file:line: field errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from fleetshard.errors import ConfigError, UsageError
from fleetshard.inventory import (
    HealthThresholds,
    Inventory,
    JumpHost,
    Machine,
    RetryPolicyConfig,
    SuiteConfig,
    load_inventory,
    select_machines,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path with a HOME of our own (no real ~/.ssh/config) and no FLEETSHARD_INVENTORY."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.delenv("FLEETSHARD_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def write(text: str, name: str = "machines.yaml") -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(text: str, ssh_config: Path | None = None) -> Inventory:
    return load_inventory(write(text), ssh_config=ssh_config)


def error(text: str, ssh_config: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, ssh_config)
    assert "\n" not in str(info.value)
    return info.value


# --- happy paths ------------------------------------------------------------------------------------

DESIGN_EXAMPLE = """\
    defaults:            # applied to every machine unless it overrides
      user: ci
      identity_file: ~/.ssh/id_ed25519
      known_hosts: ~/.ssh/known_hosts
      connect_timeout: 5
      workdir: ~/app
      env: {CI: "1"}
    health:
      min_disk_free_pct: 10
      max_mem_used_pct: 95
      max_load_per_core: 2.0
      timeout: 5
      interval: 30
    machines:
      local:    {transport: local, slots: 4}
      moruk:    {host: moruk.lan, slots: 24}
      ilko2:    {host: 10.0.0.12, port: 2222}   # slots default to probed cores
      pi:       {host: pi.lan, speed: 0.3, tags: [arm]}
    suite:
      command: "npx playwright test --shard={shard}/{total} --reporter=junit"
      shards: auto
      junit: "results/junit.xml"
      timeout: 600
    """


def test_design_example(isolated: Path) -> None:
    inv = load(DESIGN_EXAMPLE)
    assert inv.path == Path("machines.yaml")
    assert inv.base_dir == Path(".")
    assert [m.name for m in inv.machines] == ["local", "moruk", "ilko2", "pi"]
    key = f"{isolated}/.ssh/id_ed25519"
    known = f"{isolated}/.ssh/known_hosts"
    assert inv.machine("local") == Machine(
        name="local", transport="local", host=None, user="ci", identity_files=(key,), known_hosts=known,
        workdir="~/app", env=(("CI", "1"),), slots=4, line=15,
    )
    assert inv.machine("moruk") == Machine(
        name="moruk", host="moruk.lan", user="ci", identity_files=(key,), known_hosts=known,
        workdir="~/app", env=(("CI", "1"),), slots=24, line=16,
    )
    ilko2 = inv.machine("ilko2")
    assert (ilko2.host, ilko2.port, ilko2.slots, ilko2.speed) == ("10.0.0.12", 2222, None, None)
    assert ilko2.line == 17
    pi = inv.machine("pi")
    assert (pi.speed, pi.tags, pi.alias, pi.jump) == (0.3, ("arm",), None, None)
    assert pi.env_dict() == {"CI": "1"}
    assert inv.health == HealthThresholds()
    assert inv.retry == RetryPolicyConfig()
    assert inv.suite == SuiteConfig(
        command="npx playwright test --shard={shard}/{total} --reporter=junit",
        shards=None, junit="results/junit.xml", timeout=600.0, line=19,
    )
    assert inv.history is None and inv.notify is None


def test_minimal_machines_and_builtin_defaults() -> None:
    inv = load("""\
        machines:
          box:
          here: {transport: local}
          empty: {}
        """)
    box = inv.machine("box")
    known = os.path.expanduser("~/.ssh/known_hosts")
    assert box == Machine(name="box", host="box", known_hosts=known, line=2)
    assert box.port == 22 and box.user is None and box.connect_timeout == 5.0
    assert inv.machine("here").host is None
    assert inv.machine("empty").host == "empty"
    assert inv.suite is None


def test_defaults_env_merge_and_machine_overrides() -> None:
    inv = load("""\
        defaults:
          user: ci
          port: 2200
          slots: 8
          env: {CI: 1, LANG: C.UTF-8, DROP: x}
          tags: fleet
        machines:
          a: {}
          b:
            user: root
            port: 22
            slots: null
            env: {LANG: en_US.UTF-8, EXTRA: yes, VERSION: 1.10, DROP: null}
            tags: "x, y ,x"
        """)
    a, b = inv.machines
    assert (a.user, a.port, a.slots, a.tags) == ("ci", 2200, 8, ("fleet",))
    assert a.env == (("CI", "1"), ("DROP", "x"), ("LANG", "C.UTF-8"))
    assert (b.user, b.port, b.slots, b.tags) == ("root", 22, None, ("x", "y"))
    assert b.env_dict() == {"CI": "1", "LANG": "en_US.UTF-8", "EXTRA": "yes", "VERSION": "1.10"}
    assert [k for k, _ in b.env] == sorted(b.env_dict())


def test_local_paths_relative_to_inventory_dir_and_workdir_kept() -> None:
    inv = load_inventory(write("""\
        defaults:
          identity_file: [keys/ci, /abs/key, ~/k]
          known_hosts: kh
          workdir: ~/work
        history: state/history.db
        notify: https://hooks.example.com/x
        machines: {a: {}}
        """, "conf/fleet.yaml"))
    (a,) = inv.machines
    assert a.identity_files == ("conf/keys/ci", "/abs/key", os.path.expanduser("~/k"))
    assert a.known_hosts == "conf/kh"
    assert a.workdir == "~/work"
    assert inv.history == "conf/state/history.db"
    assert inv.notify == "https://hooks.example.com/x"
    assert inv.base_dir == Path("conf")


def test_health_retry_and_suite_values() -> None:
    inv = load("""\
        health: {min_disk_free_pct: 5, max_mem_used_pct: 99.5, max_load_per_core: 3, timeout: 2, interval: 10}
        retry:
          max_retries: 0
          backoff_base: 1
          backoff_factor: 3
          backoff_max: 60
          jitter: 0
          drain_after: 5
          infra_exit_codes: [255, 127, 75]
        machines: {a: }
        suite:
          tests: ["tests/**/test_*.py", "more/*.py"]
          command: pytest {files} --junitxml={junit}
          shards: 12
          junit: out/junit-{shard}.xml
          timeout: null
          kill_grace: 3
          setup: make deps
          teardown: make clean
          sync: .
          artifacts: logs/*.log
          strategy: dynamic
        """)
    assert inv.health == HealthThresholds(5.0, 99.5, 3.0, 2.0, 10.0)
    assert inv.retry == RetryPolicyConfig(0, 1.0, 3.0, 60.0, 0.0, 5, (255, 127, 75))
    assert inv.suite == SuiteConfig(
        command="pytest {files} --junitxml={junit}", tests=("tests/**/test_*.py", "more/*.py"), shards=12,
        junit="out/junit-{shard}.xml", timeout=None, kill_grace=3.0, setup="make deps",
        teardown="make clean", sync=".", artifacts=("logs/*.log",), strategy="dynamic", line=11,
    )


def test_suite_discover_mode() -> None:
    inv = load("""\
        machines: {a: }
        suite: {discover: "pytest --collect-only -q", command: "pytest {files}"}
        """)
    assert inv.suite is not None
    assert inv.suite.discover == "pytest --collect-only -q" and inv.suite.tests == ()
    assert inv.suite.timeout == 1800.0


def test_anchors_aliases_and_merge_keys() -> None:
    inv = load("""\
        defaults:
          env: &env {CI: "1"}
        machines:
          a: &a
            slots: 4
            tags: [arm]
            host: a.lan
          b:
            <<: [*a, {port: 2222, slots: 9, speed: 2}]
            slots: 2
          c: *a
          d:
            <<: *a
            host: d.lan
            env: *env
        """)
    a, b, c, d = inv.machines
    assert (a.host, a.slots, a.tags, a.port) == ("a.lan", 4, ("arm",), 22)
    assert (b.host, b.slots, b.port, b.speed, b.tags) == ("a.lan", 2, 2222, 2.0, ("arm",))
    assert (c.host, c.slots, c.line) == ("a.lan", 4, 11)
    assert (d.host, d.slots, d.env) == ("d.lan", 4, (("CI", "1"),))


def test_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    write("machines: {fromenv: }\n", "elsewhere/inv.yaml")
    write("machines: {fromcwd: }\n")
    assert load_inventory().machines[0].name == "fromcwd"
    monkeypatch.setenv("FLEETSHARD_INVENTORY", "elsewhere/inv.yaml")
    inv = load_inventory()
    assert inv.machines[0].name == "fromenv"
    assert inv.path == Path("elsewhere/inv.yaml")


def test_jump_string_forms() -> None:
    inv = load("""\
        defaults: {identity_file: /k}
        machines:
          a: {jump: "ops@bastion:2222"}
          b: {jump: bastion}
          c: {jump: "ssh://u@[fe80::1]:2200,second"}
        """)
    a, b, c = inv.machines
    assert a.jump == JumpHost("bastion", 2222, "ops", ("/k",))
    assert b.jump == JumpHost("bastion", 22, None, ("/k",))
    assert c.jump == JumpHost("fe80::1", 2200, "u", ("/k",))


# --- ~/.ssh/config --------------------------------------------------------------------------------

SSH_CONFIG = """\
    Host pi
        HostName 192.168.1.50
        User pi
        Port 2201
        IdentityFile ~/.ssh/pi_%h
        ProxyJump gate
    Host gate
        HostName gate.example.com
        User jumper
        Port 2022
        IdentityFile ~/.ssh/gate_key
    Host direct
        ProxyJump none
    Host *.lan !nas.lan
        User lanuser
    """


def ssh_config(home: Path, text: str = SSH_CONFIG) -> Path:
    path = home / ".ssh" / "config"
    path.write_text(textwrap.dedent(text))
    return path


def test_ssh_config_alias_resolution(isolated: Path) -> None:
    cfg = ssh_config(isolated)
    inv = load("""\
        defaults: {user: ci, port: 2200, identity_file: /ci_key, jump: "default@hop"}
        machines:
          pi: {}
          pi2: {host: pi}
          box.lan: {}
          nas.lan: {}
          direct: {}
        """, ssh_config=cfg)
    pi = inv.machine("pi")
    assert (pi.host, pi.alias, pi.user, pi.port) == ("192.168.1.50", "pi", "pi", 2201)
    assert pi.identity_files == (f"{isolated}/.ssh/pi_192.168.1.50",)
    assert pi.jump == JumpHost("gate.example.com", 2022, "jumper", (f"{isolated}/.ssh/gate_key",), "gate")
    assert inv.machine("pi2").host == "192.168.1.50" and inv.machine("pi2").alias == "pi"
    box = inv.machine("box.lan")  # wildcard: only User comes from the config, the rest from defaults
    assert (box.host, box.alias, box.user, box.port, box.identity_files) == (
        "box.lan", None, "lanuser", 2200, ("/ci_key",))
    assert box.jump == JumpHost("hop", 22, "default", ("/ci_key",))
    nas = inv.machine("nas.lan")  # negated pattern
    assert nas.user == "ci"
    assert inv.machine("direct").jump is None  # ProxyJump none beats defaults


def test_machine_values_beat_ssh_config(isolated: Path) -> None:
    cfg = ssh_config(isolated)
    inv = load("""\
        machines:
          pi: {user: me, port: 22, identity_file: /mine, jump: "me@gate:2300"}
          other: {host: pi, jump: null}
        """, ssh_config=cfg)
    pi = inv.machine("pi")
    assert (pi.host, pi.user, pi.port, pi.identity_files) == ("192.168.1.50", "me", 22, ("/mine",))
    assert pi.jump == JumpHost("gate.example.com", 2300, "me", (f"{isolated}/.ssh/gate_key",), "gate")
    assert inv.machine("other").jump is None


def test_default_ssh_config_is_read_and_include_works(isolated: Path) -> None:
    (isolated / ".ssh" / "hosts").write_text("Host moruk\n  HostName 10.1.1.1\n  User build\n")
    ssh_config(isolated, "Include hosts\n")
    inv = load("machines: {moruk: {}, local: {transport: local}}\n")
    assert (inv.machine("moruk").host, inv.machine("moruk").user) == ("10.1.1.1", "build")
    assert inv.machine("local").host is None


def test_ssh_config_not_applied_to_local_machines(isolated: Path) -> None:
    cfg = ssh_config(isolated, "Host *\n  User cfguser\n")
    inv = load("machines: {local: {transport: local}}\n", ssh_config=cfg)
    assert inv.machines[0].user is None


def test_bad_port_in_ssh_config(isolated: Path) -> None:
    cfg = ssh_config(isolated, "Host pi\n  Port abc\n")
    err = error("machines:\n  pi: {}\n", ssh_config=cfg)
    assert str(err) == f"{cfg}:2: Invalid Port integer value: abc (read for machines.pi, machines.yaml:2)"


def test_explicit_ssh_config_missing(tmp_path: Path) -> None:
    err = error("machines: {a: }\n", ssh_config=tmp_path / "nope")
    assert str(err) == f"{tmp_path / 'nope'}: file not found"


# --- selection ------------------------------------------------------------------------------------


def test_select_machines() -> None:
    inv = load("""\
        machines:
          a: {tags: [arm, slow]}
          b: {}
          c: {tags: [arm]}
        """)
    assert select_machines(inv, None) == inv.machines
    for nothing in ("", ",", " , "):             # a selection of nothing is an error, never "all"
        with pytest.raises(UsageError, match="names no machine"):
            select_machines(inv, nothing)
    assert [m.name for m in select_machines(inv, "c,a")] == ["a", "c"]
    assert [m.name for m in select_machines(inv, "arm")] == ["a", "c"]
    assert [m.name for m in select_machines(inv, " b , slow ")] == ["a", "b"]
    with pytest.raises(UsageError) as info:
        select_machines(inv, "a,x")
    assert str(info.value) == (
        'no machine or tag named "x" in machines.yaml (machines: a, b, c; tags: arm, slow)')
    with pytest.raises(UsageError, match='no machine named "zz"'):
        inv.machine("zz")


# --- errors ---------------------------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_inventory()
    assert str(info.value) == "machines.yaml: file not found (set -i/--inventory or FLEETSHARD_INVENTORY)"
    assert info.value.line is None and info.value.file == "machines.yaml"


def test_directory() -> None:
    Path("machines.yaml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_inventory()
    assert str(info.value) == "machines.yaml: is a directory, not an inventory file"


def test_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    write("machines: {a: }\n")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError) as info:
        load_inventory()
    assert str(info.value) == "machines.yaml: cannot read file: Permission denied"


def test_not_utf8() -> None:
    Path("machines.yaml").write_bytes(b"machines:\n  a: {}\n  b\xff: {}\n")
    with pytest.raises(ConfigError) as info:
        load_inventory()
    assert str(info.value) == "machines.yaml:3: not valid UTF-8 (byte 0xff)"


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "---\n"])
def test_empty(text: str) -> None:
    assert str(error(text)) == "machines.yaml: no machines defined"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health: {timeout: 3}\n", "machines.yaml:1: no machines defined"),
        ("machines:\n", "machines.yaml:1: machines: no machines defined"),
        ("# hi\nmachines: {}\n", "machines.yaml:2: machines: no machines defined"),
    ],
)
def test_no_machines(text: str, expected: str) -> None:
    assert str(error(text)) == expected


def test_yaml_syntax_error() -> None:
    err = error("""\
        machines:
          a: {slots: 4}
         b: {}
        """)
    assert str(err).startswith("machines.yaml:3: invalid YAML: ")
    assert err.line == 3


def test_yaml_unclosed_flow_mapping() -> None:
    err = error("machines:\n  a: {slots: 4\n  b: {}\n")
    assert str(err).startswith("machines.yaml:3: invalid YAML: ")
    assert "flow mapping" in str(err)


def test_yaml_control_character() -> None:
    err = error("machines:\n  a: {}\n  b: \x07\n")
    assert str(err) == (
        "machines.yaml:3: invalid YAML: unacceptable character #x0007: special characters are not allowed")


def test_yaml_several_documents() -> None:
    err = error("machines: {a: }\n---\nmachines: {b: }\n")
    assert str(err) == ("machines.yaml:2: invalid YAML: expected a single document in the stream at line 1 "
                        "but found another document")


def test_yaml_bad_explicit_tag() -> None:
    err = error("machines:\n  a:\n    slots: !!int four\n")
    assert str(err).startswith("machines.yaml:3: machines.a.slots: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n",
         "machines.yaml:1: expected a mapping at the top level (machines:, suite:, ...), got a list"),
        ("just text\n",
         'machines.yaml:1: expected a mapping at the top level (machines:, suite:, ...), got "just text"'),
        ("machines: [a, b]\n",
         "machines.yaml:1: machines: expected a mapping of machine names to settings, got a list"),
        ("machines:\n  a: 3\n",
         "machines.yaml:2: machines.a: expected a mapping of machine settings, got 3"),
    ],
)
def test_wrong_shapes(text: str, expected: str) -> None:
    assert str(error(text)) == expected


def test_duplicate_key() -> None:
    err = error("""\
        machines:
          pi:
            slots: 3
            host: pi.lan
            slots: 4
        """)
    assert str(err) == 'machines.yaml:5: machines.pi.slots: duplicate key "slots" (first at line 3)'
    assert (err.file, err.line, err.field) == ("machines.yaml", 5, "machines.pi.slots")


def test_duplicate_machine() -> None:
    err = error("""\
        defaults:
          user: ci
        machines:
          a: {}


          pi: {host: pi.lan}
          b: {}
          pi: {host: other}
        """)
    assert str(err) == 'machines.yaml:9: machines.pi: duplicate machine "pi" (first defined at line 7)'


def test_duplicate_top_level_key() -> None:
    err = error("machines: {a: }\nhealth: {}\nhealth: {}\n")
    assert str(err) == 'machines.yaml:3: health: duplicate key "health" (first at line 2)'


MACHINE_ERRORS = [
    # (machine settings line, field, message)
    ("slots: four", "slots", 'expected a positive integer, got "four"'),
    ('slots: "4"', "slots", 'expected a positive integer, got "4"'),
    ("slots: true", "slots", "expected a positive integer, got true"),
    ("slots: 2.5", "slots", "expected a positive integer, got 2.5"),
    ("slots: 0", "slots", "expected a positive integer, got 0"),
    ("slots: -3", "slots", "expected a positive integer, got -3"),
    ("slots: [1]", "slots", "expected a positive integer, got a list"),
    ("speed: 0", "speed", "expected a positive number, got 0"),
    ("speed: -0.5", "speed", "expected a positive number, got -0.5"),
    ("speed: fast", "speed", 'expected a positive number, got "fast"'),
    ("speed: .inf", "speed", "expected a positive number, got .inf"),
    ("speed: yes", "speed", "expected a positive number, got true"),
    ("port: 0", "port", "expected a port number (1-65535), got 0"),
    ("port: 65536", "port", "expected a port number (1-65535), got 65536"),
    ("port: null", "port", "expected a port number (1-65535), got null"),
    ("port: '22'", "port", 'expected a port number (1-65535), got "22"'),
    ("connect_timeout: 0", "connect_timeout", "expected a positive number, got 0"),
    ("transport: sssh", "transport", 'expected one of "ssh", "openssh", "local", got "sssh"'),
    ("user: 1000", "user", "expected a string, got 1000"),
    ("user: ''", "user", "must not be empty"),
    ("host: 'ci@pi.lan'", "host",
     'expected a host name or address (put the user in user:), got "ci@pi.lan"'),
    ("identity_file: [a, 3]", "identity_file[1]", "expected a string, got 3"),
    ("identity_file: {a: b}", "identity_file", "expected a string or a list of strings, got a mapping"),
    ("tags: [arm, 3]", "tags[1]", "expected a tag (string), got 3"),
    ("tags: 3", "tags", "expected a list of tags or a comma-separated string, got 3"),
    ("tags: [arm, 'two words']", "tags[1]", 'invalid tag "two words": use letters, digits, "_", "." and "-"'),
    ("env: [A, B]", "env", "expected a mapping of variable names to values, got a list"),
    ("env: {A: {b: c}}", "env.A", "expected a string, number or boolean, got a mapping"),
    ("env: {A: [1, 2]}", "env.A", "expected a string, number or boolean, got a list"),
    ("env: {1A: x}", "env.1A", 'invalid environment variable name "1A"'),
    ("jump: 'a@b:x'", "jump", 'expected [user@]host[:port] with a port number (1-65535), got "a@b:x"'),
    ("jump: '@b'", "jump", 'expected [user@]host[:port], got "@b"'),
    ("slot: 4", "", 'unknown key "slot" (did you mean "slots"?)'),
    ("Slots: 4", "", 'unknown key "Slots" (did you mean "slots"?)'),
    ("identity_files: [a]", "", 'unknown key "identity_files" (did you mean "identity_file"?)'),
    ("zzz: 1", "", 'unknown key "zzz"'),
]


@pytest.mark.parametrize(("setting", "field", "message"), MACHINE_ERRORS)
def test_machine_field_errors(setting: str, field: str, message: str) -> None:
    err = error(f"""\
        defaults:
          user: ci
        machines:
          ok: {{}}
          pi:
            workdir: /w
            {setting}
        """)
    full_field = f"machines.pi.{field}" if field else "machines.pi"
    line = 7
    assert str(err) == f"machines.yaml:{line}: {full_field}: {message}"
    assert (err.line, err.field) == (line, full_field)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaults:\n  slots: four\nmachines: {a: }\n",
         'machines.yaml:2: defaults.slots: expected a positive integer, got "four"'),
        ("defaults:\n  host: x\nmachines: {a: }\n",
         'machines.yaml:2: defaults.host: "host" cannot be set in defaults (set it on each machine)'),
        ("defaults:\n  usr: x\nmachines: {a: }\n",
         'machines.yaml:2: defaults: unknown key "usr" (did you mean "user"?)'),
        ("machine:\n  a: {}\n",
         'machines.yaml:1: unknown key "machine" (did you mean "machines"?)'),
        ("machines: {a: }\nhealth:\n  timout: 3\n",
         'machines.yaml:3: health: unknown key "timout" (did you mean "timeout"?)'),
        ("machines: {a: }\nretry:\n  max_retry: 3\n",
         'machines.yaml:3: retry: unknown key "max_retry" (did you mean "max_retries"?)'),
        ("machines: {a: }\nsuite:\n  comand: x\n",
         'machines.yaml:3: suite: unknown key "comand" (did you mean "command"?)'),
        ("machines:\n  my pi: {}\n",
         'machines.yaml:2: machines: invalid machine name "my pi": use letters, digits, "_", "." and "-"'),
        ("machines:\n  'a/b': {}\n",
         'machines.yaml:2: machines: invalid machine name "a/b": use letters, digits, "_", "." and "-"'),
        ("machines:\n  a: {transport: local, host: x}\n",
         "machines.yaml:2: machines.a.host: host is not used with transport: local"),
        ("machines: {a: }\nhealth: {min_disk_free_pct: 101}\n",
         "machines.yaml:2: health.min_disk_free_pct: expected a percentage (0-100), got 101"),
        ("machines: {a: }\nhealth: {max_mem_used_pct: -1}\n",
         "machines.yaml:2: health.max_mem_used_pct: expected a percentage (0-100), got -1"),
        ("machines: {a: }\nhealth: {timeout: 0}\n",
         "machines.yaml:2: health.timeout: expected a positive number, got 0"),
        ("machines: {a: }\nhealth: {interval: -5}\n",
         "machines.yaml:2: health.interval: expected a non-negative number, got -5"),
        ("machines: {a: }\nhealth: [1]\n",
         "machines.yaml:2: health: expected a mapping, got a list"),
        ("machines: {a: }\nretry: {max_retries: -1}\n",
         "machines.yaml:2: retry.max_retries: expected a non-negative integer, got -1"),
        ("machines: {a: }\nretry: {infra_exit_codes: [255, 300]}\n",
         "machines.yaml:2: retry.infra_exit_codes[1]: expected an exit code (0-255), got 300"),
        ("machines: {a: }\nnotify: hooks.example.com\n",
         'machines.yaml:2: notify: expected an http:// or https:// URL, got "hooks.example.com"'),
        ("machines: {a: }\nhistory: 3\n",
         "machines.yaml:2: history: expected a string, got 3"),
    ],
)
def test_other_errors(text: str, expected: str) -> None:
    assert str(error(text)) == expected


SUITE_ERRORS = [
    ("suite:\n  shards: 4\n",
     "machines.yaml:2: suite: needs a command (with tests or discover for file mode), or a runner"),
    ("suite:\n  command: run\n  shards: many\n",
     'machines.yaml:4: suite.shards: expected "auto" or a positive integer, got "many"'),
    ("suite:\n  command: run\n  shards: 0\n",
     'machines.yaml:4: suite.shards: expected "auto" or a positive integer, got 0'),
    ("suite:\n  command: run\n  shards: true\n",
     'machines.yaml:4: suite.shards: expected "auto" or a positive integer, got true'),
    ("suite:\n  command: pytest {files}\n",
     "machines.yaml:3: suite.command: uses {files} but the suite has neither tests nor discover"),
    ("suite:\n  tests: 'tests/*.py'\n  command: pytest -x\n",
     "machines.yaml:4: suite.command: must contain {files} when tests is given"),
    ("suite:\n  discover: ls\n  command: pytest -x\n",
     "machines.yaml:4: suite.command: must contain {files} when discover is given"),
    ("suite:\n  tests: 'tests/*.py'\n",
     "machines.yaml:2: suite.command: missing: tests/discover need a command containing {files}"),
    ("suite:\n  tests: x\n  discover: ls\n  command: 'r {files}'\n",
     "machines.yaml:4: suite.discover: give tests or discover, not both"),
    ("suite:\n  command: run\n  strategy: random\n",
     'machines.yaml:4: suite.strategy: expected one of "static", "dynamic", got "random"'),
    ("suite:\n  command: run\n  timeout: 0\n",
     "machines.yaml:4: suite.timeout: expected a positive number, got 0"),
    ("suite:\n  command: run\n  tests: [a, {b: c}]\n",
     "machines.yaml:4: suite.tests[1]: expected a string, got a mapping"),
    ("suite: run tests\n", 'machines.yaml:2: suite: expected a mapping, got "run tests"'),
]


@pytest.mark.parametrize(("suite", "expected"), SUITE_ERRORS)
def test_suite_errors(suite: str, expected: str) -> None:
    assert str(error("machines: {a: }\n" + suite)) == expected


def test_null_suite_is_no_suite() -> None:
    assert load("machines: {a: }\nsuite:\n").suite is None


def test_bad_merge_value() -> None:
    err = error("machines:\n  a:\n    <<: 3\n")
    assert str(err) == "machines.yaml:3: machines.a: << (merge) expects a mapping or a list of mappings"


@pytest.mark.parametrize(("text", "expected"), [
    ("machines:\n  a: {host: box.lan:2222}\n",
     "machines.yaml:2: machines.a.host: expected a host name or address (put the port in port:)"),
    ("machines:\n  a: {host: box, user: 'bob@x'}\n", "machines.a.user: expected a user name"),
    ("machines:\n  '..': {host: box}\n", 'invalid machine name ".."'),
    ("machines:\n  a: {host: box}\nnotify: 'http://h:abc/'\n", "notify: expected an http:// or https:// URL"),
])
def test_values_that_would_fail_later_are_refused_now(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "machines.yaml"
    path.write_text(text)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError) as err:
        load_inventory(path, ssh_config=tmp_path / "empty")
    assert expected in str(err.value)


def test_ipv6_host_is_fine_and_local_machines_never_read_ssh_config(tmp_path: Path) -> None:
    path = tmp_path / "machines.yaml"
    path.write_text("machines:\n  a: {host: '::1'}\n")
    (tmp_path / "empty").write_text("")
    assert load_inventory(path, ssh_config=tmp_path / "empty").machines[0].host == "::1"
    broken = tmp_path / "config"
    broken.write_bytes(b'Host "unterminated\n')
    path.write_text("machines:\n  here: {transport: local}\n")
    assert load_inventory(path, ssh_config=broken).machines[0].name == "here"
