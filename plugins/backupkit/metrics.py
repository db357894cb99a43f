"""Prometheus metrics for backup jobs: exposition text, Pushgateway push, textfile export.

Batch jobs (Airflow tasks) cannot be scraped, so each run *replaces* its metric group on a
Pushgateway (HTTP PUT, as ``prometheus_client.push_to_gateway`` does) or writes a file for
node_exporter's textfile collector. Names follow the Velero / pgbackrest_exporter style:
``<subsystem>_<what>_<unit>`` with a ``source`` label.

Because a PUT replaces the whole group, the "last successful verification" time of a source
that failed today would be lost; :class:`LastSuccessStore` keeps it on disk between runs so the
gauge keeps its last good value and ``time() - backup_verification_last_success_timestamp_seconds``
grows until the source is healthy again (which is what an alert wants).

Pure Python: no Airflow imports.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway

from backupkit import metric_names as names


class MetricSet:
    """A registry plus declared gauges: the generic helper every DAG uses to export numbers.

    >>> m = MetricSet()
    >>> m.set("backup_retention_deleted", 3, "Backups deleted by the last retention run", source="db")
    >>> "backup_retention_deleted{source=\\"db\\"} 3.0" in m.text()
    True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}

    def gauge(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Gauge:
        """Declare (or fetch) a gauge; re-declaring with other labels is a programming error."""
        labelnames = tuple(labelnames)
        if name in self._gauges:
            g, declared = self._gauges[name]
            if declared != labelnames:
                raise ValueError(f"metric {name} declared with labels {declared}, used with {labelnames}")
            return g
        g = Gauge(name, documentation, labelnames, registry=self.registry)
        self._gauges[name] = (g, labelnames)
        return g

    def set(self, name: str, value: float, documentation: str, **labels: str) -> None:
        """Set one sample; the gauge is declared on first use with these label names."""
        g = self.gauge(name, documentation, sorted(labels))
        (g.labels(**labels) if labels else g).set(value)

    def text(self) -> str:
        """The Prometheus text exposition format (what /metrics or a .prom file contains)."""
        return generate_latest(self.registry).decode()

    def push(self, gateway_url: str, job: str, grouping_key: Mapping[str, str] | None = None,
             timeout: float = 10) -> None:
        """Replace this job's group on a Pushgateway (HTTP PUT /metrics/job/<job>[/<label>/<value>])."""
        push_to_gateway(gateway_url, job=job, registry=self.registry,
                        grouping_key=dict(grouping_key or {}), timeout=timeout)

    def write_textfile(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename), so node_exporter never reads half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.text())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def publish(self, *, job: str, pushgateway_url: str | None = None, textfile: str | Path | None = None,
                grouping_key: Mapping[str, str] | None = None) -> list[str]:
        """Push when a gateway is configured and/or write the textfile; return where it went.

        The textfile is written first so a Pushgateway outage still leaves the numbers on disk;
        the push error is then raised (the caller decides whether that fails the task).
        """
        targets = []
        if textfile is not None:
            targets.append(str(self.write_textfile(textfile)))
        if pushgateway_url:
            self.push(pushgateway_url, job, grouping_key)
            targets.append(f"{pushgateway_url.rstrip('/')}/metrics/job/{job}")
        return targets


@dataclass(frozen=True)
class SourceStatus:
    """What one verification run found for one source (input to :func:`verification_metrics`)."""

    source: str
    ok: bool
    problems: int
    age_seconds: float | None = None  # newest backup's age; None when there is no backup
    size_bytes: int | None = None  # newest backup's size
    max_age_seconds: float | None = None  # the source's thresholds.max_age_hours


class LastSuccessStore:
    """``{source: unix time}`` of each source's last fully successful verification, in a JSON file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            # A damaged file must not stop metrics export; the next success rewrites it.
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def update(self, statuses: Iterable[SourceStatus], now: float) -> dict[str, float]:
        """Record ``now`` for every ok source; return the merged mapping (written atomically)."""
        data = self.load()
        for s in statuses:
            if s.ok:
                data[s.source] = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        return data


def verification_metrics(statuses: Iterable[SourceStatus], *, now: float,
                         last_success: Mapping[str, float] | None = None,
                         log_problems: Mapping[str, int] | None = None) -> MetricSet:
    """The daily verification's metrics, one sample per source and gauge.

    ``last_success`` (from :class:`LastSuccessStore`) supplies the time for sources that are
    not ok in this run; a source that never succeeded gets no last-success sample at all
    (absent, rather than a misleading 0 = 1970).
    """
    last_success = dict(last_success or {})
    m = MetricSet()

    def gauge(name: str, labels: Iterable[str] = ("source",)) -> Gauge:
        return m.gauge(name, names.help_of(name), labels)

    gauge(names.VERIFICATION_LAST_RUN, ()).set(now)
    status, problems = gauge(names.VERIFICATION_STATUS), gauge(names.VERIFICATION_PROBLEMS)
    last, age, size = gauge(names.VERIFICATION_LAST_SUCCESS), gauge(names.AGE), gauge(names.SIZE)
    max_age = gauge(names.MAX_AGE)
    for s in statuses:
        status.labels(source=s.source).set(1 if s.ok else 0)
        problems.labels(source=s.source).set(s.problems)
        when = now if s.ok else last_success.get(s.source)
        if when is not None:
            last.labels(source=s.source).set(when)
        if s.age_seconds is not None:
            age.labels(source=s.source).set(s.age_seconds)
        if s.size_bytes is not None:
            size.labels(source=s.source).set(s.size_bytes)
        if s.max_age_seconds is not None:
            max_age.labels(source=s.source).set(s.max_age_seconds)
    if log_problems:
        lp = gauge(names.LOG_PROBLEMS, ("log",))
        for name, count in sorted(log_problems.items()):
            lp.labels(log=name).set(count)
    return m


__all__ = ["MetricSet", "SourceStatus", "LastSuccessStore", "verification_metrics"]
