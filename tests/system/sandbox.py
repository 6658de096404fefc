"""A real systemd as PID 1 of private namespaces, for the system tests.

:class:`Sandbox` boots ``/lib/systemd/systemd`` in new mount, pid, uts, ipc, net (only
``lo``) and cgroup namespaces, on a throw-away overlay of the host's ``/`` whose
changes live in a tmpfs of the sandbox's own mount namespace (sandbox-init.sh builds
it).  Units are installed, users added and packages pip-installed in there without
touching the host; everything is gone once the sandbox's PID 1 exits.

Host side, this module only: starts ``unshare`` (which dies, taking the sandbox with
it, if the test process dies), runs commands inside with ``nsenter``, opens TCP
connections from inside the sandbox's network namespace, and powers it off.  It kills
nothing but the processes it started, by pid.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, TypeVar

HERE = Path(__file__).resolve().parent
INIT = HERE / "sandbox-init.sh"
SYSTEMD = "/lib/systemd/systemd"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Nothing inside may load modules, set the clock, do raw I/O or read the kernel log.
DROP_CAPS = (
    "-sys_module,-sys_rawio,-sys_time,-sys_pacct,-syslog,-mac_admin,-mac_override,"
    "-wake_alarm,-block_suspend,-audit_read"
)
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "pivot_root", "mknod", "hostname")
CLONE_NEWNET = 0x40000000
POLL = 0.05

T = TypeVar("T")


class Unavailable(Exception):
    """This host cannot run the sandbox (the reason is the message)."""


def wait_for(
    what: str, check: Callable[[], Optional[T]], timeout: float, interval: float = POLL
) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def cgroup2_mount() -> Optional[str]:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4]
    return None


def check_host() -> str:
    """The cgroup2 mount point, or Unavailable saying what is missing."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (namespaces, mounts and a cgroup for systemd)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise Unavailable(f"missing tools: {', '.join(missing)} (util-linux)")
    if not os.access(SYSTEMD, os.X_OK):
        raise Unavailable(f"no systemd binary at {SYSTEMD}")
    with open("/proc/filesystems") as fh:
        if "overlay" not in fh.read().split():
            raise Unavailable("the kernel has no overlayfs (modprobe overlay)")
    cg2 = cgroup2_mount()
    if cg2 is None:
        raise Unavailable("no cgroup2 hierarchy is mounted")
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--cgroup", "--fork", "true"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        raise Unavailable(f"unshare cannot make namespaces here: {probe.stderr.strip()}")
    return cg2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def remove_cgroup_tree(top: Path) -> bool:
    """rmdir a cgroup and its children, deepest first; False while one has processes."""
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            return False
    return not top.exists()


