"""~/.ssh/config lookups: patterns, negation, first value wins, Include, tokens."""

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


def test_alias_and_first_value_wins(home: Path) -> None:
    cfg = write(
        home / ".ssh" / "config",
        """\
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
        """,
    )
    result = sshconfig.lookup("pi", cfg)
    assert result["hostname"] == "pi.lan"
    assert result["user"] == "pi"
    assert result["port"] == "2222"
    assert result["identityfile"] == [f"{home}/.ssh/pi_key", f"{home}/.ssh/id_ed25519"]
    assert sshconfig.lookup("other", cfg) == {
        "user": "nobody",
        "port": "22",
        "identityfile": [f"{home}/.ssh/id_ed25519"],
    }


def test_equals_form_quotes_case_insensitive_keywords_and_comments(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config",
        """\
        HOST box
          hostname=box.example.com
          USER = "build bot"
          IdentityFile "/keys/my key"   # trailing comment
          ProxyJump=jump@bastion:2200,second
        """,
    )
    result = sshconfig.lookup("BOX", cfg)
    assert result["hostname"] == "box.example.com"
    assert result["user"] == "build bot"
    assert result["identityfile"] == ["/keys/my key"]
    assert result["proxyjump"] == "jump@bastion:2200,second"


def test_wildcards_multiple_patterns_and_negation(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config",
        """\
        Host *.lan !secret.lan
            User lanuser
        Host build? ci-*
            Port 2022
        Host !only-negated
            User never
        """,
    )
    assert sshconfig.lookup("pi.lan", cfg) == {"user": "lanuser"}
    assert sshconfig.lookup("secret.lan", cfg) == {}
    assert sshconfig.lookup("build1", cfg) == {"port": "2022"}
    assert sshconfig.lookup("build12", cfg) == {}
    assert sshconfig.lookup("ci-x", cfg) == {"port": "2022"}
    assert sshconfig.lookup("only-negated", cfg) == {}


def test_settings_before_any_host_apply_to_all(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config",
        """\
        User everyone
        Host a
            User a-user
        """,
    )
    assert sshconfig.lookup("a", cfg) == {"user": "everyone"}


def test_match_all_and_host_and_unsupported_criteria(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "config",
        """\
        Match exec "true"
            User from-exec
        Match host web*,api
            Port 8022
        Match all
            User everyone
        """,
    )
    assert sshconfig.lookup("web1", cfg) == {"port": "8022", "user": "everyone"}
    assert sshconfig.lookup("db", cfg) == {"user": "everyone"}


def test_include_relative_to_dot_ssh_with_glob(home: Path) -> None:
    write(
        home / ".ssh" / "conf.d" / "10-pi.conf",
        """\
        Host pi
            HostName 10.0.0.5
        """,
    )
    write(
        home / ".ssh" / "conf.d" / "20-all.conf",
        """\
        Host *
            User included
        """,
    )
    cfg = write(
        home / ".ssh" / "config",
        """\
        Include conf.d/*.conf
        Host pi
            HostName ignored.lan
            Port 2200
        """,
    )
    assert sshconfig.lookup("pi", cfg) == {"hostname": "10.0.0.5", "user": "included", "port": "2200"}


def test_include_inside_host_block_only_applies_there(home: Path) -> None:
    write(home / ".ssh" / "extra", "User extra\n")
    cfg = write(
        home / ".ssh" / "config",
        """\
        Host special
            Include extra
        Host *
            Port 2222
        """,
    )
    assert sshconfig.lookup("special", cfg) == {"user": "extra", "port": "2222"}
    assert sshconfig.lookup("plain", cfg) == {"port": "2222"}


def test_missing_include_is_ignored(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Include nothing-here/*\nUser u\n")
    assert sshconfig.lookup("x", cfg) == {"user": "u"}


def test_identity_file_tokens(home: Path) -> None:
    cfg = write(
        home / ".ssh" / "config",
        """\
        Host pi
            HostName pi.lan
            User pi
            IdentityFile %d/keys/%h-%r-%n-%p-%u
            IdentityFile ~/literal%%percent
        """,
    )
    assert sshconfig.lookup("pi", cfg)["identityfile"] == [
        f"{home}/keys/pi.lan-pi-pi-22-alice",
        f"{home}/literal%percent",
    ]


def test_hostname_token(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", "Host *\n  HostName %h.example.com\n")
    assert sshconfig.lookup("box", cfg)["hostname"] == "box.example.com"


def test_parse_once_lookup_many(tmp_path: Path) -> None:
    parsed = sshconfig.parse(write(tmp_path / "config", "Host a\n User x\nHost b\n User y\n"))
    assert parsed.lookup("a") == {"user": "x"}
    assert parsed.lookup("b") == {"user": "y"}


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        sshconfig.lookup("x", tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: file not found"


def test_unterminated_quote_names_the_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", 'Host a\n  User "oops\n')
    with pytest.raises(ConfigError) as info:
        sshconfig.lookup("a", cfg)
    assert str(info.value) == f"{cfg}:2: User: unterminated quote"


def test_include_loop_is_refused(home: Path) -> None:
    cfg = write(home / ".ssh" / "config", "Include config\n")
    with pytest.raises(ConfigError, match="Include nested more than 16 deep"):
        sshconfig.lookup("a", cfg)
