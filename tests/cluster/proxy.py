"""A small TCP proxy (stdlib only) between a node and Redis that can pause and cut.

``pause()`` stops forwarding in both directions (bytes wait in the kernel, as
on a stalled network path); ``resume()`` forwards them; ``cut()`` closes every
proxied connection (as a reset middlebox would); ``refuse(True)`` makes new
connections fail at once.  One thread; everything bounded by the test's own
deadlines.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Optional

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._paused = threading.Event()
        self._refusing = False
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # --- the controls --------------------------------------------------------------

    def pause(self) -> None:
        self._paused.set()
        self._wake()

    def resume(self) -> None:
        self._paused.clear()
        self._wake()

    def cut(self) -> None:
        self._cut.set()
        self._wake()

    def refuse(self, on: bool) -> None:
        self._refusing = on

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)
        self.listener.close()

    @property
    def connections(self) -> int:
        return len(self._pairs) // 2

    # --- the thread ----------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._cut.is_set():
                self._cut.clear()
                for s in list(self._pairs):
                    self._drop(s)
            for key, _ in self._sel.select(0.2):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.fileobj is self.listener:
                    self._accept()
                elif not self._paused.is_set():
                    self._pump(key.fileobj)  # type: ignore[arg-type]
            if self._paused.is_set():
                # stop reading: unregister the pairs until resumed
                for s in list(self._pairs):
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
            else:
                for s in list(self._pairs):
                    try:
                        self._sel.get_key(s)
                    except KeyError:
                        self._sel.register(s, selectors.EVENT_READ, "pipe")
        for s in list(self._pairs):
            self._drop(s)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._refusing:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setblocking(True)
            s.settimeout(2)
        self._pairs[client] = server
        self._pairs[server] = client
        if not self._paused.is_set():
            self._sel.register(client, selectors.EVENT_READ, "pipe")
            self._sel.register(server, selectors.EVENT_READ, "pipe")

    def _pump(self, s: socket.socket) -> None:
        peer: Optional[socket.socket] = self._pairs.get(s)
        if peer is None:
            return
        try:
            data = s.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._pairs.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            except OSError:
                pass
            x.close()
