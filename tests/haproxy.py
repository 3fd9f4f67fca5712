"""HAProxy (Debian ``haproxy``) run by a test: a config checked first, in the foreground, on a free port."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import free_port, listening, wait_until

HAPROXY = Path("/usr/sbin/haproxy")
MISSING = f"{HAPROXY} is missing (`make test` installs the Debian package haproxy, as root)"


class HAProxy:
    """One HAProxy whose frontend listens on :attr:`port`; ``sections`` is the config after
    ``global`` and ``defaults`` (``{port}`` in it is replaced by that port)."""

    def __init__(self, folder: Path, mode: str, sections: str, timeout_s: int = 30) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = folder / "haproxy.cfg"
        self.config.write_text(f"global\n    maxconn 100\ndefaults\n    mode {mode}\n    timeout connect 5s\n"
                               f"    timeout client {timeout_s}s\n    timeout server {timeout_s}s\n"
                               + sections.replace("{port}", str(self.port)))
        self.process: subprocess.Popen | None = None

    def start(self) -> HAProxy:
        check = subprocess.run([str(HAPROXY), "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = subprocess.Popen([str(HAPROXY), "-db", "-f", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(self.port), timeout=10)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
