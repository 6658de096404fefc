"""A 2-node cluster under the real systemd, set up as deploy/README.md "Cluster mode" says.

Runs after test_packaged_unit.py in the same sandbox: the packaged unit with the
cluster drop-in is node "a"; a copy of the packaged unit with its own config,
port and runtime directory is node "b" on the same host; Redis is Debian's
redis-server unit, configured by the README's commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.system.helpers import CHECKOUT, CONFIG, Client, admin, readme_block, show
from tests.system.sandbox import Sandbox, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

PORT_B = 6322
CONFIG_B = "/etc/chatsvc/b.toml"
UNIT_B = "chatsvc-b.service"
WHEELHOUSE = "/var/cache/chatsvc-systest/wheels"
CLUSTER_TOML = """
[cluster]
backend = "unix:///run/redis/redis-server.sock"
node_id = "{node}"
"""


def _credentials_work(box: Sandbox) -> bool:
    """Can a service user read a LoadCredential= file in this sandbox?"""
    probe = box.run(
        [
            *("systemd-run", "-q", "--wait", "--pipe", "-p", "User=chatsvc"),
            *("-p", "LoadCredential=probe:/etc/chatsvc/redis.pass"),
            *("sh", "-c", 'cat "$CREDENTIALS_DIRECTORY/probe"'),
        ],
        check=False,
        timeout=30,
    )
    return probe.returncode == 0


def _active(box: Sandbox, unit: str) -> bool:
    props = show(box, unit)
    return props.get("ActiveState") == "active" and props.get("SubState") == "running"


@pytest.fixture(scope="module")
def cluster(installed: Sandbox) -> Iterator[Sandbox]:
    box = installed
    if box.run(["sh", "-c", "command -v redis-server"], check=False).returncode != 0:
        pytest.skip("redis-server is not installed on this host (apt-get install redis-server)")
    # What the earlier module may have left: socket activation, a daemon.
    box.sh(
        """
        systemctl disable --now chatsvc.socket 2>/dev/null || true
        systemctl stop chatsvc.service 2>/dev/null || true
        pkill -f 'chatsvc --daemon' 2>/dev/null || true
        """,
        check=False,
    )
    script = readme_block("Cluster mode (several nodes on one Redis)")
    box.run(
        ["bash", "-euxo", "pipefail", "-c", f"cd {CHECKOUT}\n{script}"],
        timeout=120,
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE, "PIP_CONFIG_FILE": "/dev/null"},
    )
    # node a: the packaged config plus the README's [cluster] table
    box.sh(f"printf '%s' '{CLUSTER_TOML.format(node='a')}' >> {CONFIG}")
    if not _credentials_work(box):
        # Some container setups give the service a credentials directory it
        # cannot read (no ramfs for systemd to mount there).  Then the same
        # password reaches the node through [cluster] password_file instead.
        box.sh(
            f"""
            install -m 0640 -o root -g chatsvc /etc/chatsvc/redis.pass /etc/chatsvc/redis.group.pass
            printf 'password_file = "/etc/chatsvc/redis.group.pass"\\n' >> {CONFIG}
            """
        )
    # node b: the same unit and config, its own port, admin socket, runtime dir
    box.sh(
        f"""
        sed -e 's/^port = .*/port = {PORT_B}/' {CONFIG} | grep -v '^node_id' > {CONFIG_B}
        printf 'node_id = "b"\\n' >> {CONFIG_B}
        sed -i 's#^socket = .*#socket = "/run/chatsvc-b/admin.sock"#' {CONFIG_B}
        grep -q '^socket = "/run/chatsvc-b/admin.sock"' {CONFIG_B} || \\
            sed -i 's#^\\[admin\\]#[admin]\\nsocket = "/run/chatsvc-b/admin.sock"#' {CONFIG_B}
        chown root:chatsvc {CONFIG_B}; chmod 0640 {CONFIG_B}
        sed -e 's#{CONFIG}#{CONFIG_B}#' \\
            -e 's#^RuntimeDirectory=chatsvc#RuntimeDirectory=chatsvc-b#' \\
            /etc/systemd/system/chatsvc.service > /etc/systemd/system/{UNIT_B}
        mkdir -p /etc/systemd/system/{UNIT_B}.d
        cp /etc/systemd/system/chatsvc.service.d/cluster.conf /etc/systemd/system/{UNIT_B}.d/
        systemctl daemon-reload
        """,
        timeout=60,
    )
    for unit in ("chatsvc.service", UNIT_B):
        started = box.run(["systemctl", "restart", unit], check=False, timeout=60)
        if started.returncode != 0:
            log = box.run(["journalctl", "--no-pager", "-o", "cat", "-n", "30", "-u", unit])
            cat = box.run(["systemctl", "cat", unit], check=False).stdout
            raise AssertionError(f"{unit} did not start:\n{log.stdout}\n{cat[-1500:]}")
    wait_for(
        "both nodes active", lambda: _active(box, "chatsvc.service") and _active(box, UNIT_B), 30
    )
    yield box
    box.sh(f"systemctl stop {UNIT_B}", check=False)


def test_the_redis_setup_is_what_the_readme_asks(cluster: Sandbox) -> None:
    conf = cluster.run(["cat", "/etc/redis/redis.conf"]).stdout
    for setting in ("appendfsync always", "maxmemory-policy noeviction", "requirepass"):
        assert setting in conf
    mode = cluster.run(["stat", "-c", "%a %U", "/etc/chatsvc/redis.pass"]).stdout.split()
    assert mode == ["600", "root"]


def test_two_nodes_chat_in_one_order(cluster: Sandbox) -> None:
    a = Client.login(cluster, "ann")
    b = Client(cluster.connect(PORT_B))
    b.expect("please enter your name")
    b.send("ben")
    b.expect("* hello ben")
    a.expect("* ben joined lobby")
    for i in range(10):
        (a if i % 2 else b).send(f"line {i}")
    got_a = [a.expect("line ") for _ in range(10)]
    got_b = [b.expect("line ") for _ in range(10)]
    assert got_a == got_b
    a.close()
    b.close()


def test_chatsvc_admin_nodes_lists_both(cluster: Sandbox) -> None:
    rc, out, err = admin(cluster, "--json", "nodes")
    assert rc == 0, err
    nodes = json.loads(out)["nodes"]
    assert sorted(n["id"] for n in nodes) == ["a", "b"]


def test_a_stopped_node_leaves_cleanly_and_the_password_stays_out_of_the_journal(
    cluster: Sandbox,
) -> None:
    a = Client.login(cluster, "amy")
    b = Client(cluster.connect(PORT_B))
    b.expect("please enter your name")
    b.send("bob")
    b.expect("* hello bob")
    a.expect("* bob joined lobby")
    cluster.run(["systemctl", "stop", UNIT_B], timeout=60)
    a.expect("* bob left lobby")
    assert show(cluster, UNIT_B)["Result"] == "success"
    journal = cluster.run(["journalctl", "--no-pager", "-o", "cat"]).stdout
    assert "CHANGE-ME" not in journal
    assert '"cluster_joined"' in journal
    a.close()
