"""The listening socket, the accept loop, limits and the server's lifecycle.

``ChatServer(cfg)`` binds at construction (so a daemon can bind before it
detaches and errors reach the terminal).  ``serve_forever()`` runs the accept
loop in the calling thread until ``request_stop()`` (or a signal handler
setting ``stop_requested``) and then drains and closes every session before it
returns.  There is exactly one way to stop: every path sets the flag and the
loop does the rest.
"""

from __future__ import annotations

import _thread
import errno
import functools
import os
import select
import signal
import socket
import ssl
import threading
import time
from typing import Any, Optional, Union

from chatsvc import config, events, irc, logsetup, systemd, tls
from chatsvc.accounts import Authenticator, StoreError
from chatsvc.admin import AdminServer
from chatsvc.config import Config
from chatsvc.dialects import LINE, Dialect
from chatsvc.errors import ConfigError, StartupError
from chatsvc.hub import Hub, Member
from chatsvc.outbound import Link, OutboundWriter
from chatsvc.session import Session
from chatsvc.wakeup import WakePipe, block_process_signals

# Reader threads only parse lines and call the hub; a small stack keeps the
# address space of 10,000 threads modest (RSS is what they touch, not this).
THREAD_STACK_SIZE = 512 * 1024
HOUSEKEEPING_INTERVAL = 1.0
STATUS_INTERVAL = 5.0
ACCEPT_BATCH = 256
KERNEL_SNDBUF = 65536  # the kernel doubles it for its bookkeeping
# Writer threads.  Sends release the GIL, so two writers overlap their syscalls
# on two cores: saturate R=50 S=5 delivered 1.01 M/s with two, 0.78 M/s with one
# (same run); fan-out latency was the same within noise.
WRITERS = 2
# Out of descriptors: stop polling the listener this long, and log the failures
# once per interval with a count instead of once per attempt.
ACCEPT_BACKOFF = 0.5
ACCEPT_LOG_INTERVAL = 5.0
# Reloaded without a restart only while TLS stays on (its listeners exist).
TLS_FILE_KEYS = frozenset({"tls.cert", "tls.key"})


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
    def __init__(
        self,
        cfg: Config,
        listener: Optional[socket.socket] = None,
        *,
        admin_path: Optional[str] = None,
        admin_private_dir: bool = False,
        config_path: Optional[str] = None,
        overrides: Optional[dict[str, dict[str, Any]]] = None,
    ) -> None:
        self.config_path = config_path
        self.overrides = overrides or {}
        self._reload_lock = threading.Lock()
        self.hub = Hub(cfg)  # holds the live config
        self.writers = [
            OutboundWriter(self.hub, name=f"chatsvc-writer-{i}") for i in range(WRITERS)
        ]
        # TLS (docs/tls.md): the context is built first, so a bad certificate
        # fails the start before anything listens.  New connections take the
        # current context; a reload replaces it.
        self.tls_context: Optional[ssl.SSLContext] = (
            tls.server_context(cfg.tls) if cfg.tls.enabled else None
        )
        # Every listener, polled by the same loop with the same limits, and its
        # kind: (speaks IRC, is TLS).  ``listener`` is the line protocol's: the
        # plain one, or the TLS one when the plain listener is off.
        self._kinds: dict[socket.socket, tuple[bool, bool]] = {}
        self.tls_listener: Optional[socket.socket] = None
        self.irc_listener: Optional[socket.socket] = None  # docs/irc.md
        self.irc_tls_listener: Optional[socket.socket] = None
        backlog = cfg.server.listen_backlog
        irc_host = cfg.irc.host or cfg.server.host
        try:
            if listener is not None and not cfg.server.plain and self.tls_context is not None:
                # socket activation of a TLS-only server: systemd's socket speaks TLS
                self.tls_listener = listener
                self._kinds[listener] = (False, True)
            elif cfg.server.plain or listener is not None:
                plain = listener or bind_listener(cfg.server.host, cfg.server.port, backlog)
                self._kinds[plain] = (False, False)
            if self.tls_context is not None and cfg.tls.port >= 0 and self.tls_listener is None:
                self.tls_listener = bind_listener(
                    cfg.tls.host or cfg.server.host, cfg.tls.port, backlog
                )
                self._kinds[self.tls_listener] = (False, True)
            if cfg.irc.enabled and cfg.irc.plain:
                self.irc_listener = bind_listener(irc_host, cfg.irc.port, backlog)
                self._kinds[self.irc_listener] = (True, False)
            if cfg.irc.enabled and self.tls_context is not None and cfg.irc.tls_port >= 0:
                self.irc_tls_listener = bind_listener(irc_host, cfg.irc.tls_port, backlog)
                self._kinds[self.irc_tls_listener] = (True, True)
        except BaseException:
            self._close_listeners()
            raise
        line = [sock for sock, (is_irc, _) in self._kinds.items() if not is_irc]
        self.listener = line[0] if line else next(iter(self._kinds))
        self.listener.setblocking(False)
        self.stop_requested = False  # set by signal handlers and request_stop: stop now
        self.reload_requested = False  # set by the SIGHUP handler
        self.stop_reason: Optional[str] = None
        self._stop_at: Optional[float] = None  # a countdown is running
        self._wake = WakePipe()
        # Reader threads alive; the drain waits for this to reach zero.
        self._live = 0
        self._live_lock = threading.Lock()
        self.started = threading.Event()
        # Out of descriptors: one kept in reserve to accept-and-refuse with, and
        # the listener rests until _accept_resume.
        self._reserve_fd: Optional[int] = _open_reserve()
        self._accept_resume = 0.0
        self._accept_failures = 0
        self._accept_logged = 0.0
        self._watchdog: Optional[float] = None
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self.cluster: Optional[Any] = None  # chatsvc.cluster.ClusterBackend, in cluster mode
        if cfg.cluster.backend:
            try:
                self._join_cluster(cfg)
            except BaseException:
                self._close_listeners()
                raise
        # Accounts (docs/accounts.md): the store opens at start unless the mode is "open".
        self.auth = Authenticator(lambda: self.hub.cfg)
        if cfg.auth.mode != "open":
            try:
                _ = self.auth.store
            except BaseException as exc:
                self._close_listeners()
                if isinstance(exc, StoreError):
                    raise StartupError(str(exc)) from None
                raise
        self.admin: Optional[AdminServer] = None
        if admin_path:
            try:
                self.admin = AdminServer(self, admin_path, admin_private_dir)
            except BaseException:
                self._close_listeners()
                raise

    def _close_listeners(self) -> None:
        for sock in self._kinds:
            sock.close()

    def _join_cluster(self, cfg: Config) -> None:
        """Cluster mode: Redis is imported only here (the embedded mode never loads it)."""
        try:
            from chatsvc import cluster
        except ImportError as exc:
            raise StartupError(
                f"[cluster] needs the redis package: pip install 'chatsvc[cluster]' ({exc})"
            ) from None
        host, port = self.address
        node_id = cfg.cluster.node_id or f"{host}:{port}"
        backend = cluster.ClusterBackend(self.hub, cfg.cluster, node_id, f"{host}:{port}")
        backend.start()
        self.hub.backend = backend
        self.cluster = backend

    @property
    def cfg(self) -> Config:
        """The live config (the hub holds it; a reload replaces it whole)."""
        return self.hub.cfg

    def config(self) -> Config:
        return self.hub.cfg

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def irc_address(self) -> Optional[tuple[str, int]]:
        return _address_of(self.irc_listener)

    @property
    def tls_address(self) -> Optional[tuple[str, int]]:
        return _address_of(self.tls_listener)

    @property
    def irc_tls_address(self) -> Optional[tuple[str, int]]:
        return _address_of(self.irc_tls_listener)

    @property
    def wakeup_fd(self) -> int:
        """For ``signal.set_wakeup_fd``: a signal then wakes the accept loop at once."""
        return self._wake.write_fd

    # --- stopping: every path ends here ------------------------------------------------

    def request_stop(self, reason: Optional[str] = None, delay: float = 0.0) -> None:
        """Ask the accept loop to stop, now or after ``delay`` seconds of countdown.

        Thread-safe; signal handlers set ``stop_requested`` instead.  A request
        without delay also cuts a running countdown short.
        """
        if reason is not None:
            self.stop_reason = reason
        if delay > 0 and self._stop_at is None:
            self._stop_at = time.monotonic() + delay
            self.hub.announce(events.ShuttingDown(delay, reason), local=True)
            logsetup.lifecycle.info("shutdown_scheduled", seconds=delay, reason=reason)
        elif delay <= 0:
            self.stop_requested = True
        self._wake.wake()

    def reload(self, check: bool = False) -> dict[str, Any]:
        """Re-read the config; apply what can change at run time, report the rest.

        Settings that need a restart (listen address, rooms, admin socket) are never
        applied, so the running server is never half-reconfigured.  A bad file raises
        ``ConfigError`` and changes nothing.
        """
        with self._reload_lock:
            new = config.load_effective(self.config_path)
            if self.overrides:
                new = config.with_overrides(new, **self.overrides)
            changes = config.diff(self.cfg, new)
            restart_keys = config.RESTART_KEYS
            if self.tls_context is None or not new.tls.enabled:
                restart_keys = restart_keys | TLS_FILE_KEYS  # TLS on or off: a restart
            applied = [c for c in changes if c[0] not in restart_keys]
            restart = [c for c in changes if c[0] in restart_keys]
            context = self._new_tls_context(new) if new.tls.enabled else None
            fingerprint = tls.cert_fingerprint(new.tls.cert) if context is not None else ""
            if context is not None and not check:
                # Certificates are read again on every reload (renewed files keep
                # their names); connections already established keep their own.
                self.tls_context = context
                logsetup.lifecycle.info("tls_reloaded", cert=new.tls.cert, fingerprint=fingerprint)
            if applied and not check:
                systemd.reloading()
                sections: dict[str, dict[str, Any]] = {}
                for key, _, value in applied:
                    section, name = key.split(".", 1)
                    sections.setdefault(section, {})[name] = value
                self.hub.apply(config.with_overrides(self.cfg, **sections))
                logsetup.configure(self.cfg.logging.level, self.cfg.logging.format)
                systemd.ready()
            result = {
                "check": check,
                "source": new.source,
                "applied": [] if check else [list(c) for c in applied],
                "would_apply": [list(c) for c in applied] if check else [],
                "restart_required": [list(c) for c in restart],
            }
            if fingerprint:  # the certificate new TLS connections get (or would get)
                result["tls_certificate"] = fingerprint
            logsetup.lifecycle.info(
                "config_reloaded" if not check else "config_checked",
                source=new.source,
                applied=[c[0] for c in applied],
                restart_required=[c[0] for c in restart],
            )
            return result

    def _new_tls_context(self, new: Config) -> Optional[ssl.SSLContext]:
        """A context from the new files (None without TLS listeners); ConfigError if bad."""
        if self.tls_context is None:
            return None
        try:
            return tls.server_context(new.tls)
        except ConfigError as exc:
            logsetup.log.error("tls_reload_failed", file=exc.file, key=exc.key, error=str(exc))
            raise

    # --- the loop ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        threading.stack_size(THREAD_STACK_SIZE)
        for w in self.writers:
            w.start()
        if self.admin is not None:
            self.admin.start()
        host, port = self.address
        irc_at = self.irc_address
        tls_at, irc_tls_at = self.tls_address, self.irc_tls_address
        logsetup.lifecycle.info(
            "server_started",
            message=f"Server started on {host}:{port}"
            + (" (TLS)" if self.listener is self.tls_listener else "")
            + (f", TLS on {tls_at[0]}:{tls_at[1]}" if tls_at and tls_at != (host, port) else "")
            + (f", IRC on {irc_at[0]}:{irc_at[1]}" if irc_at else "")
            + (f", IRC over TLS on {irc_tls_at[0]}:{irc_tls_at[1]}" if irc_tls_at else ""),
            host=host,
            port=port,
            plain=self.listener is not self.tls_listener,
            irc_host=irc_at[0] if irc_at else None,
            irc_port=irc_at[1] if irc_at else None,
            tls_port=tls_at[1] if tls_at else None,
            irc_tls_port=irc_tls_at[1] if irc_tls_at else None,
            tls_fingerprint=tls.cert_fingerprint(self.cfg.tls.cert) if self.tls_context else None,
            rooms=list(self.cfg.rooms.names),
            pid=os.getpid(),
            admin_socket=self.admin.path if self.admin else None,
        )
        systemd.ready()
        self._watchdog = systemd.watchdog_interval()
        self.started.set()
        poller = select.poll()
        listeners = {sock.fileno(): sock for sock in self._kinds}
        for fd in listeners:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake.read_fd, select.POLLIN)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            while not self._should_stop():
                timeout = max(0.0, next_housekeeping - time.monotonic())
                if self._stop_at is not None:
                    timeout = min(timeout, max(0.0, self._stop_at - time.monotonic()))
                if self._accept_resume and time.monotonic() >= self._accept_resume:
                    self._accept_resume = 0.0
                    for fd in listeners:
                        poller.register(fd, select.POLLIN)
                elif self._accept_resume:
                    timeout = min(timeout, max(0.0, self._accept_resume - time.monotonic()))
                for fd, _ in poller.poll(timeout * 1000):
                    if fd == self._wake.read_fd:
                        self._wake.drain()
                    elif self.stop_requested or self._accept_resume:
                        continue  # stopping, or resting after the other listener ran out
                    elif not self._accept_batch(listeners[fd]):
                        for lfd in listeners:
                            poller.unregister(lfd)
                        self._accept_resume = time.monotonic() + ACCEPT_BACKOFF
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload_from_signal()
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
        finally:
            self._shutdown()

    def _should_stop(self) -> bool:
        if self.stop_requested:
            return True
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _reload_from_signal(self) -> None:
        try:
            self.reload()
        except ConfigError as exc:  # a bad file: nothing changed, keep running as before
            logsetup.log.error("config_reload_failed", error=str(exc))
        except Exception:  # a bug while applying: keep serving, keep the traceback
            logsetup.log.exception("config_reload_internal_error")

    def _accept_batch(self, listener: socket.socket) -> bool:
        """Accept what is waiting; False if out of descriptors (the caller backs off)."""
        is_irc, is_tls = self._kinds[listener]
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors(exc, listener)
                    return False
                self._accept_failed(exc)  # e.g. ECONNABORTED: that one is gone, go on
                continue
            self._admit(conn, peer, is_irc, is_tls)
        return True

    def _out_of_descriptors(self, exc: OSError, listener: socket.socket) -> None:
        """Refuse the waiting client with a line, using the reserve descriptor."""
        self._accept_failed(exc)
        if self._reserve_fd is None:
            return
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            conn, _ = listener.accept()
        except OSError:
            pass
        else:
            _refuse(conn, "no_resources", *self._kinds[listener])
        self._reserve_fd = _open_reserve()

    def _accept_failed(self, exc: OSError) -> None:
        self._accept_failures += 1
        now = time.monotonic()
        if now - self._accept_logged >= ACCEPT_LOG_INTERVAL:
            logsetup.log.error("accept_failed", error=exc.strerror, count=self._accept_failures)
            self._accept_logged = now
            self._accept_failures = 0

    def _admit(
        self, conn: socket.socket, peer: tuple[str, int], is_irc: bool = False, is_tls: bool = False
    ) -> None:
        addr, port = str(peer[0]), int(peer[1])
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A fixed kernel send buffer: autotuning grows it to ~512 KiB for a client
        # that stops reading, which hid a slow consumer for 13 s before our own
        # send_queue_bytes could see it, and let kernel memory per client grow.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SNDBUF)
        dialect: Dialect = LINE
        if is_irc:
            dialect = irc.dialect_for(self.cfg.irc.server_name, self.cfg.irc.network, frozenset())
        channel: Optional[tls.TlsChannel] = None
        if is_tls:
            assert self.tls_context is not None
            channel = tls.TlsChannel(self.tls_context, conn)
        member = Member(addr, port, dialect, Link(conn, channel), secure=is_tls)
        refused = self.hub.add(member)
        if refused is not None:
            logsetup.log.warning("client_rejected", addr=addr, port=port, reason=refused)
            _refuse(conn, refused, is_irc, is_tls)
            return
        receive = None
        if channel is not None:
            channel.nudge = functools.partial(self.hub.poke, member)
            receive = channel.recv
        session: Union[Session, irc.IrcSession] = (
            irc.IrcSession(self.hub, member, conn, self.auth, receive)
            if is_irc
            else Session(self.hub, member, conn, self.auth, receive)
        )
        logsetup.log.info(
            "client_connected", addr=addr, port=port, clients=self.hub.count(), tls=is_tls
        )
        # A bare thread: threading.Thread's start-up handshake doubles the cost of
        # starting one and its objects add ~1.5 KB per client (see bench/README.md).
        with self._live_lock:
            self._live += 1
        try:
            _thread.start_new_thread(self._run_session, (session, channel))
        except RuntimeError as exc:  # cannot start a thread: refuse this one
            self._session_ended()
            logsetup.log.error("thread_start_failed", error=str(exc))
            self.hub.remove(member, "error")

    def _run_session(
        self, session: Union[Session, irc.IrcSession], channel: Optional[tls.TlsChannel]
    ) -> None:
        try:
            block_process_signals()
            if channel is not None:
                if not self._handshake(session.member, channel):
                    return
                if self._continue_in_new_thread(session):
                    return
            session.run()
        finally:
            self._session_ended()

    def _continue_in_new_thread(self, session: Union[Session, irc.IrcSession]) -> bool:
        """Run an established TLS session in a fresh reader thread; False: run it here.

        The handshake leaves memory behind in the thread that ran it, for as long
        as that thread lives: the chunks OpenSSL freed sit in glibc's per-thread
        cache, and OpenSSL keeps per-thread random generators.  ~25 KiB per
        client (docs/tls.md, "Costs"); a thread that ends gives them back, so the
        handshake's thread ends and the session goes on in a new one.
        """
        with self._live_lock:
            self._live += 1
        try:
            _thread.start_new_thread(self._run_established, (session,))
        except RuntimeError:
            self._session_ended()
            return False
        return True

    def _run_established(self, session: Union[Session, irc.IrcSession]) -> None:
        try:
            block_process_signals()
            session.run()
        finally:
            self._session_ended()

    def _handshake(self, m: Member, channel: tls.TlsChannel) -> bool:
        """The TLS handshake, in the client's reader thread; False: it failed and is closed.

        Bounded by ``[tls] handshake_timeout`` from connect (the login timeout
        still runs too); a silent client never holds up accept or anyone else.
        """
        deadline = m.connected_mono + self.cfg.tls.handshake_timeout
        try:
            channel.handshake(deadline)
        except tls.TlsError as exc:
            reason = exc.reason
        except Exception as exc:  # a bug must cost one connection, never the server
            logsetup.log.exception("tls_handshake_error", addr=m.addr, port=m.port)
            reason = type(exc).__name__
        else:
            version, cipher = channel.details()
            logsetup.log.debug(
                "tls_established", addr=m.addr, port=m.port, version=version, cipher=cipher
            )
            return True
        logsetup.log.info("tls_handshake_failed", addr=m.addr, port=m.port, reason=reason)
        self.hub.remove(m, "tls_handshake_failed")
        return False

    def _session_ended(self) -> None:
        with self._live_lock:
            self._live -= 1
            last = self._live == 0
        if last:
            self._wake.wake()  # a drain waiting for the last one

    def _housekeeping(self, now: float) -> None:
        for m in self.hub.reap(now):
            logsetup.log.info("client_timeout", name=m.name, addr=m.addr, reason=m.close_reason)
        if self._watchdog is not None and now >= self._next_watchdog:
            systemd.watchdog_ping()
            self._next_watchdog = now + self._watchdog / 2
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            stats = self.hub.stats()
            systemd.status(
                f"{stats['clients']} clients, {stats['logged_in']} logged in, "
                f"{stats['messages_in']} messages"
            )

    def session_threads(self) -> int:
        with self._live_lock:
            return self._live

    # --- the drain ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        systemd.stopping()
        grace = self.cfg.server.shutdown_grace
        clients = self.hub.count()
        logsetup.lifecycle.info(
            "server_stopping", clients=clients, reason=self.stop_reason, grace=grace
        )
        self._close_listeners()
        self.hub.begin_shutdown(events.ShuttingDown(None, self.stop_reason))
        deadline = time.monotonic() + grace
        forced = not self._wait_sessions_gone(deadline)
        if forced:
            self.hub.force_close_all()
            self._wait_sessions_gone(time.monotonic() + 2.0)
        if self.cluster is not None:
            self.cluster.stop()
        for w in self.writers:
            w.stop()
        if self.admin is not None:
            self.admin.stop()
        self.auth.close()
        left = self.session_threads()
        stats = self.hub.stats()
        logsetup.lifecycle.info(
            "server_stopped",
            clients_at_stop=clients,
            forced=forced,
            threads_left=left,
            messages_in=stats["messages_in"],
            connections=stats["connections"],
        )
        self._release_signal_wakeup()
        self._wake.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    def _release_signal_wakeup(self) -> None:
        """A signal after this must not write to the pipe's number once it is closed."""
        if threading.current_thread() is threading.main_thread():
            old = signal.set_wakeup_fd(-1)
            if old not in (-1, self._wake.write_fd):
                signal.set_wakeup_fd(old)  # not ours: leave it as it was

    def _wait_sessions_gone(self, deadline: float) -> bool:
        # On the wake pipe, not a condition variable: a lock wait misses a signal
        # that arrives just before it starts (its handler then ran only when the
        # grace was over), while set_wakeup_fd has already put a byte in the pipe.
        while self.session_threads():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.wait(remaining)
        return True


def _open_reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _address_of(sock: Optional[socket.socket]) -> Optional[tuple[str, int]]:
    if sock is None:
        return None
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def _refuse(conn: socket.socket, reason: str, is_irc: bool = False, is_tls: bool = False) -> None:
    """Tell a connection why it is not served, and close it.

    A TLS client gets no line (it expects a ServerHello, not text): just the close.
    """
    if is_tls:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()
        return
    line = (
        irc.refusal_line(reason) if is_irc else LINE.render(events.error("refused", reason=reason))
    )
    try:
        conn.send(line, socket.MSG_DONTWAIT)
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
