"""A naive chat server in the style of chatsvc's seed, kept as a baseline.

It speaks the same protocol for what the benchmarks use (name line first,
``[ROOM] NAME: TEXT`` chat to every member including the sender, ``/join``,
``/quit``) and has the seed's architecture on purpose:

- one thread per client, one global lock;
- a chat line is sent with ``sendall`` to every member *from the sender's
  thread while holding the lock*, so one member that stops reading stalls the
  whole server;
- no flood control, no send queues, no announce limit (joins are not
  announced at all, which only flatters it).

It does set TCP_NODELAY, as chatsvc does: without it, Nagle's algorithm and
delayed ACKs stall small writes for up to 40 ms and the comparison would be
about one socket option instead of the architecture.

Stdlib only. ``python -m bench.seed_server --port 0`` prints the chosen port
on stderr as a JSON ``server_started`` line.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
from typing import Optional

ROOMS = ("lobby", "work", "support", "team")
DEFAULT_ROOM = "lobby"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RESERVED = {"server", "admin", "system", "root", "chatsvc", "operator", "everyone", "nobody"}
MAX_LINE = 2048


class SeedServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, socket.socket] = {}  # lower-cased name -> socket
        self.rooms: dict[str, dict[str, socket.socket]] = {room: {} for room in ROOMS}

    def broadcast(self, room: str, line: bytes) -> None:
        with self.lock:
            for sock in list(self.rooms[room].values()):
                try:
                    sock.sendall(line)
                except OSError:
                    pass

    def handle(self, sock: socket.socket) -> None:
        name: Optional[str] = None
        room = DEFAULT_ROOM
        reader = sock.makefile("rb")
        try:
            sock.sendall(b"* welcome to chatsvc (seed)\n* please enter your name\n")
            while name is None:
                raw = reader.readline(MAX_LINE + 2)
                if not raw:
                    return
                wanted = raw.decode("utf-8", "replace").strip()
                if not wanted:
                    continue
                with self.lock:
                    if not NAME_RE.fullmatch(wanted) or wanted.lower() in RESERVED:
                        sock.sendall(b"! invalid name\n")
                    elif wanted.lower() in self.names:
                        sock.sendall(b"! name taken\n")
                    else:
                        name = wanted
                        self.names[name.lower()] = sock
                        self.rooms[room][name.lower()] = sock
            sock.sendall(f"* hello {name}, you are in {room}\n".encode())
            while True:
                raw = reader.readline(MAX_LINE + 2)
                if not raw:
                    return
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not text.strip():
                    continue
                command = text.strip().lower()
                if command in ("/quit", "bye"):
                    sock.sendall(b"* goodbye\n")
                    return
                if command.startswith("/join"):
                    room = self.join(sock, name, room, text.split()[1:])
                elif text.startswith("/") and not text.startswith("//"):
                    sock.sendall(f"! unknown command: {text.split()[0]}\n".encode())
                else:
                    if text.startswith("//"):
                        text = text[1:]
                    self.broadcast(room, f"[{room}] {name}: {text}\n".encode())
        except OSError:
            pass
        finally:
            if name is not None:
                with self.lock:
                    self.names.pop(name.lower(), None)
                    self.rooms[room].pop(name.lower(), None)
            reader.close()
            sock.close()

    def join(self, sock: socket.socket, name: str, room: str, args: list[str]) -> str:
        if not args or args[0] not in self.rooms:
            sock.sendall(f"! no such room (rooms: {', '.join(ROOMS)})\n".encode())
            return room
        new = args[0]
        with self.lock:
            self.rooms[room].pop(name.lower(), None)
            self.rooms[new][name.lower()] = sock
        sock.sendall(f"* you are now in {new}\n".encode())
        return new

    def serve(self, host: str, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen()
        bound = listener.getsockname()
        event = {"event": "server_started", "host": bound[0], "port": bound[1]}
        print(json.dumps(event), file=sys.stderr, flush=True)
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="naive baseline chat server (seed style)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6321)
    args = parser.parse_args(argv)
    try:
        SeedServer().serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
