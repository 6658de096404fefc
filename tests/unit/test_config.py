"""Configuration: defaults, good and bad TOML, lookup order, overrides, rendering."""

from __future__ import annotations

import dataclasses
import grp
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc import config
from chatsvc.__main__ import main as chatsvc_main
from chatsvc.config import Config
from chatsvc.errors import ChatsvcError, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the oldest supported Python
    import tomli as tomllib

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "chatsvc.toml"


def write(tmp_path: Path, text: str, name: str = "chatsvc.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def round_trip(cfg: Config) -> Config:
    return config.from_mapping(tomllib.loads(config.render_toml(cfg)), cfg.source)


# --- defaults -------------------------------------------------------------------


def test_defaults() -> None:
    cfg = Config()
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 6321
    assert cfg.rooms.names == ("lobby", "work", "support", "team")
    assert cfg.rooms.default == "lobby"
    assert cfg.limits.max_line_bytes == 2048
    assert cfg.limits.name_max_length == 32
    assert cfg.source is None


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


def test_the_defaults_pass_their_own_validators() -> None:
    assert config.from_mapping(config.to_mapping(Config())) == Config()


@pytest.mark.skipif(not REPO_CONFIG.is_file(), reason="no config/chatsvc.toml in the repo")
def test_the_shipped_config_file_loads_to_the_defaults() -> None:
    cfg = config.load(REPO_CONFIG)
    assert cfg.source == str(REPO_CONFIG)
    assert dataclasses.replace(cfg, source=None) == Config()


# --- good files -----------------------------------------------------------------


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    cfg = config.load(path)
    assert cfg.source == str(path)
    assert dataclasses.replace(cfg, source=None) == Config()


def test_a_partial_file_changes_only_what_it_sets(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[server]\nport = 7000\n"))
    assert cfg.server.port == 7000
    assert cfg.server.host == "127.0.0.1"
    assert cfg.rooms == Config().rooms


def test_a_full_file(tmp_path: Path) -> None:
    text = """
        [server]
        host = "0.0.0.0"
        port = 0
        max_clients = 50
        max_clients_per_ip = 0
        listen_backlog = 16
        shutdown_grace = 2

        [rooms]
        names = ["general", "Dev-Ops", "q.a"]
        default = "Dev-Ops"
        announce_limit = 0

        [limits]
        max_line_bytes = 64
        name_max_length = 16
        send_queue_bytes = 4096
        flood_rate = 0.5
        flood_burst = 3
        flood_strikes = 0
        idle_timeout = 0
        login_timeout = 1.5

        [logging]
        level = "DEBUG"
        format = "json"
        log_messages = true

        [admin]
        socket = "/run/chatsvc/admin.sock"
        mode = 0o600
        group = "chatops"
        uids = [0, 1000]
    """
    cfg = config.load(write(tmp_path, text))
    assert cfg.server == config.ServerConfig(
        host="0.0.0.0",
        port=0,
        max_clients=50,
        max_clients_per_ip=0,
        listen_backlog=16,
        shutdown_grace=2.0,
    )
    assert cfg.rooms == config.RoomsConfig(
        names=("general", "Dev-Ops", "q.a"), default="Dev-Ops", announce_limit=0
    )
    assert cfg.limits == config.LimitsConfig(
        max_line_bytes=64,
        name_max_length=16,
        send_queue_bytes=4096,
        flood_rate=0.5,
        flood_burst=3,
        flood_strikes=0,
        idle_timeout=0.0,
        login_timeout=1.5,
    )
    assert cfg.logging == config.LoggingConfig(level="debug", format="json", log_messages=True)
    assert cfg.admin == config.AdminConfig(
        socket="/run/chatsvc/admin.sock", mode=0o600, group="chatops", uids=(0, 1000)
    )
    assert isinstance(cfg.server.shutdown_grace, float)
    assert isinstance(cfg.limits.idle_timeout, float)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "chat.example.org"])
def test_good_hosts(tmp_path: Path, host: str) -> None:
    assert config.load(write(tmp_path, f'[server]\nhost = "{host}"\n')).server.host == host


def test_a_path_object_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7001\n")
    assert config.load(path).server.port == 7001
    assert config.load(str(path)).server.port == 7001


