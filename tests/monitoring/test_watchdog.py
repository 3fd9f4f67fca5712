"""systemd's notify protocol: ``pacs-node serve`` under a NOTIFY_SOCKET the test binds."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pacs_node.monitoring.systemd import Notifier, serve_until
from tests.conftest import REPO, free_port, wait_until, write_config


def _receive(sock: socket.socket, into: list[str], until: str) -> None:
    sock.settimeout(60)
    while True:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            return
        into.append(message)
        if until in message.splitlines():
            return


@pytest.mark.integration
def test_serve_says_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    name = f"pacs-node-test-{secrets.token_hex(6)}"  # abstract namespace: NOTIFY_SOCKET=@name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    messages: list[str] = []
    reader = threading.Thread(target=_receive, args=(sock, messages, "STOPPING=1"))
    reader.start()
    config = write_config(tmp_path, free_port(), f"sqlite:///{tmp_path / 'node.db'}")
    env = {**os.environ, "NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "node.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: sum("WATCHDOG=1" in m.splitlines() for m in messages) >= 3, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        sock.close()
    lines = [line for message in messages for line in message.splitlines()]
    assert lines[0] == "READY=1", messages
    assert lines[1].startswith("STATUS=receiving as PACS_NODE on 127.0.0.1:"), messages
    assert lines.count("WATCHDOG=1") >= 3
    assert lines[-2:] == ["STOPPING=1", "STATUS=stopping"], messages
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")


def test_watchdog_is_withheld_while_a_liveness_check_fails(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval_s == 0.05
    healthy = threading.Event()
    stop = threading.Event()
    loop = threading.Thread(target=serve_until, args=(
        stop, lambda: {"scheduler": None if healthy.is_set() else "no timer ran for 31 s"}, "up", notifier))
    loop.start()
    try:
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        assert sock.recv(4096) == b"STATUS=unhealthy, watchdog withheld: scheduler: no timer ran for 31 s"
        time.sleep(0.3)  # several intervals: nothing more is sent while it stays unhealthy
        sock.settimeout(0.01)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        sock.settimeout(5)
        healthy.set()
        assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=up"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        stop.set()
        loop.join(timeout=5)
    messages = []
    sock.settimeout(0.5)
    while True:
        try:
            messages.append(sock.recv(4096))
        except TimeoutError:
            break
    assert messages[-1] == b"STOPPING=1\nSTATUS=stopping"
    sock.close()


def test_no_socket_no_watchdog() -> None:
    notifier = Notifier({})
    assert notifier.send("READY=1") is False
    assert notifier.watchdog_interval_s is None
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
