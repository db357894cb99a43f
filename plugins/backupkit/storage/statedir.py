"""The state directory: every path the jobs keep between runs, composed here and nowhere else.

One layout, so a newcomer (and the health page) finds each fact in one place::

    <state_dir>/
      verification.sqlite                 what was read in full, when, with which verdict (backupkit.state)
      audit/retention.jsonl               retention's write-ahead log: intent before every deletion
      audit/restore.jsonl                 restores, restore tests and the replace saga, step by step
      audit/runs/<run>/<source>.jsonl     one run's retention records, mirrored to the bucket
      history/restore_tests.jsonl         one line per backup restored by a restore test
      history/dr_drills.jsonl             one line per disaster-recovery drill
      history/storage.jsonl               weekly storage totals (growth)
      facts/<job>.json                    what a job's last run found, for the health page (backupkit.health)
      metrics/<job>.prom                  node_exporter textfile collector, one file per job
      metrics/<job>.json                  values a job keeps between runs (last successes)
      reports/<kind>/<date>/              rendered reports (also written to the bucket)
      locks/<name>.lock                   one lock per source and action (sweeps, restores)
      scratch/                            local scratch servers and extracted archives
      tmp/                                spooled downloads

Nothing is created by constructing a :class:`StateDir`; writers create what they write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SEGMENT = re.compile(r"[^A-Za-z0-9._:+=@-]")


def safe_segment(text: str) -> str:
    """``text`` usable as one path segment and S3 key segment (Airflow run ids hold ``:`` and ``+``)."""
    cleaned = _SEGMENT.sub("_", str(text).strip())
    if not cleaned or cleaned in (".", ".."):
        raise ValueError(f"unusable as a file name: {text!r}")
    return cleaned


@dataclass(frozen=True)
class StateDir:
    """Paths under one state directory (``verification.state_dir`` in the configuration)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- verification memory ------------------------------------------------------------
    @property
    def verification_db(self) -> Path:
        return self.root / "verification.sqlite"

    # -- journals (write-ahead logs of destructive steps) --------------------------------
    @property
    def journal_dir(self) -> Path:
        return self.root / "audit"

    @property
    def retention_journal(self) -> Path:
        return self.journal_dir / "retention.jsonl"

    @property
    def restore_journal(self) -> Path:
        return self.journal_dir / "restore.jsonl"

    def run_journal(self, run_id: str, source: str) -> Path:
        return self.journal_dir / "runs" / safe_segment(run_id) / f"{safe_segment(source)}.jsonl"

    @property
    def run_journals(self) -> Path:
        return self.journal_dir / "runs"

    # -- histories (results later jobs read) ---------------------------------------------
    @property
    def restore_tests(self) -> Path:
        return self.root / "history" / "restore_tests.jsonl"

    @property
    def dr_drills(self) -> Path:
        return self.root / "history" / "dr_drills.jsonl"

    @property
    def storage_history(self) -> Path:
        return self.root / "history" / "storage.jsonl"

    # -- facts the health page reads ------------------------------------------------------
    def facts_file(self, job: str) -> Path:
        return self.root / "facts" / f"{safe_segment(job)}.json"

    # -- alerts ----------------------------------------------------------------------------
    @property
    def alert_state(self) -> Path:
        """Open alerts and the runs that paged (:mod:`backupkit.alert_state`)."""
        return self.root / "alerts" / "state.json"

    # -- metrics -------------------------------------------------------------------------
    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics_textfile(self, job: str) -> Path:
        return self.metrics_dir / f"{safe_segment(job)}.prom"

    def metrics_values(self, job: str) -> Path:
        return self.metrics_dir / f"{safe_segment(job)}.json"

    # -- reports, locks, scratch ---------------------------------------------------------
    def report_dir(self, kind: str, date: str) -> Path:
        return self.root / "reports" / safe_segment(kind) / safe_segment(date)

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{safe_segment(name)}.lock"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


__all__ = ["StateDir", "safe_segment"]
