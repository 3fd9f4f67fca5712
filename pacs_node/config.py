"""Configuration: pydantic models of the TOML file, loading, environment overrides.

Every section is a small typed class that is valid by construction; unknown keys are
errors.  Relative paths in the file are resolved against the directory of the file,
so a config works the same from any working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pacs_node.credentials import DestinationAuth

#: Environment variables that override the file, for containers and tests.
ENV_DATABASE_URL = "PACS_NODE_DATABASE_URL"
ENV_PORT = "PACS_NODE_PORT"
ENV_SPOOL_DIR = "PACS_NODE_SPOOL_DIR"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash

AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Section):
    """A calling AE title that may associate, optionally bound to a host address."""

    ae_title: AETitle
    host: str | None = None

    _ae = field_validator("ae_title")(_check_ae_title)


TLSVersion = Literal["1.2", "1.3"]


class NodeTLS(_Section):
    """DICOM TLS on the listener (see docs/tls.md): with it, the port speaks TLS only."""

    cert_file: Path
    key_file: Path
    #: CA certificates that sign the callers' client certificates.
    ca_file: Path | None = None
    require_client_cert: bool = True
    min_version: TLSVersion = "1.2"

    @model_validator(mode="after")
    def _usable(self) -> NodeTLS:
        from pacs_node.tls import server_context

        server_context(self)  # TLSConfigError (a ValueError) names the file and what is wrong
        return self


class DestinationTLS(_Section):
    """DICOM TLS towards a destination; its certificate is verified unless ``verify = false``."""

    #: CA certificates to verify the destination with (default: the system's trusted CAs).
    ca_file: Path | None = None
    #: Our client certificate and key, for destinations that require one.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: The name its certificate must carry (default: ``host``).
    server_hostname: str | None = None
    verify: bool = True
    min_version: TLSVersion = "1.2"

    @model_validator(mode="after")
    def _usable(self) -> DestinationTLS:
        from pacs_node.tls import client_context

        client_context(self)
        return self


class NodeConfig(_Section):
    """The DICOM listener: who we are and whom we accept."""

    ae_title: AETitle = "PACS_NODE"
    name: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename)[:64] or "node",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    bind_address: str = "127.0.0.1"
    port: Port = 11112
    max_associations: int = Field(default=16, ge=1, le=1024)
    #: Processes accepting associations (one core each when several scanners send).
    receive_processes: int = Field(default=1, ge=1, le=64)
    max_pdu_bytes: int = Field(default=262144, ge=4096, le=16 * 1024 * 1024)
    #: Seconds to wait for an A-ASSOCIATE-RQ (ARTIM) and between PDUs on an association.
    acse_timeout_s: float = Field(default=30.0, gt=0)
    network_timeout_s: float = Field(default=120.0, gt=0)
    #: Empty list: any calling AE may associate.
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    #: Seconds a running association gets to finish after SIGTERM before it is aborted.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    #: DICOM TLS; when set, the listener accepts TLS connections only.
    tls: NodeTLS | None = None

    _ae = field_validator("ae_title")(_check_ae_title)


class StorageConfig(_Section):
    """Where received instances and rows are kept."""

    spool_dir: Path = Path("../var/spool")
    database_url: str = "sqlite:///../var/pacs-node.db"
    #: A C-STORE is refused with "out of resources", and jobs wait, when less than this is free (0: off).
    min_free_mb: int = Field(default=1024, ge=0)
    #: A WARNING is logged (once per crossing) when less than this is free (0: off).
    warn_free_mb: int = Field(default=4096, ge=0)
    #: How often the spool's free space is checked for the warning.
    space_check_interval_s: float = Field(default=30.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value


class CompletionConfig(_Section):
    """When a study counts as complete."""

    quiet_period_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)


class WorkerConfig(_Section):
    """The analysis worker that runs queued jobs."""

    enabled: bool = True
    concurrency: int = Field(default=1, ge=1, le=32)
    poll_interval_s: float = Field(default=2.0, gt=0)
    #: A claimed job whose lease is not renewed for this long is re-queued.
    lease_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)


#: The report objects a destination can receive (its output profile).
ObjectName = Literal["sr", "key_image", "kos", "gsps", "seg"]


_DIMSE_KEYS = ("ae_title", "host", "port")
_DICOMWEB_KEYS = ("url", "auth")


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. https://pacs.example.org/dicom-web")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; put them in the destination's auth table")
    if parts.query or parts.fragment:
        raise ValueError("must be the service's base URL, without ?query or #fragment")
    return value.rstrip("/")


class Destination(_Section):
    """A node that receives our reports (over DIMSE C-STORE, or DICOMweb STOW-RS) and which of them."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    #: "dimse": C-STORE to ae_title@host:port; "dicomweb": STOW-RS to url.
    protocol: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: AETitle | None = None
    host: str | None = Field(default=None, min_length=1)
    port: Port | None = None
    #: DICOMweb: the service's base URL (STOW-RS posts to ``{url}/studies``).
    url: str | None = None
    #: DICOMweb: a bearer token, or basic user name and password.
    auth: DestinationAuth | None = None
    #: "sr": the TID 1500 structured report; "key_image": the Secondary Capture key images;
    #: "kos": the Key Object Selection flagging them (needs "key_image"); "gsps": the
    #: presentation state marking the nodules on the CT; "seg": the nodule segmentation.
    #: The default is what every PACS stores.
    objects: list[ObjectName] = Field(default_factory=lambda: ["sr", "key_image"], min_length=1)
    #: DICOM TLS (dimse), or the HTTPS settings of an https:// url (dicomweb).
    tls: DestinationTLS | None = None
    #: Seconds for connecting and for each network step (default: [sending] timeout_s).
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @model_validator(mode="after")
    def _keys_fit_protocol(self) -> Destination:
        if self.protocol == "dimse":
            missing = [key for key in _DIMSE_KEYS if getattr(self, key) is None]
            if missing:
                raise ValueError(f'protocol = "dimse" needs ae_title, host and port (missing: {", ".join(missing)})')
            stray = [key for key in _DICOMWEB_KEYS if getattr(self, key) is not None]
            if stray:
                raise ValueError(f'{" and ".join(stray)}: only for protocol = "dicomweb" (this destination is DIMSE)')
            return self
        if self.url is None:
            raise ValueError('protocol = "dicomweb" needs url: the base URL of the DICOMweb service, '
                             "e.g. https://pacs.example.org/dicom-web")
        stray = [key for key in _DIMSE_KEYS if getattr(self, key) is not None]
        if stray:
            raise ValueError(f'{", ".join(stray)}: not used with protocol = "dicomweb" (the service is reached at its url); '
                             "remove them")
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls: only for an https:// url")
        return self

    @field_validator("objects")
    @classmethod
    def _profile(cls, objects: list[str]) -> list[str]:
        repeated = sorted({name for name in objects if objects.count(name) > 1})
        if repeated:
            raise ValueError(f"objects lists {', '.join(repeated)} more than once")
        if "kos" in objects and "key_image" not in objects:
            raise ValueError('"kos" references the key images: add "key_image" to objects')
        return objects