# --- bad files ------------------------------------------------------------------

BAD = [
    # (id, toml text, dotted key, part of expected, part of found)
    (
        "cluster-backend-resp3",
        '[cluster]\nbackend = "redis://r:6379/0?protocol=3"\n',
        "cluster.backend",
        "without protocol=3",
        "protocol=3",
    ),
    ("unknown-section", "[bogus]\nx = 1\n", "bogus", "one of the sections", "an unknown section"),
    ("section-not-table", "server = 1\n", "server", "a table", "1"),
    ("unknown-key", "[server]\nprot = 1\n", "server.prot", "one of host, port", "an unknown key"),
    (
        "string-port",
        '[server]\nport = "6321"\n',
        "server.port",
        "an integer from 0 to 65535",
        "'6321'",
    ),
    ("bool-port", "[server]\nport = true\n", "server.port", "an integer from 0 to 65535", "true"),
    ("float-port", "[server]\nport = 6321.0\n", "server.port", "an integer", "6321.0"),
    (
        "port-too-big",
        "[server]\nport = 65536\n",
        "server.port",
        "an integer from 0 to 65535",
        "65536",
    ),
    ("negative-port", "[server]\nport = -1\n", "server.port", "an integer from 0 to 65535", "-1"),
    (
        "bool-max-clients",
        "[server]\nmax_clients = false\n",
        "server.max_clients",
        "an integer",
        "false",
    ),
    (
        "zero-max-clients",
        "[server]\nmax_clients = 0\n",
        "server.max_clients",
        "an integer from 1 to",
        "0",
    ),
    (
        "bad-host",
        '[server]\nhost = "bad host!"\n',
        "server.host",
        "an IP address or host name",
        "'bad host!'",
    ),
    ("empty-host", '[server]\nhost = ""\n', "server.host", "an IP address or host name", "''"),
    ("number-host", "[server]\nhost = 127\n", "server.host", "an IP address or host name", "127"),
    (
        "string-grace",
        '[server]\nshutdown_grace = "5"\n',
        "server.shutdown_grace",
        "a number from 0 to 3600",
        "'5'",
    ),
    ("empty-rooms", "[rooms]\nnames = []\n", "rooms.names", "a non-empty list of room names", "[]"),
    ("rooms-not-list", '[rooms]\nnames = "lobby"\n', "rooms.names", "a non-empty list", "'lobby'"),
    (
        "duplicate-rooms",
        '[rooms]\nnames = ["lobby", "work", "Lobby"]\n',
        "rooms.names",
        "without duplicates (duplicated: lobby)",
        "['lobby', 'work', 'Lobby']",
    ),
    (
        "invalid-room",
        '[rooms]\nnames = ["lobby", "tea room"]\n',
        "rooms.names",
        "a room name of 1-32 letters",
        "'tea room'",
    ),
    (
        "long-room",
        '[rooms]\nnames = ["' + "r" * 33 + '"]\n',
        "rooms.names",
        "a room name of 1-32",
        "r" * 33,
    ),
    ("number-room", "[rooms]\nnames = [1]\n", "rooms.names", "a room name", "[1]"),
    (
        "reserved-room",
        '[rooms]\nnames = ["lobby", "private"]\n',
        "rooms.names",
        "other than the reserved ['private']",
        "'private'",
    ),
    (
        "reserved-room-any-case",
        '[rooms]\nnames = ["lobby", "Private"]\n',
        "rooms.names",
        "reserved",
        "'Private'",
    ),
    (
        "default-not-listed",
        '[rooms]\ndefault = "kitchen"\n',
        "rooms.default",
        "one of the rooms in rooms.names (lobby, work, support, team)",
        "'kitchen'",
    ),
    (
        "default-other-case",
        '[rooms]\ndefault = "Lobby"\n',
        "rooms.default",
        "one of the rooms in rooms.names",
        "'Lobby'",
    ),
    (
        "default-reserved",
        '[rooms]\ndefault = "private"\n',
        "rooms.default",
        "reserved",
        "'private'",
    ),
    (
        "bad-level",
        '[logging]\nlevel = "verbose"\n',
        "logging.level",
        'one of "debug", "info", "warning", "error"',
        "'verbose'",
    ),
    ("number-level", "[logging]\nlevel = 10\n", "logging.level", 'one of "debug"', "10"),
    (
        "bad-format",
        '[logging]\nformat = "xml"\n',
        "logging.format",
        'one of "auto", "json", "console"',
        "'xml'",
    ),
    (
        "string-bool",
        '[logging]\nlog_messages = "yes"\n',
        "logging.log_messages",
        "true or false",
        "'yes'",
    ),
    (
        "mode-other-bits",
        "[admin]\nmode = 0o666\n",
        "admin.mode",
        "a file mode like 0o660 with no permissions for others",
        "0o666",
    ),
    (
        "mode-other-read",
        "[admin]\nmode = 0o664\n",
        "admin.mode",
        "no permissions for others",
        "0o664",
    ),
    ("mode-too-big", "[admin]\nmode = 0o1770\n", "admin.mode", "a file mode", "0o1770"),
    ("mode-string", '[admin]\nmode = "0660"\n', "admin.mode", "a file mode", "'0660'"),
    (
        "negative-uid",
        "[admin]\nuids = [1000, -1]\n",
        "admin.uids",
        "a list of numeric user ids",
        "[1000, -1]",
    ),
    (
        "uids-not-list",
        '[admin]\nuids = "1000"\n',
        "admin.uids",
        "a list of numeric user ids",
        "'1000'",
    ),
    ("socket-number", "[admin]\nsocket = 1\n", "admin.socket", "a string", "1"),
    (
        "small-send-queue",
        "[limits]\nsend_queue_bytes = 100\n",
        "limits.send_queue_bytes",
        "an integer from 4096 to",
        "100",
    ),
    (
        "small-max-line",
        "[limits]\nmax_line_bytes = 10\n",
        "limits.max_line_bytes",
        "an integer from 64 to 1048576",
        "10",
    ),
    (
        "zero-flood-rate",
        "[limits]\nflood_rate = 0\n",
        "limits.flood_rate",
        "a number from 0.01 to",
        "0",
    ),
    (
        "zero-login-timeout",
        "[limits]\nlogin_timeout = 0\n",
        "limits.login_timeout",
        "a number from 1 to 3600",
        "0",
    ),
    ("nan-idle", "[limits]\nidle_timeout = nan\n", "limits.idle_timeout", "a number", "nan"),
]


