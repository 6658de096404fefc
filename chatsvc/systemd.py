"""systemd integration without libsystemd: readiness notification, watchdog, socket activation.

Every function is a no-op outside systemd.  ``notify`` sends one datagram to
``$NOTIFY_SOCKET`` (a path, or an abstract address written with a leading ``@``)
and never raises: a service must not die because its supervisor went away.

Under ``Type=notify`` the server calls ``ready()`` once it listens, ``status(text)``
as it likes, ``reloading()`` before re-reading its config and ``ready()`` again
after, and ``stopping()`` when the drain starts.  With ``WatchdogSec=`` set,
``watchdog_interval()`` says how often systemd expects ``watchdog_ping()`` (ping at
half of it or more often).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import Optional

from chatsvc.errors import StartupError

SD_LISTEN_FDS_START = 3
SEND_TIMEOUT = 1.0  # a full notify queue must not stall the accept loop for long


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True if it was sent."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):  # unset, or a transport we do not speak (vsock:...)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(state.encode("utf-8"), addr)
    except (OSError, ValueError):
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    """Reload started; send ``ready()`` when done.

    MONOTONIC_USEC is what systemd 253+ requires with ``Type=notify-reload``;
    older versions ignore the unknown field.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """Seconds within which systemd expects a ping, or None if there is no watchdog."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None  # meant for another process (our parent, before a fork)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def listen_fds(environ: Optional[MutableMapping[str, str]] = None) -> list[socket.socket]:
    """Sockets passed by socket activation (``LISTEN_FDS`` from fd 3), in order.

    Like ``sd_listen_fds(1)``, the variables are removed so that children do not
    inherit them, and the descriptors are made close-on-exec.  An empty list if
    they are absent, malformed or meant for another process.
    """
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    try:
        n, owner = int(count), int(pid)
    except ValueError:
        return []
    if owner != os.getpid() or n <= 0:
        return []
    socks: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        try:
            os.set_inheritable(fd, False)
            socks.append(socket.socket(fileno=fd))
        except OSError as exc:
            for s in socks:
                s.detach()  # not ours to close: leave the descriptors as they were
            raise StartupError(
                f"socket activation: descriptor {fd} from LISTEN_FDS={n} is unusable: "
                f"{exc.strerror or exc}"
            ) from None
    return socks