class SendingConfig(_Section):
    """Retries and the circuit breaker for sending to destinations."""

    #: Transient failures before a delivery is given up (permanent ones stop at once).
    max_attempts: int = Field(default=8, ge=1)
    first_retry_s: float = Field(default=30.0, gt=0)
    max_retry_s: float = Field(default=1800.0, gt=0)
    #: Each delay is varied by up to this fraction, so retries of many deliveries spread out.
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: Consecutive transient failures that pause a destination; it is then probed (C-ECHO, or QIDO-RS for DICOMweb).
    breaker_failures: int = Field(default=5, ge=1)
    probe_interval_s: float = Field(default=60.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)


class AnalysisConfig(_Section):
    """The analysis job: which model, which series, and what to report."""

    #: False: jobs only record the series they would analyse (receive-and-queue node).
    enabled: bool = True
    model: str = Field(default="lung-nodule-synthetic-v3", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    models_dir: Path = Path("../models")
    #: "best": the thinnest eligible series; "all": every eligible series.
    series: Literal["best", "all"] = "best"
    min_slices: int = Field(default=30, ge=2)
    max_slice_spacing_mm: float = Field(default=3.0, gt=0)
    #: Send a report that says why when a study could not be analysed.
    report_not_analysable: bool = True

    @property
    def model_dir(self) -> Path:
        return self.models_dir / self.model


class RetentionConfig(_Section):
    """How long received files are kept once a study is finished (rows are kept for audit)."""

    enabled: bool = True
    #: Days (fractions allowed) after the last job finished and every delivery settled.
    keep_days: float = Field(default=3.0, ge=0)
    #: Keep our SR and key-image files (small; ``pacs-node resend`` needs them).
    keep_reports: bool = True
    sweep_interval_s: float = Field(default=300.0, gt=0)


class ConsoleTLS(_Section):
    """HTTPS on the console port (or leave it off and put the console behind a reverse proxy)."""

    cert_file: Path
    key_file: Path

    @model_validator(mode="after")
    def _usable(self) -> ConsoleTLS:
        from pacs_node.tls import check_certificate_pair

        check_certificate_pair(self.cert_file, self.key_file)  # TLSConfigError names the file and what is wrong
        return self


class ConsoleConfig(_Section):
    """The IT console: web pages, REST API, ``/metrics`` and health checks on their own port."""

    enabled: bool = False
    bind_address: str = "127.0.0.1"
    #: 0 picks a free port (tests); the shipped configuration uses 8480.
    port: int = Field(default=8480, ge=0, le=65535)
    tls: ConsoleTLS | None = None
    #: Idle time after which a console login expires.
    session_max_age_s: float = Field(default=8 * 3600, gt=0)
    #: Failed logins allowed per user name and client address in ``login_window_s``.
    login_attempts: int = Field(default=5, ge=1)
    login_window_s: float = Field(default=300.0, gt=0)


class LoggingConfig(_Section):
    """Log level and line format (one event per line on stdout)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    """The whole configuration file."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    destinations: list[Destination] = Field(default_factory=list)
    sending: SendingConfig = Field(default_factory=SendingConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        return self


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
            secret = str(item["loc"][-1]) in ("token", "password") if item["loc"] else False
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
