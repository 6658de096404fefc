"""chatsvc.tls: fingerprints, [tls] validation, the server context, and one TlsChannel
over a real socketpair (the writer's TLS path included)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsvc import client, config, events, tls
from chatsvc.dialects import LINE
from chatsvc.errors import ConfigError
from chatsvc.hub import Hub, Member
from chatsvc.outbound import Link, OutboundWriter
from tests.e2e.tlsutil import OPENSSL, Pki, client_context, make_pki, pem_fingerprint

FP = "SHA256:" + ":".join(["AB"] * 32)


# --- fingerprints (server and console client agree) -----------------------------------


@pytest.mark.parametrize("parse", [tls.parse_fingerprint, client.parse_fingerprint])
def test_fingerprint_forms(parse: Any) -> None:
    want = bytes([0xAB] * 32)
    assert parse(FP) == want
    assert parse(FP.replace(":", "").replace("SHA256", "SHA256:")) == want
    assert parse("sha256:" + "ab" * 32) == want
    assert parse("ab" * 32) == want  # the prefix is optional
    assert parse("  " + FP + "\n") == want
    for bad in ("", "SHA256:", "SHA256:" + "ab" * 31, "SHA256:" + "zz" * 32, "MD5:" + "ab" * 32):
        assert parse(bad) is None, bad


def test_fingerprint_format_round_trips() -> None:
    der = b"not really a certificate"
    text = tls.fingerprint(der)
    assert text.startswith("SHA256:") and len(text) == 7 + 32 * 3 - 1
    assert tls.parse_fingerprint(text) == client.parse_fingerprint(text)
    assert client.format_fingerprint(tls.parse_fingerprint(text) or b"") == text


# --- [tls] validation ------------------------------------------------------------------


def load(data: dict[str, Any]) -> config.Config:
    return config.from_mapping(data, "chatsvc.toml")


def error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(data)
    assert info.value.file == "chatsvc.toml"
    return info.value


TLS = {"cert": "/etc/chatsvc/cert.pem", "key": "/etc/chatsvc/key.pem"}


def test_tls_is_off_until_cert_and_key_are_set() -> None:
    assert not config.Config().tls.enabled
    cfg = load({"tls": TLS})
    assert cfg.tls.enabled and cfg.tls.port == 6322 and cfg.tls.min_version == "1.2"
    assert cfg.tls.handshake_timeout == 10.0 and cfg.server.plain and cfg.irc.tls_port == -1


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"tls": {"cert": "/c.pem"}}, "tls.key", "tls.cert and tls.key go together"),
        ({"tls": {"key": "/k.pem"}}, "tls.cert", "tls.cert and tls.key go together"),
        ({"tls": {**TLS, "cert": "cert.pem"}}, "tls.cert", "an absolute path"),
        ({"tls": {**TLS, "min_version": "1.1"}}, "tls.min_version", '"1.2" or "1.3"'),
        ({"tls": {**TLS, "min_version": 1.2}}, "tls.min_version", '"1.2" or "1.3"'),
        ({"tls": {**TLS, "port": -2}}, "tls.port", "an integer from -1"),
        ({"tls": {**TLS, "handshake_timeout": 0}}, "tls.handshake_timeout", "a number"),
        ({"tls": {"client_ca": "/ca.pem"}}, "tls.client_ca", "tls.cert and tls.key set"),
        ({"server": {"plain": False}}, "server.plain", "a TLS listener is configured"),
        (
            {"server": {"plain": False}, "tls": {**TLS, "port": -1}},
            "server.plain",
            "a TLS listener",
        ),
        ({"server": {"plain": "no"}}, "server.plain", "true or false"),
        (
            {"irc": {"enabled": True, "plain": False}, "tls": TLS},
            "irc.plain",
            "irc.tls_port",
        ),
        ({"irc": {"enabled": True, "tls_port": 6697}}, "irc.tls_port", "tls.cert and tls.key"),
        ({"server": {"port": 7000}, "tls": {**TLS, "port": 7000}}, "tls.port", "server.port"),
        (
            {"irc": {"enabled": True, "tls_port": 6322}, "tls": TLS},
            "irc.tls_port",
            "tls.port",
        ),
    ],
)
def test_tls_config_errors_name_the_key(data: dict[str, Any], key: str, expected: str) -> None:
    exc = error(data)
    assert exc.key == key
    assert expected in exc.expected


def test_tls_only_and_irc_tls_only_are_valid() -> None:
    cfg = load(
        {
            "server": {"plain": False},
            "tls": TLS,
            "irc": {"enabled": True, "plain": False, "tls_port": 6697},
        }
    )
    assert not cfg.server.plain and not cfg.irc.plain and cfg.irc.tls_port == 6697
    # any free port (0) twice is no clash
    load({"server": {"port": 0}, "tls": {**TLS, "port": 0}})


def test_tls_listen_settings_need_a_restart_files_do_not() -> None:
    for key in ("tls.port", "tls.host", "irc.tls_port", "server.plain", "irc.plain"):
        assert key in config.RESTART_KEYS
    for key in ("tls.cert", "tls.key", "tls.client_ca", "tls.min_version"):
        assert key not in config.RESTART_KEYS


def test_poke_schedules_a_member_with_nothing_to_send() -> None:
    hub = Hub(config.Config())
    box = hub.new_mailbox(lambda: None)
    m = Member()
    assert hub.add(m) is None
    assert m.mailbox is box
    hub.poke(m)
    hub.poke(m)  # once is enough
    batch = hub.collect(box)
    assert batch.sends == [(m, b"")]
    assert hub.collect(box).sends == []


# --- the server context ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_cfg(pki: Pki, **kw: Any) -> config.TlsConfig:
    values = {"cert": pki.path("server.pem"), "key": pki.path("server-key.pem"), **kw}
    return config.TlsConfig(**values)


def test_context_is_hardened(pki: Pki) -> None:
    ctx = tls.server_context(tls_cfg(pki))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & getattr(ssl, "OP_NO_RENEGOTIATION", 0) == getattr(
        ssl, "OP_NO_RENEGOTIATION", 0
    )
    assert ctx.verify_mode == ssl.CERT_NONE
    names = " ".join(c["name"] for c in ctx.get_ciphers())
    for weak in ("NULL", "EXP", "RC4", "DES-CBC3", "ADH", "AECDH", "MD5"):
        assert weak not in names
    assert tls.server_context(tls_cfg(pki, min_version="1.3")).minimum_version == (
        ssl.TLSVersion.TLSv1_3
    )
    strict = tls.server_context(tls_cfg(pki, client_ca=pki.ca))
    assert strict.verify_mode == ssl.CERT_REQUIRED


def test_context_errors_name_the_file_and_the_problem(pki: Pki, tmp_path: Path) -> None:
    notpem = tmp_path / "notpem.pem"
    notpem.write_text("hello\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    broken_key = tmp_path / "brokenkey.pem"
    broken_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    cases = [
        (tls_cfg(pki, cert=str(tmp_path / "none.pem")), "none.pem", "tls.cert", "no such file"),
        (tls_cfg(pki, key=str(tmp_path / "none.pem")), "none.pem", "tls.key", "no such file"),
        (tls_cfg(pki, cert=str(notpem)), "notpem.pem", "tls.cert", "no PEM block"),
        (tls_cfg(pki, cert=str(tmp_path)), str(tmp_path), "tls.cert", "a directory"),
        (tls_cfg(pki, key=pki.path("self-key.pem")), "self-key.pem", "tls.key", "does not match"),
        (tls_cfg(pki, cert=str(broken)), "broken.pem", "tls.cert", "damaged certificate data"),
        (tls_cfg(pki, key=str(broken_key)), "brokenkey.pem", "tls.key", "no usable private key"),
        (tls_cfg(pki, key=str(encrypted)), "encrypted.pem", "tls.key", "an encrypted key"),
        (
            tls_cfg(pki, cert=pki.path("server-key.pem")),
            "server-key.pem",
            "tls.cert",
            "no certificate",
        ),
        (
            tls_cfg(pki, key=pki.path("server.pem")),
            "server.pem",
            "tls.key",
            "no usable private key",
        ),
        (tls_cfg(pki, client_ca=str(notpem)), "notpem.pem", "tls.client_ca", "no PEM block"),
    ]
    for cfg, file, key, why in cases:
        with pytest.raises(ConfigError) as info:
            tls.server_context(cfg)
        exc = info.value
        assert exc.file.endswith(file) and exc.key == key, str(exc)
        assert why in str(exc), str(exc)
        assert "\n" not in str(exc)


def test_cert_fingerprint_is_the_der_sha256(pki: Pki) -> None:
    assert tls.cert_fingerprint(pki.path("server.pem")) == pem_fingerprint(pki.path("server.pem"))


# --- one channel over a socketpair ------------------------------------------------------------


class Peer:
    """The client end: an SSLSocket used by one thread (the test's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.raw = sock
        self.ssl: ssl.SSLSocket | None = None
        self.error: BaseException | None = None

    def handshake(self, ctx: ssl.SSLContext) -> threading.Thread:
        def run() -> None:
            try:
                self.ssl = ctx.wrap_socket(self.raw, server_hostname="localhost")
            except BaseException as exc:
                self.error = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


def test_channel_handshake_and_both_directions(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, other = pair
    ch = tls.TlsChannel(tls.server_context(tls_cfg(pki)), server)
    peer = Peer(other)
    t = peer.handshake(client_context(pki.ca))
    ch.handshake(time.monotonic() + 10)
    t.join(10)
    assert peer.ssl is not None, peer.error
    assert ch.established
    version, cipher = ch.details()
    assert version in ("TLSv1.2", "TLSv1.3") and cipher
    peer.ssl.sendall(b"hello\n")
    got = b""
    while got != b"hello\n":
        got += ch.recv()
    other_plain = b"x" * 40000
    out = ch.encrypt(other_plain[: tls.RECORD])
    assert len(out) < tls.RECORD + 256  # one record's ciphertext
    server.sendall(out)
    assert peer.ssl.recv(65536)[:5] == b"xxxxx"
    server.sendall(ch.close_notify())
    assert peer.ssl.recv(100) == b""  # the client sees a clean TLS close
    peer.ssl.close()
    assert ch.recv() == b""


class MemoryPeer:
    """The client end with its record layer in memory: the test decides which
    ciphertext goes out in which ``send``."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.error: BaseException | None = None

    def handshake(self) -> threading.Thread:
        def run() -> None:
            try:
                while True:
                    try:
                        self.obj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        self.sock.sendall(self.outgoing.read())
                        self.incoming.write(self.sock.recv(65536))
                self.sock.sendall(self.outgoing.read())
            except BaseException as exc:
                self.error = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def records(self, *lines: bytes) -> bytes:
        """Ciphertext: one record per line."""
        out = b""
        for line in lines:
            self.obj.write(line)
            out += self.outgoing.read()
        return out

    def close_notify(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.unwrap()
        return self.outgoing.read()


def established(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> tuple[tls.TlsChannel, MemoryPeer]:
    server, other = pair
    ch = tls.TlsChannel(tls.server_context(tls_cfg(pki)), server)
    peer = MemoryPeer(other, client_context(pki.ca))
    t = peer.handshake()
    ch.handshake(time.monotonic() + 10)
    t.join(10)
    assert peer.error is None and ch.established
    return ch, peer


def test_every_whole_record_received_comes_back_at_once(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    ch, peer = established(pki, pair)
    lines = [b"line %d\n" % i for i in range(40)]
    data = peer.records(*lines)
    # whole records and the first half of one more, in one send
    half = peer.records(b"the rest comes later\n")
    peer.sock.sendall(data + half[:10])
    assert ch.recv() == b"".join(lines)
    peer.sock.sendall(half[10:])
    assert ch.recv() == b"the rest comes later\n"


def test_close_notify_after_data_ends_the_stream_after_that_data(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    ch, peer = established(pki, pair)
    peer.sock.sendall(peer.records(b"last words\n", b"really\n") + peer.close_notify())
    assert ch.recv() == b"last words\nreally\n"
    assert ch.recv() == b""
    assert ch.recv() == b""  # and stays ended


def test_a_broken_record_after_data_is_an_error_after_that_data(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    ch, peer = established(pki, pair)
    good = peer.records(b"fine\n")
    bad = bytearray(peer.records(b"tampered with\n"))
    bad[-1] ^= 0xFF  # the record's authentication tag no longer matches
    peer.sock.sendall(good + bytes(bad))
    assert ch.recv() == b"fine\n"
    with pytest.raises(ConnectionResetError, match="TLS error"):
        ch.recv()


def test_channel_handshake_times_out_on_a_silent_client(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = pair
    ch = tls.TlsChannel(tls.server_context(tls_cfg(pki)), server)
    started = time.monotonic()
    with pytest.raises(tls.TlsError) as info:
        ch.handshake(started + 0.3)
    assert info.value.reason == "handshake timeout"
    assert 0.25 < time.monotonic() - started < 3
    assert not ch.established
    assert ch.close_notify() == b""  # nothing to say before the handshake


def test_channel_refuses_garbage(pki: Pki, pair: tuple[socket.socket, socket.socket]) -> None:
    server, other = pair
    ch = tls.TlsChannel(tls.server_context(tls_cfg(pki)), server)
    other.sendall(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(tls.TlsError) as info:
        ch.handshake(time.monotonic() + 5)
    assert info.value.reason


def test_writer_encrypts_a_record_at_a_time_and_counts_plaintext(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A TLS link never holds more than about one record of ciphertext, and the
    hub's queue counts plaintext bytes: a client that stops reading is bounded."""
    server, other = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hub = Hub(config.with_overrides(config.Config(), limits={"send_queue_bytes": 1 << 20}))
    w = OutboundWriter(hub, name="test-writer")
    try:
        ch = tls.TlsChannel(tls.server_context(tls_cfg(pki)), server)
        m = Member("127.0.0.1", 1, LINE, Link(server, ch), secure=True)
        assert hub.add(m) is None
        peer = Peer(other)
        t = peer.handshake(client_context(pki.ca))
        ch.handshake(time.monotonic() + 10)
        t.join(10)
        assert peer.ssl is not None, peer.error
        line = LINE.render(events.Announcement("z" * 200_000))
        hub.tell(m, events.Announcement("z" * 200_000))
        w.step(0.01)
        link: Link = m.link
        assert 0 < len(link.cbuf) <= tls.RECORD + 256  # one record waits; the rest is plain
        with hub.lock:
            in_link = len(link.wbuf)
            assert m.queued == in_link  # the encrypted part is no longer counted
        got = b""
        deadline = time.monotonic() + 10
        peer.ssl.settimeout(0.01)
        while len(got) < len(line):
            assert time.monotonic() < deadline, f"only {len(got)} of {len(line)} bytes"
            try:
                got += peer.ssl.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            w.step(0.01)
            assert len(link.cbuf) <= tls.RECORD + 256
        assert got == line
        with hub.lock:
            assert m.queued == 0
    finally:
        w.stop()
        w._close_all()
