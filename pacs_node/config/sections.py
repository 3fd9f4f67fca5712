"""The node's own sections of the configuration file, and :class:`Settings`, the whole file."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pacs_node.config._base import AETitle, Port, Section, TLSVersion, check_ae_title, refuse_repeats
from pacs_node.config.destinations import Destination, SendingConfig
from pacs_node.config.priors import PriorsConfig


class AllowedCaller(Section):
    """A calling AE title that may associate, optionally bound to a host address."""

    ae_title: AETitle
    host: str | None = None

    _ae = field_validator("ae_title")(check_ae_title)


class ProxyProtocol(Section):
    """The PROXY protocol (v2, or v1 text) from load balancers in TCP mode, e.g. HAProxy ``send-proxy-v2``.

    A connection from a ``trusted`` address is served as the client named in its PROXY
    header (allow-list host bindings, logs); connections from other addresses are served
    as themselves and any PROXY header they send is not believed.
    """

    #: Balancer addresses or networks ("10.0.0.5", "10.0.0.0/24", "fd00::/64"); kept in canonical CIDR form.
    trusted: tuple[str, ...] = Field(min_length=1)
    #: True: a trusted address must send a header (other connections from it are closed).
    #: False: one that sends none is served as the balancer's own address.
    required: bool = True

    @field_validator("trusted")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        canonical = []
        for value in values:
            text = value.strip()
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
            if ipaddress.ip_interface(text).ip != network.network_address:
                raise ValueError(f"{value!r} has host bits set; did you mean {network}?")
            mapped = getattr(network.network_address, "ipv4_mapped", None)
            if mapped is not None and network.prefixlen >= 96:  # peers are compared as IPv4 (::ffff:a.b.c.d)
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
            canonical.append(str(network))
        return tuple(canonical)


class NodeTLS(Section):
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


Role = Literal["receive", "analyse", "send"]
#: Every role: one process does it all (the default).
ROLES: tuple[Role, ...] = ("receive", "analyse", "send")


class NodeConfig(Section):
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
    #: What this process does: "receive" (the DICOM listener), "analyse" (runs jobs with the
    #: model), "send" (delivers reports). Processes sharing one database and spool can split
    #: them (docs/roles.md); every process completes quiet studies and requeues lost leases.
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)
    #: Callers' addresses from a TCP load balancer's PROXY header (None: every peer is itself).
    proxy_protocol: ProxyProtocol | None = None

    _ae = field_validator("ae_title")(check_ae_title)

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[str]) -> list[str]:
        return refuse_repeats(roles, "roles")

    def has(self, role: Role) -> bool:
        """Whether this process takes ``role``."""
        return role in self.roles


class S3Storage(Section):
    """An S3-compatible bucket as the blob store (``[storage.s3]``).

    Credentials not given here come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles); shown as ``***``.
    """

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    #: None: AWS itself; else e.g. "https://minio.example.org:9000".
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    #: Verify the server's TLS certificate; a CA bundle path may be given instead of true.
    verify_tls: bool | Path = True
    #: Keys begin with this (e.g. "node-a/"); empty: the bucket's root.
    prefix: str = Field(default="", pattern=r"^([A-Za-z0-9._-]+/)*$")
    #: Seconds for a connection and for a read; a store that does not answer fails the C-STORE (A700).
    timeout_s: float = Field(default=10.0, gt=0)
    #: Objects fetched at once when a worker reads a series.
    parallel_reads: int = Field(default=8, ge=1, le=64)
    #: An object with no row is deleted once it is this old (its PUT's row never committed).
    orphan_age_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _both_keys(self) -> S3Storage:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (the AWS credential chain)")
        return self


class StorageConfig(Section):
    """Where received instances and rows are kept."""

    #: "local": files in spool_dir (one machine); "s3": objects in [storage.s3]; spool_dir then
    #: holds only files being received and objects fetched for a job.
    backend: Literal["local", "s3"] = "local"
    s3: S3Storage | None = None

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

    @model_validator(mode="after")
    def _backend_configured(self) -> StorageConfig:
        if self.backend == "s3" and self.s3 is None:
            raise ValueError('backend = "s3" needs a [storage.s3] table with at least bucket')
        return self


class CompletionConfig(Section):
    """When a study counts as complete."""

    quiet_period_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)


class WorkerConfig(Section):
    """The analysis worker that runs queued jobs."""

    enabled: bool = True
    concurrency: int = Field(default=1, ge=1, le=32)
    poll_interval_s: float = Field(default=2.0, gt=0)
    #: A claimed job whose lease is not renewed for this long is re-queued.
    lease_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)


class AnalysisConfig(Section):
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


class RetentionConfig(Section):
    """How long received files are kept once a study is finished (rows are kept for audit)."""

    enabled: bool = True
    #: Days (fractions allowed) after the last job finished and every delivery settled.
    keep_days: float = Field(default=3.0, ge=0)
    #: Keep our SR and key-image files (small; ``pacs-node resend`` needs them).
    keep_reports: bool = True
    sweep_interval_s: float = Field(default=300.0, gt=0)


class ConsoleTLS(Section):
    """HTTPS on the console port (or leave it off and put the console behind a reverse proxy)."""

    cert_file: Path
    key_file: Path

    @model_validator(mode="after")
    def _usable(self) -> ConsoleTLS:
        from pacs_node.tls import check_certificate_pair

        check_certificate_pair(self.cert_file, self.key_file)  # TLSConfigError names the file and what is wrong
        return self


class ConsoleConfig(Section):
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


class LoggingConfig(Section):
    """Log level and line format (one event per line on stdout)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(Section):
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
    priors: PriorsConfig = Field(default_factory=PriorsConfig)

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        return self
