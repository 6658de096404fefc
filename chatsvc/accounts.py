"""Optional accounts: the store, password hashing, brute-force throttling, the one check.

docs/accounts.md states the design for operators.  Three parts:

* **Hashing** (pure): ``hash_password`` makes a record string
  ``scrypt$N$R$P$SALT$HASH`` (base64, per-account random salt); the parameters
  travel with the hash, so raising ``SCRYPT_N`` later re-hashes nobody and old
  records still verify.  ``check_password`` compares with ``hmac.compare_digest``.
  A hash costs about 50 ms of CPU (``hashlib.scrypt`` releases the GIL): it runs
  in the calling thread (a client's reader thread, an admin thread), never under
  ``Hub.lock``.
* **Stores**: :class:`AccountStore` is the interface; :class:`SqliteStore` keeps
  accounts in one SQLite file under the service's state directory (atomic
  updates, safe for concurrent readers, survives a crash mid-write);
  :class:`RedisStore` keeps them in one Redis hash (``{prefix}accounts``) in
  cluster mode, so an admin command on any node applies on all nodes at once.
* **The check**: :meth:`Authenticator.verify` takes a name, a password, the
  peer's address and whether the connection is TLS, and returns a
  :class:`Verdict` (ok, or refused with an error event).  Throttling, the
  plaintext rule and the dummy hash for unknown names are inside it, so every
  protocol (the line protocol now, IRC ``PASS``/SASL later) gets the same rules
  by calling this one method.

Threads and locks: any thread may call ``verify`` and the admin methods.  The
throttle's counters are guarded by the throttle's own lock (held for dictionary
updates only, never while hashing or talking to a store); the SQLite store
serialises its connection with a lock of its own; neither is ever taken while
``Hub.lock`` is held, and neither takes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Protocol

from chatsvc import events
from chatsvc.config import AuthConfig, Config
from chatsvc.errors import StartupError

# scrypt: N=2**14, r=8, p=1 is 16 MiB of memory and about 50 ms per hash on one
# core of current hardware: slow enough to make offline guessing expensive, cheap
# enough for a login rate a chat server sees.  Stored with each hash.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD_BYTES = 1024  # longer is refused when set, and never matches at login
MODES = ("open", "registered", "required")
STORE_NAME = "accounts.db"
DEFAULT_STATE_DIR = "/var/lib/chatsvc"  # the packaged unit's StateDirectory=chatsvc
THROTTLE_ENTRIES = 10000  # per kind (addresses, accounts): the oldest are forgotten first

KDF = Callable[[bytes, bytes, int, int, int], bytes]


def scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=HASH_BYTES
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: bytes, kdf: KDF = scrypt, salt: Optional[bytes] = None) -> str:
    """The stored form of ``password``: ``scrypt$N$R$P$SALT$HASH``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = kdf(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a stored hash; ValueError if it is not one."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not an scrypt hash")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 1 << 22:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, base64.b64decode(parts[4]), base64.b64decode(parts[5])


def check_password(stored: str, password: bytes, kdf: KDF = scrypt) -> bool:
    """Whether ``password`` matches ``stored``; a damaged record matches nothing."""
    try:
        n, r, p, salt, digest = parse_hash(stored)
    except ValueError:
        kdf(password, b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)  # the same work
        return False
    return hmac.compare_digest(kdf(password, salt, n, r, p), digest)


def password_problem(password: str) -> Optional[str]:
    """Why a password an operator sets is unusable, or None."""
    data = password.encode("utf-8", "surrogateescape")
    if not password:
        return "the password is empty"
    if len(data) > MAX_PASSWORD_BYTES:
        return f"the password is longer than {MAX_PASSWORD_BYTES} bytes"
    if "\n" in password or "\r" in password or "\0" in password:
        return "the password must be one line without NUL characters"
    return None


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


# --- stores ----------------------------------------------------------------------------


class Account(NamedTuple):
    name: str  # as the operator typed it; looked up casefolded
    hash: str
    created: float
    changed: float


def _encode(acct: Account) -> str:
    return json.dumps(
        {"name": acct.name, "hash": acct.hash, "created": acct.created, "changed": acct.changed}
    )


def _decode(data: str) -> Optional[Account]:
    try:
        rec = json.loads(data)
        return Account(
            str(rec["name"]), str(rec["hash"]), float(rec["created"]), float(rec["changed"])
        )
    except (ValueError, TypeError, KeyError):
        return None


