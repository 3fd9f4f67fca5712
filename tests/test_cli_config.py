"""``pacs-node check-config`` as IT runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacs_node", *args], capture_output=True, text=True, timeout=60)


def test_check_config_prints_effective_settings_without_password(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[storage]\ndatabase_url = "postgresql://pacs:hunter2@db.example.org/pacs"\n')
    result = _run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout
    assert '"port": 11112' in result.stdout
    assert "hunter2" not in result.stdout and "pacs:***@db.example.org" in result.stdout


def test_check_config_rejects_bad_file_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 0\n")
    result = _run("check-config", str(path))
    assert result.returncode == 2
    assert "node.port" in result.stderr
