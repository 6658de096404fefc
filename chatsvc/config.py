"""Configuration: one home per setting, with its default and its validator.

``load(path)`` reads a TOML file and returns a frozen :class:`Config`; any problem
raises :class:`ConfigError` naming the file, the key, what was expected and what
was found.  ``find_config_path`` implements the lookup order documented in the
README (``--config``, ``$CHATSVC_CONFIG``, ``/etc/chatsvc/chatsvc.toml``,
built-in defaults).
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from chatsvc.errors import ConfigError
from chatsvc.protocol import NAME_RE, text_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the oldest supported Python
    import tomli as tomllib

SYSTEM_CONFIG = Path("/etc/chatsvc/chatsvc.toml")
ENV_CONFIG = "CHATSVC_CONFIG"
DEFAULT_ROOMS = ("lobby", "work", "support", "team")
RESERVED_ROOMS = frozenset({"private"})
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
# Settings a running server cannot take over on reload: reported, never half-applied.
RESTART_KEYS = frozenset(
    {
        "server.host",
        "server.port",
        "server.listen_backlog",
        "rooms.names",
        "rooms.default",
        "admin.socket",
        "admin.mode",
        "admin.group",
        "cluster.backend",
        "cluster.password_file",
        "cluster.node_id",
        "cluster.key_prefix",
        "cluster.lease",
        "cluster.heartbeat",
        "cluster.history",
        "cluster.publish_queue",
        "irc.enabled",
        "irc.host",
        "irc.port",
        "irc.server_name",
        "irc.network",
        "irc.plain",
        "irc.tls_port",
        "server.plain",
        "tls.host",
        "tls.port",
        "auth.store",
    }
)
TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 6321
    max_clients: int = 10000
    max_clients_per_ip: int = 100
    listen_backlog: int = 1024
    shutdown_grace: float = 5.0
    plain: bool = True  # false: no plain-text listener (TLS only, docs/tls.md)


@dataclass(frozen=True)
class RoomsConfig:
    names: tuple[str, ...] = DEFAULT_ROOMS
    default: str = "lobby"
    announce_limit: int = 100


@dataclass(frozen=True)
class LimitsConfig:
    max_line_bytes: int = 2048
    name_max_length: int = 32
    send_queue_bytes: int = 65536
    flood_rate: float = 5.0
    flood_burst: int = 20
    flood_strikes: int = 20
    idle_timeout: float = 3600.0
    login_timeout: float = 30.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"
    log_messages: bool = False


@dataclass(frozen=True)
class AdminConfig:
    socket: str = ""
    mode: int = 0o660
    group: str = ""
    uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """``backend`` empty: the embedded single-process mode (no Redis at all)."""

    backend: str = ""
    password_file: str = ""  # empty: $CREDENTIALS_DIRECTORY/redis-password if present
    node_id: str = ""  # empty: HOST:PORT of the listener
    key_prefix: str = "chatsvc:"
    lease: float = 3.0
    heartbeat: float = 1.0
    history: int = 10000
    publish_queue: int = 10000
    unavailable_after: float = 5.0


@dataclass(frozen=True)
class IrcConfig:
    """The IRC listener (docs/irc.md); off by default."""

    enabled: bool = False
    host: str = ""  # empty: the [server] host
    port: int = 6667
    server_name: str = "chatsvc"
    network: str = "chatsvc"
    motd: str = ""  # empty: clients get 422 (no MOTD)
    topics: tuple[tuple[str, str], ...] = ()  # (room, topic); a table in the file
    plain: bool = True  # false: IRC over TLS only
    tls_port: int = -1  # -1: no IRC-over-TLS listener; usually 6697 ([tls] cert and key)

    def topic(self, room: str) -> str:
        return next((t for r, t in self.topics if r == room), "")


@dataclass(frozen=True)
class TlsConfig:
    """TLS listeners (docs/tls.md); on only when ``cert`` and ``key`` are both set."""

    host: str = ""  # empty: the [server] host
    port: int = 6322  # the line protocol over TLS; -1: none (IRC over TLS only)
    cert: str = ""  # PEM: the certificate, then its chain
    key: str = ""  # PEM private key
    client_ca: str = ""  # set: client certificates are required and verified against it
    handshake_timeout: float = 10.0
    min_version: str = "1.2"

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


@dataclass(frozen=True)
class AuthConfig:
    """Accounts (docs/accounts.md); ``open``: no passwords at all (the default)."""

    mode: str = "open"  # open, registered, required
    store: str = ""  # empty: $STATE_DIRECTORY/accounts.db or the documented default
    allow_plaintext: bool = False  # passwords over plain TCP from other hosts
    free_failures: int = 3  # failed logins per address / account before delays start
    throttle_base: float = 1.0  # the first delay; each further failure doubles it
    throttle_cap: float = 300.0  # the longest delay
    throttle_forget: float = 900.0  # a key that stops failing is forgotten after this


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    irc: IrcConfig = field(default_factory=IrcConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    source: Optional[str] = None  # the file it came from; None for built-in defaults


# --- validators -------------------------------------------------------------
# Each takes (raw value, bad) and returns the value to store.  ``bad(expected)``
# returns the ConfigError (file, key, expected, found) for the validator to raise.

Bad = Callable[[str], ConfigError]
Validator = Callable[[Any, Bad], Any]


def _int(lo: int, hi: int) -> Validator:
    def check(v: Any, bad: Bad) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(f"an integer from {lo} to {hi}")
        return v

    return check


def _number(lo: float, hi: float) -> Validator:
    def check(v: Any, bad: Bad) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise bad(f"a number from {lo:g} to {hi:g}")
        return float(v)

    return check


def _bool(v: Any, bad: Bad) -> bool:
    if not isinstance(v, bool):
        raise bad("true or false")
    return v


def _choice(*options: str) -> Validator:
    def check(v: Any, bad: Bad) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            raise bad("one of " + ", ".join(f'"{o}"' for o in options))
        return v.lower()

    return check


def _host(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or not v:
        raise bad('an IP address or host name, e.g. "127.0.0.1"')
    try:
        ipaddress.ip_address(v)
    except ValueError:
        labels = v.rstrip(".").split(".")
        if not all(lbl and len(lbl) <= 63 and lbl.replace("-", "").isalnum() for lbl in labels):
            raise bad('an IP address or host name, e.g. "127.0.0.1"') from None
    return v


def _str(v: Any, bad: Bad) -> str:
    if not isinstance(v, str):
        raise bad("a string")
    return v


def _path(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or "\0" in v or (v and not v.strip()):
        raise bad('a file path (relative to the config file\'s directory), or "" for the default')
    return v


def _room_name(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v) or len(v) > 32:
        raise bad("a room name of 1-32 letters, digits, '_', '-', '.'")
    if v.lower() in RESERVED_ROOMS:
        raise bad(f"a room name other than the reserved {sorted(RESERVED_ROOMS)}")
    return v


def _room_list(v: Any, bad: Bad) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise bad("a non-empty list of room names")
    names = tuple(_room_name(n, bad) for n in v)
    folded = [n.casefold() for n in names]
    dupes = sorted({n for n in folded if folded.count(n) > 1})
    if dupes:
        raise bad(f"room names without duplicates (duplicated: {', '.join(dupes)})")
    return names


def _mode(v: Any, bad: Bad) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o777 or v & 0o007:
        raise bad("a file mode like 0o660 with no permissions for others")
    return v


def _uids(v: Any, bad: Bad) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in v
    ):
        raise bad("a list of numeric user ids")
    return tuple(v)


_BACKEND_SCHEMES = ("redis://", "rediss://", "unix://")
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def _backend(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or (v and not v.startswith(_BACKEND_SCHEMES)):
        raise bad('a Redis URL: "redis://HOST:PORT/DB", "rediss://..." or "unix:///PATH"')
    if v and any(c.isspace() for c in v):
        raise bad("a Redis URL without spaces")
    # chatsvc reads RESP2 replies; redis-py 7.0 ignores "protocol=3" or fails on
    # it over a Unix socket, 7.1+ switches and changes the shape of replies.
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(v).query)
    if any(p != "2" for p in query.get("protocol", [])):
        raise bad("a Redis URL without protocol=3 (chatsvc speaks RESP2)")
    return v


def _pattern(rx: re.Pattern[str], what: str) -> Validator:
    def check(v: Any, bad: Bad) -> str:
        if not isinstance(v, str) or (v and not rx.fullmatch(v)):
            raise bad(what)
        return v

    return check


def _optional_host(v: Any, bad: Bad) -> str:
    if v == "":
        return ""
    try:
        return str(_host(v, bad))
    except ConfigError:
        raise bad('an IP address or host name, or "" for the [server] host') from None


def _pem_path(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or "\0" in v or (v and not os.path.isabs(v)):
        raise bad('an absolute path to a PEM file, or "" for none')
    return v


def _tls_version(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or v not in TLS_VERSIONS:
        raise bad('"1.2" or "1.3" (nothing older is offered)')
    return v


_SERVER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
_NETWORK_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
MAX_TOPIC = 300  # characters; an IRC line is 512 bytes with the prefix and numerics
MAX_MOTD_LINE = 300


def _server_name(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or not _SERVER_NAME_RE.fullmatch(v):
        raise bad("a server name of letters, digits, '.' and '-' (at most 63)")
    return v


def _network(v: Any, bad: Bad) -> str:
    if not isinstance(v, str) or not _NETWORK_RE.fullmatch(v):
        raise bad("a network name of 1-32 letters, digits, '.', '_', '-'")
    return v


def _motd(v: Any, bad: Bad) -> str:
    if not isinstance(v, str):
        raise bad("a string (lines separated by newlines; empty for none)")
    for line in v.split("\n"):
        if len(line) > MAX_MOTD_LINE or text_problem(line):
            raise bad(f"lines of at most {MAX_MOTD_LINE} characters without control characters")
    return v


def _topics(v: Any, bad: Bad) -> tuple[tuple[str, str], ...]:
    expected = f"a table of room = topic (at most {MAX_TOPIC} characters, no control characters)"
    if not isinstance(v, dict):
        raise bad(expected)
    out = []
    for room, topic in v.items():
        if not isinstance(topic, str) or len(topic) > MAX_TOPIC or text_problem(topic):
            raise bad(expected)
        out.append((_room_name(room, bad), topic))
    return tuple(out)


SCHEMA: dict[str, tuple[type[Any], dict[str, Validator]]] = {
    "server": (
        ServerConfig,
        {
            "host": _host,
            "port": _int(0, 65535),
            "max_clients": _int(1, 1_000_000),
            "max_clients_per_ip": _int(0, 1_000_000),
            "listen_backlog": _int(1, 65535),
            "shutdown_grace": _number(0, 3600),
            "plain": _bool,
        },
    ),
    "rooms": (
        RoomsConfig,
        {"names": _room_list, "default": _room_name, "announce_limit": _int(0, 1_000_000)},
    ),
    "limits": (
        LimitsConfig,
        {
            "max_line_bytes": _int(64, 1_048_576),
            "name_max_length": _int(1, 64),
            "send_queue_bytes": _int(4096, 1 << 30),
            "flood_rate": _number(0.01, 1e9),
            "flood_burst": _int(1, 1_000_000_000),
            "flood_strikes": _int(0, 1_000_000),
            "idle_timeout": _number(0, 30 * 86400),
            "login_timeout": _number(1, 3600),
        },
    ),
    "logging": (
        LoggingConfig,
        {
            "level": _choice(*LOG_LEVELS),
            "format": _choice(*LOG_FORMATS),
            "log_messages": _bool,
        },
    ),
    "admin": (
        AdminConfig,
        {"socket": _str, "mode": _mode, "group": _str, "uids": _uids},
    ),
    "cluster": (
        ClusterConfig,
        {
            "backend": _backend,
            "password_file": _str,
            "node_id": _pattern(_NODE_ID_RE, "1-64 letters, digits, '_', '-', '.', ':'"),
            "key_prefix": _pattern(_PREFIX_RE, "1-64 letters, digits, '_', '-', '.', ':'"),
            "lease": _number(0.5, 600),
            "heartbeat": _number(0.05, 60),
            "history": _int(100, 10_000_000),
            "publish_queue": _int(1, 10_000_000),
            "unavailable_after": _number(0.1, 3600),
        },
    ),
    "irc": (
        IrcConfig,
        {
            "enabled": _bool,
            "host": _optional_host,
            "port": _int(0, 65535),
            "server_name": _server_name,
            "network": _network,
            "motd": _motd,
            "topics": _topics,
            "plain": _bool,
            "tls_port": _int(-1, 65535),
        },
    ),
    "tls": (
        TlsConfig,
        {
            "host": _optional_host,
            "port": _int(-1, 65535),
            "cert": _pem_path,
            "key": _pem_path,
            "client_ca": _pem_path,
            "handshake_timeout": _number(0.5, 600),
            "min_version": _tls_version,
        },
    ),
    "auth": (
        AuthConfig,
        {
            "mode": _choice("open", "registered", "required"),
            "store": _path,
            "allow_plaintext": _bool,
            "free_failures": _int(0, 1000),
            "throttle_base": _number(0, 3600),
            "throttle_cap": _number(0, 86400),
            "throttle_forget": _number(1, 30 * 86400),
        },
    ),
}

TABLE_KEYS = frozenset({"topics"})  # stored as pairs, written as a TOML table


OCTAL_KEYS = frozenset({"mode"})  # shown as 0o660, in errors and in render_toml


MAX_DESCRIBED = 80  # characters of a bad value quoted in an error


def _describe(v: Any, key: str = "") -> str:
    text = _describe_value(v, key)
    return text if len(text) <= MAX_DESCRIBED else text[: MAX_DESCRIBED - 3] + "..."


def _describe_value(v: Any, key: str = "", depth: int = 0) -> str:
    if depth > 3:
        return "..."
    if key in OCTAL_KEYS and isinstance(v, int) and not isinstance(v, bool):
        return oct(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        items = [_describe_value(x, "", depth + 1) for x in v[:10]]
        return "[" + ", ".join(items + (["..."] if len(v) > 10 else [])) + "]"
    return repr(v)


def from_mapping(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Validate a parsed TOML document (or any mapping of the same shape)."""
    where = source or "<built-in>"
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(
                where,
                section,
                "one of the sections " + ", ".join(f"[{s}]" for s in SCHEMA),
                "an unknown section",
            )
        if not isinstance(body, dict):
            raise ConfigError(where, section, "a table", _describe(body))
        cls, validators = SCHEMA[section]
        values: dict[str, Any] = {}
        for key, raw in body.items():
            dotted = f"{section}.{key}"
            if key not in validators:
                raise ConfigError(
                    where, dotted, "one of " + ", ".join(validators), "an unknown key"
                )

            def bad(
                expected: str, dotted: str = dotted, raw: Any = raw, key: str = key
            ) -> ConfigError:
                return ConfigError(where, dotted, expected, _describe(raw, key))

            values[key] = validators[key](raw, bad)
        sections[section] = cls(**values)
    cfg = Config(**sections, source=source)
    if cfg.cluster.backend and cfg.cluster.heartbeat * 2 > cfg.cluster.lease:
        raise ConfigError(
            where,
            "cluster.heartbeat",
            f"at most half of cluster.lease ({cfg.cluster.lease:g} s)",
            f"{cfg.cluster.heartbeat:g}",
        )
    if cfg.rooms.default not in cfg.rooms.names:
        raise ConfigError(
            where,
            "rooms.default",
            "one of the rooms in rooms.names (" + ", ".join(cfg.rooms.names) + ")",
            repr(cfg.rooms.default),
        )
    _check_irc(cfg, where)
    _check_tls(cfg, where)
    if cfg.auth.throttle_cap < cfg.auth.throttle_base:
        raise ConfigError(
            where,
            "auth.throttle_cap",
            f"at least auth.throttle_base ({cfg.auth.throttle_base:g} s)",
            f"{cfg.auth.throttle_cap:g}",
        )
    return cfg


