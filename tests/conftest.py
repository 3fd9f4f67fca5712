"""Shared fixtures: database backends, small CT series, free ports, a running node."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from pacs_node.ml.ct_series import SeriesIdentity, write_ct_series

POSTGRES_URL = os.environ.get(
    "PACS_NODE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _postgres_reachable() -> bool:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip("PostgreSQL not reachable")
    with fresh_postgres_schema() as url:
        yield url


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema on the PostgreSQL server (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def make_series(folder: Path, slices: int = 12, size: int = 64, seed: int = 0, **identity: str) -> list[Path]:
    """A small CT series of random soft-tissue-like noise in ``folder``."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 20, size=(slices, size, size)).astype(np.float32)
    return write_ct_series(volume, (2.0, 0.7, 0.7), (-22.4, -22.4, -100.0), folder, SeriesIdentity(**identity))


@pytest.fixture
def ct_series(tmp_path: Path) -> list[Path]:
    """A 12-slice 64x64 CT series with fresh UIDs."""
    return make_series(tmp_path / "series")


def storescu(port: int, paths: list[Path] | Path, called_ae: str = "PACS_NODE", calling_ae: str = "STORESCU",
             extra: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Push files with DCMTK's storescu (the scanner)."""
    targets = [str(paths)] if isinstance(paths, Path) else [str(p) for p in paths]
    if isinstance(paths, Path) and paths.is_dir():
        targets = ["+sd", str(paths)]
    command = [STORESCU, "-v", "-aet", calling_ae, "-aec", called_ae, *(extra or []), "127.0.0.1", str(port), *targets]
    return subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)


@dataclass
class RunningNode:
    """A ``pacs-node serve`` subprocess and where it keeps things."""

    process: subprocess.Popen
    port: int
    config: Path
    spool: Path
    database_url: str
    log: Path

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


def _inline_table(values: dict) -> str:
    """A TOML inline table (e.g. ``tls = {cert_file = "...", verify = true}``)."""
    def value(v: object) -> str:
        if isinstance(v, list):
            return json.dumps(v)  # a TOML array of strings
        return ("true" if v else "false") if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else f'"{v}"'
    return "{" + ", ".join(f"{k} = {value(v)}" for k, v in values.items()) + "}"


def write_config(folder: Path, port: int, database_url: str, **sections: dict) -> Path:
    """A node configuration for tests: fast completion and dispatch."""
    defaults = {
        "node": {"ae_title": "PACS_NODE", "port": port, "bind_address": "127.0.0.1", "name": "test-node"},
        "storage": {"spool_dir": str(folder / "spool"), "database_url": database_url, "min_free_mb": 0},
        "completion": {"quiet_period_s": 1.5, "sweep_interval_s": 0.3},
        "worker": {"poll_interval_s": 0.3, "lease_s": 60},
        "analysis": {"enabled": False},  # pass-through unless a test asks for the detector
        "logging": {"level": "INFO"},
    }
    tables = {name: values for name, values in sections.items() if isinstance(values, list)}
    for name, values in sections.items():
        if name not in tables:
            defaults[name] = {**defaults.get(name, {}), **values}
    lines = []
    for name, items in tables.items():
        for item in items:
            lines.append(f"[[{name}]]")
            lines.extend(
                f"{k} = {_inline_table(v)}" if isinstance(v, dict)
                else f"{k} = {json.dumps(v)}" if isinstance(v, list)  # a TOML array of strings
                else f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"'
                for k, v in item.items()
            )
    for name, values in defaults.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            elif isinstance(value, list) and not any(isinstance(item, dict) for item in value):
                lines.append(f"{key} = {json.dumps(value)}")  # a TOML array of strings
            elif isinstance(value, list):
                continue
            elif isinstance(value, dict):
                lines.append(f"{key} = {_inline_table(value)}")
            else:
                lines.append(f'{key} = "{value}"')
        for key, value in values.items():
            if isinstance(value, list) and any(isinstance(item, dict) for item in value):
                for item in value:
                    lines.append(f"[[{name}.{key}]]")
                    lines.extend(f'{k} = "{v}"' for k, v in item.items())
    path = folder / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):  # noqa: ANN001, ANN201
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def start_node(folder: Path, database_url: str, port: int | None = None, **sections: dict) -> RunningNode:
    """Start ``pacs-node serve`` and wait until it answers on its port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or sections.get("node", {}).get("port") or free_port()
    config = write_config(folder, port, database_url, **sections)
    log = folder / f"node-{time.monotonic_ns()}.log"
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    node = RunningNode(process, port, config, folder / "spool", database_url, log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"node exited with {process.returncode}:\n{log.read_text()}")
        return listening(port)

    try:
        wait_until(up, timeout=30)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    """Start nodes on demand; all are stopped at the end of the test."""
    started: list[RunningNode] = []

    def factory(database_url: str | None = None, folder: Path | None = None, **sections: dict) -> RunningNode:
        node = start_node(folder or tmp_path / "node", database_url or f"sqlite:///{tmp_path / 'node.db'}", **sections)
        started.append(node)
        return node

    yield factory
    for node in started:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()


@pytest.fixture(scope="session", autouse=True)
def _dcmtk_present() -> None:
    if shutil.which(STORESCU) is None:
        pytest.fail("DCMTK's storescu is missing; `make test` installs it (apt, as root)")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator:
    """A running Orthanc PACS on free loopback ports."""
    from tests.orthanc import Orthanc

    server = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port())
    server.start()
    yield server
    server.stop()