@pytest.mark.parametrize(
    "text, key, expected, found", [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_values_name_file_key_expectation_and_value(
    tmp_path: Path, text: str, key: str, expected: str, found: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    err = info.value
    message = str(err)
    assert err.file == str(path)
    assert err.key == key
    assert message.startswith(f"{path}: {key}: expected ")
    assert expected in message
    assert found in message
    assert "\n" not in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: expected valid TOML, found ")
    assert info.value.key == "-"


def test_a_duplicated_key_is_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1\nport = 2\n")
    with pytest.raises(ConfigError, match="expected valid TOML"):
        config.load(path)


def test_undecodable_bytes_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[admin]\ngroup = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: expected an existing TOML file, found no such file"


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path)
    assert str(info.value) == f"{tmp_path}: expected a TOML file, found a directory"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError) as info:
            config.load(path)
    finally:
        path.chmod(0o600)
    assert str(info.value) == f"{path}: expected a readable file, found permission denied"


def test_other_os_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300 + ".toml")  # longer than a file name may be
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: expected a readable file, found File name too long"
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError, match="expected a readable file, found Too many levels"):
        config.load(loop)


@pytest.mark.parametrize(
    "value",
    [
        "[" * 600 + "]" * 600,
        "{a = " * 600 + "1" + "}" * 600,
        "[" * 100_000,
    ],
)
def test_deeply_nested_toml_is_one_clear_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[server]\nport = {value}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == (
        f"{path}: expected TOML nested a few levels deep, found arrays or tables nested too deeply"
    )


