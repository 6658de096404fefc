"""Accounts and TLS in the packaged unit under a real systemd, set up as documented.

Accounts: deploy/README.md "Accounts: the state directory and backups" and
docs/accounts.md; TLS: deploy/README.md "TLS" and docs/tls.md "Where to put the files
(systemd)", including its certbot deploy hook.  The certificates are made with the
``openssl`` command inside, where certbot would put them.

Runs before test_packaged_unit.py in the same sandbox (file order) and leaves
chatsvc.service running with the packaged config (accounts stay in the store,
unused in the packaged ``open`` mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import select
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from tests.system.helpers import (
    CONFIG,
    PORT,
    UNIT,
    Client,
    admin,
    events,
    main_pid,
    readme_block,
    readme_commands,
    show,
    wait_active,
    wait_event,
)
from tests.system.sandbox import Sandbox

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TLS_DOC = ROOT / "docs" / "tls.md"
DROPIN_DIR = "/etc/systemd/system/chatsvc.service.d"
OPERATOR = "olga"  # a member of the admin group, made here (test_packaged_unit has its own)
TLS_PORT = 6322
STATE_DIR = "/var/lib/chatsvc"
STORE = f"{STATE_DIR}/accounts.db"
DOMAIN = "chat.example.org"
LINEAGE = f"/etc/letsencrypt/live/{DOMAIN}"  # where certbot keeps the current files
HOOK = "/etc/letsencrypt/renewal-hooks/deploy/chatsvc"
SERVED_CERT = "/etc/chatsvc/tls/fullchain.pem"
PRIVATE_KEY = "/etc/chatsvc/tls/privkey.pem"
MAX_EXPOSURE = 2.0

# Every password used here, so that the last test can look for each in the journal.
PASSWORDS: dict[str, str] = {}


def password(label: str) -> str:
    """A fresh password, remembered under ``label``."""
    PASSWORDS[label] = f"pw-{label}-{secrets.token_hex(8)}"
    return PASSWORDS[label]


@pytest.fixture(scope="module")
def box(installed: Sandbox) -> Iterator[Sandbox]:
    installed.sh(
        f"""
        useradd --create-home --shell /bin/bash {OPERATOR}
        usermod -aG chatsvc {OPERATOR}         # deploy/README.md: who may administer it
        """
    )
    yield installed
    # back to the packaged config for the modules after this one
    write_config(installed, packaged_config())
    installed.sh(f"rm -f {DROPIN_DIR}/seccomp-probe-tls.conf\nsystemctl daemon-reload")
    installed.run(["systemctl", "restart", UNIT])
    wait_active(installed)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


# --- config, helpers -----------------------------------------------------------------------


def packaged_config() -> str:
    return (DEPLOY / "chatsvc.toml").read_text()


def config_text(mode: str = "open", tls: bool = False) -> str:
    """The packaged config with ``[auth] mode`` set and, if ``tls``, its [tls]
    lines uncommented (what its comment tells the operator to do)."""
    text = packaged_config()
    assert 'mode = "open"' in text
    text = text.replace('mode = "open"', f'mode = "{mode}"')
    if tls:
        tls_lines = ("# [tls]", '# cert = "', '# key = "')
        lines = text.splitlines()
        assert all(any(line.startswith(t) for line in lines) for t in tls_lines), text
        text = "\n".join(line[2:] if line.startswith(tls_lines) else line for line in lines) + "\n"
    return text


def write_config(box: Sandbox, text: str) -> None:
    """Replace the installed config's contents (its owner and mode stay)."""
    box.run(["sh", "-c", f"cat > {CONFIG}"], input=text)


def account(
    box: Sandbox, *args: str, secret: Optional[str] = None, user: str = ""
) -> tuple[int, str, str]:
    """``chatsvc-admin account ARGS`` as root or ``user``; ``secret`` on stdin."""
    argv = ["chatsvc-admin", "account", *args]
    if secret is not None:
        argv.append("--password-stdin")
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = box.run(argv, check=False, input=None if secret is None else secret + "\n")
    return proc.returncode, proc.stdout, proc.stderr


