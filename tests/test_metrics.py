"""Prometheus metrics: exposition text, textfile export and a real HTTP push to a Pushgateway stand-in."""

from __future__ import annotations

import urllib.error

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _daily_helpers import http_server  # noqa: F401  (fixture)
from backupkit import metric_names as names
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus, verification_metrics

NOW = 1_750_000_000.0


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(metric name, sorted label items): value} parsed back with prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def statuses():
    return [
        SourceStatus("trixtech-db", ok=True, problems=0, age_seconds=3600.0, size_bytes=123456,
                     max_age_seconds=25 * 3600),
        SourceStatus("trixtech-files", ok=False, problems=2, age_seconds=200000.0, size_bytes=99),
        SourceStatus("new-source", ok=False, problems=1),  # no backup at all, never succeeded
    ]


def test_exposition_has_every_metric_per_source():
    text = verification_metrics(statuses(), now=NOW, last_success={"trixtech-files": NOW - 86400}).text()
    got = samples(text)
    src = lambda name: (("source", name),)  # noqa: E731
    assert got[(names.VERIFICATION_STATUS, src("trixtech-db"))] == 1
    assert got[(names.VERIFICATION_STATUS, src("trixtech-files"))] == 0
    assert got[(names.VERIFICATION_PROBLEMS, src("trixtech-files"))] == 2
    assert got[(names.VERIFICATION_PROBLEMS, src("new-source"))] == 1
    assert got[(names.AGE, src("trixtech-db"))] == 3600
    assert got[(names.MAX_AGE, src("trixtech-db"))] == 25 * 3600  # what BackupTooOld compares with
    assert (names.MAX_AGE, src("new-source")) not in got
    assert got[(names.SIZE, src("trixtech-db"))] == 123456
    assert got[(names.SIZE, src("trixtech-files"))] == 99
    # ok now -> this run's time; failed now -> the remembered last success; never -> no sample.
    assert got[(names.VERIFICATION_LAST_SUCCESS, src("trixtech-db"))] == NOW
    assert got[(names.VERIFICATION_LAST_SUCCESS, src("trixtech-files"))] == NOW - 86400
    assert (names.VERIFICATION_LAST_SUCCESS, src("new-source")) not in got
    assert (names.AGE, src("new-source")) not in got
    assert got[(names.VERIFICATION_LAST_RUN, ())] == NOW
    # Names as documented (Velero / pgbackrest_exporter style), with HELP and TYPE lines.
    assert "# TYPE backup_verification_last_success_timestamp_seconds gauge" in text
    assert 'backup_age_seconds{source="trixtech-db"} 3600.0' in text


def test_log_problems_are_labelled_by_log():
    got = samples(verification_metrics([], now=NOW, log_problems={"db_backup": 3, "cloud_sync": 0}).text())
    assert got[(names.LOG_PROBLEMS, (("log", "db_backup"),))] == 3
    assert got[(names.LOG_PROBLEMS, (("log", "cloud_sync"),))] == 0


def test_metricset_generic_helper_and_label_consistency():
    m = MetricSet()
    m.set("backup_retention_deleted", 4, "Backups deleted", source="trixtech-db")
    m.set("backup_retention_deleted", 1, "Backups deleted", source="trixtech-files")
    m.set("backup_restore_test_duration_seconds", 12.5, "Restore test wall time")
    got = samples(m.text())
    assert got[("backup_retention_deleted", (("source", "trixtech-db"),))] == 4
    assert got[("backup_retention_deleted", (("source", "trixtech-files"),))] == 1
    assert got[("backup_restore_test_duration_seconds", ())] == 12.5
    with pytest.raises(ValueError, match="declared with labels"):
        m.set("backup_retention_deleted", 1, "Backups deleted", source="x", bucket="y")


def test_last_success_store_keeps_the_last_good_time(tmp_path):
    store = LastSuccessStore(tmp_path / "m" / "last_success.json")
    assert store.load() == {}
    store.update([SourceStatus("a", True, 0), SourceStatus("b", True, 0)], now=100.0)
    merged = store.update([SourceStatus("a", False, 1), SourceStatus("b", True, 0)], now=200.0)
    assert merged == {"a": 100.0, "b": 200.0}
    assert LastSuccessStore(store.path).load() == merged
    store.path.write_text("{not json")  # a damaged file must not stop the export
    assert store.load() == {}


def test_textfile_is_written_atomically(tmp_path):
    m = verification_metrics(statuses(), now=NOW)
    path = m.write_textfile(tmp_path / "metrics" / "daily.prom")
    assert path.read_text() == m.text()
    assert [p.name for p in path.parent.iterdir()] == ["daily.prom"]  # no temp file left behind


def test_push_replaces_the_job_group_on_the_gateway(http_server):
    m = verification_metrics(statuses(), now=NOW)
    m.push(http_server.url, job="backup_daily_verification", grouping_key={"instance": "sandbox"})
    [req] = http_server.requests
    assert req.method == "PUT"  # PUT replaces the whole group: sources removed from config vanish
    assert req.path == "/metrics/job/backup_daily_verification/instance/sandbox"
    assert req.headers["Content-Type"].startswith("text/plain")
    body = req.body.decode()
    assert body == m.text()
    assert samples(body)[(names.VERIFICATION_STATUS, (("source", "trixtech-files"),))] == 0


def test_publish_writes_textfile_even_when_the_push_fails(http_server, tmp_path):
    http_server.status = 500
    m = verification_metrics(statuses(), now=NOW)
    with pytest.raises(urllib.error.HTTPError):
        m.publish(job="backup_daily_verification", pushgateway_url=http_server.url,
                  textfile=tmp_path / "daily.prom")
    assert (tmp_path / "daily.prom").read_text() == m.text()
    assert len(http_server.requests) == 1


def test_publish_without_gateway_only_writes_the_file(tmp_path):
    targets = verification_metrics(statuses(), now=NOW).publish(job="j", pushgateway_url=None,
                                                                textfile=tmp_path / "d.prom")
    assert targets == [str(tmp_path / "d.prom")]