def test_a_nested_bad_value_is_described_briefly(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = " + "[" * 300 + "]" * 300 + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == (
        f"{path}: server.port: expected an integer from 0 to 65535, found [[[[...]]]]"
    )
    path = write(tmp_path, '[rooms]\nnames = "' + "x" * 500 + '"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.found == "'" + "x" * 76 + "..."
    path = write(tmp_path, f"[rooms]\nnames = {list(range(20))}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.found == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]"


def test_admin_group_must_exist_on_this_machine(tmp_path: Path) -> None:
    assert config.admin_group_id(Config()) is None
    existing = grp.getgrgid(os.getgid()).gr_name
    cfg = config.load(write(tmp_path, f'[admin]\ngroup = "{existing}"\n'))
    assert config.admin_group_id(cfg) == os.getgid()
    path = write(tmp_path, '[admin]\ngroup = "no-such-group-here"\n')
    cfg = config.load(path)  # load() does not look at the machine: chatsvc-admin needs no group
    with pytest.raises(ConfigError) as info:
        config.admin_group_id(cfg)
    assert str(info.value) == (
        f"{path}: admin.group: expected an existing group, found 'no-such-group-here'"
    )


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('[admin]\ngroup = "no-such-group-here"\n', "admin.group: expected an existing group"),
        ("[server]\nport = " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
    ],
)
def test_check_config_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expect: str
) -> None:
    path = write(tmp_path, text)
    assert chatsvc_main(["--config", str(path), "--check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"chatsvc: config error: {path}: ")
    assert expect in err
    assert err.count("\n") == 1


def test_from_mapping_without_a_source_says_built_in() -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"server": {"port": "x"}})
    assert str(info.value).startswith("<built-in>: server.port: ")


def test_config_error_is_a_chatsvc_error() -> None:
    assert issubclass(ConfigError, ChatsvcError)


