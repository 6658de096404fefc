"""Where the admin socket lives: one lookup shared by the server and ``chatsvc-admin``.

The order is documented in docs/admin.md ("Where the socket is").  Both sides
call :func:`resolve_socket`; the server then prepares the directory of the
fallback locations with :func:`ensure_private_dir`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Optional

from chatsvc.errors import StartupError

SOCKET_NAME = "admin.sock"
# Where the packaged unit puts it (RuntimeDirectory=chatsvc); only the CLI looks here,
# because the server run by systemd finds it through $RUNTIME_DIRECTORY.
PACKAGED_SOCKET = "/run/chatsvc/admin.sock"
# Fixed rather than $TMPDIR: the server and the CLI must agree without sharing an environment.
TEMP_ROOT = "/tmp"


def resolve_socket(
    cfg_socket: str,
    *,
    for_client: bool,
    environ: Optional[Mapping[str, str]] = None,
    uid: Optional[int] = None,
) -> str:
    """The admin socket path: the first of the documented locations that applies."""
    env = os.environ if environ is None else environ
    if cfg_socket:
        return cfg_socket
    # systemd joins several RuntimeDirectory= entries with ':'; ours is the first.
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if os.path.isabs(runtime):
        return os.path.join(runtime, SOCKET_NAME)
    if for_client and _present(PACKAGED_SOCKET):
        return PACKAGED_SOCKET
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "chatsvc", SOCKET_NAME)
    owner = os.getuid() if uid is None else uid
    return os.path.join(TEMP_ROOT, f"chatsvc-{owner}", SOCKET_NAME)


def _present(path: str) -> bool:
    """True if ``path`` exists, or may exist behind a directory we cannot search.

    An operator outside the admin group cannot stat /run/chatsvc/admin.sock; the
    connect then fails with "permission denied", which says more than looking
    elsewhere and reporting "no socket".
    """
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def ensure_private_dir(directory: str, uid: Optional[int] = None) -> None:
    """Create ``directory`` with mode 0700 if missing; refuse one others could control.

    For the fallback locations under ``$XDG_RUNTIME_DIR`` and the shared temp dir,
    where another user could have created the directory first.
    """
    owner = os.getuid() if uid is None else uid
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StartupError(
            f"cannot create the admin socket directory {directory}: {exc.strerror}"
        ) from None
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or st.st_mode & 0o077:
        raise StartupError(
            f"admin socket directory {directory} is not a directory private to uid {owner} "
            "(mode 0700); remove it or set [admin] socket"
        )
