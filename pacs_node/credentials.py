"""Credentials of DICOMweb destinations: a bearer token, or basic user name and password.

Each secret comes from exactly one place: the config file itself (``token``), a file read
at every use (``token_file``, so a rotated token is picked up) or an environment variable
(``token_env``).  Loading checks that the file is readable and the variable set, so a
missing secret stops start-up with a sentence; values never appear in ``check-config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, model_validator


class _SecretSource(BaseModel):
    """Secrets come from exactly one of: the value itself, a file (read at each use) or an environment variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def _source(self, what: str, info: ValidationInfo) -> None:
        given = [key for key in (what, f"{what}_file", f"{what}_env") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {what}, {what}_file, {what}_env (got {', '.join(given) or 'none'})")
        path: Path | None = getattr(self, f"{what}_file")
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{what}_file {path}: no such file, or not readable by this user")
        variable: str | None = getattr(self, f"{what}_env")
        environ = (info.context or {}).get("environ", os.environ)
        if variable is not None and not environ.get(variable):
            raise ValueError(f"{what}_env: environment variable {variable} is not set")

    def secret(self, what: str, environ: Mapping[str, str] | None = None) -> str:
        """The secret's value now (a file is read again, so a rotated token is picked up)."""
        inline: SecretStr | None = getattr(self, what)
        if inline is not None:
            return inline.get_secret_value()
        path: Path | None = getattr(self, f"{what}_file")
        if path is not None:
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{what}_file {path}: {exc.strerror or exc}") from exc
            if not value:
                raise ValueError(f"{what}_file {path}: empty")
            return value
        variable = getattr(self, f"{what}_env")
        value = (os.environ if environ is None else environ).get(variable, "")
        if not value:
            raise ValueError(f"{what}_env: environment variable {variable} is not set")
        return value


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class BearerAuth(_SecretSource):
    """``Authorization: Bearer <token>`` on every DICOMweb request."""

    type: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @model_validator(mode="after")
    def _one_token(self, info: ValidationInfo) -> BearerAuth:
        self._source("token", info)
        return self


class BasicAuth(_SecretSource):
    """HTTP basic authentication (user name and password) on every DICOMweb request."""

    type: Literal["basic"]
    username: str = Field(min_length=1, pattern=r"^[^:]+$")
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @model_validator(mode="after")
    def _one_password(self, info: ValidationInfo) -> BasicAuth:
        self._source("password", info)
        return self


DestinationAuth = Annotated[BearerAuth | BasicAuth, Field(discriminator="type")]