class StoreError(Exception):
    """The store cannot be read or written (a full disk, Redis unreachable)."""


class AccountStore(Protocol):
    """Accounts by casefolded name.  Every method may raise :class:`StoreError`."""

    def get(self, name: str) -> Optional[Account]: ...

    def add(self, acct: Account) -> bool:
        """False if the name has an account already."""
        ...

    def set_hash(self, name: str, hashed: str, when: float) -> bool:
        """False if there is no such account."""
        ...

    def delete(self, name: str) -> bool: ...

    def all(self) -> list[Account]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class SqliteStore:
    """One SQLite file: every change is one transaction, so a crash never leaves half a write.

    The file and its directory are created private (0600, 0700).  One connection,
    serialised by a lock (queries take well under a millisecond).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        parent = os.path.dirname(path) or "."
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            old = os.umask(0o077)
            try:
                self._db = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS accounts (key TEXT PRIMARY KEY, data TEXT NOT NULL)"
                )
                self._db.commit()
            finally:
                os.umask(old)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and exc.filename != path else ""
            raise StartupError(
                f"cannot open the account store {path}: {exc.strerror or exc}{where}"
            ) from None
        except sqlite3.Error as exc:
            raise StartupError(f"cannot open the account store {path}: {exc}") from None

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                with self._db:  # one transaction: committed, or rolled back on error
                    return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"account store {self.path}: {exc}") from None

    def _change(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                with self._db:
                    return self._db.execute(sql, args).rowcount
            except sqlite3.IntegrityError:
                return 0
            except sqlite3.Error as exc:
                raise StoreError(f"account store {self.path}: {exc}") from None

    def get(self, name: str) -> Optional[Account]:
        rows = self._run("SELECT data FROM accounts WHERE key = ?", (name.casefold(),))
        return _decode(rows[0][0]) if rows else None

    def add(self, acct: Account) -> bool:
        sql = "INSERT INTO accounts (key, data) VALUES (?, ?)"
        return self._change(sql, (acct.name.casefold(), _encode(acct))) == 1

    def set_hash(self, name: str, hashed: str, when: float) -> bool:
        old = self.get(name)
        if old is None:
            return False
        new = old._replace(hash=hashed, changed=when)
        sql = "UPDATE accounts SET data = ? WHERE key = ?"
        return self._change(sql, (_encode(new), name.casefold())) == 1

    def delete(self, name: str) -> bool:
        return self._change("DELETE FROM accounts WHERE key = ?", (name.casefold(),)) == 1

    def all(self) -> list[Account]:
        rows = self._run("SELECT data FROM accounts ORDER BY key")
        return [a for a in (_decode(r[0]) for r in rows) if a is not None]

    def count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM accounts")[0][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore:
    """Accounts in one Redis hash, ``{prefix}accounts``: casefolded name -> JSON record.

    Cluster mode: every node reads and writes the same hash, so an account added,
    changed or deleted through any node's admin socket counts on all of them at
    once.  Uses the cluster's URL and password (``[cluster] backend``,
    ``password_file`` or the systemd credential) with a connection of its own.
    """

    # Replace a record only if it exists (passwd must not create an account).
    _SET_IF_EXISTS = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

    def __init__(self, cfg: Config) -> None:
        import redis

        from chatsvc.cluster import read_password

        self._redis_error: type[Exception] = redis.RedisError
        self.key = f"{cfg.cluster.key_prefix}accounts"
        self._conn = redis.Redis.from_url(
            cfg.cluster.backend,
            password=read_password(cfg.cluster.password_file),
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            decode_responses=True,
            health_check_interval=0,
        )
        self._set_if_exists = self._conn.register_script(self._SET_IF_EXISTS)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._redis_error as exc:
            raise StoreError(f"account store (Redis): {exc}") from None

    def get(self, name: str) -> Optional[Account]:
        data = self._call(self._conn.hget, self.key, name.casefold())
        return _decode(data) if isinstance(data, str) else None

    def add(self, acct: Account) -> bool:
        return bool(self._call(self._conn.hsetnx, self.key, acct.name.casefold(), _encode(acct)))

    def set_hash(self, name: str, hashed: str, when: float) -> bool:
        old = self.get(name)
        if old is None:
            return False
        new = _encode(old._replace(hash=hashed, changed=when))
        done = self._call(lambda: self._set_if_exists(keys=[self.key], args=[name.casefold(), new]))
        return bool(done)

    def delete(self, name: str) -> bool:
        return bool(self._call(self._conn.hdel, self.key, name.casefold()))

    def all(self) -> list[Account]:
        data = self._call(self._conn.hgetall, self.key)
        found = (_decode(v) for _, v in sorted(data.items()))
        return [a for a in found if a is not None]

    def count(self) -> int:
        return int(self._call(self._conn.hlen, self.key))

    def close(self) -> None:
        self._conn.close()


def store_path(auth: AuthConfig, source: Optional[str], environ: Mapping[str, str]) -> str:
    """Where the SQLite store is: ``[auth] store`` (relative to the config file's
    directory), else ``$STATE_DIRECTORY/accounts.db`` (systemd's StateDirectory=),
    else ``/var/lib/chatsvc/accounts.db`` for root and
    ``${XDG_STATE_HOME:-~/.local/state}/chatsvc/accounts.db`` for other users.
    """
    if auth.store:
        path = os.path.expanduser(auth.store)
        if not os.path.isabs(path):
            base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
            path = os.path.join(base, path)
        return path
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if os.path.isabs(state):
        return os.path.join(state, STORE_NAME)
    if os.getuid() == 0:
        return os.path.join(DEFAULT_STATE_DIR, STORE_NAME)
    xdg = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "chatsvc", STORE_NAME)


def open_store(cfg: Config, environ: Optional[Mapping[str, str]] = None) -> AccountStore:
    """The store this config names: Redis in cluster mode, else the SQLite file."""
    if cfg.cluster.backend:
        return RedisStore(cfg)
    return SqliteStore(store_path(cfg.auth, cfg.source, os.environ if environ is None else environ))


# --- throttling ------------------------------------------------------------------------


class Throttle:
    """Failed logins per key (an address, an account) with growing delays.

    The first ``free`` failures cost nothing; after that each failure blocks the
    key for ``base``, ``2*base``, ``4*base``... seconds, at most ``cap``.  A key
    not failing for ``forget`` seconds is forgotten; at most ``entries`` keys are
    kept (the one failing least recently goes first), so memory stays bounded
    whatever an attacker sends.  Guarded by its own lock.
    """

    def __init__(self, entries: int = THROTTLE_ENTRIES) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        # key -> (failures, blocked until, last failure), oldest first
        self._keys: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def blocked(self, key: str, now: float, forget: float) -> float:
        """Seconds ``key`` is still blocked (0 if not)."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return 0.0
            if now - entry[2] > forget:
                del self._keys[key]
                return 0.0
            return max(0.0, entry[1] - now)

    def fail(self, key: str, now: float, auth: AuthConfig) -> float:
        """Count a failure; returns for how long the key is now blocked."""
        with self._lock:
            failures, _, last = self._keys.pop(key, (0, 0.0, now))
            if now - last > auth.throttle_forget:
                failures = 0
            failures += 1
            over = failures - auth.free_failures
            # (the exponent is bounded: a million failures must not overflow a float)
            growth = 2.0 ** min(over - 1, 64)
            delay = min(auth.throttle_cap, auth.throttle_base * growth) if over > 0 else 0
            self._keys[key] = (failures, now + delay, now)
            while len(self._keys) > self.entries:
                self._keys.popitem(last=False)
            return float(delay)

    def clear(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def active(self, now: float) -> int:
        """Keys blocked right now."""
        with self._lock:
            return sum(1 for _, until, _ in self._keys.values() if until > now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


# --- the check -------------------------------------------------------------------------


class Verdict(NamedTuple):
    """``ok``; else ``error`` (an ``events.Error`` to tell the client) and ``reason``
    (for the log: wrong_password, unknown_name, throttled, plaintext, store_error).
    """

    ok: bool
    error: Optional[events.Error] = None
    reason: str = ""


OK = Verdict(True)


class Authenticator:
    """The account rules of one server: which names need a password, and the check.

    Reads the live ``[auth]`` section through ``cfg()`` on every call, so a
    reload that changes ``mode`` or the throttle applies to the next login.  The
    store is opened on first use (a server in ``open`` mode never touches it,
    but ``chatsvc-admin account add`` works before the mode is switched on).
    """

    def __init__(
        self,
        cfg: Callable[[], Config],
        store: Optional[AccountStore] = None,
        kdf: KDF = scrypt,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.cfg = cfg
        self.kdf = kdf
        self._environ = environ
        self._store = store
        self._store_lock = threading.Lock()
        self.addresses = Throttle()
        self.accounts = Throttle()
        self._counts_lock = threading.Lock()
        self.counts = {"ok": 0, "failed": 0, "throttled": 0}
        # What an unknown name is checked against: the work of a real check.
        salt, digest = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(HASH_BYTES)
        self._dummy = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"

    @property
    def store(self) -> AccountStore:
        """The store, opened on first use; StoreError if it cannot be opened (then the
        next use tries again: the operator may have fixed the directory meanwhile)."""
        with self._store_lock:
            if self._store is None:
                try:
                    self._store = open_store(self.cfg(), self._environ)
                except StartupError as exc:
                    raise StoreError(str(exc)) from None
            return self._store

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()

    @property
    def mode(self) -> str:
        return self.cfg().auth.mode

    def needs_password(self, name: str) -> bool:
        """Whether a login as ``name`` asks for a password now (may raise StoreError)."""
        mode = self.mode
        if mode == "open":
            return False
        if mode == "required":
            return True
        return self.store.get(name) is not None

    def plaintext_refused(self, addr: str, secure: bool) -> bool:
        """A password may not cross this connection (plain, not loopback, not allowed)."""
        return not secure and not is_loopback(addr) and not self.cfg().auth.allow_plaintext

    def verify(self, name: str, password: bytes, addr: str, secure: bool = False) -> Verdict:
        """Check ``password`` for ``name`` from ``addr``: the one entry point of every protocol.

        Refuses without hashing while the address or the account is throttled,
        or when the connection is plain text from another host and
        ``allow_plaintext`` is off.  A name without an account costs one dummy
        hash, the same work as a wrong password.  Logs nothing: the caller logs
        ``auth_ok``/``auth_failed``/``auth_throttled`` with the verdict's reason.
        """
        auth = self.cfg().auth
        key = name.casefold()
        if self.plaintext_refused(addr, secure):
            return Verdict(False, events.error("password_needs_tls"), "plaintext")
        now = time.monotonic()
        wait = max(
            self.addresses.blocked(addr, now, auth.throttle_forget),
            self.accounts.blocked(key, now, auth.throttle_forget),
        )
        if wait > 0:
            self._count("throttled")
            return Verdict(
                False, events.error("login_throttled", seconds=max(1, round(wait))), "throttled"
            )
        try:
            acct = self.store.get(name)
        except StoreError:
            self.kdf(password, b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)
            self._count("failed")
            return Verdict(False, events.error("auth_unavailable"), "store_error")
        if len(password) > MAX_PASSWORD_BYTES:
            password = password[:MAX_PASSWORD_BYTES] + b"\0"  # never matches; same work
        if acct is None:
            check_password(self._dummy, password, self.kdf)  # an unknown name: the same work
            good, reason = False, "unknown_name"
        else:
            good, reason = check_password(acct.hash, password, self.kdf), "wrong_password"
        if good:
            self.accounts.clear(key)
            self._count("ok")
            return OK
        now = time.monotonic()
        self.addresses.fail(addr, now, auth)
        self.accounts.fail(key, now, auth)
        self._count("failed")
        return Verdict(False, events.error("login_failed"), reason)

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    # --- the admin side (an admin thread; hashing happens here) -------------------------

    def add(self, name: str, password: str) -> bool:
        now = time.time()
        hashed = hash_password(password.encode("utf-8", "surrogateescape"), self.kdf)
        return self.store.add(Account(name, hashed, now, now))

    def passwd(self, name: str, password: str) -> bool:
        hashed = hash_password(password.encode("utf-8", "surrogateescape"), self.kdf)
        ok = self.store.set_hash(name, hashed, time.time())
        if ok:
            self.accounts.clear(name.casefold())  # a new password: a fresh start
        return ok

    def delete(self, name: str) -> bool:
        return self.store.delete(name)

    def list(self) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "created": a.created, "changed": a.changed} for a in self.store.all()
        ]

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._counts_lock:
            counts = dict(self.counts)
        return {
            "mode": self.mode,
            "logins_ok": counts["ok"],
            "failures": counts["failed"],
            "throttled_refusals": counts["throttled"],
            "throttled_addresses": self.addresses.active(now),
            "throttled_accounts": self.accounts.active(now),
        }
