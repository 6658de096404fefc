"""TLS test material: certificates made with the ``openssl`` command, and TLS clients.

The clients here are single-threaded (one thread reads and writes), so they may
use ``ssl.SSLSocket``; the server and the console client may not (docs/tls.md).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.e2e.helpers import DEFAULT_TIMEOUT, RawClient

OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run(
        [OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60, text=True
    )


@dataclass(frozen=True)
class Pki:
    """Files in ``dir``: a CA and what it signed, and a self-signed certificate."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    def fingerprint(self, cert: str) -> str:
        return pem_fingerprint(self.path(cert))


def _key(name: str, cwd: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd
    )


def _signed(name: str, cn: str, san: str, cwd: Path) -> None:
    """``name``.pem and ``name``-key.pem, signed by the CA, for ``san``."""
    _key(f"{name}-key.pem", cwd)
    _openssl(
        "req",
        "-new",
        "-key",
        f"{name}-key.pem",
        "-subj",
        f"/CN={cn}",
        "-out",
        f"{name}.csr",
        cwd=cwd,
    )
    (cwd / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=cwd,
    )


def make_pki(dir: Path) -> Pki:
    """A CA; server certificates ``server`` and ``server2`` for 127.0.0.1/localhost;
    ``wronghost`` (valid, for another name); ``expired`` (the ``server`` key); a client
    certificate ``client``; and a self-signed ``self`` for 127.0.0.1/localhost."""
    dir.mkdir(parents=True, exist_ok=True)
    _key("ca-key.pem", dir)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca-key.pem",
        "-subj",
        "/CN=chatsvc test CA",
        "-days",
        "2",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.pem",
        cwd=dir,
    )
    here = "DNS:localhost,IP:127.0.0.1"
    _signed("server", "localhost", here, dir)
    _signed("server2", "localhost", here, dir)
    _signed("wronghost", "elsewhere.example", "DNS:elsewhere.example", dir)
    _signed("client", "a client", "DNS:client.example", dir)
    try:  # ``expired``: the server's key, validity ending a day before it starts
        _openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-days", "-1", "-sha256", "-extfile", "server.ext", "-out", "expired.pem",
            cwd=dir,
        )  # fmt: skip
    except subprocess.CalledProcessError:
        pass  # an openssl that refuses negative days: the test that needs it skips
    _key("self-key.pem", dir)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "self-key.pem",
        "-subj",
        "/CN=localhost",
        "-days",
        "2",
        "-sha256",
        "-addext",
        f"subjectAltName={here}",
        "-out",
        "self.pem",
        cwd=dir,
    )
    return Pki(dir)


def pem_fingerprint(path: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(path).read_text())
    return der_fingerprint(der)


def der_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def need_openssl() -> None:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")


def client_context(cafile: Optional[str] = None) -> ssl.SSLContext:
    """Verify against ``cafile``, or accept anything (None)."""
    if cafile is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=cafile)


class TlsClient(RawClient):
    """RawClient over TLS (the same deadlines; one thread, so an SSLSocket is fine)."""

    def __init__(
        self,
        host: str,
        port: int,
        ctx: Optional[ssl.SSLContext] = None,
        timeout: float = DEFAULT_TIMEOUT,
        server_hostname: str = "localhost",
    ) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = (ctx or client_context()).wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.timeout = timeout
        self._buf = b""
        self.eof = False
        self.seen = []

    @property
    def peer_fingerprint(self) -> str:
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return der_fingerprint(der)


def tls_logged_in(
    host: str, port: int, name: str, ctx: Optional[ssl.SSLContext] = None
) -> TlsClient:
    c = TlsClient(host, port, ctx)
    reply = c.login(name)
    assert reply.startswith("* hello"), reply
    return c
