"""The weekly review's pure core: anomalies, trends from files and logs, failure patterns, storage by
prefix and class over a real (loopback) S3 listing, cost, encryption, and the rendered report."""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest

from _reports_helpers import utc, write_config
from backupkit import clock
from backupkit import history
from backupkit.jobs import weekly
from backupkit.storage import inspect
from backupkit.storage.objectstore import Bucket
from backupkit.reports.render import Doc, bar_chart, human_bytes, line_chart
from backupkit.history import GIB, BackupPoint, find_anomalies
from backupkit.reports.weekly import weekly_doc
from sandbox.s3server import s3_client
from backupkit.state import VerificationState

NOW = utc(2026, 11, 29, 10)  # a Sunday, 10:00 UTC

CONFIG = """
bucket: {name: unit-backups}
databases:
  - name: db
    database: app
    conn_id: app_db
    dump_format: custom
    local_dir: {root}/backups/db
    s3_prefix: db/
    pattern: app_%Y%m%d_%H%M%S.dump
    retention: {keep_daily: 7, keep_weekly: 4}
file_sets:
  - name: files
    local_dir: {root}/backups/files
    s3_prefix: files/
    pattern: files_%Y%m%d_%H%M%S.tar.gz
    paths: [opt/app/config]
logs:
  - name: db_backup
    path: {root}/logs/db_backup.log
verification: {state_dir: {root}/state}
reports: {anomaly_factor: 2, trend_weeks: 4}
"""


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, CONFIG)


def nights(days: int, *, end: datetime = NOW, skip: tuple[int, ...] = ()) -> list[datetime]:
    """02:00 UTC on each of the ``days`` nights before ``end`` (index 0 = oldest), without ``skip``."""
    last = end.replace(hour=2, minute=0, second=0, microsecond=0)
    stamps = [last - timedelta(days=days - 1 - i) for i in range(days)]
    return [s for i, s in enumerate(stamps) if i not in skip]


def write_backups(source, stamps, size=lambda i, ts: 1000) -> list:
    source.local_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ts in enumerate(stamps):
        p = source.local_dir / source.pattern.name_for(ts)
        p.write_bytes(b"\0" * size(i, ts))
        paths.append(p)
    return paths


def log_line(ts: datetime, level: str, msg: str) -> str:
    return f"{ts:%Y-%m-%d %H:%M:%S} {level} {msg}\n"


def points(values: list[float | None], metric: str = "size") -> list[BackupPoint]:
    base = utc(2026, 1, 1, 2)
    return [BackupPoint("s", f"b{i}", base + timedelta(days=i), v if metric == "size" else 1000,
                        v if metric == "duration" else 1.0, "local") for i, v in enumerate(values)]


# -- anomalies ---------------------------------------------------------------------------------
def test_anomalies_are_jumps_and_drops_beyond_the_factor_against_the_recent_median():
    sizes = [100, 102, 98, 101, 99, 45, 100, 190, 210, 100, 0]
    found = find_anomalies(points(sizes), factor=2, window=7, since=utc(2000, 1, 1))
    assert [(a["name"], a["kind"], a["ratio"]) for a in found if a["metric"] == "size"] == [
        ("b5", "drop", 0.45), ("b8", "jump", 2.1), ("b10", "drop", 0.0)]
    assert all(a["baseline"] == 100 for a in found)  # medians of the previous seven, robust to the outliers
    # Before `since`, or before there are three earlier backups, nothing is judged.
    assert find_anomalies(points(sizes), factor=2, window=7, since=utc(2026, 1, 9)) == found[1:]
    assert find_anomalies(points([100, 10, 1000]), factor=2, window=7, since=utc(2000, 1, 1)) == []
    durations = [10, 11, None, 9, 10, 31, 10]
    [slow] = find_anomalies(points(durations, "duration"), factor=3, window=7, since=utc(2000, 1, 1))
    assert (slow["name"], slow["metric"], slow["kind"]) == ("b5", "duration", "jump")
    with pytest.raises(ValueError):
        find_anomalies([], factor=1, window=7, since=NOW)