def login_with_password(client: Client, name: str, secret: str, prompt: bool = True) -> Client:
    """Log in as ``name``; ``prompt``: the greeting is still to be read (after a refused
    login the server only waits for a name again)."""
    if prompt:
        client.expect("please enter your name")
    client.send(name)
    client.expect(f"* password for {name}:")
    client.send(secret)
    client.expect(f"* hello {name}, you are in lobby")
    return client


def tls_connect(box: Sandbox) -> tuple[Client, str]:
    """A TLS connection to the TLS listener and the served certificate's fingerprint.

    The certificate is pinned by fingerprint (as ``chatsvc-client --fingerprint`` does),
    so no CA or host name check: the tests compare the fingerprints themselves.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    sock = ctx.wrap_socket(box.connect(TLS_PORT, timeout=15), server_hostname=DOMAIN)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return Client(sock), fingerprint(der)


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def file_fingerprint(box: Sandbox, path: str) -> str:
    """The fingerprint of the first certificate of a PEM file inside."""
    pem = box.run(["cat", path]).stdout
    block = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    assert block, f"no certificate in {path}"
    return fingerprint(ssl.PEM_cert_to_DER_cert(block.group(0)))


def make_certificate(box: Sandbox, directory: str, days: int = 2) -> None:
    """A fresh self-signed key and certificate, named and moded as certbot does."""
    box.sh(
        f"""
        umask 077
        mkdir -p {directory}
        cd {directory}
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
            -days {days} -subj /CN={DOMAIN} -addext subjectAltName=DNS:{DOMAIN} \\
            -keyout privkey.pem.tmp -out fullchain.pem.tmp 2>/dev/null
        mv privkey.pem.tmp privkey.pem
        mv fullchain.pem.tmp fullchain.pem
        chmod 0644 fullchain.pem
        """
    )


def markdown_blocks(path: Path, heading: str, lang: str = "sh") -> list[str]:
    """Every ```lang block under the section ``heading`` of a markdown file."""
    text = path.read_text()
    section = re.search(rf"^##+ {re.escape(heading)}\n(.*?)(?=^##+ |\Z)", text, re.M | re.S)
    assert section, f"no section {heading!r} in {path}"
    return re.findall(rf"^```{lang}\n(.*?)^```", section.group(1), re.M | re.S)


def require(box: Sandbox, tool: str) -> None:
    """Skip unless ``tool`` is installed (the sandbox runs the host's programs)."""
    if box.run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
        pytest.skip(f"{tool} is not installed on this host")


def stat(box: Sandbox, path: str) -> str:
    return box.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()


# --- accounts ------------------------------------------------------------------------------


def test_accounts_added_by_root_and_an_operator_land_in_the_state_directory(
    box: Sandbox,
) -> None:
    wait_active(box)
    assert show(box)["StateDirectory"] == "chatsvc"
    code, out, err = account(box, "add", "amy", secret=password("amy"))
    assert (code, out.strip()) == (0, "added account amy"), err
    code, out, err = account(box, "add", "ben", secret=password("ben"), user=OPERATOR)
    assert (code, out.strip()) == (0, "added account ben"), err

    # The server (user chatsvc) made the store in $STATE_DIRECTORY, privately.
    assert stat(box, STATE_DIR) == "chatsvc:chatsvc 700"
    for name in box.run(["ls", "-A", STATE_DIR]).stdout.split():
        assert stat(box, f"{STATE_DIR}/{name}") == "chatsvc:chatsvc 600", name
    assert stat(box, STORE) == "chatsvc:chatsvc 600"
    # only hashes in it
    for secret in PASSWORDS.values():
        assert box.run(["grep", "-qaF", secret, STORE], check=False).returncode == 1

    code, out, err = account(box, "list", user=OPERATOR)
    assert code == 0, err
    assert out.splitlines()[0] == "mode: open"
    assert re.search(r"^amy\s", out, re.M) and re.search(r"^ben\s", out, re.M), out

    # an account that exists already, a bad name: clear errors, nothing changed
    code, out, err = account(box, "add", "amy", secret=password("refused-add"))
    assert code != 0 and err.strip() and out == "", (code, out, err)
    code, out, err = account(box, "add", "no way", secret=password("bad-name"))
    assert code != 0 and err.strip(), (code, out, err)
    code, out, _ = account(box, "list")
    assert len(re.findall(r"^(amy|ben)\s", out, re.M)) == 2, out


class Terminal:
    """A command inside the sandbox on a real pty made here; every read has a deadline."""

    def __init__(self, box: Sandbox, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            box.command(argv), stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {text!r} on the terminal; got {self.seen!r}")
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the other side is closed
                    data = b""
                if not data:
                    raise AssertionError(f"EOF expecting {text!r}; got {self.seen!r}")
                self.seen += data

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """The exit status and everything the terminal showed."""
        code = self.proc.wait(timeout)
        while select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                break
            if not data:
                break
            self.seen += data
        os.close(self.master)
        return code, self.seen.decode("utf-8", "replace")


def test_the_documented_interactive_account_add_asks_twice_without_echo(box: Sandbox) -> None:
    """deploy/README.md's ``chatsvc-admin account add alice`` on a terminal, as it is."""
    (add,) = [
        s for s in readme_commands("Accounts: the state directory and backups") if " add " in s
    ]
    argv = [*add.split()[:-1], "zoe"]
    secret = password("zoe")

    mismatch = Terminal(box, argv)
    mismatch.expect("New password: ")
    mismatch.type(secret)
    mismatch.expect("Repeat it: ")
    mismatch.type(secret + "x")
    code, shown = mismatch.finish()
    assert code != 0 and "added account" not in shown, shown
    assert secret not in shown, shown  # no echo

    term = Terminal(box, argv)
    term.expect("New password: ")
    term.type(secret)
    term.expect("Repeat it: ")
    term.type(secret)
    code, shown = term.finish()
    assert code == 0 and "added account zoe" in shown, shown
    assert secret not in shown, shown
    code, out, _ = account(box, "list")
    assert re.search(r"^zoe\s", out, re.M), out


def test_registered_mode_by_the_documented_config_and_reload(
    box: Sandbox, clients: list[Client]
) -> None:
    pid = main_pid(box)
    reloaded = len(events(box, "config_reloaded"))
    # deploy/README.md: add the first account (done above), set the mode, check, reload
    steps = readme_commands("Accounts: the state directory and backups")
    assert steps[:3] == [
        "chatsvc-admin account add alice",
        "chatsvc-admin reload --check",
        "systemctl reload chatsvc",
    ], steps
    write_config(box, config_text(mode="registered"))
    check = box.run(steps[1].split()).stdout
    assert re.search(r"^\s+auth\.mode: open -> registered$", check, re.M), check
    box.run(steps[2].split())
    event = wait_event(box, "config_reloaded", after=reloaded)
    assert event["applied"] == ["auth.mode"], event
    assert main_pid(box) == pid

    # the right password; a name without an account needs none
    amy = login_with_password(Client(box.connect(PORT)), "amy", PASSWORDS["amy"])
    clients.append(amy)
    cy = Client.login(box, "cy")
    clients.append(cy)

    # a wrong password: refused, asked for a name again, then the right one
    failed = len(events(box, "auth_failed", name="ben"))
    ben = Client(box.connect(PORT))
    clients.append(ben)
    ben.expect("please enter your name")
    ben.send("ben")
    ben.expect("* password for ben:")
    ben.send(PASSWORDS["amy"])
    ben.expect("! wrong name or password")
    event = wait_event(box, "auth_failed", after=failed, name="ben")
    assert event["reason"] == "wrong_password"
    login_with_password(ben, "ben", PASSWORDS["ben"], prompt=False)

    ben.send("with a password")
    for c in (amy, ben, cy):
        c.expect("[lobby] ben: with a password")


def test_passwd_and_del_of_a_logged_in_user(box: Sandbox, clients: list[Client]) -> None:
    ben = login_with_password(Client(box.connect(PORT)), "ben", PASSWORDS["ben"])
    clients.append(ben)
    old = PASSWORDS["ben"]
    code, out, err = account(box, "passwd", "ben", secret=password("ben-new"), user=OPERATOR)
    assert (code, out.strip()) == (0, "changed the password of ben"), err
    # the logged-in user stays
    ben.send("still in")
    ben.expect("[lobby] ben: still in")

    # a second login as ben: "name taken" before any password is asked
    other = Client(box.connect(PORT))
    clients.append(other)
    other.expect("please enter your name")
    other.send("ben")
    other.expect("! name taken: ben")

    # deleting the account disconnects its user; the name is then free
    code, out, err = account(box, "del", "ben")
    assert (code, out.strip()) == (0, "deleted account ben; the user was disconnected"), err
    ben.expect("* you were kicked: account deleted")
    ben.lines_until_eof()
    other.send("ben")
    other.expect("* hello ben, you are in lobby")  # no password asked any more
    wait_event(box, "account_deleted", name="ben")

    # and the old password of a deleted account is worth nothing: no account, no prompt
    code, out, _ = account(box, "list")
    assert code == 0 and not re.search(r"^ben\s", out, re.M), out
    assert old not in out


def test_the_store_survives_a_restart(box: Sandbox, clients: list[Client]) -> None:
    pid = main_pid(box)
    box.run(["systemctl", "restart", UNIT], timeout=40)
    wait_active(box)
    assert main_pid(box) != pid
    code, out, _ = account(box, "list", user=OPERATOR)
    assert code == 0 and out.splitlines()[0] == "mode: registered", out
    assert re.search(r"^amy\s", out, re.M) and not re.search(r"^ben\s", out, re.M), out
    amy = login_with_password(Client(box.connect(PORT)), "amy", PASSWORDS["amy"])
    clients.append(amy)
    assert stat(box, STORE) == "chatsvc:chatsvc 600"


def test_backup_while_running_and_restore_as_documented(
    box: Sandbox, clients: list[Client]
) -> None:
    require(box, "sqlite3")
    blocks = markdown_blocks(DEPLOY / "README.md", "Accounts: the state directory and backups")
    backup = [b for b in blocks if ".backup " in b]
    assert len(backup) == 1, blocks
    copy = re.search(r'\.backup (\S+)"', backup[0])
    assert copy, backup[0]
    box.sh(backup[0])  # while the server runs
    # a copy of a secret file is secret too
    assert stat(box, copy.group(1)).endswith(" 600"), stat(box, copy.group(1))

    code, _, err = account(box, "del", "amy")
    assert code == 0, err
    restore = [b for b in blocks if "systemctl stop chatsvc" in b]
    assert len(restore) == 1, blocks
    box.sh(restore[0], timeout=60)
    wait_active(box)
    assert stat(box, STORE) == "chatsvc:chatsvc 600"
    amy = login_with_password(Client(box.connect(PORT)), "amy", PASSWORDS["amy"])
    clients.append(amy)


# --- TLS -----------------------------------------------------------------------------------


def test_tls_as_documented(box: Sandbox, clients: list[Client]) -> None:
    """The files where certbot would have them, the README's commands word for word
    (run in that directory), the config's [tls] lines uncommented."""
    require(box, "openssl")
    make_certificate(box, LINEAGE)
    block = readme_block("TLS")
    assert "install -m 0400 -o chatsvc -g chatsvc privkey.pem" in block
    started = len(events(box, "server_started"))
    write_config(box, config_text(mode="registered", tls=True))
    box.run(["bash", "-euxo", "pipefail", "-c", f"cd {LINEAGE}\n{block}"], timeout=60)
    wait_active(box)
    assert stat(box, "/etc/chatsvc/tls") == "root:chatsvc 750"
    assert stat(box, PRIVATE_KEY) == "chatsvc:chatsvc 400"
    # the service reads the key; its operators (the group chatsvc) read the certificate only
    as_operator = ["runuser", "-u", OPERATOR, "--", "cat"]
    assert box.run([*as_operator, SERVED_CERT], check=False).returncode == 0
    assert box.run([*as_operator, PRIVATE_KEY], check=False).returncode != 0

    expected = file_fingerprint(box, f"{LINEAGE}/fullchain.pem")
    event = wait_event(box, "server_started", after=started)
    assert event["tls_fingerprint"] == expected, event
    assert event["tls_port"] == TLS_PORT, event

    # over TLS: a password from an account, chat with a plain client
    tls_client, served = tls_connect(box)
    clients.append(tls_client)
    assert served == expected
    login_with_password(tls_client, "amy", PASSWORDS["amy"])
    plain = Client.login(box, "cy")
    clients.append(plain)
    tls_client.send("over TLS")
    plain.expect("[lobby] amy: over TLS")
    plain.send("over plain TCP")
    tls_client.expect("[lobby] cy: over plain TCP")
    code, out, err = admin(box, "--json", "users", user=OPERATOR)
    assert code == 0, err
    users = {u["name"]: u for u in json.loads(out)["users"]}
    assert users["amy"]["tls"] is True and users["cy"]["tls"] is False, users


def install_deploy_hook(box: Sandbox) -> None:
    """docs/tls.md's certbot deploy hook, word for word, mode 0755."""
    blocks = markdown_blocks(TLS_DOC, "Where to put the files (systemd)")
    hooks = [b for b in blocks if b.startswith("#!/bin/sh")]
    assert len(hooks) == 1, blocks
    assert f"*/{DOMAIN})" in hooks[0]
    box.sh(f"mkdir -p {Path(HOOK).parent}\ncat > {HOOK}\nchmod 0755 {HOOK}", input=hooks[0])


def renew(box: Sandbox) -> None:
    """What certbot does after a renewal: run the deploy hooks with RENEWED_LINEAGE."""
    box.run([HOOK], env={"RENEWED_LINEAGE": LINEAGE, "RENEWED_DOMAINS": DOMAIN})


def test_a_certbot_deploy_hook_switches_the_certificate(
    box: Sandbox, clients: list[Client]
) -> None:
    require(box, "openssl")
    install_deploy_hook(box)
    pid = main_pid(box)
    before, old_print = tls_connect(box)
    clients.append(before)
    before.expect("please enter your name")
    before.send("dora")
    before.expect("* hello dora, you are in lobby")

    reloaded = len(events(box, "tls_reloaded"))
    make_certificate(box, LINEAGE)  # the renewal
    new_print = file_fingerprint(box, f"{LINEAGE}/fullchain.pem")
    assert new_print != old_print
    renew(box)
    event = wait_event(box, "tls_reloaded", after=reloaded)
    assert event["fingerprint"] == new_print, event
    assert main_pid(box) == pid
    assert stat(box, PRIVATE_KEY) == "chatsvc:chatsvc 400"

    after, served = tls_connect(box)
    clients.append(after)
    assert served == new_print
    after.expect("please enter your name")
    after.send("eve")
    after.expect("* hello eve, you are in lobby")
    # the connection made before the switch keeps chatting, both ways
    before.send("from the old certificate")
    after.expect("[lobby] dora: from the old certificate")
    after.send("from the new one")
    before.expect("[lobby] eve: from the new one")


def test_a_broken_certificate_on_reload_keeps_the_old_one(
    box: Sandbox, clients: list[Client]
) -> None:
    require(box, "openssl")
    pid = main_pid(box)
    good_print = file_fingerprint(box, SERVED_CERT)
    before, served = tls_connect(box)
    clients.append(before)
    assert served == good_print
    before.expect("please enter your name")
    before.send("finn")
    before.expect("* hello finn, you are in lobby")

    failed = len(events(box, "tls_reload_failed"))
    reloaded = len(events(box, "tls_reloaded"))
    box.sh(  # a "renewal" that went wrong: a truncated certificate
        f"""
        cp {LINEAGE}/fullchain.pem /root/fullchain.pem.good
        head -c 200 /root/fullchain.pem.good > {LINEAGE}/fullchain.pem
        """
    )
    try:
        renew(box)  # copies the broken file and reloads; systemctl does not wait
        event = wait_event(box, "tls_reload_failed", after=failed)
        assert event["file"] == SERVED_CERT and event["key"] == "tls.cert", event
        assert event["error"], event
        # the journal says why, in the service's own words
        journal = box.run(["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_UNIT={UNIT}"]).stdout
        assert SERVED_CERT in journal and "tls_reload_failed" in journal
        assert len(events(box, "tls_reloaded")) == reloaded
        props = show(box)
        assert props["ActiveState"] == "active" and int(props["MainPID"]) == pid

        new, served = tls_connect(box)  # still the old certificate
        clients.append(new)
        assert served == good_print
        new.expect("please enter your name")
        new.send("gil")
        new.expect("* hello gil, you are in lobby")
        before.send("unaffected")
        new.expect("[lobby] finn: unaffected")
    finally:  # the next renewal is good again
        box.sh(f"cp /root/fullchain.pem.good {LINEAGE}/fullchain.pem")
        renew(box)
    wait_event(box, "tls_reloaded", after=reloaded)
    _, served = tls_connect(box)
    assert served == good_print


def credentials_work(box: Sandbox) -> bool:
    """Can a service user read a LoadCredential= file in this sandbox?  (Some container
    setups give services a credentials directory they cannot read.)"""
    probe = box.run(
        [
            *("systemd-run", "-q", "--wait", "--pipe", "-p", "User=chatsvc"),
            *("-p", f"LoadCredential=probe:{LINEAGE}/fullchain.pem"),
            *("sh", "-c", 'cat "$CREDENTIALS_DIRECTORY/probe"'),
        ],
        check=False,
        timeout=30,
    )
    return probe.returncode == 0 and "BEGIN CERTIFICATE" in probe.stdout


def test_load_credential_alternative_needs_a_restart_to_renew(
    box: Sandbox, clients: list[Client]
) -> None:
    """docs/tls.md's LoadCredential= drop-in and config, word for word, and its
    claim: a reload re-reads the same copies; only a restart takes a renewal."""
    require(box, "openssl")
    heading = "Where to put the files (systemd)"
    (dropin,) = markdown_blocks(TLS_DOC, heading, "ini")
    (table,) = markdown_blocks(TLS_DOC, heading, "toml")
    assert f"{LINEAGE}/privkey.pem" in dropin
    credential_config = config_text(mode="registered") + "\n" + table
    write_config(box, credential_config)
    try:
        # before the first start the copies do not exist: --check-config says so
        check = box.run(
            ["/opt/chatsvc/venv/bin/chatsvc", "--config", CONFIG, "--check-config"], check=False
        )
        assert check.returncode == 2, check
        assert "/run/credentials/chatsvc.service/tls-cert" in check.stderr, check.stderr
        if not credentials_work(box):
            pytest.skip("a service cannot read its credentials in this container")
        box.sh(
            f"mkdir -p {DROPIN_DIR}\ncat > {DROPIN_DIR}/tls-credentials.conf\n"
            "systemctl daemon-reload",
            input=dropin,
        )
        box.run(["systemctl", "restart", UNIT], timeout=40)
        wait_active(box)
        first = file_fingerprint(box, f"{LINEAGE}/fullchain.pem")
        old, served = tls_connect(box)
        clients.append(old)
        assert served == first
        login_with_password(old, "amy", PASSWORDS["amy"])

        make_certificate(box, LINEAGE)  # a renewal
        renewed = file_fingerprint(box, f"{LINEAGE}/fullchain.pem")
        reloaded = len(events(box, "tls_reloaded"))
        box.run(["systemctl", "reload", UNIT])
        event = wait_event(box, "tls_reloaded", after=reloaded)
        assert event["fingerprint"] == first, event  # the same copies, read again
        _, served = tls_connect(box)
        assert served == first
        old.send("before the restart")
        old.expect("[lobby] amy: before the restart")

        box.run(["systemctl", "restart", UNIT], timeout=40)
        wait_active(box)
        old.expect("* server shutting down")
        _, served = tls_connect(box)
        assert served == renewed
    finally:  # back to the group-readable copies, renewed by the deploy hook
        box.sh(f"rm -f {DROPIN_DIR}/tls-credentials.conf\nsystemctl daemon-reload")
        write_config(box, config_text(mode="registered", tls=True))
        renew(box)
        box.run(["systemctl", "restart", UNIT], timeout=40)
        wait_active(box)
    _, served = tls_connect(box)
    assert served == file_fingerprint(box, SERVED_CERT)


def test_seccomp_filter_kills_nothing_with_tls_and_accounts(
    box: Sandbox, clients: list[Client]
) -> None:
    """As test_packaged_unit's probe (denied calls kill with SIGSYS instead of EPERM),
    with TLS handshakes, a certificate reload and scrypt logins and account changes."""
    require(box, "openssl")
    dropin = f"{DROPIN_DIR}/seccomp-probe-tls.conf"
    box.sh(
        f"mkdir -p {DROPIN_DIR}\ncat > {dropin}\nsystemctl daemon-reload",
        input="[Service]\nSystemCallErrorNumber=\n",
    )
    try:
        box.run(["systemctl", "restart", UNIT], timeout=40)
        wait_active(box)
        pid = main_pid(box)
        code, _, err = account(box, "add", "hana", secret=password("hana"), user=OPERATOR)
        assert code == 0, err
        hana, _ = tls_connect(box)
        clients.append(hana)
        login_with_password(hana, "hana", PASSWORDS["hana"])
        amy, _ = tls_connect(box)
        clients.append(amy)
        login_with_password(amy, "amy", PASSWORDS["amy"])
        amy.send("/msg hana psst")
        hana.expect("psst")
        code, _, err = account(box, "passwd", "hana", secret=password("hana-new"))
        assert code == 0, err
        reloaded = len(events(box, "tls_reloaded"))
        renew(box)
        wait_event(box, "tls_reloaded", after=reloaded)
        code, _, err = account(box, "del", "hana")
        assert code == 0, err
        hana.expect("* you were kicked: account deleted")
        hana.lines_until_eof()
        amy.send("public")
        amy.expect("[lobby] amy: public")
        assert main_pid(box) == pid
        box.run(["systemctl", "stop", UNIT], timeout=30)
        amy.expect("* server shutting down")
        props = show(box)
        assert (props["Result"], props["ExecMainCode"], props["ExecMainStatus"]) == (
            "success",
            "1",
            "0",
        ), props
        journal = box.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
        assert "SYS" not in re.findall(r"status=\d+/(\w+)", journal)
    finally:
        box.sh(f"rm -f {dropin}\nsystemctl daemon-reload")
    box.run(["systemctl", "restart", UNIT], timeout=40)
    wait_active(box)


def test_security_exposure_with_accounts_and_tls(box: Sandbox) -> None:
    report = box.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    match = re.search(r"Overall exposure level for chatsvc\.service: ([\d.]+)", report)
    assert match, report
    assert float(match.group(1)) <= MAX_EXPOSURE, report


def test_no_password_in_the_journal_or_the_audit(box: Sandbox) -> None:
    """Last: every password used above, looked for in the whole journal."""
    assert len(PASSWORDS) >= 4, PASSWORDS
    # every account change was audited, by name
    audited = events(box, "admin_command", cmd="account")
    assert {e.get("target") for e in audited} >= {"amy", "ben"}, audited
    for name, event in (("amy", "account_added"), ("ben", "account_password_changed")):
        assert events(box, event, name=name), event
    everything = box.run(["journalctl", "--no-pager", "-o", "json"], timeout=60).stdout
    assert "admin_command" in everything
    for label, secret in PASSWORDS.items():
        assert secret not in everything, f"the password {label!r} is in the journal"
