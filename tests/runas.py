"""Run ``chatsvc-admin`` as another user, for tests of the admin channel's access checks."""

from __future__ import annotations

import os
import select
import sys
import time
import warnings

from chatsvc.admin_cli import main

NOBODY = 65534


def run_main_as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run main() in a forked child that dropped to uid/gid 65534; (exit code, stderr)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: child is brief
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(r)
            sys.stderr = sys.stdout = open(w, "w", buffering=1)  # noqa: SIM115
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + 20
    with os.fdopen(r, "rb") as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("child did not finish")
            data = os.read(pipe.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()
