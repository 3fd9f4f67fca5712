"""The ``[priors]`` section: where earlier studies of a patient are looked up and fetched from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pacs_node.config._base import AETitle, Port, Section, check_ae_title
from pacs_node.config.destinations import DestinationTLS

#: Five years, in days (leap days included).
FIVE_YEARS_DAYS = 5 * 365 + 1


class PriorSource(Section):
    """A query/retrieve SCP (a PACS) that holds earlier studies: C-FIND, then C-GET or C-MOVE."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    #: DICOM TLS towards the source, as for a destination (docs/tls.md).
    tls: DestinationTLS | None = None
    #: "get": C-GET, the instances come back on our association (nothing to configure on
    #: the PACS but our AE title); "move": C-MOVE to ``[priors] move_destination``, the
    #: PACS connects to our listener (it must know our AE title, host and port).
    retrieve: Literal["get", "move"] = "get"

    _ae = field_validator("ae_title")(check_ae_title)


class PriorsConfig(Section):
    """Finding and fetching the prior study of each completed study (docs/priors.md)."""

    enabled: bool = False
    #: Asked in order; the first that answers the query is used.
    sources: list[PriorSource] = Field(default_factory=list)
    #: How far back a prior may be.
    lookback_days: int = Field(default=FIVE_YEARS_DAYS, ge=1, le=100 * 366)
    #: Seconds for connecting and for each C-FIND step.
    query_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds the PACS may take between two retrieved instances (C-GET/C-MOVE responses).
    retrieve_timeout_s: float = Field(default=60.0, gt=0)
    #: The job never waits longer than this for the prior (lookup and retrieval together);
    #: past it the job goes on and records the prior as unavailable.
    max_wait_s: float = Field(default=120.0, gt=0)
    #: C-MOVE: the AE title the PACS knows this node's listener by (default: ``[node] ae_title``).
    move_destination: AETitle | None = None
    #: When the prior was unavailable (source down, not retrieved, ``max_wait_s`` passed), look
    #: it up again this often, in minutes (fractions allowed), and once found re-report the
    #: study: a new SR version with the comparison, the same Tracking UIDs, the earlier SR as
    #: its predecessor.  0: never (the default).
    recheck_minutes: float = Field(default=0.0, ge=0)
    #: Rechecks stop this many hours after the study completed.
    recheck_hours: float = Field(default=72.0, gt=0)

    @field_validator("move_destination")
    @classmethod
    def _move_ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @model_validator(mode="after")
    def _usable(self) -> PriorsConfig:
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"prior source names must be unique; repeated: {', '.join(repeated)}")
        if self.enabled and not self.sources:
            raise ValueError("enabled = true needs at least one [[priors.sources]] (ae_title, host, port)")
        if self.recheck_minutes > self.recheck_hours * 60:
            raise ValueError(f"recheck_minutes ({self.recheck_minutes:g}) is longer than recheck_hours "
                             f"({self.recheck_hours:g} h): no recheck would run; shorten it, or 0 for none")
        return self

    @property
    def rechecking(self) -> bool:
        """Whether unavailable priors are looked up again (and studies re-reported)."""
        return self.enabled and self.recheck_minutes > 0
