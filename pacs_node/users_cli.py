"""``pacs-node user``: console accounts (add, list, disable) and API tokens."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine

from pacs_node.db.models import Role

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Console users and API tokens.")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="TOML configuration file.")]
DEFAULT_CONFIG = Path("config/pacs-node.toml")


@contextmanager
def _engine(config: Path) -> Iterator[Engine]:
    """The node's database, migrated (so the first admin can be made before the first start)."""
    from pacs_node.cli import _settings
    from pacs_node.db.engine import make_engine, upgrade

    engine = make_engine(_settings(config).storage.database_url)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, _ . @ -).")],
    role: Annotated[Role, typer.Option(help="viewer: sees state and numbers; admin: also acts and sees patient data on a study page.")] = Role.VIEWER,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input (scripts).")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Add a console user; the password is asked for (twice) unless --password-stdin."""
    from pacs_node.db import audit, users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _engine(config) as engine:
        try:
            users.add_user(engine, name, role, password)
        except users.UserError as exc:
            raise _fail(str(exc)) from exc
        audit.record(engine, "cli", "user-add", f"user {name}", "ok", f"role {role.value}")
    typer.echo(f"added {role.value} {name}")


@app.command("list")
def list_(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """List console users."""
    from pacs_node.db import users

    with _engine(config) as engine:
        accounts = users.list_users(engine)
    if not accounts:
        typer.echo("no users yet: pacs-node user add NAME --role admin")
    for account in accounts:
        typer.echo(f"{account.name:<24} {account.role.value:<7} {'disabled' if account.disabled else 'enabled'}")


@app.command("disable")
def disable(name: Annotated[str, typer.Argument(help="User name.")], config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Disable a user: their logins, open sessions and API tokens stop working at once."""
    from pacs_node.db import audit, users

    with _engine(config) as engine:
        try:
            users.disable_user(engine, name)
        except users.UserError as exc:
            raise _fail(str(exc)) from exc
        audit.record(engine, "cli", "user-disable", f"user {name}", "ok")
    typer.echo(f"disabled {name}")


@app.command("token")
def token(name: Annotated[str, typer.Argument(help="User name.")], config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print a new REST API token for a user (shown this once; only its hash is kept)."""
    from pacs_node.db import audit, users

    with _engine(config) as engine:
        try:
            value = users.issue_token(engine, name)
        except users.UserError as exc:
            raise _fail(str(exc)) from exc
        audit.record(engine, "cli", "token-issue", f"user {name}", "ok")
    typer.echo(value)