# -- trends from files and logs -------------------------------------------------------------------
def test_trends_take_sizes_from_files_and_durations_from_current_and_rotated_logs(config):
    db = config.source("db")
    stamps = nights(35)
    write_backups(db, stamps, size=lambda i, ts: 300 if i == len(stamps) - 2 else 1000 + i)
    write_backups(config.source("files"), stamps)
    log = config.logs[0].path
    log.parent.mkdir(parents=True)
    lines = [log_line(ts + timedelta(seconds=40), "INFO",
                      f"backup completed source=db file={db.pattern.name_for(ts)} "
                      f"duration={'95.0' if i == 30 else '20.5'}s size={1000 + i}")
             for i, ts in enumerate(stamps)]
    with gzip.open(log.with_name(log.name + ".1.gz"), "wt") as f:  # logrotate's older half
        f.writelines(lines[:20])
    log.write_text("".join(lines[20:]))

    out = weekly.collect_trends(config, now=NOW)
    db_trend = out["sources"]["db"]
    assert out["weeks"] == ["2026-W45", "2026-W46", "2026-W47", "2026-W48"]
    assert [w["count"] for w in db_trend["weeks"]] == [7, 7, 7, 7]  # the 28 days before Sunday 10:00
    assert all(w["duration_median"] == 20.5 for w in db_trend["weeks"])
    assert db_trend["missing_duration"] == 0
    assert {(a["name"], a["metric"], a["kind"]) for a in db_trend["anomalies"]} == {
        (db.pattern.name_for(stamps[30]), "duration", "jump"), (db.pattern.name_for(stamps[33]), "size", "drop")}
    # The file set has no log lines: sizes only, and they say so.
    assert out["sources"]["files"]["missing_duration"] == 28
    assert out["sources"]["files"]["anomalies"] == []


def test_logs_before_since_are_skipped_and_companions_are_not_backups(config):
    log = config.logs[0].path
    log.parent.mkdir(parents=True)
    log.write_text(log_line(NOW - timedelta(days=40), "ERROR", "pg_dump: old failure source=db")
                   + log_line(NOW - timedelta(days=1), "ERROR", "pg_dump: connection refused source=db")
                   + "a line without a timestamp ERROR\n")
    completed, events, notes = history.read_backup_logs(config, NOW - timedelta(days=7))
    assert completed == {} and notes == []
    assert [(e.level, e.source, e.message) for e in events] == [
        ("ERROR", "db", "pg_dump: connection refused source=db")]
    db = config.source("db")
    [p] = write_backups(db, nights(1))
    p.with_name(p.name + ".sha256").write_text("x")
    assert [b.name for b in history.backup_points(db)] == [p.name]


# -- failure pattern ---------------------------------------------------------------------------------
def test_failure_pattern_by_weekday_source_and_error(config):
    db, files = config.source("db"), config.source("files")
    stamps = nights(28, skip=(10, 17))  # two missing nights, a week apart: the same weekday
    write_backups(db, stamps)
    write_backups(files, nights(28))
    missing = sorted({(nights(28)[i]).date() for i in (10, 17)})
    log = config.logs[0].path
    log.parent.mkdir(parents=True)
    log.write_text(log_line(nights(28)[3], "ERROR", "pg_dump: error: connection to server at 10.0.0.5 port 5432 "
                                                    "failed source=db")
                   + log_line(nights(28)[12], "ERROR", "pg_dump: error: connection to server at 10.0.0.6 port 5433 "
                                                       "failed source=db")
                   + log_line(nights(28)[20], "WARNING", "slow upload source=files"))
    with VerificationState(config.state_dir) as st:
        bad = stamps[-1]
        st.record(f"db/{db.pattern.name_for(bad)}", None, 1000, False, NOW, "pg_restore: error: unexpected EOF")
        st.record(f"db/{db.pattern.name_for(stamps[-2])}", "ab" * 32, 1000, True, NOW)
        out = weekly.failure_pattern(config, now=NOW, state=st)

    kinds = sorted((e["kind"], e["source"], e["day"]) for e in out["events"])
    assert kinds == sorted([("missing backup", "db", d.isoformat()) for d in missing]
                           + [("log error", "db", nights(28)[3].date().isoformat()),
                              ("log error", "db", nights(28)[12].date().isoformat()),
                              ("verification failed", "db", bad.date().isoformat())])
    weekday = history.WEEKDAYS[missing[0].weekday()]
    assert out["by_weekday"][weekday]["missing backup"] == 2
    assert out["by_source"] == {"db": {"missing backup": 2, "log error": 2, "verification failed": 1}}
    top = out["top_errors"][0]  # the two connection errors differ only in numbers: one signature
    assert (top["kind"], top["count"], top["sources"]) == ("log error", 2, ["db"])
    assert out["log_warnings"] == 1