def _check_tls(cfg: Config, where: str) -> None:
    """Cross-section checks of [tls]: both files or neither, a listener left, distinct ports."""
    tls = cfg.tls
    if bool(tls.cert) != bool(tls.key):
        missing = "tls.key" if tls.cert else "tls.cert"
        raise ConfigError(where, missing, "set as well (tls.cert and tls.key go together)", '""')
    if tls.client_ca and not tls.enabled:
        raise ConfigError(where, "tls.client_ca", "tls.cert and tls.key set too", "them unset")
    if not cfg.server.plain and not (tls.enabled and tls.port >= 0):
        raise ConfigError(
            where,
            "server.plain",
            "true unless a TLS listener is configured (tls.cert, tls.key, tls.port)",
            "false",
        )
    if cfg.irc.enabled and not cfg.irc.plain and not (tls.enabled and cfg.irc.tls_port >= 0):
        raise ConfigError(
            where,
            "irc.plain",
            "true unless irc.tls_port and tls.cert/tls.key are set",
            "false",
        )
    if cfg.irc.enabled and cfg.irc.tls_port >= 0 and not tls.enabled:
        raise ConfigError(
            where, "irc.tls_port", "-1 unless tls.cert and tls.key are set", str(cfg.irc.tls_port)
        )
    # Every listener that will exist needs a port of its own (0 = any free port).
    ports: list[tuple[str, str, int]] = []
    if cfg.server.plain:
        ports.append(("server.port", cfg.server.host, cfg.server.port))
    if tls.enabled and tls.port >= 0:
        ports.append(("tls.port", tls.host or cfg.server.host, tls.port))
    if cfg.irc.enabled:
        irc_host = cfg.irc.host or cfg.server.host
        if cfg.irc.plain:
            ports.append(("irc.port", irc_host, cfg.irc.port))
        if tls.enabled and cfg.irc.tls_port >= 0:
            ports.append(("irc.tls_port", irc_host, cfg.irc.tls_port))
    seen: dict[tuple[str, int], str] = {}
    for key, host, port in ports:
        if port and (host, port) in seen:
            raise ConfigError(
                where, key, f"a port other than {seen[(host, port)]} ({port})", str(port)
            )
        seen[(host, port)] = key


