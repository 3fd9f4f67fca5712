"""SQLAlchemy 2.x typed models, one module per owner; everything is importable from here.

The database is the contract between stages; every state a stage acts on is a column.
Times are UTC.  :mod:`~pacs_node.db.models.core` holds what was received and the work
queued on it, :mod:`~pacs_node.db.models.console` the console's accounts and audit log,
:mod:`~pacs_node.db.models.priors` the prior studies.  Importing this package registers
every table on ``Base.metadata`` (the migrations compare against it).
"""

from pacs_node.db.models.console import ApiToken, AuditEntry, ConsoleKey, Role, User
from pacs_node.db.models.core import (
    UID,
    Base,
    Delivery,
    DeliveryState,
    DestinationHealth,
    FailureKind,
    Instance,
    Job,
    JobKind,
    JobState,
    ObjectKind,
    Patient,
    ReportObject,
    Series,
    Study,
    StudyState,
    UtcDateTime,
    utcnow,
)
from pacs_node.db.models.priors import PriorLookup, PriorRetrieval, PriorStatus, RetrievalState

__all__ = [
    "UID", "ApiToken", "AuditEntry", "Base", "ConsoleKey", "Delivery", "DeliveryState", "DestinationHealth",
    "FailureKind", "Instance", "Job", "JobKind", "JobState", "ObjectKind", "Patient", "PriorLookup",
    "PriorRetrieval", "PriorStatus", "ReportObject", "RetrievalState", "Role", "Series", "Study", "StudyState",
    "User", "UtcDateTime", "utcnow",
]
