"""Accounts, pure parts: hashing, throttling, the check's rules, stores, config, admin checks."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from chatsvc import accounts, adminproto, config, events
from chatsvc.accounts import Account, Authenticator, SqliteStore, Throttle
from chatsvc.adminproto import BadArgument, parse_request
from chatsvc.errors import ConfigError


def cheap_kdf(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """A fast stand-in with the same shape (unit tests only)."""
    return hashlib.sha256(salt + password + f"{n}.{r}.{p}".encode()).digest()


class CountingKdf:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        self.calls.append((n, r, p))
        return cheap_kdf(password, salt, n, r, p)


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Account] = {}

    def get(self, name: str) -> Account | None:
        return self.data.get(name.casefold())

    def add(self, acct: Account) -> bool:
        if acct.name.casefold() in self.data:
            return False
        self.data[acct.name.casefold()] = acct
        return True

    def set_hash(self, name: str, hashed: str, when: float) -> bool:
        old = self.data.get(name.casefold())
        if old is None:
            return False
        self.data[name.casefold()] = old._replace(hash=hashed, changed=when)
        return True

    def delete(self, name: str) -> bool:
        return self.data.pop(name.casefold(), None) is not None

    def all(self) -> list[Account]:
        return list(self.data.values())

    def count(self) -> int:
        return len(self.data)

    def close(self) -> None:
        pass


def make_auth(kdf: Any = cheap_kdf, **auth: Any) -> tuple[Authenticator, MemoryStore]:
    cfg = config.from_mapping({"auth": {"mode": "required", **auth}}, "test")
    store = MemoryStore()
    return Authenticator(lambda: cfg, store, kdf=kdf), store


# --- hashing ------------------------------------------------------------------------------


def test_real_scrypt_round_trip_and_stored_parameters() -> None:
    stored = accounts.hash_password(b"s3cret")
    n, r, p, salt, digest = accounts.parse_hash(stored)
    assert (n, r, p) == (accounts.SCRYPT_N, accounts.SCRYPT_R, accounts.SCRYPT_P)
    assert len(salt) == accounts.SALT_BYTES and len(digest) == accounts.HASH_BYTES
    assert accounts.check_password(stored, b"s3cret")
    assert not accounts.check_password(stored, b"s3cret ")
    assert b"s3cret" not in stored.encode()


def test_salts_differ_per_account() -> None:
    assert accounts.hash_password(b"pw", cheap_kdf) != accounts.hash_password(b"pw", cheap_kdf)


def test_older_parameters_still_verify() -> None:
    """Parameters travel with the hash: raising SCRYPT_N later keeps old records valid."""
    salt = b"x" * 16
    digest = accounts.scrypt(b"pw", salt, 1 << 10, 8, 1)
    old = f"scrypt${1 << 10}$8$1${accounts._b64(salt)}${accounts._b64(digest)}"
    assert accounts.check_password(old, b"pw")
    assert not accounts.check_password(old, b"pW")


@pytest.mark.parametrize(
    "stored", ["", "md5$1$2$3$4$5", "scrypt$3$8$1$AA==$AA==", "scrypt$x$8$1$AA$AA", "scrypt$1024"]
)
def test_a_damaged_record_matches_nothing_after_the_same_work(stored: str) -> None:
    kdf = CountingKdf()
    assert not accounts.check_password(stored, b"pw", kdf)
    assert kdf.calls == [(accounts.SCRYPT_N, accounts.SCRYPT_R, accounts.SCRYPT_P)]


# --- the plaintext rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("192.168.1.2", False),
        ("2001:db8::1", False),
        ("::ffff:10.0.0.1", False),
        ("not-an-address", False),
    ],
)
def test_loopback(addr: str, loopback: bool) -> None:
    assert accounts.is_loopback(addr) is loopback


def test_a_password_needs_tls_from_other_hosts_unless_allowed() -> None:
    auth, _ = make_auth()
    auth.add("alice", "pw")
    refused = auth.verify("alice", b"pw", "10.0.0.7", secure=False)
    assert not refused.ok and refused.reason == "plaintext"
    assert refused.error == events.error("password_needs_tls")
    assert auth.verify("alice", b"pw", "10.0.0.7", secure=True).ok
    assert auth.verify("alice", b"pw", "127.0.0.1", secure=False).ok
    allowed, _ = make_auth(allow_plaintext=True)
    allowed.add("alice", "pw")
    assert allowed.verify("alice", b"pw", "10.0.0.7").ok


# --- the check ----------------------------------------------------------------------------


def test_modes_decide_who_is_asked() -> None:
    store = MemoryStore()
    mode = {"value": "open"}

    def cfg() -> config.Config:
        return config.from_mapping({"auth": {"mode": mode["value"]}}, "test")

    auth = Authenticator(cfg, store, kdf=cheap_kdf)
    auth.add("Alice", "pw")
    assert not auth.needs_password("alice") and not auth.needs_password("bob")
    mode["value"] = "registered"  # what a reload does: the next login sees it
    assert auth.needs_password("ALICE") and not auth.needs_password("bob")
    mode["value"] = "required"
    assert auth.needs_password("alice") and auth.needs_password("bob")


def test_unknown_name_does_the_same_work_as_a_wrong_password() -> None:
    """Structural, not timing: both paths run the KDF once with the same parameters."""
    kdf = CountingKdf()
    auth, _ = make_auth(kdf)
    auth.add("alice", "right")
    kdf.calls.clear()
    wrong = auth.verify("alice", b"wrong", "127.0.0.1")
    after_wrong = list(kdf.calls)
    kdf.calls.clear()
    unknown = auth.verify("nobody", b"wrong", "127.0.0.2")
    assert after_wrong == kdf.calls == [(accounts.SCRYPT_N, accounts.SCRYPT_R, accounts.SCRYPT_P)]
    assert wrong.error == unknown.error == events.error("login_failed")
    assert (wrong.reason, unknown.reason) == ("wrong_password", "unknown_name")


def test_a_throttled_attempt_is_refused_without_hashing() -> None:
    kdf = CountingKdf()
    auth, _ = make_auth(kdf, free_failures=0, throttle_base=60.0, throttle_cap=60.0)
    auth.add("alice", "pw")
    assert not auth.verify("alice", b"x", "127.0.0.1").ok
    kdf.calls.clear()
    verdict = auth.verify("alice", b"pw", "127.0.0.1")  # right, but throttled
    assert verdict.reason == "throttled" and kdf.calls == []
    assert verdict.error is not None and verdict.error.code == "login_throttled"
    assert verdict.error.params["seconds"] == 60


def test_per_account_throttle_holds_from_another_address() -> None:
    auth, _ = make_auth(free_failures=1, throttle_base=60.0, throttle_cap=60.0)
    auth.add("alice", "pw")
    auth.add("bob", "pw")
    for addr in ("127.0.0.1", "127.0.0.2"):
        assert auth.verify("alice", b"x", addr).reason == "wrong_password"
    assert auth.verify("alice", b"pw", "127.0.0.9").reason == "throttled"
    assert auth.verify("bob", b"pw", "127.0.0.9").ok  # another account, another address
    stats = auth.stats()
    assert stats["throttled_accounts"] == 1 and stats["failures"] == 2
    assert stats["throttled_refusals"] == 1 and stats["logins_ok"] == 1


def test_per_address_throttle_holds_for_other_accounts() -> None:
    auth, _ = make_auth(free_failures=1, throttle_base=60.0, throttle_cap=60.0)
    auth.add("carol", "pw")
    for name in ("x1", "x2"):  # spraying names from one address
        assert auth.verify(name, b"x", "127.0.0.5").reason == "unknown_name"
    assert auth.verify("carol", b"pw", "127.0.0.5").reason == "throttled"
    assert auth.verify("carol", b"pw", "127.0.0.6").ok
    assert auth.stats()["throttled_addresses"] == 1


def test_delays_grow_then_cap_and_are_forgotten() -> None:
    cfg = config.from_mapping(
        {
            "auth": {
                "free_failures": 3,
                "throttle_base": 1,
                "throttle_cap": 8,
                "throttle_forget": 100,
            }
        }
    ).auth
    t = Throttle()
    delays = [t.fail("k", 1000.0 + i, cfg) for i in range(9)]
    assert delays == [0, 0, 0, 1, 2, 4, 8, 8, 8]
    assert t.blocked("k", 1008.5, cfg.throttle_forget) == pytest.approx(7.5)
    assert t.blocked("k", 1200.0, cfg.throttle_forget) == 0  # forgotten
    assert len(t) == 0
    assert t.fail("k", 1300.0, cfg) == 0  # a fresh start


def test_endless_failures_stay_at_the_cap() -> None:
    cfg = config.AuthConfig(free_failures=0, throttle_base=0.0, throttle_cap=5.0)
    t = Throttle()
    assert all(t.fail("k", float(i), cfg) == 0 for i in range(3000))  # base 0: never blocks
    capped = config.AuthConfig(free_failures=0, throttle_base=1.0, throttle_cap=5.0)
    assert t.fail("k", 3000.0, capped) == 5.0


def test_throttle_memory_is_bounded() -> None:
    cfg = config.AuthConfig(free_failures=0)
    t = Throttle(entries=100)
    for i in range(1000):
        t.fail(f"10.0.{i // 256}.{i % 256}", 5.0, cfg)
    assert len(t) == 100
    assert t.blocked("10.0.3.231", 5.0, 900) > 0  # the newest are kept
    assert t.blocked("10.0.0.0", 5.0, 900) == 0


def test_success_clears_the_account_and_passwd_gives_a_fresh_start() -> None:
    auth, _ = make_auth(free_failures=2, throttle_base=60.0, throttle_cap=60.0)
    auth.add("alice", "pw")
    auth.verify("alice", b"x", "127.0.0.1")
    assert auth.verify("alice", b"pw", "127.0.0.2").ok
    for addr in ("127.0.0.3", "127.0.0.4", "127.0.0.6"):  # counting from zero again
        auth.verify("alice", b"x", addr)
    assert auth.verify("alice", b"pw", "127.0.0.5").reason == "throttled"
    assert auth.passwd("alice", "new")
    assert auth.verify("alice", b"new", "127.0.0.5").ok


def test_an_unreadable_store_refuses_and_says_so() -> None:
    class Broken(MemoryStore):
        def get(self, name: str) -> Account | None:
            raise accounts.StoreError("disk on fire")

    cfg = config.from_mapping({"auth": {"mode": "required"}}, "test")
    kdf = CountingKdf()
    auth = Authenticator(lambda: cfg, Broken(), kdf=kdf)
    verdict = auth.verify("alice", b"pw", "127.0.0.1")
    assert verdict.reason == "store_error" and verdict.error == events.error("auth_unavailable")
    assert len(kdf.calls) == 1


def test_a_store_that_cannot_be_opened_refuses_logins_and_is_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = config.from_mapping(
        {"auth": {"mode": "registered", "store": str(blocker / "accounts.db")}}, "test"
    )
    auth = Authenticator(lambda: cfg, kdf=cheap_kdf)
    with pytest.raises(accounts.StoreError, match="cannot open the account store"):
        auth.needs_password("alice")
    assert auth.verify("alice", b"pw", "127.0.0.1").reason == "store_error"
    blocker.unlink()
    blocker.mkdir()  # fixed by the operator: the next use opens it
    assert not auth.needs_password("alice")
    auth.close()


# --- the SQLite store ---------------------------------------------------------------------


def test_sqlite_store_persists_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "accounts.db"
    store = SqliteStore(str(path))
    assert store.add(Account("Alice", "h1", 1.0, 1.0))
    assert not store.add(Account("alice", "h2", 2.0, 2.0))  # one name space, casefolded
    assert store.set_hash("ALICE", "h3", 3.0)
    assert not store.set_hash("bob", "h", 3.0)
    store.close()
    again = SqliteStore(str(path))
    acct = again.get("alice")
    assert acct == Account("Alice", "h3", 1.0, 3.0)
    assert again.count() == 1 and [a.name for a in again.all()] == ["Alice"]
    assert again.delete("alice") and not again.delete("alice")
    again.close()
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_sqlite_store_that_cannot_be_made_is_a_clear_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match=r"cannot open the account store .*file/x/accounts.db"):
        SqliteStore(str(blocker / "x" / "accounts.db"))


def test_store_path_lookup(tmp_path: Path) -> None:
    src = str(tmp_path / "etc" / "chatsvc.toml")

    def path(store: str, env: dict[str, str]) -> str:
        return accounts.store_path(config.AuthConfig(store=store), src, env)

    assert path("/abs/a.db", {"STATE_DIRECTORY": "/x"}) == "/abs/a.db"
    assert path("data/a.db", {}) == str(tmp_path / "etc" / "data" / "a.db")
    assert path("", {"STATE_DIRECTORY": "/var/lib/chatsvc:/other"}) == (
        "/var/lib/chatsvc/accounts.db"
    )
    if os.getuid() != 0:
        assert path("", {"XDG_STATE_HOME": "/home/u/.st"}) == "/home/u/.st/chatsvc/accounts.db"
        assert path("", {"HOME": "/h"}).endswith("/.local/state/chatsvc/accounts.db")


# --- config -------------------------------------------------------------------------------


def test_auth_config_defaults_and_reload_rules() -> None:
    cfg = config.Config()
    assert cfg.auth.mode == "open" and not cfg.auth.allow_plaintext and cfg.auth.store == ""
    assert "auth.store" in config.RESTART_KEYS
    assert "auth.mode" not in config.RESTART_KEYS  # a reload applies it


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ({"mode": "closed"}, "auth.mode", 'one of "open", "registered", "required"'),
        ({"allow_plaintext": "yes"}, "auth.allow_plaintext", "true or false"),
        ({"free_failures": -1}, "auth.free_failures", "an integer from 0 to 1000"),
        ({"store": 5}, "auth.store", "a file path"),
        ({"throttle_base": 10, "throttle_cap": 5}, "auth.throttle_cap", "at least"),
        ({"password": "x"}, "auth.password", "one of mode, store"),
    ],
)
def test_auth_config_errors_name_file_key_and_expectation(
    section: dict[str, Any], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"auth": section}, "/etc/chatsvc/chatsvc.toml")
    text = str(info.value)
    assert "/etc/chatsvc/chatsvc.toml" in text and key in text and expected in text


# --- the admin protocol -------------------------------------------------------------------


def test_account_requests_are_checked_and_never_quote_the_password() -> None:
    req = parse_request({"cmd": "account", "action": "add", "name": "alice", "password": "pw"})
    assert req.args == {"action": "add", "name": "alice", "password": "pw"}
    assert parse_request({"cmd": "account", "action": "list"}).args == {"action": "list"}
    for bad in ("two\nlines", "", "x" * 2000, "nul\0"):
        with pytest.raises(BadArgument) as info:
            parse_request({"cmd": "account", "action": "passwd", "name": "al", "password": bad})
        assert info.value.arg == "password"
        if bad:
            assert bad not in str(info.value)
    with pytest.raises(BadArgument, match="user name"):
        parse_request({"cmd": "account", "action": "add", "name": "no spaces", "password": "pw"})
    for wrong in (
        {"action": "del", "name": "alice", "password": "pw"},
        {"action": "add", "name": "alice"},
        {"action": "list", "name": "alice"},
        {"action": "rename", "name": "alice"},
        {"name": "alice"},
    ):
        with pytest.raises(adminproto.RequestFailed):
            parse_request({"cmd": "account", **wrong})
    assert "account" in adminproto.COMMANDS