def _check_irc(cfg: Config, where: str) -> None:
    """Cross-section checks of [irc]: topics for existing rooms, a port of its own."""
    for room, _ in cfg.irc.topics:
        if room not in cfg.rooms.names:
            raise ConfigError(
                where,
                f"irc.topics.{room}",
                "a room in rooms.names (" + ", ".join(cfg.rooms.names) + ")",
                repr(room),
            )
    irc, server = cfg.irc, cfg.server
    if irc.enabled and irc.port and irc.port == server.port and irc.host in ("", server.host):
        raise ConfigError(
            where, "irc.port", f"a port other than server.port ({server.port})", str(irc.port)
        )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate one TOML file."""
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(where, "-", "an existing TOML file", "no such file") from None
    except PermissionError:
        raise ConfigError(where, "-", "a readable file", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(where, "-", "a TOML file", "a directory") from None
    except OSError as exc:  # a name too long, a loop of links, an I/O error, ...
        raise ConfigError(where, "-", "a readable file", exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "-", "valid TOML", str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(where, "-", "UTF-8 TOML text", "undecodable bytes") from None
    except RecursionError:  # the TOML parser recurses once or twice per level
        raise ConfigError(
            where, "-", "TOML nested a few levels deep", "arrays or tables nested too deeply"
        ) from None
    return from_mapping(data, where)


def admin_group_id(cfg: Config) -> Optional[int]:
    """The gid of ``[admin] group`` (None if unset); ConfigError if no such group.

    Checked against this machine, so by ``--check-config`` and at start, not by ``load``
    (``chatsvc-admin`` reads the same file and needs no group).
    """
    name = cfg.admin.group
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(
            cfg.source or "<built-in>", "admin.group", "an existing group", repr(name)
        ) from None


def find_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The file to read, by the documented lookup order; None means built-in defaults."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get(ENV_CONFIG):
        return env[ENV_CONFIG]
    try:
        present = SYSTEM_CONFIG.is_file()
    except OSError:  # cannot look into /etc/chatsvc: let load() say so
        present = True
    return str(SYSTEM_CONFIG) if present else None


def load_effective(explicit: str | None) -> Config:
    path = find_config_path(explicit)
    return load(path) if path else Config()


def with_overrides(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy with some values replaced, validated like file values."""
    data = to_mapping(cfg)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_mapping(data, cfg.source)


