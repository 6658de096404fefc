"""TLS for the listeners: the server context (built, checked, reloaded) and one
:class:`TlsChannel` per connection.

Why not ``ssl.SSLSocket``: each connection's socket is shared by two threads,
its reader (``recv``) and a writer (``send``, ``shutdown``, ``close``), and
OpenSSL forbids concurrent ``SSL_read``/``SSL_write`` on one SSL object (CPython
has crashed on exactly that).  A channel therefore keeps the socket plain and
runs the TLS state machine in memory (``ssl.MemoryBIO`` + ``SSLContext.wrap_bio``,
an ``SSLObject``): the reader ``recv``\\s ciphertext and feeds it in, the writer
takes ciphertext out and ``send``\\s it.  A small per-channel lock is held only
around calls on the ``SSLObject`` and its two BIOs -- a leaf lock: never held
while taking ``Hub.lock``, logging or doing socket I/O.

The handshake runs in the connection's own reader thread before its session
starts, bounded by ``[tls] handshake_timeout``; it is the one time a reader
thread sends on its socket (the writer sends nothing for a channel that is not
established).  Ciphertext the reader's side produces later (alerts, TLS 1.3
key-update replies) stays in the outgoing BIO and the reader asks the hub to
schedule the member's writer (``Hub.poke``), which sends it.

Pure helpers (``parse_fingerprint``, ``fingerprint``) are shared with the
console client's documentation of pinning.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import ssl
import threading
import time
from typing import Callable, Optional

from chatsvc.config import TlsConfig
from chatsvc.errors import ConfigError

# One TLS record carries at most 16 KiB of plaintext: the writer encrypts no more
# than that at a time, so a TLS link holds at most about one record of ciphertext.
RECORD = 16384
# The reader's first, blocking recv is small (see session.RECV_SIZE); a full one is
# followed by one non-blocking read of up to a record and its overhead.
RECV_SIZE = 479
BULK_RECV_SIZE = RECORD + 512
_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """A handshake or record-layer failure; ``reason`` is short and loggable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the context -------------------------------------------------------------------


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context from ``[tls]``; ConfigError naming the file and the problem.

    Based on ``create_default_context(Purpose.CLIENT_AUTH)`` (its cipher list has
    no NULL, EXPORT, RC4, DES, 3DES or anonymous suites); TLS 1.2 at least, no
    compression, no renegotiation.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    _load_chain(ctx, tls.cert, tls.key)
    if tls.client_ca:
        _check_readable(tls.client_ca, "tls.client_ca")
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                tls.client_ca, "tls.client_ca", "PEM CA certificates", _ssl_reason(exc)
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _read_pem(path: str, key: str) -> bytes:
    """The start of a PEM file; ConfigError if it is missing, unreadable or not PEM."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(path, key, "an existing PEM file", "no such file") from None
    except PermissionError:
        raise ConfigError(path, key, "a file readable by the server", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, key, "a PEM file", "a directory") from None
    except OSError as exc:
        raise ConfigError(path, key, "a readable PEM file", exc.strerror or str(exc)) from None
    if b"-----BEGIN " not in head:
        raise ConfigError(path, key, "a PEM file (-----BEGIN ...)", "no PEM block")
    return head


def _check_readable(path: str, key: str) -> None:
    _read_pem(path, key)


def _no_password() -> bytes:
    return b""  # never prompt on a terminal for a key's passphrase


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the certificate chain and key, each problem blamed on the right file."""
    _read_pem(cert, "tls.cert")
    if b"ENCRYPTED" in _read_pem(key, "tls.key"):
        raise ConfigError(key, "tls.key", "an unencrypted PEM private key", "an encrypted key")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cafile=cert)  # parses every certificate in the file
    except (ssl.SSLError, ValueError) as exc:
        why = _ssl_reason(exc)
        if "no certificate" in why:
            why = "no certificate"
        elif "PEM lib" in why or "bad base64" in why or "asn1" in why.lower():
            why = "damaged certificate data"
        raise ConfigError(
            cert, "tls.cert", "PEM certificates (the server's, then its chain)", why
        ) from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc).upper() or "values mismatch" in _ssl_reason(exc):
            raise ConfigError(
                key, "tls.key", f"the private key of {cert}", "a key that does not match it"
            ) from None
        raise ConfigError(
            key, "tls.key", "an unencrypted PEM private key", "no usable private key"
        ) from None
    except OSError as exc:
        raise ConfigError(
            cert, "tls.cert", "a readable PEM file", exc.strerror or str(exc)
        ) from None


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    return text.replace("_", " ").lower() if reason else text


def cert_fingerprint(path: str) -> str:
    """``SHA256:HEX`` of the first certificate in a PEM file (logged on load); "" if
    it cannot be read (the context, already loaded, is what counts)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
        return fingerprint(ssl.PEM_cert_to_DER_cert(m.group(0))) if m else ""
    except (OSError, ValueError):
        return ""


# --- fingerprints (also used by the console client's documentation) ----------------------

_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


def fingerprint(der: bytes) -> str:
    """``SHA256:AB:CD:...`` of a DER certificate, the form the client prints."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def parse_fingerprint(text: str) -> Optional[bytes]:
    """The 32 bytes of ``SHA256:HEX`` (colons optional, any case); None if malformed."""
    body = text.strip()
    if body[:7].upper() == "SHA256:":
        body = body[7:]
    body = body.replace(":", "")
    if not _HEX_RE.fullmatch(body):
        return None
    return bytes.fromhex(body)