# --- lookup order ---------------------------------------------------------------


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /etc/chatsvc/chatsvc.toml (not created yet)."""
    path = tmp_path / "etc" / "chatsvc.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", path)
    return path


def test_explicit_path_wins(system_config: Path) -> None:
    system_config.parent.mkdir()
    system_config.write_text("")
    env = {"CHATSVC_CONFIG": "/from/env.toml"}
    assert config.find_config_path("/explicit.toml", env) == "/explicit.toml"


def test_environment_beats_the_system_file(system_config: Path) -> None:
    system_config.parent.mkdir()
    system_config.write_text("")
    assert config.find_config_path(None, {"CHATSVC_CONFIG": "/from/env.toml"}) == "/from/env.toml"


def test_system_file_when_nothing_else(system_config: Path) -> None:
    system_config.parent.mkdir()
    system_config.write_text("")
    assert config.find_config_path(None, {}) == str(system_config)
    assert config.find_config_path("", {"CHATSVC_CONFIG": ""}) == str(system_config)


def test_none_without_any_file(system_config: Path) -> None:
    assert config.find_config_path(None, {}) is None
    assert config.find_config_path(None, {"OTHER": "x"}) is None


def test_a_system_directory_is_not_a_config_file(system_config: Path) -> None:
    system_config.mkdir(parents=True)
    assert config.find_config_path(None, {}) is None


def test_load_effective_without_files_is_the_defaults(
    system_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHATSVC_CONFIG", raising=False)
    assert config.load_effective(None) == Config()


def test_load_effective_reads_the_explicit_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7002\n")
    assert config.load_effective(str(path)).server.port == 7002


# --- overrides, rendering, diff -------------------------------------------------


def test_with_overrides_replaces_and_validates() -> None:
    base = Config()
    cfg = config.with_overrides(base, limits={"send_queue_bytes": 4096}, server={"port": 0})
    assert cfg.limits.send_queue_bytes == 4096
    assert cfg.server.port == 0
    assert cfg.limits.max_line_bytes == base.limits.max_line_bytes
    assert base.limits.send_queue_bytes == 65536  # the original is untouched


def test_with_overrides_keeps_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7003\n")
    cfg = config.with_overrides(config.load(path), logging={"level": "debug"})
    assert cfg.source == str(path)
    assert cfg.server.port == 7003


def test_with_overrides_rejects_bad_values() -> None:
    with pytest.raises(ConfigError) as info:
        config.with_overrides(Config(), limits={"send_queue_bytes": 100})
    assert info.value.key == "limits.send_queue_bytes"
    with pytest.raises(ConfigError) as info:
        config.with_overrides(Config(), limits={"bogus": 1})
    assert info.value.key == "limits.bogus"


def test_with_overrides_checks_the_default_room_against_new_names() -> None:
    with pytest.raises(ConfigError) as info:
        config.with_overrides(Config(), rooms={"names": ["a", "b"]})
    assert info.value.key == "rooms.default"
    cfg = config.with_overrides(Config(), rooms={"names": ["a", "b"], "default": "b"})
    assert cfg.rooms.names == ("a", "b")


def test_render_toml_round_trips_the_defaults() -> None:
    assert round_trip(Config()) == Config()


def test_render_toml_round_trips_a_loaded_file(tmp_path: Path) -> None:
    text = (
        '[server]\nhost = "::1"\nshutdown_grace = 0.25\n'
        '[rooms]\nnames = ["a", "b.c"]\ndefault = "b.c"\n'
        '[admin]\nmode = 0o640\nuids = [7]\ngroup = "say \\"hi\\" \\\\ bye"\n'
        'socket = "/run/caf\u00e9/\u00fc.sock"\n'
        "[logging]\nlog_messages = true\n"
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.admin.group == 'say "hi" \\ bye'
    assert round_trip(cfg) == cfg


def test_render_toml_names_the_source_and_writes_the_mode_in_octal(tmp_path: Path) -> None:
    assert "source: built-in defaults" in config.render_toml(Config())
    path = write(tmp_path, "")
    rendered = config.render_toml(config.load(path))
    assert f"source: {path}" in rendered
    assert "\nmode = 0o660\n" in rendered
    for section in config.SCHEMA:
        assert f"\n[{section}]\n" in rendered


ROOM = st.from_regex(r"[a-z0-9_.\-]{1,12}", fullmatch=True).filter(lambda s: s != "private")
PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from(['"', "\\", "\t"]),
    max_size=20,
)


@settings(max_examples=100)
@given(
    port=st.integers(min_value=0, max_value=65535),
    grace=st.floats(min_value=0, max_value=3600, allow_nan=False),
    rooms=st.lists(ROOM, min_size=1, max_size=6, unique=True),
    flood_rate=st.floats(min_value=0.01, max_value=1e9, allow_nan=False),
    mode=st.integers(min_value=0, max_value=0o77).map(lambda m: m << 3),
    uids=st.lists(st.integers(min_value=0, max_value=2**31), max_size=4),
    socket=PRINTABLE,
    group=PRINTABLE,
    level=st.sampled_from(config.LOG_LEVELS),
    log_messages=st.booleans(),
)
def test_render_toml_round_trips(
    port: int,
    grace: float,
    rooms: list[str],
    flood_rate: float,
    mode: int,
    uids: list[int],
    socket: str,
    group: str,
    level: str,
    log_messages: bool,
) -> None:
    cfg = config.with_overrides(
        Config(),
        server={"port": port, "shutdown_grace": grace},
        rooms={"names": rooms, "default": rooms[-1]},
        limits={"flood_rate": flood_rate},
        logging={"level": level, "log_messages": log_messages},
        admin={"mode": mode, "uids": uids, "socket": socket, "group": group},
    )
    assert round_trip(cfg) == cfg


@pytest.mark.parametrize("value", ["/run/chat\nsvc.sock", "/run/\x1b.sock", "/run/\x7f.sock"])
def test_render_toml_round_trips_control_characters_in_strings(value: str) -> None:
    # A valid file can hold these as escapes (e.g. "\u001b"); --check-config must print
    # TOML that reads back to the same settings.
    cfg = config.with_overrides(Config(), admin={"socket": value})
    assert round_trip(cfg) == cfg


def test_diff_of_equal_configs_is_empty(tmp_path: Path) -> None:
    assert config.diff(Config(), Config()) == []
    # The source is not a setting.
    assert config.diff(Config(), config.load(write(tmp_path, ""))) == []


def test_diff_lists_each_changed_setting() -> None:
    new = config.with_overrides(
        Config(),
        server={"port": 7000},
        rooms={"names": ["lobby", "work"]},
        admin={"uids": [1000]},
    )
    assert config.diff(Config(), new) == [
        ("server.port", 6321, 7000),
        ("rooms.names", ["lobby", "work", "support", "team"], ["lobby", "work"]),
        ("admin.uids", [], [1000]),
    ]


def test_to_mapping_has_every_section_and_plain_values() -> None:
    mapping: dict[str, dict[str, Any]] = config.to_mapping(Config())
    assert list(mapping) == list(config.SCHEMA)
    for section, (_, validators) in config.SCHEMA.items():
        assert list(mapping[section]) == list(validators)
    assert mapping["rooms"]["names"] == ["lobby", "work", "support", "team"]


# --- [irc] ------------------------------------------------------------------------


def test_irc_defaults_leave_the_listener_off() -> None:
    irc = Config().irc
    assert irc.enabled is False
    assert (irc.host, irc.port) == ("", 6667)
    assert (irc.server_name, irc.network, irc.motd, irc.topics) == ("chatsvc", "chatsvc", "", ())


def test_irc_section_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[irc]\nenabled = true\nhost = "::1"\nport = 0\nserver_name = "irc.example.org"\n'
        'network = "Example"\nmotd = "line one\\nline two"\n'
        'topics = { lobby = "Welcome", support = "Ask here" }\n',
    )
    irc = config.load(path).irc
    assert irc.enabled and irc.host == "::1" and irc.port == 0
    assert (irc.server_name, irc.network) == ("irc.example.org", "Example")
    assert irc.motd.split("\n") == ["line one", "line two"]
    assert irc.topic("support") == "Ask here"
    assert irc.topic("work") == ""


IRC_BAD = [
    ("[irc]\nenabled = 1\n", "irc.enabled", "true or false"),
    ('[irc]\nhost = "no such host!"\n', "irc.host", '"" for the [server] host'),
    ("[irc]\nport = 70000\n", "irc.port", "an integer from 0 to 65535"),
    ('[irc]\nserver_name = "a b"\n', "irc.server_name", "a server name"),
    ('[irc]\nserver_name = ":x"\n', "irc.server_name", "a server name"),
    ('[irc]\nnetwork = "my net"\n', "irc.network", "a network name"),
    ('[irc]\nmotd = "bell\\u0007"\n', "irc.motd", "without control characters"),
    ("[irc]\nmotd = 3\n", "irc.motd", "a string"),
    ('[irc]\ntopics = "x"\n', "irc.topics", "a table of room = topic"),
    ("[irc]\ntopics = { lobby = 1 }\n", "irc.topics", "a table of room = topic"),
    ('[irc]\ntopics = { lobby = "a\\u202eb" }\n', "irc.topics", "no control characters"),
    ('[irc]\ntopics = { "bad room" = "x" }\n', "irc.topics", "a room name"),
    ('[irc]\ntopics = { kitchen = "x" }\n', "irc.topics.kitchen", "a room in rooms.names"),
    ("[irc]\nenabled = true\nport = 6321\n", "irc.port", "a port other than server.port"),
    ("[irc]\nwho = 1\n", "irc.who", "one of enabled, host, port"),
]


@pytest.mark.parametrize("text, key, expected", IRC_BAD)
def test_bad_irc_values_name_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert info.value.key == key
    assert expected in str(info.value)


def test_irc_port_may_equal_the_server_port_on_another_host(tmp_path: Path) -> None:
    text = '[irc]\nenabled = true\nhost = "127.0.0.2"\nport = 6321\n'
    assert config.load(write(tmp_path, text)).irc.port == 6321


def test_irc_topics_round_trip_as_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[irc]\ntopics = { lobby = "say \\"hi\\"", team = "" }\n')
    cfg = config.load(path)
    assert 'topics = {"lobby" = "say \\"hi\\"", "team" = ""}' in config.render_toml(cfg)
    assert round_trip(cfg) == cfg
    assert config.to_mapping(cfg)["irc"]["topics"] == {"lobby": 'say "hi"', "team": ""}


def test_irc_listen_keys_need_a_restart_but_motd_and_topics_reload() -> None:
    for key in ("enabled", "host", "port", "server_name", "network"):
        assert f"irc.{key}" in config.RESTART_KEYS
    assert "irc.motd" not in config.RESTART_KEYS
    assert "irc.topics" not in config.RESTART_KEYS
    new = config.with_overrides(Config(), irc={"motd": "hi", "topics": {"lobby": "t"}})
    assert [c[0] for c in config.diff(Config(), new)] == ["irc.motd", "irc.topics"]