def test_missing_nights_ignore_today_and_days_before_the_first_backup():
    pts = [BackupPoint("s", str(i), ts, 1, 1.0, "local") for i, ts in enumerate(nights(5, skip=(2,)))]
    assert history.missing_nights(pts, since=NOW - timedelta(days=30), now=NOW) == [nights(5)[2].date()]
    hourly = [BackupPoint("s", str(i), NOW - timedelta(hours=i), 1, 1.0, "local") for i in range(48) if i != 5]
    assert history.missing_nights(hourly, since=NOW - timedelta(days=3), now=NOW) == []
    assert [s.hour for s in history.missing_slots(hourly, since=NOW - timedelta(days=3))] == [
        (NOW - timedelta(hours=5)).hour]


# -- storage and cost -------------------------------------------------------------------------------
@pytest.fixture
def unit_bucket(s3):
    s3.create_bucket(Bucket="unit-backups")
    s3.put_bucket_versioning(Bucket="unit-backups", VersioningConfiguration={"Status": "Enabled"})
    return s3


def test_bucket_usage_by_prefix_and_class_over_every_page_and_version(unit_bucket, config):
    s3 = unit_bucket
    for i in range(5):
        s3.put_object(Bucket="unit-backups", Key=f"db/app_2026110{i}_020000.dump", Body=b"d" * (1000 + i))
    s3.put_object(Bucket="unit-backups", Key="files/files_20261101_020000.tar.gz", Body=b"f" * 4000,
                  StorageClass="STANDARD_IA")
    s3.put_object(Bucket="unit-backups", Key="db/app_20261100_020000.dump", Body=b"n" * 500)  # overwrite
    s3.delete_object(Bucket="unit-backups", Key="db/app_20261101_020000.dump")  # delete marker
    s3.put_object(Bucket="unit-backups", Key="README", Body=b"r" * 10)

    usage = weekly.bucket_usage(Bucket(s3, "unit-backups"), now=clock.now(), weeks=2, page_size=2)
    db = usage["by_prefix"]["db/"]
    assert db == {"current_bytes": 500 + 1002 + 1003 + 1004, "current_objects": 4,
                  "noncurrent_bytes": 1000 + 1001, "noncurrent_objects": 2, "delete_markers": 1}
    assert usage["by_prefix"]["files/"]["current_bytes"] == 4000
    assert usage["by_prefix"]["(top level)"]["current_objects"] == 1
    assert usage["by_class"] == {"STANDARD": {"bytes": 5010 + 500 + 10, "objects": 7},
                                 "STANDARD_IA": {"bytes": 4000, "objects": 1}}
    assert usage["total_bytes"] == 9520 and usage["objects"] == 8
    assert sum(usage["uploaded_per_week"].values()) == 9520  # all uploaded this week
    cost = weekly.cost_estimate(usage["by_class"], {"STANDARD": 0.023})
    assert cost["usd_per_month"] == pytest.approx(5520 / GIB * 0.023)
    assert cost["unpriced"] == ["STANDARD_IA"]
    assert weekly.cost_estimate({"STANDARD": {"bytes": 100 * GIB}}, config.reports.prices_usd_per_gb_month)[
        "usd_per_month"] == pytest.approx(2.3)


def test_storage_usage_records_growth_between_runs(unit_bucket, config):
    s3 = unit_bucket
    write_backups(config.source("db"), nights(3))
    s3.put_object(Bucket="unit-backups", Key="db/a", Body=b"x" * 100)
    first = weekly.storage_usage(config, Bucket(s3, config.bucket), now=NOW - timedelta(days=7), weeks=2)
    assert first["growth"] == [] and first["history_points"] == 1
    assert first["cost_explorer"] == {"reachable": False, "reason": "disabled (reports.cost_explorer: false)"}
    s3.put_object(Bucket="unit-backups", Key="db/b", Body=b"x" * 250)
    write_backups(config.source("db"), nights(1, end=NOW + timedelta(days=1)))
    second = weekly.storage_usage(config, Bucket(s3, config.bucket), now=NOW, weeks=2, cost_explorer=lambda: {"reachable": False,
                                                                                      "reason": "test"})
    again = weekly.storage_usage(config, Bucket(s3, config.bucket), now=NOW, weeks=2)  # a re-run replaces the day's entry
    assert second["growth"] == again["growth"] == [{
        "date": NOW.date().isoformat(), "s3_bytes": 350, "local_bytes": 4000, "s3_change": 250,
        "local_change": 1000}]
    db_local = next(r for r in second["local"] if r["source"] == "db")
    assert db_local["bytes"] == 4000 and db_local["files"] == 4 and 0 < db_local["fs_free"] <= db_local["fs_size"]
    assert next(r for r in second["local"] if r["source"] == "files")["exists"] is False