class Sandbox:
    def __init__(self, name: str = "chatsvc-systest") -> None:
        cg2 = check_host()
        # left by a test process that was killed: named NAME.PID[.RANDOM]
        for stale in [*Path(cg2).glob(f"{name}.*"), *Path("/run").glob(f"{name}.*")]:
            pid = stale.name.split(".")[1]
            if pid.isdigit() and not _alive(int(pid)):
                if stale.parent == Path("/run"):
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    remove_cgroup_tree(stale)
        self.state = Path(tempfile.mkdtemp(prefix=f"{name}.{os.getpid()}.", dir="/run"))
        (self.state / "fs").mkdir()
        self.cgroup = Path(cg2) / f"{name}.{os.getpid()}"
        self.console = self.state / "console.log"
        self.launcher: Optional[subprocess.Popen[bytes]] = None
        self.pid = 0  # systemd, PID 1 inside, as the host sees it

    # --- life cycle -----------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> None:
        self.cgroup.mkdir()
        with open(self.console, "wb") as console:
            self.launcher = subprocess.Popen(
                [
                    "setpriv",
                    "--pdeathsig=KILL",
                    f"--bounding-set={DROP_CAPS}",
                    "--",
                    "unshare",
                    "--fork",
                    "--pid",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--propagation=private",
                    "--kill-child=SIGKILL",
                    "--",
                    "bash",
                    str(INIT),
                    "enter",
                    str(self.state),
                    str(self.cgroup),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = wait_for("systemd to be PID 1 of the sandbox", self._find_systemd, 10)

        def booted() -> Optional[str]:
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            if state.stdout.strip() in ("running", "degraded"):
                return state.stdout.strip()
            if not _alive(self.pid):
                raise AssertionError(f"systemd died while booting:\n{self.console_text()}")
            return None

        if wait_for("the sandbox to boot", booted, timeout, interval=0.2) == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False)
            raise AssertionError(f"the sandbox booted degraded:\n{failed.stdout}")

    def _find_systemd(self) -> Optional[int]:
        assert self.launcher is not None
        if self.launcher.poll() is not None:
            raise AssertionError(f"the sandbox did not start:\n{self.console_text()}")
        try:
            children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
            pids = [int(p) for p in children.read_text().split()]
        except (FileNotFoundError, ValueError):
            return None
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            except FileNotFoundError:
                pass
        return None

    def down(self, timeout: float = 30.0) -> None:
        """Power off (bounded), then SIGKILL what is left of what up() started."""
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
            try:
                wait_for("the sandbox to power off", lambda: not _alive(self.pid), timeout)
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)  # the whole pid namespace goes with it
        if self.launcher is not None:
            try:
                self.launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait(timeout=10)
        wait_for("the sandbox's cgroup to empty", lambda: remove_cgroup_tree(self.cgroup), 10)
        shutil.rmtree(self.state, ignore_errors=True)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # --- inside -----------------------------------------------------------------------

    def command(self, argv: Sequence[str], env: Optional[dict[str, str]] = None) -> list[str]:
        """The host command line that runs ``argv`` inside, as root, clean environment."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return [
            "nsenter",
            f"--target={self.pid}",
            "--all",
            "--root",
            "--wd",
            "--",
            "setpriv",
            f"--bounding-set={DROP_CAPS}",
            "--",
            "env",
            "-i",
            f"PATH={INNER_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "SYSTEMD_PAGER=cat",
            "SYSTEMD_COLORS=0",
            *extra,
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(argv, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"inside the sandbox, {' '.join(argv)!r} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a bash script inside (``set -euo pipefail``)."""
        return self.run(["bash", "-c", "set -euo pipefail\n" + script], **kwargs)  # type: ignore[arg-type]

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def copy_in(self, source: Path, target: str, exclude: Sequence[str] = ()) -> None:
        """Copy a host directory to ``target`` inside (a tar stream through nsenter)."""
        args = ["tar", "-c", "-C", str(source)]
        args += [f"--exclude={pattern}" for pattern in exclude]
        args.append(".")
        with subprocess.Popen(args, stdout=subprocess.PIPE) as tar:
            inside = subprocess.run(
                self.command(["sh", "-c", f"mkdir -p '{target}' && tar -x -C '{target}'"]),
                stdin=tar.stdout,
                capture_output=True,
                timeout=60,
            )
        if tar.returncode != 0 or inside.returncode != 0:
            raise AssertionError(f"copying {source} in failed: {inside.stderr!r}")

    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
        """A TCP connection made from inside the sandbox's network namespace.

        setns(CLONE_NEWNET) switches only the calling thread, so a short-lived
        thread makes the socket; the socket keeps its namespace wherever it is used.
        """
        box: list[object] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns: {os.strerror(err)}")
                finally:
                    os.close(fd)
                box.append(socket.create_connection((host, port), timeout=timeout))
            except OSError as exc:
                box.append(exc)

        thread = threading.Thread(target=inside, name="sandbox-netns")
        thread.start()
        thread.join(timeout + 5)
        if not box:
            raise AssertionError("connect from inside the sandbox did not finish")
        result = box[0]
        if isinstance(result, OSError):
            raise result
        assert isinstance(result, socket.socket)
        return result
