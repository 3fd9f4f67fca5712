"""The node's Prometheus metrics: one :class:`NodeMetrics` per process, handed to the parts that count.

Counters and the job-step histogram are counted where things happen; gauges that the
database or the disk already know (queued jobs, breakers, free space) are read when
``/metrics`` is scraped (:class:`ScrapeCollector`), so nothing has to keep them up to date.
Import this module only after :mod:`pacs_node.monitoring.multiprocess` has set the
directory (see there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from pacs_node.db.models import DestinationHealth, Job, JobState
from pacs_node.monitoring import multiprocess

if TYPE_CHECKING:
    from pacs_node.housekeeping import DiskGuard, PurgeTotals
    from pacs_node.monitoring.health import DatabaseProbe

#: Job steps the analysis times (``timings_s`` of a job's result, without the ``_s``).
JOB_STEPS = ("select", "load", "detect", "report")
_STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_SUCCESS = 0x0000


class NodeMetrics:
    """Every counter and histogram of one node process.

    With ``multiprocess_dir`` the values go to that directory's files (the node and its
    receiver processes each make their own ``NodeMetrics`` on the same directory) and
    :attr:`registry` merges them all; without it they live in this process only.
    :attr:`registry` is what ``/metrics`` serves; the node registers a
    :class:`ScrapeCollector` on it.  Counting is a lock and an add (a few microseconds).
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and not multiprocess.active():
            raise RuntimeError("prometheus_client is in single-process mode; see pacs_node.monitoring.multiprocess")
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        own = None if multiprocess_dir is not None else self.registry  # multiprocess: read back from the files
        self.instances_received = Counter(
            "pacs_node_instances_received", "Instances stored and acknowledged with C-STORE status Success.",
            registry=own)
        self.bytes_received = Counter(
            "pacs_node_received_bytes", "Data set bytes of the instances in pacs_node_instances_received_total.",
            registry=own)
        self.cstore_responses = Counter(
            "pacs_node_cstore_responses", "C-STORE responses sent, by DIMSE status (hex).", ["status"], registry=own)
        self.associations_accepted = Counter(
            "pacs_node_associations_accepted", "Associations accepted.", registry=own)
        self.associations_rejected = Counter(
            "pacs_node_associations_rejected",
            "Connections refused as associations: A-ASSOCIATE-RJ reasons, protocol_error, tls_handshake_failed, "
            "proxy_header_invalid.",
            ["reason"], registry=own)
        self.studies_completed = Counter(
            "pacs_node_studies_completed", "Studies declared complete after their quiet period.", registry=own)
        self.jobs = Counter(
            "pacs_node_jobs", "Jobs finished by this node: done, failed, superseded, interrupted, lost.",
            ["outcome"], registry=own)
        self.job_step_seconds = Histogram(
            "pacs_node_job_step_seconds", "Seconds each analysis step of a job took.", ["step"],
            buckets=_STEP_BUCKETS, registry=own)
        self.deliveries = Counter(
            "pacs_node_deliveries", "Delivery attempts: sent, retry (failed, tried again later), failed (for good).",
            ["destination", "outcome"], registry=own)
        self.retention_purged_studies = Counter(
            "pacs_node_retention_purged_studies", "Studies whose files retention deleted.", registry=own)
        self.retention_purged_bytes = Counter(
            "pacs_node_retention_purged_bytes", "Bytes of spool files retention deleted.", registry=own)
        if multiprocess_dir is not None:
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))
        self._success = self.cstore_responses.labels(f"0x{_SUCCESS:04X}")

    # --- the receive path: called once per C-STORE or association -----------------------------------------

    def store_answered(self, status: int, size: int) -> None:
        """A C-STORE was answered with ``status``; ``size``: data set bytes received."""
        if status == _SUCCESS:
            self._success.inc()
            self.instances_received.inc()
            self.bytes_received.inc(size)
        else:
            self.cstore_responses.labels(f"0x{status:04X}").inc()

    def association_rejected(self, reason: str) -> None:
        self.associations_rejected.labels(reason).inc()

    # --- the main process -----------------------------------------------------------------------------

    def job_finished(self, outcome: str, timings_s: Mapping[str, float] | None = None) -> None:
        """A job ended with ``outcome``; ``timings_s``: its step durations (``select_s``, ``load_s``...)."""
        self.jobs.labels(outcome).inc()
        for key, seconds in (timings_s or {}).items():
            step = key.removesuffix("_s")
            if step in JOB_STEPS:
                self.job_step_seconds.labels(step).observe(seconds)

    def purged(self, totals: PurgeTotals) -> PurgeTotals:
        """Count what a retention sweep deleted; returns ``totals``."""
        if totals.studies:
            self.retention_purged_studies.inc(totals.studies)
        if totals.bytes:
            self.retention_purged_bytes.inc(totals.bytes)
        return totals

    def text(self) -> bytes:
        """The exposition text ``/metrics`` serves."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class ScrapeCollector(Collector):
    """Gauges read when ``/metrics`` is scraped: spool free space, database, queued jobs, breakers.

    Database values come through ``probe`` (bounded by its timeout); while the database
    does not answer, ``pacs_node_database_up`` is 0 and they are left out.
    """

    def __init__(self, probe: DatabaseProbe, guard: DiskGuard, destinations: Sequence[str]) -> None:
        self.probe = probe
        self.guard = guard
        self.destinations = tuple(destinations)

    def collect(self) -> Iterable[Metric]:
        from pacs_node.monitoring.health import DatabaseUnavailable

        yield GaugeMetricFamily("pacs_node_spool_free_bytes", "Bytes free on the spool's filesystem.",
                                value=self.guard.free_bytes())
        yield GaugeMetricFamily("pacs_node_spool_min_free_bytes",
                                "storage.min_free_mb in bytes: below it C-STOREs are refused and jobs wait.",
                                value=self.guard.min_free_bytes)
        try:
            queued, breakers = self.probe.run(self._read)
        except DatabaseUnavailable:
            yield GaugeMetricFamily("pacs_node_database_up", "1 when the database answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("pacs_node_database_up", "1 when the database answered this scrape.", value=1)
        yield GaugeMetricFamily("pacs_node_jobs_queued", "Jobs queued for analysis (all nodes on this database).",
                                value=queued)
        state = GaugeMetricFamily("pacs_node_destination_breaker_open",
                                  "1 while a destination's circuit breaker is open (deliveries wait, probes run).",
                                  labels=["destination"])
        failures = GaugeMetricFamily("pacs_node_destination_consecutive_failures",
                                     "Transient delivery failures in a row, per destination.", labels=["destination"])
        for name in sorted(set(self.destinations) | set(breakers)):
            is_open, count = breakers.get(name, (False, 0))
            state.add_metric([name], 1 if is_open else 0)
            failures.add_metric([name], count)
        yield state
        yield failures

    @staticmethod
    def _read(connection: Connection) -> tuple[int, dict[str, tuple[bool, int]]]:
        queued = connection.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED)) or 0
        rows = connection.execute(select(DestinationHealth.name, DestinationHealth.open_since,
                                         DestinationHealth.consecutive_failures))
        return int(queued), {name: (opened is not None, failures or 0) for name, opened, failures in rows}