def test_cost_explorer_only_on_aws(moto_server):
    import boto3

    ce = boto3.client("ce", endpoint_url=moto_server.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")
    out = weekly.cost_explorer_figure(ce, today=NOW.date())
    assert out == {"reachable": False, "reason": f"endpoint {moto_server.endpoint_url} is not AWS; Cost Explorer "
                                                 f"exists only on AWS"}
    # The response shape of GetCostAndUsage (amounts are decimal strings).
    assert weekly.sum_cost({"ResultsByTime": [{"Total": {"UnblendedCost": {"Amount": "12.3456", "Unit": "USD"}}},
                                              {"Total": {"UnblendedCost": {"Amount": "0.5", "Unit": "USD"}}}]}) == {
        "amount": pytest.approx(12.8456), "unit": "USD", "periods": 2}
    assert weekly._AWS_ENDPOINT.match("https://ce.us-east-1.amazonaws.com")
    assert not weekly._AWS_ENDPOINT.match("https://amazonaws.com.evil.example")


# -- encryption -----------------------------------------------------------------------------------
def test_encryption_report_lists_objects_without_the_configured_encryption(s3, config):
    s3.create_bucket(Bucket="unit-backups")
    s3.put_object(Bucket="unit-backups", Key="db/plain.dump", Body=b"x")
    s3.put_object(Bucket="unit-backups", Key="db/aes.dump", Body=b"x", ServerSideEncryption="AES256")
    s3.put_object(Bucket="unit-backups", Key="files/kms.tar.gz", Body=b"x", ServerSideEncryption="aws:kms")
    s3.put_object(Bucket="unit-backups", Key="reports/plain.md", Body=b"x")  # not a backup prefix
    out = weekly.encryption_report(config, Bucket(s3, config.bucket))
    assert out["default"]["ok"] is False and out["default"]["algorithm"] is None
    assert out["objects"]["unencrypted"] == ["db/plain.dump"]
    assert out["objects"]["wrong_kind"] == [["files/kms.tar.gz", "aws:kms"]]
    assert out["objects"]["objects"] == 3
    assert out["problems"] == ["s3://unit-backups has no default encryption (expected AES256)",
                               "1 backup object(s) without server-side encryption: db/plain.dump",
                               "1 backup object(s) encrypted with another kind than AES256: files/kms.tar.gz (aws:kms)"]
    s3.put_bucket_encryption(Bucket="unit-backups", ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
    assert inspect.bucket_encryption(Bucket(s3, "unit-backups"), "AES256")["ok"] is False
    assert inspect.bucket_encryption(Bucket(s3, "unit-backups"), "aws:kms")["ok"] is True
    assert inspect.sse_matches("aws:kms:dsse", "aws:kms") and not inspect.sse_matches("AES256", "aws:kms")
    assert weekly.encryption_report(config, Bucket(s3, config.bucket), scan=False)["objects"] is None


def test_encryption_scan_reads_every_page(s3, config):
    s3.create_bucket(Bucket="unit-backups")
    keys = [f"db/app_202611{d:02d}_020000.dump" for d in range(1, 16)]
    for k in keys:
        s3.put_object(Bucket="unit-backups", Key=k, Body=b"x", ServerSideEncryption="AES256")
    s3.put_object(Bucket="unit-backups", Key="db/zz-last.dump", Body=b"x")
    out = inspect.scan_objects(Bucket(s3_client(s3.meta.endpoint_url), "unit-backups"), ["db/"], "AES256", workers=3)
    assert out["objects"] == 16 and out["by_algorithm"] == {"AES256": 15, "none": 1}
    assert out["unencrypted"] == ["db/zz-last.dump"]


# -- rendering ---------------------------------------------------------------------------------------
def test_report_renders_markdown_html_and_well_formed_svg(config):
    write_backups(config.source("db"), nights(30), size=lambda i, ts: 300 if i == 29 else 1000)
    trends = weekly.collect_trends(config, now=NOW)
    failures = weekly.failure_pattern(config, now=NOW)
    doc = weekly_doc(report_date=NOW.date(), trends=trends, failures=failures, storage=None,
                            encryption=None, location="s3://unit-backups/reports/weekly/2026-11-29/report.md")
    md = doc.markdown()
    assert md.startswith("# Weekly backup review 2026-11-29\n")
    assert "Verdict: PROBLEMS FOUND" in md  # two sections missing
    assert "PROBLEM: section storage could not be collected" in md
    assert f"| db | {config.source('db').pattern.name_for(nights(30)[-1])} | size | drop |" in md
    assert "![db: backup size per ISO week](size-db.svg)" in md
    files = doc.files()
    assert set(files) >= {"report.md", "report.html", "size-db.svg", "duration-db.svg", "size-files.svg",
                          "failures-by-weekday.svg"}
    for name, svg in files.items():
        if name.endswith(".svg"):
            assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
    html = files["report.html"]
    assert html.count("<svg") == 5 and "size-db.svg" not in html  # inlined, not linked


def test_doc_escapes_what_would_break_tables_and_html():
    doc = Doc("T <x>").table(["a|b", "c"], [["x|y", "<script>"], [None, "line\nbreak"]]).para("1 < 2 & 3")
    md = doc.markdown()
    assert "| a\\|b | c |" in md and "| x\\|y | <script> |" in md and "| - | line break |" in md
    html = doc.html()
    assert "&lt;script&gt;" in html and "<script>" not in html and "1 &lt; 2 &amp; 3" in html
    assert "| (none) |" in Doc("t").table(["a", "b"], []).markdown()
    with pytest.raises(ValueError):
        Doc("t").chart("c", "<svg/>", "a").chart("c", "<svg/>", "b")


def test_charts_scale_and_label():
    svg = line_chart("sizes", ["W1", "W2", "W3"], {"db": [1024, None, 3 * 1024 * 1024]})
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall("s:circle", ns)) == 2  # the None week is a gap, not a zero
    assert ">4.8 MiB</text>" in svg  # axis maximum rounded up to a "nice" 5,000,000 bytes
    bars = ET.fromstring(bar_chart("b", [("a", 10), ("b", 5)], fmt=str))
    widths = [float(r.get("width")) for r in bars.findall("s:rect", ns)[1:]]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "-" and human_bytes(12) == "12 B"


def test_scan_counts_everything_but_keeps_a_bounded_list(s3, config, monkeypatch):
    s3.create_bucket(Bucket="unit-backups")
    for i in range(7):
        s3.put_object(Bucket="unit-backups", Key=f"db/plain-{i}.dump", Body=b"x")
    monkeypatch.setattr(inspect, "MAX_KEPT", 3)
    out = weekly.encryption_report(config, Bucket(s3, config.bucket))
    assert out["objects"]["counts"]["unencrypted"] == 7 and len(out["objects"]["unencrypted"]) == 3
    assert out["problems"][1].startswith("7 backup object(s) without server-side encryption: db/plain-0.dump")
    assert out["problems"][1].endswith("(+4 more)")


WAL_CONFIG = CONFIG.replace("logs:", """wal_archives:
  - name: wal
    local_dir: {root}/wal/base
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_dir: {root}/wal/archive
    archive_s3_prefix: wal/
logs:""")


def test_a_wal_archives_directory_and_prefix_are_counted_and_scanned(s3, tmp_path):
    """The archive lives outside local_dir and s3_prefix: the storage and encryption sections count it too."""
    import os

    config = write_config(tmp_path, WAL_CONFIG)
    archive = tmp_path / "wal" / "archive"
    archive.mkdir(parents=True)
    (tmp_path / "wal" / "base").mkdir()
    for i, days in enumerate((9, 2)):
        seg = archive / f"0000000100000000000000{i:02X}"
        seg.write_bytes(b"\0" * 1000)
        t = (NOW - timedelta(days=days)).timestamp()
        os.utime(seg, (t, t))
    rows = [r for r in weekly.local_usage(config, now=NOW, weeks=2) if r["source"] == "wal"]
    assert [(r["path"], r["wal"]) for r in rows] == [(str(tmp_path / "wal" / "base"), False), (str(archive), True)]
    assert rows[1]["bytes"] == 2000 and rows[1]["files"] == 2
    assert list(rows[1]["added_per_week"].values()) == [1000, 1000]   # one segment in each of the two weeks
    s3.create_bucket(Bucket="unit-backups")
    s3.put_object(Bucket="unit-backups", Key="wal/000000010000000000000001", Body=b"x")   # unencrypted
    s3.put_object(Bucket="unit-backups", Key="basebackups/base_1/PG_VERSION", Body=b"18", ServerSideEncryption="AES256")
    out = weekly.encryption_report(config, Bucket(s3, config.bucket))
    assert out["objects"]["unencrypted"] == ["wal/000000010000000000000001"]
    assert out["objects"]["objects"] == 2
