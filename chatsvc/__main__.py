"""``chatsvc`` / ``python -m chatsvc``: the server's command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType
from typing import IO, Any, Optional

from chatsvc import __version__, config, logsetup, systemd, tls
from chatsvc.adminpath import resolve_socket
from chatsvc.errors import ChatsvcError, ConfigError
from chatsvc.server import ChatServer

EXIT_OK = 0
EXIT_STARTUP = 1  # cannot listen, already running, ...
EXIT_CONFIG = 2  # bad config or usage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatsvc",
        description="A thread-per-client TCP chat server with a fixed set of rooms.",
        epilog=(
            "Config lookup: --config, else $CHATSVC_CONFIG, else /etc/chatsvc/chatsvc.toml "
            "if it exists, else built-in defaults (127.0.0.1:6321). "
            "Exit status: 0 stopped cleanly, 1 could not start, 2 bad config or usage."
        ),
    )
    p.add_argument("--config", metavar="PATH", help="TOML config file")
    p.add_argument("--host", help="listen address (overrides [server] host)")
    p.add_argument("--port", type=int, help="listen port, 0 = any free port")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print the effective settings and exit",
    )
    p.add_argument(
        "--daemon", action="store_true", help="detach into the background (needs --pidfile)"
    )
    p.add_argument("--pidfile", metavar="PATH", help="pidfile, locked while running")
    p.add_argument("--log-file", metavar="PATH", help="append logs here instead of stderr (JSON)")
    p.add_argument("--version", action="version", version=f"chatsvc {__version__}")
    return p


def effective_config(args: argparse.Namespace) -> tuple[config.Config, dict[str, dict[str, Any]]]:
    cfg = config.load_effective(args.config)
    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    overrides: dict[str, dict[str, Any]] = {"server": server} if server else {}
    if overrides:
        try:
            cfg = config.with_overrides(cfg, **overrides)
        except ConfigError as exc:
            raise ConfigError("command line", exc.key, exc.expected, exc.found) from None
    return cfg, overrides


def main(argv: Optional[list[str]] = None) -> int:
    logsetup.install_excepthooks()  # a thread's traceback is one JSON event, too
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.daemon and not args.pidfile:
        parser.error("--daemon needs --pidfile PATH")
    try:
        cfg, overrides = effective_config(args)
        config.admin_group_id(cfg)  # a missing group is a config error, not a failed start
        if cfg.tls.enabled:  # an unreadable or mismatched certificate is one, too
            tls.server_context(cfg.tls)
    except ConfigError as exc:
        print(f"chatsvc: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(config.render_toml(cfg))
        print(f"chatsvc: config OK ({cfg.source or 'built-in defaults'})", file=sys.stderr)
        return EXIT_OK
    try:
        return run(args, cfg, overrides)
    except ChatsvcError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def run(args: argparse.Namespace, cfg: config.Config, overrides: dict[str, dict[str, Any]]) -> int:
    # Everything that can fail happens here, before detaching.
    from chatsvc.daemonize import PidFile, detach

    log_stream: Optional[IO[str]] = None
    if args.log_file:
        try:
            log_stream = logsetup.open_file(args.log_file)  # JSON, whatever the format
        except OSError as exc:
            raise ChatsvcError(f"cannot open log file {args.log_file}: {exc.strerror}") from None
    pidfile = PidFile(args.pidfile) if args.pidfile else None
    if pidfile is not None:
        pidfile.acquire()
    try:
        logsetup.configure(cfg.logging.level, cfg.logging.format)
        activated = systemd.listen_fds()
        listener = activated[0] if activated else None
        server = ChatServer(
            cfg,
            listener,
            admin_path=resolve_socket(cfg.admin.socket, for_client=False),
            # the fallback locations are shared places: insist on a private directory
            admin_private_dir=not cfg.admin.socket and not os.environ.get("RUNTIME_DIRECTORY"),
            config_path=config.find_config_path(args.config),
            overrides=overrides,
        )
    except BaseException:
        if pidfile is not None:
            pidfile.release()
        raise
    if pidfile is not None and pidfile.stale_pid:
        logsetup.log.warning("stale_pidfile_replaced", pidfile=pidfile.path, pid=pidfile.stale_pid)
    if args.daemon:
        assert pidfile is not None
        detach(pidfile, log_stream)  # writes the daemon's pid
    elif pidfile is not None:
        pidfile.write()
    install_signal_handlers(server)
    server.serve_forever()
    # The log is complete (server_stopped written) before the pidfile goes;
    # atexit would flush only after python-daemon has released it.
    logsetup.flush()
    if pidfile is not None and not args.daemon:
        pidfile.release()
    return EXIT_OK


def install_signal_handlers(server: ChatServer) -> None:
    """Handlers only set flags; the wakeup fd makes the accept loop see them at once.

    SIGTERM/SIGINT stop (a second SIGINT exits immediately), SIGHUP reloads.
    """

    def on_stop(signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT and server.stop_requested:
            os._exit(130)
        server.stop_requested = True

    def on_hup(signum: int, frame: Optional[FrameType]) -> None:
        server.reload_requested = True

    signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)


if __name__ == "__main__":
    sys.exit(main())