def to_mapping(cfg: Config) -> dict[str, dict[str, Any]]:
    """The effective settings as plain data (lists for tuples), e.g. for printing."""
    out: dict[str, dict[str, Any]] = {}
    for section in SCHEMA:
        values = dataclasses.asdict(getattr(cfg, section))
        out[section] = {
            k: dict(v) if k in TABLE_KEYS else list(v) if isinstance(v, tuple) else v
            for k, v in values.items()
        }
    return out


def render_toml(cfg: Config) -> str:
    """The effective config as TOML text (what ``--check-config`` prints)."""
    lines = [f"# effective configuration (source: {cfg.source or 'built-in defaults'})"]
    for section, values in to_mapping(cfg).items():
        lines.append(f"\n[{section}]")
        for key, v in values.items():
            lines.append(f"{key} = {_toml_value(key, v)}")
    return "\n".join(lines) + "\n"


_TOML_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def _toml_value(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if key in OCTAL_KEYS and isinstance(v, int):
        return oct(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        escaped = _TOML_CONTROL.sub(lambda c: f"\\u{ord(c.group()):04x}", escaped)
        return '"' + escaped + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value("", x) for x in v) + "]"
    if isinstance(v, dict):
        items = [f"{_toml_value('', k)} = {_toml_value('', x)}" for k, x in v.items()]
        return "{" + ", ".join(items) + "}"
    return repr(v)


def diff(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every effective setting that differs."""
    a, b = to_mapping(old), to_mapping(new)
    return [(f"{s}.{k}", a[s][k], b[s][k]) for s in a for k in a[s] if a[s][k] != b[s][k]]
