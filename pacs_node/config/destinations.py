"""Where reports go: destinations (DIMSE or DICOMweb), their TLS, and the retry policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pacs_node.config._base import AETitle, Port, Section, TLSVersion, check_ae_title, refuse_repeats
from pacs_node.credentials import DestinationAuth


class DestinationTLS(Section):
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


class Destination(Section):
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
        return None if value is None else check_ae_title(value)

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
        refuse_repeats(objects, "objects")
        if "kos" in objects and "key_image" not in objects:
            raise ValueError('"kos" references the key images: add "key_image" to objects')
        return objects


class SendingConfig(Section):
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
