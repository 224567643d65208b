"""~/.ssh/config lookups through asyncssh's parser: patterns, negation, first value wins, Include, tokens,
the record of applied and unknown keywords, and errors naming file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetshard import sshconfig
from fleetshard.errors import ConfigError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def opts(host: str, cfg: Path) -> dict[str, object]:
    return dict(sshconfig.lookup(host, cfg).options)


def test_alias_and_first_value_wins(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", """\
        # comment
        Host pi
            HostName pi.lan
            User pi
            Port 2222
            IdentityFile ~/.ssh/pi_key

        Host *
            User nobody
            Port 22
            IdentityFile ~/.ssh/id_ed25519
        """)
    assert opts("pi", cfg) == {"Hostname": "pi.lan", "User": "pi", "Port": 2222,
                               "IdentityFile": ["~/.ssh/pi_key", "~/.ssh/id_ed25519"]}
    assert opts("other", cfg) == {"User": "nobody", "Port": 22, "IdentityFile": ["~/.ssh/id_ed25519"]}


def test_equals_form_quotes_and_case_insensitive_keywords(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", """\
        Host box
          hostname=box.example.com
          USER = "build bot"
          IdentityFile "/keys/my key"
          ProxyJump=jump@bastion:2200,second
        """)
    assert opts("box", cfg) == {"Hostname": "box.example.com", "User": "build bot",
                                "IdentityFile": ["/keys/my key"], "ProxyJump": "jump@bastion:2200,second"}
    assert opts("BOX", cfg) == {}       # Host patterns are case-sensitive, as in OpenSSH


def test_wildcards_multiple_patterns_and_negation(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", """\
        Host *.lan !secret.lan
            User lanuser
        Host build? ci-*
            Port 2022
        Host !only-negated
            User never
        """)
    assert opts("pi.lan", cfg) == {"User": "lanuser"}
    assert opts("secret.lan", cfg) == {}
    assert opts("build1", cfg) == {"Port": 2022}
    assert opts("build12", cfg) == {}
    assert opts("ci-x", cfg) == {"Port": 2022}
    assert opts("only-negated", cfg) == {}


def test_match_host_sees_hostname_originalhost_sees_alias(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", """\
        Host pi
            HostName 10.0.0.5
        Match host pi
            User wrong
        Match host 10.0.0.*
            Port 2200
        Match originalhost pi
            User right
        Match exec "true"
            Compression yes
        Match exec "false"
            Compression no
        """)
    assert opts("pi", cfg) == {"Hostname": "10.0.0.5", "Port": 2200, "User": "right", "Compression": True}


def test_applied_and_unknown_keywords(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", """\
        Host a
            LocalForward 8080 localhost:80
            ServerAliveInterval 5
        Host b
            DynamicForward 1080
        Match canonical
            User x
        """)
    found = sshconfig.lookup("a", cfg)
    assert found.unknown == ("LocalForward",)
    assert {"serveraliveinterval", "localforward"} <= found.applied
    assert found.match_canonical
    assert sshconfig.lookup("b", cfg).unknown == ("DynamicForward",)


def test_include_relative_to_dot_ssh_with_glob(home: Path) -> None:
    write(home / ".ssh" / "conf.d" / "10-pi.conf", "Host pi\n    HostName 10.0.0.5\n")
    write(home / ".ssh" / "conf.d" / "20-all.conf", "Host *\n    User included\n")
    cfg = write(home / ".ssh" / "config", """\
        Include conf.d/*.conf
        Host pi
            HostName ignored.lan
            Port 2200
        """)
    assert opts("pi", cfg) == {"Hostname": "10.0.0.5", "User": "included", "Port": 2200}


def test_missing_include_is_ignored(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Include nothing-here/*\nUser u\n")
    assert opts("x", cfg) == {"User": "u"}


def test_tokens(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", """\
        Host pi
            HostName %h.lan
            User pi
            IdentityFile %d/keys/%h-%r-%n-%p-%u
            ProxyCommand nc %h %p
        """)
    found = opts("pi", cfg)
    assert found["Hostname"] == "pi.lan"
    assert found["IdentityFile"] == [f"{home}/keys/pi.lan-pi-pi-22-alice"]
    assert found["ProxyCommand"] == "nc pi.lan 22"


def test_caller_user_and_port_win(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Host *\n  User cfg\n  Port 2\n  ProxyCommand x %r %p\n")
    assert opts("h", cfg) == {"User": "cfg", "Port": 2, "ProxyCommand": "x cfg 2"}
    assert dict(sshconfig.lookup("h", cfg, user="me", port=7).options) == {
        "User": "me", "Port": 7, "ProxyCommand": "x me 7"}


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        sshconfig.lookup("x", tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: file not found"


def test_errors_name_the_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", 'Host a\n  User "oops\n')
    with pytest.raises(ConfigError) as info:
        sshconfig.lookup("a", cfg)
    assert str(info.value) == f"{cfg}:2: No closing quotation"
    cfg = write(tmp_path / "config", "Host a\n  Port many\n")
    with pytest.raises(ConfigError) as info:
        sshconfig.lookup("a", cfg)
    assert str(info.value) == f"{cfg}:2: Invalid Port integer value: many"


def test_include_loop_is_refused(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Include config\n")
    with pytest.raises(ConfigError, match="Include loop"):
        sshconfig.lookup("a", cfg)


def test_concrete_hosts(home: Path) -> None:
    write(home / ".ssh" / "more", "Host extra\n")
    cfg = write(home / ".ssh" / "config", """\
        Host pi pi2,box *.lan !secret build?
            User x
        Host = eq
        Include more
        Match host zzz
        """)
    assert sshconfig.concrete_hosts(cfg) == ["pi", "pi2", "box", "eq", "extra"]
