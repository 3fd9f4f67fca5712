"""``pacs-node user``: add, list, disable, token."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pacs_node.cli import app
from pacs_node.db import users
from pacs_node.db.engine import make_engine
from pacs_node.db.models import ApiToken, AuditEntry, Role
from tests.conftest import write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, 11112, f"sqlite:///{tmp_path / 'node.db'}")


def _run(config: Path, *args: str, stdin: str | None = None):  # noqa: ANN202 - a click Result
    return CliRunner().invoke(app, ["user", *args, "--config", str(config)], input=stdin)


def test_add_list_disable_and_token(config: Path) -> None:
    added = _run(config, "add", "ada", "--role", "admin", "--password-stdin", stdin="correct horse battery\n")
    assert added.exit_code == 0, added.output
    assert "added admin ada" in added.output
    assert _run(config, "add", "vic", "--password-stdin", stdin="viewer password 1\n").exit_code == 0
    listed = _run(config, "list").output.splitlines()
    assert [line.split() for line in listed] == [["ada", "admin", "enabled"], ["vic", "viewer", "enabled"]]

    token = _run(config, "token", "ada")
    assert token.exit_code == 0
    value = token.output.strip()
    assert value.startswith("pnt_") and len(value) > 40
    engine = make_engine(f"sqlite:///{config.parent / 'node.db'}")
    assert users.user_for_token(engine, value).name == "ada"
    with engine.connect() as connection:
        assert value not in {row.token_hash for row in connection.execute(select(ApiToken)).all()}
    assert users.authenticate(engine, "ada", "correct horse battery").role == Role.ADMIN

    assert _run(config, "disable", "ada").exit_code == 0
    assert "ada                      admin   disabled" in _run(config, "list").output
    assert users.authenticate(engine, "ada", "correct horse battery") is None
    assert users.user_for_token(engine, value) is None
    assert _run(config, "token", "ada").exit_code == 1
    with engine.connect() as connection:
        actions = [(r.actor, r.action, r.target) for r in connection.execute(select(AuditEntry)).all()]
    engine.dispose()
    assert actions == [("cli", "user-add", "user ada"), ("cli", "user-add", "user vic"),
                       ("cli", "token-issue", "user ada"), ("cli", "user-disable", "user ada")]


def test_password_prompt_asks_twice(config: Path) -> None:
    result = _run(config, "add", "ada", "--role", "admin", stdin="long enough pw\nlong enough pw\n")
    assert result.exit_code == 0, result.output
    assert "long enough pw" not in result.output


def test_refusals(config: Path) -> None:
    assert _run(config, "add", "ada", "--password-stdin", stdin="short\n").exit_code == 1
    assert _run(config, "add", "bad name", "--password-stdin", stdin="long enough pw\n").exit_code == 1
    assert _run(config, "add", "ada", "--password-stdin", stdin="long enough pw\n").exit_code == 0
    duplicate = _run(config, "add", "ada", "--password-stdin", stdin="long enough pw\n")
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    assert _run(config, "add", "eve", "--role", "root", "--password-stdin", stdin="long enough pw\n").exit_code == 2
    assert _run(config, "disable", "nobody").exit_code == 1
    assert "no users yet" not in _run(config, "list").output
