"""``chatsvc`` / ``python -m chatsvc``: the server's command line."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Optional

from chatsvc import __version__, config, logsetup
from chatsvc.errors import ChatsvcError, ConfigError
from chatsvc.server import ChatServer

EXIT_OK = 0
EXIT_STARTUP = 1  # cannot listen, ...
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
    p.add_argument("--version", action="version", version=f"chatsvc {__version__}")
    return p


def effective_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load_effective(args.config)
    server: dict[str, object] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if server:
        try:
            cfg = config.with_overrides(cfg, server=server)
        except ConfigError as exc:
            raise ConfigError("command line", exc.key, exc.expected, exc.found) from None
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = effective_config(args)
    except ConfigError as exc:
        print(f"chatsvc: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(config.render_toml(cfg))
        print(f"chatsvc: config OK ({cfg.source or 'built-in defaults'})", file=sys.stderr)
        return EXIT_OK
    logsetup.configure(cfg.logging.level, cfg.logging.format)
    try:
        server = ChatServer(cfg)
    except ChatsvcError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    install_signal_handlers(server)
    server.serve_forever()
    return EXIT_OK


def install_signal_handlers(server: ChatServer) -> None:
    """SIGTERM/SIGINT only set a flag; the wakeup fd makes the accept loop see it now."""

    def on_stop(signum: int, frame: Optional[FrameType]) -> None:
        server.stop_requested = True

    signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)


if __name__ == "__main__":
    sys.exit(main())
