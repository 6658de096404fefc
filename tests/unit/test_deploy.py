"""The packaged systemd units and config agree with each other and with the server."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from chatsvc import accounts, adminpath, config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections of key -> every value assigned, in order (systemd allows repeats)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(DEPLOY / "chatsvc.service")["Service"]


@pytest.fixture(scope="module")
def packaged() -> config.Config:
    return config.load(DEPLOY / "chatsvc.toml")


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values is not None, f"{key}= is not set"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "").isdigit():
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_notify_type_with_the_main_process_notifying(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"


def test_exec_lines(service: dict[str, list[str]]) -> None:
    assert shlex.split(one(service, "ExecStart")) == [
        "/opt/chatsvc/venv/bin/chatsvc",
        "--config",
        str(config.SYSTEM_CONFIG),
    ]
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_stop_timeout_covers_the_drain(
    service: dict[str, list[str]], packaged: config.Config
) -> None:
    # The drain takes up to shutdown_grace, then up to 2 s to force-close.
    timeout = seconds(one(service, "TimeoutStopSec"))
    assert timeout > config.ServerConfig().shutdown_grace + 2
    assert timeout > packaged.server.shutdown_grace + 2


def test_watchdog_leaves_room_for_the_housekeeping_tick(service: dict[str, list[str]]) -> None:
    if "WatchdogSec" in service:
        # pinged at half the interval from a 1 s tick
        assert seconds(one(service, "WatchdogSec")) >= 10


def test_restart_policy(service: dict[str, list[str]]) -> None:
    assert one(service, "Restart") == "on-failure"
    assert "2" in one(service, "RestartPreventExitStatus").split()  # bad config


def test_admin_socket_lives_in_the_runtime_directory(
    service: dict[str, list[str]], packaged: config.Config
) -> None:
    runtime = one(service, "RuntimeDirectory")
    assert one(service, "RuntimeDirectoryMode") == "0750"
    assert one(service, "ConfigurationDirectory") == "chatsvc"
    assert packaged.admin.socket == f"/run/{runtime}/{adminpath.SOCKET_NAME}"
    assert packaged.admin.socket == adminpath.PACKAGED_SOCKET
    env = {"RUNTIME_DIRECTORY": f"/run/{runtime}"}
    assert adminpath.resolve_socket("", for_client=False, environ=env) == packaged.admin.socket


def test_the_account_store_lives_in_the_state_directory(service: dict[str, list[str]]) -> None:
    state = one(service, "StateDirectory")
    assert state == "chatsvc" and one(service, "StateDirectoryMode") == "0700"
    # ProtectSystem=strict makes everything else read-only; StateDirectory= stays writable.
    assert one(service, "ProtectSystem") == "strict"
    assert "ReadOnlyPaths" not in service and "InaccessiblePaths" not in service
    env = {"STATE_DIRECTORY": f"/var/lib/{state}"}
    path = accounts.store_path(config.AuthConfig(), "/etc/chatsvc/chatsvc.toml", env)
    assert path == f"/var/lib/{state}/accounts.db"


def test_admin_group_can_reach_the_socket(
    service: dict[str, list[str]], packaged: config.Config
) -> None:
    # RuntimeDirectory= is owned User:Group with mode 0750: only that group can enter it.
    assert one(service, "User") == "chatsvc"
    assert one(service, "Group") == packaged.admin.group == "chatsvc"
    assert packaged.admin.mode & 0o060 == 0o060
    assert "DynamicUser" not in service
    # In a user namespace SO_PEERCRED would show operators as "nobody".
    assert service.get("PrivateUsers", ["no"]) == ["no"]


def test_the_server_may_give_its_socket_a_group(service: dict[str, list[str]]) -> None:
    filters = service["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert "@chown" in filters[filters.index("~@privileged @resources") + 1 :]
    assert one(service, "SystemCallErrorNumber") == "EPERM"


def test_sized_for_thousands_of_clients(service: dict[str, list[str]]) -> None:
    clients = config.ServerConfig().max_clients
    assert int(one(service, "LimitNOFILE")) > clients
    tasks = one(service, "TasksMax")
    assert tasks == "infinity" or int(tasks) > clients  # one thread per client


def test_hardening(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "UMask": "0077",
    }
    assert {k: service.get(k, ["<unset>"])[-1] for k in expected} == expected
    families = set(one(service, "RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}  # AF_UNIX: admin and notify sockets
    assert "PYTHONUNBUFFERED=1" in one(service, "Environment").split()


def test_socket_unit_matches_the_packaged_config(packaged: config.Config) -> None:
    unit = parse_unit(DEPLOY / "chatsvc.socket")
    assert unit["Socket"]["ListenStream"] == [f"{packaged.server.host}:{packaged.server.port}"]
    assert unit["Socket"].get("Accept", ["no"]) == ["no"]  # one server, not one per connection
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


def test_packaged_config_is_valid_and_logs_json(packaged: config.Config) -> None:
    assert packaged.logging.format == "json"


def test_ci_check_script_is_executable() -> None:
    script = DEPLOY.parent / ".ci" / "systemd-checks"
    assert os.access(script, os.X_OK)
