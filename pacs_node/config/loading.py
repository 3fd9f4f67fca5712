"""Reading the TOML file: relative paths, environment overrides, readable errors."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from pacs_node.config.sections import AnalysisConfig, Settings, StorageConfig

#: Environment variables that override the file, for containers and tests.
ENV_DATABASE_URL = "PACS_NODE_DATABASE_URL"
ENV_PORT = "PACS_NODE_PORT"
ENV_SPOOL_DIR = "PACS_NODE_SPOOL_DIR"

class ConfigError(Exception):
    """The configuration file cannot be used; the message says which key and why."""


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            shown = item.get("input")
            if isinstance(shown, str):
                shown = redacted_database_url(shown)  # a URL's password is never echoed
            secret = str(item["loc"][-1]) in ("token", "password", "access_key_id", "secret_access_key") if item["loc"] else False
            value = "" if isinstance(shown, dict) or secret else f" (got {shown!r})"
            lines.append(f"  {key}: {item['msg']}{value}")
    return "\n".join(lines)


def _resolve_files(table: object, base: Path, sub: str, keys: tuple[str, ...]) -> object:
    """``table[sub]`` with its file keys resolved against ``base``."""
    if not isinstance(table, dict) or not isinstance(table.get(sub), dict):
        return table
    resolved = {
        key: str((base / value).resolve()) if key in keys and isinstance(value, str) else value
        for key, value in table[sub].items()
    }
    return {**table, sub: resolved}


def _resolve_tls_files(table: object, base: Path) -> object:
    return _resolve_files(table, base, "tls", ("cert_file", "key_file", "ca_file"))


def _resolve_destination_files(table: object, base: Path) -> object:
    return _resolve_files(_resolve_tls_files(table, base), base, "auth", ("token_file", "password_file"))


def _resolve_paths(raw: dict, base: Path) -> dict:
    raw = {**raw, "node": _resolve_tls_files(raw.get("node", {}), base),
           "console": _resolve_tls_files(raw.get("console", {}), base)}
    if isinstance(raw.get("destinations"), list):
        raw["destinations"] = [_resolve_destination_files(item, base) for item in raw["destinations"]]
    priors = raw.get("priors")
    if isinstance(priors, dict) and isinstance(priors.get("sources"), list):
        raw["priors"] = {**priors, "sources": [_resolve_tls_files(item, base) for item in priors["sources"]]}
    analysis = dict(raw.get("analysis", {}))
    models = Path(analysis.get("models_dir", str(AnalysisConfig().models_dir)))
    analysis["models_dir"] = str(models if models.is_absolute() else (base / models).resolve())
    raw = {**raw, "analysis": analysis}
    storage = dict(raw.get("storage", {}))
    spool = storage.get("spool_dir", str(StorageConfig().spool_dir))
    storage["spool_dir"] = str((base / Path(spool)).resolve()) if not Path(spool).is_absolute() else spool
    url = storage.get("database_url", StorageConfig().database_url)
    if isinstance(url, str) and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url.removeprefix("sqlite:///")
        if relative and relative != ":memory:":
            url = "sqlite:///" + str((base / relative).resolve())
    storage["database_url"] = url
    return {**raw, "storage": storage}


def _apply_environment(raw: dict, environ: dict[str, str]) -> dict:
    raw = dict(raw)
    storage = dict(raw.get("storage", {}))
    node = dict(raw.get("node", {}))
    if environ.get(ENV_DATABASE_URL):
        storage["database_url"] = environ[ENV_DATABASE_URL]
    if environ.get(ENV_SPOOL_DIR):
        storage["spool_dir"] = environ[ENV_SPOOL_DIR]
    if environ.get(ENV_PORT):
        node["port"] = environ[ENV_PORT]
    raw["storage"], raw["node"] = storage, node
    return raw


def load_settings(path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read, resolve and validate a configuration file.

    Parameters
    ----------
    path
        The TOML file.
    environ
        Environment to take overrides from (``os.environ`` when omitted).

    Raises
    ------
    ConfigError
        When the file is missing, is not TOML, or fails validation.
    """
    environ = dict(os.environ) if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    raw = _resolve_paths(_apply_environment(raw, environ), path.parent.resolve())
    try:
        return Settings.model_validate(raw, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from exc


def redacted_database_url(url: str) -> str:
    """The database URL with any password replaced, for printing."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