# --- one connection ------------------------------------------------------------------------


class TlsChannel:
    """One connection's TLS state in memory.  Every SSLObject/BIO call holds ``lock``.

    Used by two threads: the reader (``handshake``, ``recv``) and the writer
    (``encrypt``, ``take_out``, ``close_notify``).  ``established`` is written once,
    by the reader, before its session starts.
    """

    __slots__ = (
        "_end",
        "_in",
        "_obj",
        "_out",
        "_starved",
        "established",
        "lock",
        "nudge",
        "sock",
    )

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.established = False
        # How reading ended after plaintext already returned: None (it has not),
        # "" (close_notify) or a TLS failure's reason.
        self._end: Optional[str] = None
        # The last read wanted more ciphertext than the incoming BIO had: reading
        # again before more is written would only say so again.
        self._starved = False
        # Set by the server: asks the writer to send ciphertext made while reading.
        self.nudge: Callable[[], None] = _nothing

    # --- the reader thread -------------------------------------------------------

    def handshake(self, deadline: float) -> None:
        """Complete the server handshake by ``deadline`` (monotonic); TlsError if not."""
        sock = self.sock
        while True:
            # A server's handshake starts with the client's hello: nothing to do
            # before some of it is in (asking OpenSSL first only raises WantRead).
            data = _recv_by(sock, deadline)
            if not data:
                raise TlsError("closed during handshake")
            failure: Optional[str] = None
            with self.lock:
                self._in.write(data)
                try:
                    self._obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    done = False
                    failure = _ssl_reason(exc)
                out = self._out.read()
            if out:
                try:  # our part of the handshake, or the alert that ends it
                    _send_all(sock, out, deadline)
                except TlsError:
                    if failure is None:
                        raise
            if failure is not None:
                raise TlsError(failure)
            if done:
                self.established = True
                return

    def details(self) -> tuple[str, str]:
        """(version, cipher) once established."""
        with self.lock:
            version = self._obj.version() or ""
            cipher = self._obj.cipher()
        return version, cipher[0] if cipher else ""

    def recv(self) -> bytes:
        """Plaintext, blocking until some arrives; b"" at EOF.  OSError on a TLS error.

        Returns the plaintext of every whole record received so far at once (one
        ``SSLObject.read`` per record, then one that finds no whole record), and
        goes straight to ``recv`` when nothing came in since that last one.
        (Whether a whole record is waiting cannot be told from the incoming BIO:
        OpenSSL may already have taken the next record's bytes out of it.)
        """
        sock = self.sock
        while True:
            if self._end is not None:
                if self._end:
                    raise ConnectionResetError(f"TLS error: {self._end}")
                return b""
            data, ended = b"", False
            with self.lock:
                if not self._starved:
                    data, ended = self._read_records()
                pending = self._out.pending
            if pending:
                self.nudge()  # e.g. a key-update reply or an alert: the writer sends it
            if data:
                return data
            if ended:
                continue
            raw = sock.recv(RECV_SIZE)
            if len(raw) == RECV_SIZE:
                try:
                    raw += sock.recv(BULK_RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            if not raw:
                return b""  # EOF, with or without close_notify: the client is gone
            with self.lock:
                self._in.write(raw)
                self._starved = False

    def _read_records(self) -> tuple[bytes, bool]:
        """The plaintext of the whole records in the incoming buffer (lock held), and
        whether reading has ended: a close_notify or failure is kept in ``_end``.
        """
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(RECORD)
            except ssl.SSLWantReadError:
                self._starved = True
                break
            except ssl.SSLZeroReturnError:  # close_notify (some versions raise)
                chunk = b""
            except ssl.SSLError as exc:
                self._end = _ssl_reason(exc) or "record layer failure"
                break
            if not chunk:  # close_notify
                self._end = ""
                break
            chunks.append(chunk)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), self._end is not None

    # --- the writer thread -------------------------------------------------------

    def take_out(self) -> bytes:
        """Ciphertext waiting to be sent (alerts, key updates), if any."""
        with self.lock:
            return self._out.read() if self._out.pending else b""

    def encrypt(self, plain: bytes) -> bytes:
        """Ciphertext for ``plain`` (one record for up to RECORD bytes) and anything pending."""
        with self.lock:
            self._obj.write(plain)
            return self._out.read()

    def close_notify(self) -> bytes:
        """Our close_notify alert (best effort: b"" if the state does not allow one)."""
        with self.lock:
            if not self.established:
                return b""  # the handshake's bytes are the reader's to send
            try:
                self._obj.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: sent ours, the peer's is not awaited
            return self._out.read()


def _nothing() -> None:
    pass


def _recv_by(sock: socket.socket, deadline: float) -> bytes:
    while True:
        try:
            return sock.recv(BULK_RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise TlsError(exc.strerror or "connection error") from None
        _wait(sock, select.POLLIN, deadline)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view, _SEND_FLAGS)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise TlsError(exc.strerror or "connection error") from None
        view = view[n:]
        if view:
            _wait(sock, select.POLLOUT, deadline)


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TlsError("handshake timeout")
    poller = select.poll()
    poller.register(sock.fileno(), events | select.POLLHUP | select.POLLERR)
    if not poller.poll(remaining * 1000 + 1):
        raise TlsError("handshake timeout")
