"""The listening socket, the accept loop, limits and the server's lifecycle.

``ChatServer(cfg)`` binds at construction (so a daemon can bind before it
detaches and errors reach the terminal).  ``serve_forever()`` runs the accept
loop in the calling thread until ``request_stop()`` (or a signal handler
setting ``stop_requested``) and then drains and closes every session before it
returns.  There is exactly one way to stop: every path sets the flag and the
loop does the rest.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Optional

from chatsvc import logsetup, protocol
from chatsvc.config import Config
from chatsvc.errors import StartupError
from chatsvc.hub import Hub
from chatsvc.outbound import OutboundWriter
from chatsvc.session import Session
from chatsvc.wakeup import WakePipe

# Reader threads only parse lines and call the hub; a small stack keeps the
# address space of 10,000 threads modest (RSS is what they touch, not this).
THREAD_STACK_SIZE = 512 * 1024
HOUSEKEEPING_INTERVAL = 1.0
ACCEPT_BATCH = 256

REFUSAL_TEXT = {
    "server_full": "server full, try again later",
    "per_ip_limit": "too many connections from your address",
    "shutting_down": "server shutting down",
}


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class ChatServer:
    def __init__(self, cfg: Config, listener: Optional[socket.socket] = None) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.writer = OutboundWriter(self.lock)
        self.hub = Hub(cfg, self.writer, self.lock)
        self.listener = listener or bind_listener(
            cfg.server.host, cfg.server.port, cfg.server.listen_backlog
        )
        self.listener.setblocking(False)
        self.stop_requested = False
        self.stop_reason: Optional[str] = None
        self.stop_delay = 0.0
        self._wake = WakePipe()
        self._threads: dict[threading.Thread, None] = {}
        self._threads_lock = threading.Lock()
        self.started = threading.Event()
        self.stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def wakeup_fd(self) -> int:
        """For ``signal.set_wakeup_fd``: a signal then wakes the accept loop at once."""
        return self._wake.write_fd

    # --- stopping: every path ends here ------------------------------------------------

    def request_stop(self, reason: Optional[str] = None, delay: float = 0.0) -> None:
        """Ask the accept loop to stop (thread-safe; not for signal handlers)."""
        self.stop_reason = reason
        self.stop_delay = delay
        self.stop_requested = True
        self._wake.wake()

    # --- the loop ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        threading.stack_size(THREAD_STACK_SIZE)
        self.writer.start()
        host, port = self.address
        logsetup.log.info(
            "server_started",
            message=f"Server started on {host}:{port}",
            host=host,
            port=port,
            rooms=list(self.cfg.rooms.names),
            pid=os.getpid(),
        )
        self.started.set()
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._wake.read_fd, select.POLLIN)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            while not self.stop_requested:
                timeout = max(0.0, next_housekeeping - time.monotonic())
                for fd, _ in poller.poll(timeout * 1000):
                    if fd == self._wake.read_fd:
                        self._wake.drain()
                    elif not self.stop_requested:
                        self._accept_batch()
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
        finally:
            self._shutdown()

    def _accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                logsetup.log.error("accept_failed", error=exc.strerror)
                return
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        addr, port = str(peer[0]), int(peer[1])
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self.hub, conn, addr, port)
        refused = self.hub.add(session)
        if refused is not None:
            logsetup.log.warning("client_rejected", addr=addr, port=port, reason=refused)
            try:
                conn.send(protocol.error(REFUSAL_TEXT[refused]), socket.MSG_DONTWAIT)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
            return
        logsetup.log.info("client_connected", addr=addr, port=port, clients=self.hub.count())
        thread = threading.Thread(target=self._run_session, args=(session,), daemon=True)
        with self._threads_lock:
            self._threads[thread] = None
        try:
            thread.start()
        except RuntimeError as exc:  # cannot start a thread: refuse this one
            with self._threads_lock:
                del self._threads[thread]
            logsetup.log.error("thread_start_failed", error=str(exc))
            self.hub.remove(session, "error")

    def _run_session(self, session: Session) -> None:
        try:
            session.run()
        finally:
            with self._threads_lock:
                self._threads.pop(threading.current_thread(), None)

    def _housekeeping(self, now: float) -> None:
        limits = self.hub.cfg.limits
        for m in self.hub.reap(now, limits.idle_timeout, limits.login_timeout):
            logsetup.log.info("client_timeout", name=m.name, addr=m.addr, reason=m.closing)

    def session_threads(self) -> int:
        with self._threads_lock:
            return len(self._threads)

    # --- the drain ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = self.cfg.server.shutdown_grace
        clients = self.hub.count()
        logsetup.log.info("server_stopping", clients=clients, reason=self.stop_reason, grace=grace)
        self.listener.close()
        final = protocol.shutdown_notice(self.stop_delay or None, self.stop_reason)
        self.hub.begin_shutdown(final)
        deadline = time.monotonic() + grace
        forced = not self._wait_sessions_gone(deadline)
        if forced:
            self.hub.force_close_all()
            self._wait_sessions_gone(time.monotonic() + 2.0)
        self.writer.stop()
        left = self.session_threads()
        stats = self.hub.stats()
        logsetup.log.info(
            "server_stopped",
            clients_at_stop=clients,
            forced=forced,
            threads_left=left,
            messages_in=stats["messages_in"],
            connections=stats["connections"],
        )
        self._wake.close()
        self.stopped.set()

    def _wait_sessions_gone(self, deadline: float) -> bool:
        while True:
            with self._threads_lock:
                threads = list(self._threads)
            if not threads:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            threads[0].join(min(remaining, 0.1))
