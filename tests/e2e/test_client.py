"""The console client against the real server: pexpect in a real pty, and piped stdin."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pexpect
import pytest

from tests.e2e.conftest import ServerHandle
from tests.e2e.helpers import RawClient, blocked_signals, logged_in, wait_until

MakeServer = Callable[..., ServerHandle]
ROOT = Path(__file__).resolve().parents[2]
CLIENT_FILE = ROOT / "chatsvc" / "client.py"
TIMEOUT = 10


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update({"TERM": "xterm", "NO_COLOR": "1", "LANG": "C.UTF-8"})
    env.update(extra)
    return {k: v for k, v in env.items() if v}  # an empty value removes the variable


class Console:
    """The client in a pty; ``expect`` takes literal text."""

    def __init__(self, server: ServerHandle, *args: str, env: Optional[dict[str, str]] = None):
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "chatsvc.client", "--host", server.host, "--port", str(server.port), *args],
            cwd=str(ROOT),
            env=env or client_env(),
            encoding="utf-8",
            timeout=TIMEOUT,
            dimensions=(24, 80),
        )

    def expect(self, text: str) -> str:
        self.child.expect_exact(text)
        return str(self.child.before)

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def line(self, text: str) -> None:
        self.child.send(text + "\r")

    def exit_status(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return int(status)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def console(server: ServerHandle) -> Iterator[Callable[..., Console]]:
    made: list[Console] = []

    def make(*args: str, env: Optional[dict[str, str]] = None) -> Console:
        c = Console(server, *args, env=env)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def login(
    make: Callable[..., Console], name: str, *args: str, env: Optional[dict[str, str]] = None
) -> Console:
    c = make("--name", name, *args, env=env)
    c.expect(f"* hello {name}, you are in lobby")
    c.expect("lobby> ")
    return c


# --- interactive ---------------------------------------------------------------------


def test_asks_for_a_name_then_prompts_with_the_room(console: Callable[..., Console]) -> None:
    c = console()
    c.expect("Enter your name: ")
    c.line("alice")
    c.expect("* hello alice, you are in lobby")
    c.expect("lobby> ")
    c.line("bye")
    c.expect("* goodbye")
    assert c.exit_status() == 0


def test_rejected_name_shows_the_reason_and_asks_again(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    bob = logged_in(server.host, server.port, "bob")
    c = console()
    c.expect("Enter your name: ")
    c.line("root")
    c.expect("! the name 'root' is reserved")
    c.expect("Enter your name: ")
    c.line("BOB")
    c.expect("! name taken: BOB")
    c.expect("Enter your name: ")
    c.line("carol")
    c.expect("* hello carol, you are in lobby")
    c.expect("lobby> ")
    bob.close()


def test_rejected_name_option_falls_back_to_asking(console: Callable[..., Console]) -> None:
    c = console("--name", "no spaces")
    c.expect("! invalid name")
    c.expect("Enter your name: ")
    c.line("dave")
    c.expect("lobby> ")


def test_two_clients_chat(console: Callable[..., Console]) -> None:
    alice = login(console, "alice")
    bob = login(console, "bob")
    alice.expect("* bob joined lobby")
    alice.line("hi bob")
    bob.expect("[lobby] alice: hi bob")
    bob.line("hi alice, héllo 世界")
    alice.expect("[lobby] bob: hi alice, héllo 世界")


def typing(
    server: ServerHandle, console: Callable[..., Console], text: str, left: int = 0
) -> tuple[RawClient, Console]:
    """bob, and alice half-way through typing ``text``, the cursor ``left`` keys back."""
    bob = logged_in(server.host, server.port, "bob")
    alice = login(console, "alice")
    alice.send(text)
    alice.expect(text[-3:])  # readline has drawn all of it
    alice.send("\x1b[D" * left)
    return bob, alice


def test_message_arriving_mid_typing_keeps_the_typed_text(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    bob, alice = typing(server, console, "half-way")
    bob.send("interrupting you")
    alice.expect("[lobby] bob: interrupting you")
    alice.expect("lobby> half-way")  # prompt and typed text redrawn below it
    alice.line(" and done")
    assert bob.expect("alice:") == "[lobby] alice: half-way and done"
    bob.close()


def process_state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux procfs")
def test_ctrl_z_then_resume_keeps_the_typed_text_and_cursor(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    bob, alice = typing(server, console, "half-way", left=3)  # the cursor before "way"
    alice.send("\x1a")  # Ctrl-Z: the terminal's SIGTSTP
    wait_until(lambda: process_state(alice.child.pid) == "T", what="client stopped")
    os.kill(alice.child.pid, signal.SIGCONT)  # what `fg` does
    alice.expect("lobby> half-way")  # prompt and typed text redrawn
    alice.line("the ")  # typed at the cursor kept from before
    assert bob.expect("alice:") == "[lobby] alice: half-the way"
    alice.line("bye")
    assert alice.exit_status() == 0
    bob.close()


def test_message_arriving_keeps_the_cursor_where_it_was(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    bob, alice = typing(server, console, "helloworld", left=5)  # between hello and world
    bob.send("ping")
    alice.expect("[lobby] bob: ping")
    alice.expect("lobby> helloworld")
    alice.line(", ")  # typed where the cursor was, not at the end
    assert bob.expect("alice:") == "[lobby] alice: hello, world"
    bob.close()


def test_wide_characters_and_long_lines_survive_an_interruption(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    text = "日本語のテキスト " * 12 + "終わり"  # wraps over several 80-column rows
    bob, alice = typing(server, console, text)
    bob.send("x" * 200)
    alice.expect("[lobby] bob: " + "x" * 200)
    alice.line("👋")
    assert bob.expect("alice:") == "[lobby] alice: " + text + "👋"
    bob.close()


def test_join_changes_the_prompt_and_tab_completes(console: Callable[..., Console]) -> None:
    c = login(console, "alice")
    c.send("/jo\t")
    c.expect("/join ")
    c.send("su\t")
    c.expect("support ")
    c.send("\r")
    c.expect("* you are now in support")
    c.expect("support> ")
    c.line("/join nowhere")
    c.expect("! no such room: nowhere")
    c.expect("support> ")


def test_help_lists_client_and_server_commands(console: Callable[..., Console]) -> None:
    c = login(console, "alice")
    c.line("/help")
    c.expect("client: Tab completes")
    c.expect("/join ROOM")
    c.expect("lobby> ")


@pytest.mark.parametrize(
    ("how", "keys"), [("bye", "bye\r"), ("quit", "/quit\r"), ("ctrl-d", "\x04"), ("ctrl-c", "\x03")]
)
def test_leaving_says_bye_and_exits_0(
    server: ServerHandle, console: Callable[..., Console], how: str, keys: str
) -> None:
    bob = logged_in(server.host, server.port, "bob")
    alice = login(console, "alice")
    bob.expect("* alice joined lobby")
    alice.send(keys)
    assert alice.exit_status() == 0
    # a plain "left", no "(disconnected)": the server got our bye
    assert bob.expect("alice left") == "* alice left lobby"
    bob.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux procfs")
def test_only_the_main_thread_receives_the_signals_it_handles(
    console: Callable[..., Console],
) -> None:
    # Handlers run in the main thread; a Ctrl-C the kernel gave to the reader
    # thread used to wait for the next keystroke or server line.
    alice = login(console, "alice")
    blocked = blocked_signals(alice.child.pid)
    main = blocked.pop(alice.child.pid)
    assert blocked  # at least the connection's reader
    handled = {signal.SIGINT, signal.SIGTERM, signal.SIGTSTP, signal.SIGWINCH}
    assert not handled & main
    for tid, mask in blocked.items():
        assert handled <= mask, f"thread {tid} can receive them"
    alice.send("\x03")
    assert alice.exit_status() == 0


def test_kicked_shows_the_reason_and_exits_4(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    alice = login(console, "alice")
    assert server.hub.kick("alice", "spamming")
    alice.expect("* you were kicked: spamming")
    alice.expect("chatsvc-client: kicked: spamming")
    assert alice.exit_status() == 4


def test_server_shutdown_shows_the_notice_and_exits_5(
    server: ServerHandle, console: Callable[..., Console]
) -> None:
    alice = login(console, "alice")
    server.stop("maintenance")
    alice.expect("* server shutting down: maintenance")
    alice.expect("chatsvc-client: server shutting down")
    assert alice.exit_status() == 5


def test_colours_unless_no_color(console: Callable[..., Console]) -> None:
    coloured = login(console, "alice", env=client_env(NO_COLOR=""))
    coloured.line("in colour")
    coloured.expect("\x1b[32m[lobby] alice: in colour\x1b[0m")
    plain = login(console, "bob")
    plain.line("no colour")
    before = plain.expect("[lobby] bob: no colour")
    assert "\x1b[3" not in before and "\x1b[1;3" not in before


@pytest.mark.timeout(60)
def test_reconnect_after_restart_rejoins_the_room(make_server: MakeServer) -> None:
    first = make_server()
    port = first.port
    c = Console(first, "--name", "alice", "--room", "work", "--reconnect")
    try:
        c.expect("* you are now in work")
        c.expect("work> ")
        first.stop()
        c.expect("* server shutting down; reconnecting")
        second = make_server(port=port)
        c.expect(f"* reconnected to 127.0.0.1:{port}")
        c.expect("* hello alice, you are in lobby")
        c.expect("* you are now in work")
        c.expect("work> ")
        with logged_in(second.host, second.port, "bob") as bob:
            bob.send("/join work")
            bob.expect("you are now in work")
            bob.send("welcome back")
            c.expect("[work] bob: welcome back")
        c.line("bye")
        assert c.exit_status() == 0
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_scripted_reconnect_rejoins_and_delivers_what_came_meanwhile(
    make_server: MakeServer,
) -> None:
    first = make_server()
    port = first.port
    args = ["--port", str(port), "--name", "bot", "--room", "team", "--reconnect"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsvc.client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )
    assert proc.stdin is not None
    try:
        with logged_in(first.host, port, "watcher") as watcher:
            watcher.send("/join team")
            watcher.expect("you are now in team")
            proc.stdin.write(b"before\n")
            proc.stdin.flush()
            watcher.expect("[team] bot: before")
        first.stop()
        second = make_server(port=port)
        with logged_in(second.host, port, "watcher") as watcher:
            watcher.send("/join team")
            watcher.expect("you are now in team")
            proc.stdin.write(b"after\n")  # sent once the client is back in team
            proc.stdin.flush()
            assert watcher.expect("bot: after") == "[team] bot: after"
            _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "server shutting down; reconnecting" in err.decode()
    assert f"reconnected to 127.0.0.1:{port}" in err.decode()


# --- failures with a documented exit code --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_client(
    *args: str,
    stdin: str = "",
    python: str = sys.executable,
    cwd: Path = ROOT,
    isolated: bool = False,
) -> subprocess.CompletedProcess[str]:
    target = [str(CLIENT_FILE)] if isolated else ["-m", "chatsvc.client"]
    return subprocess.run(
        [python, *(["-I"] if isolated else []), *target, *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=cwd,
        env=client_env(),
    )


def test_cannot_connect_is_one_clear_line_and_exit_3() -> None:
    port = free_port()
    result = run_client("--port", str(port), "--name", "x")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert f"is chatsvc running on 127.0.0.1:{port}?" in result.stderr


def test_cannot_connect_interactively_exits_3() -> None:
    port = free_port()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chatsvc.client", "--port", str(port)],
        cwd=str(ROOT),
        env=client_env(),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.expect_exact(f"is chatsvc running on 127.0.0.1:{port}?")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


def test_usage_error_exits_2() -> None:
    result = run_client("--port", "seventy")
    assert result.returncode == 2
    assert "not a port number" in result.stderr


# --- scripted ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_piping_1000_lines_delivers_all_in_order(server: ServerHandle) -> None:
    sent = [f"line {i:04d} ünïcødé" for i in range(1000)]
    with logged_in(server.host, server.port, "watcher") as watcher:
        result = run_client(
            "--port", str(server.port), "--name", "ci", stdin="\n".join(sent) + "\n"
        )
        assert result.returncode == 0, result.stderr
        got = [watcher.expect("[lobby] ci: ") for _ in sent]
    assert got == [f"[lobby] ci: {s}" for s in sent]
    out = result.stdout.splitlines()
    assert out[:3] == [
        "* welcome to chatsvc 0.1.0",
        "* please enter your name",
        "* hello ci, you are in lobby",
    ]
    assert [line for line in out if line.startswith("[lobby] ci: ")] == got
    assert out[-1] == "* goodbye"


@pytest.mark.timeout(60)
def test_scripted_mode_paces_itself_when_told_to_slow_down(make_server: MakeServer) -> None:
    server = make_server(flood_rate=40.0, flood_burst=5)
    sent = [f"burst {i}" for i in range(30)]
    with logged_in(server.host, server.port, "watcher") as watcher:
        result = run_client(
            "--port", str(server.port), "--name", "ci", stdin="\n".join(sent) + "\n"
        )
        assert result.returncode == 0, result.stderr
        got = [watcher.expect("[lobby] ci: ") for _ in sent]
    assert got == [f"[lobby] ci: {s}" for s in sent]
    assert "! slow down" in result.stdout  # the server did push back, and nothing was lost


def test_scripted_mode_takes_the_name_from_the_first_line(server: ServerHandle) -> None:
    result = run_client("--port", str(server.port), stdin="robot\n\n  \n/who\nbye\nnot sent\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2:] == [
        "* hello robot, you are in lobby",
        "* in lobby (1): robot",
        "* goodbye",
    ]


def test_scripted_mode_joins_the_room_or_fails_with_6(server: ServerHandle) -> None:
    ok = run_client("--port", str(server.port), "--name", "a", "--room", "team", stdin="hi\n")
    assert ok.returncode == 0, ok.stderr
    assert "[team] a: hi" in ok.stdout.splitlines()
    bad = run_client("--port", str(server.port), "--name", "b", "--room", "attic", stdin="hi\n")
    assert bad.returncode == 6
    assert "cannot join attic: no such room" in bad.stderr
    assert "[lobby] b: hi" not in bad.stdout


def test_scripted_mode_rejected_name_exits_6(server: ServerHandle) -> None:
    result = run_client("--port", str(server.port), "--name", "admin", stdin="hi\n")
    assert result.returncode == 6
    assert result.stderr.strip() == "chatsvc-client: name rejected: the name 'admin' is reserved"


def test_scripted_mode_kicked_exits_4_even_with_input_still_open(server: ServerHandle) -> None:
    # Regression: the stdin thread, blocked reading a still-open pipe, used to
    # hold the stdin buffer's lock and the interpreter aborted (SIGABRT) at exit.
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsvc.client", "--port", str(server.port), "--name", "bot"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with logged_in(server.host, server.port, "watcher") as watcher:
            proc.stdin.write(b"still here\n")
            proc.stdin.flush()
            watcher.expect("[lobby] bot: still here")
            assert server.hub.kick("bot", "enough")
            assert proc.wait(timeout=TIMEOUT) == 4  # stdin not closed
        assert proc.stderr.read().decode().strip() == "chatsvc-client: kicked: enough"
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_every_line_of_a_real_session_is_read_as_a_known_kind(server: ServerHandle) -> None:
    from chatsvc.client import What, interpret

    script = "/help\n/rooms\n/who\n/msg ci psst\n/join attic\n/bogus\nhello\n"
    result = run_client("--port", str(server.port), "--name", "ci", stdin=script)
    assert result.returncode == 0, result.stderr
    kinds = [interpret(line).what for line in result.stdout.splitlines()]
    assert What.OTHER not in kinds
    assert {
        What.WELCOME,
        What.NAME_PROMPT,
        What.HELLO,
        What.NOTICE,
        What.ROOMS,
        What.WHO,
        What.PRIVATE,
        What.PRIVATE_SENT,
        What.NO_ROOM,
        What.ERROR,
        What.CHAT,
        What.GOODBYE,
    } <= set(kinds)


# --- one file, standard library only -------------------------------------------------


def test_client_imports_only_the_standard_library() -> None:
    import ast

    names = getattr(sys, "stdlib_module_names", None)
    if names is None:
        pytest.skip("sys.stdlib_module_names needs Python 3.10")
    tree = ast.parse(CLIENT_FILE.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported - {"__future__"} <= set(names), imported - set(names)


def pythons() -> list[str]:
    """This interpreter, plus any other Python >= 3.9 found: ``python3.9``, ``python3``,
    and those listed in ``$CHATSVC_TEST_PYTHONS`` (separated by ``os.pathsep``)."""
    listed = os.environ.get("CHATSVC_TEST_PYTHONS", "").split(os.pathsep)
    candidates = [*filter(None, listed), *filter(None, map(shutil.which, ("python3.9", "python3")))]
    found = [sys.executable]
    for path in candidates:
        if os.path.realpath(path) in map(os.path.realpath, found):
            continue
        try:
            probe = subprocess.run(
                [path, "-c", "import sys; print(sys.version_info >= (3, 9))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            found.append(path)
    return found


@pytest.mark.parametrize("python", pythons())
def test_standalone_copy_runs_isolated(server: ServerHandle, tmp_path: Path, python: str) -> None:
    copy = tmp_path / "client.py"
    shutil.copy(CLIENT_FILE, copy)
    help_ = subprocess.run(
        [python, "-I", str(copy), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert help_.returncode == 0, help_.stderr
    assert re.search(r"4\s+kicked", help_.stdout)
    chat = subprocess.run(
        [python, "-I", str(copy), "--port", str(server.port), "--name", "solo"],
        input="standalone hello\n",
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=tmp_path,
        timeout=30,
    )
    assert chat.returncode == 0, chat.stderr
    assert "[lobby] solo: standalone hello" in chat.stdout.splitlines()
