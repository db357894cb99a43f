"""Hostile input for the health page's readers: every parser answers a verdict, never a traceback.

Bounded in time (hypothesis deadlines and example counts). The seeds are real artifacts: a facts
file written by :func:`record_daily_run` from real check results, a metrics textfile written by
the daily job's own MetricSet, and the link the page itself builds.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_airflow.health.links import UiLinks
from backup_airflow.health.prefill import requested_values
from backupkit.config import load_config
from backupkit.health import FactsError, daily_facts, read_daily_run, record_daily_run
from backupkit.health_cache import read_metrics
from backupkit.metrics import SourceStatus, verification_metrics
from backupkit.prefill import MAX_CONF, PrefillRefused, prefill_values
from backupkit.storage.statedir import StateDir

NOW = datetime(2025, 6, 15, 8, 0, tzinfo=timezone.utc)
RESULTS = [
    {"artifact": "trixtech-db/trixtech_20250615_020000.dump", "check": "s3_checksum", "ok": True,
     "detail": "SHA-256 matches S3's stored checksum (evidence: sha256; read 0 bytes of the object)"},
    {"artifact": "trixtech-files/files_20250615_020000.tar.gz", "check": "s3_present", "ok": False,
     "detail": "s3://trixtech-backups/files/files_20250615_020000.tar.gz does not exist"},
    {"artifact": "trixtech-db", "check": "freshness", "ok": True, "detail": "newest is 6.0 h old"},
]
SETTINGS = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def seed_facts(tmp_path_factory) -> bytes:
    state = StateDir(tmp_path_factory.mktemp("facts"))
    path = record_daily_run(state, RESULTS, source_names=["trixtech-db", "trixtech-db-sql", "trixtech-files"],
                            dag_id="backup_daily_verification", run_id="scheduled__2025-06-15T08:00:00+00:00", now=NOW)
    return path.read_bytes()


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op, i = rnd.randrange(4), rnd.randrange(max(len(b), 1))
        if op == 0 and b:
            b[i] = rnd.randrange(256)
        elif op == 1:
            b[i:i] = rnd.choice([b'"', b"{", b"}", b"[", b"null", b"1e999", b"\xff", b"\\u0000", b'"ok": 1'])
        elif op == 2 and b:
            del b[i:i + rnd.randint(1, 16)]
        else:
            b = b[:i]
    return bytes(b)


def test_the_seed_facts_file_is_read_back(tmp_path, seed_facts):
    path = tmp_path / "daily.json"
    path.write_bytes(seed_facts)
    facts = read_daily_run(path)
    assert facts["sources"]["trixtech-files"]["ok"] is False
    assert facts["sources"]["trixtech-db"]["s3"] == {"trixtech_20250615_020000.dump": {"ok": True, "method": "sha256"}}


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_facts_files_are_read_or_refused(tmp_path, seed_facts, seed):
    path = tmp_path / "daily.json"
    path.write_bytes(mutate(seed_facts, random.Random(seed)))
    try:
        facts = read_daily_run(path)
    except FactsError as exc:
        assert str(path) in str(exc)
        return
    assert facts is not None
    for s in facts["sources"].values():  # what is accepted has the documented shape
        assert isinstance(s["ok"], bool) and isinstance(s["map_index"], int)
        assert all(isinstance(v["ok"], bool) and isinstance(v["method"], str) for v in s["s3"].values())


@pytest.mark.parametrize("bad", [{"problems": 5}, {"s3": [1]}, {"ok": "yes"}, {"map_index": 1.5}])
def test_wrong_types_in_a_source_are_refused(tmp_path, seed_facts, bad):
    doc = json.loads(seed_facts)
    doc["sources"]["trixtech-db"].update(bad)
    path = tmp_path / "daily.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FactsError, match="sources.trixtech-db"):
        read_daily_run(path)


def test_a_facts_file_over_the_limit_is_refused_without_reading(tmp_path):
    path = tmp_path / "daily.json"
    with open(path, "wb") as f:
        f.truncate(9 << 20)
    with pytest.raises(FactsError, match="more than"):
        read_daily_run(path)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_metrics_textfiles_never_raise(tmp_path, seed):
    good = verification_metrics([SourceStatus("trixtech-db", ok=True, problems=0, age_seconds=3600.0,
                                              size_bytes=1000, max_age_seconds=90000.0)],
                                now=NOW.timestamp(), last_success={"trixtech-db": NOW.timestamp()}).text()
    (tmp_path / "daily.prom").write_bytes(mutate(good.encode(), random.Random(seed)))
    notes: list[str] = []
    values = read_metrics(tmp_path, notes)
    assert all(isinstance(v, float) for per in values.values() for v in per.values())


@SETTINGS
@given(text=st.text(max_size=400))
def test_arbitrary_conf_text_is_refused_or_checked(config, text):
    try:
        values = prefill_values(text, "backup_restore", config)
    except PrefillRefused:
        return
    assert values["source"] in {s.name for s in config.databases}
    assert values.get("key", config.source(values["source"]).s3_prefix).startswith(
        config.source(values["source"]).s3_prefix)


@SETTINGS
@given(source=st.sampled_from(["trixtech-db", "trixtech-files", "../x", ""]),
       which=st.sampled_from(["key", "latest", "latest_before", "rm -rf", ""]),
       key=st.one_of(st.text(max_size=60), st.sampled_from(["database/../etc/passwd", "/database/x",
                                                            "database/trixtech_20250101_020000.dump",
                                                            "files/files_20250101_020000.tar.gz", "s3://b/k"])))
def test_structured_conf_only_passes_for_a_configured_database_and_its_prefix(config, source, which, key):
    text = json.dumps({"source": source, "which": which, "key": key})
    try:
        values = prefill_values(text, "backup_restore", config)
    except PrefillRefused:
        return
    assert source == "trixtech-db" and which in ("key", "latest", "latest_before")
    assert key.startswith("database/") and ".." not in key.split("/")


def test_limits_and_shapes_of_conf():
    config = load_config()
    ok = {"source": "trixtech-db", "which": "key", "key": "database/trixtech_20250101_020000.dump"}
    assert prefill_values(json.dumps(ok), "backup_restore", config) == ok
    for bad, why in ((json.dumps({**ok, "mode": "replace"}), "does not take: mode"),
                     (json.dumps({**ok, "key": "files/files_20250101_020000.tar.gz"}), "key"),
                     (json.dumps({**ok, "source": "trixtech-files"}), "source must be one of"),
                     ("[1]", "JSON object"), ("x" * (MAX_CONF + 1), "longer than"),
                     (json.dumps({"source": "trixtech-db", "which": "key"}), "no key")):
        with pytest.raises(PrefillRefused, match=why):
            prefill_values(bad, "backup_restore", config)
    with pytest.raises(PrefillRefused):
        prefill_values(json.dumps({"file_set": "trixtech-db"}), "backup_file_restore", config)


def test_only_the_details_of_a_restore_dag_asked_from_its_own_page_are_prefilled():
    config = load_config()
    conf = {"source": "trixtech-db", "which": "key", "key": "database/trixtech_20250101_020000.dump"}
    href = UiLinks("").trigger_form("backup_restore", conf)
    page = f"http://localhost:8080{href}"
    assert requested_values("/api/v2/dags/backup_restore/details", page, lambda: config) == conf
    assert requested_values("/api/v2/dags/backup_restore/details", None, lambda: config) is None
    assert requested_values("/api/v2/dags/backup_file_restore/details", page, lambda: config) is None
    assert requested_values("/api/v2/dags/backup_restore/tasks", page, lambda: config) is None
    other = page.replace("/dags/backup_restore", "/dags/backup_restore/runs/x")
    assert requested_values("/api/v2/dags/backup_restore/details", other, lambda: config) is None


@SETTINGS
@given(results=st.lists(st.fixed_dictionaries({
    "artifact": st.one_of(st.text(max_size=40), st.sampled_from(["trixtech-db/x.dump", "trixtech-db", "logs/db"])),
    "check": st.sampled_from(["s3_checksum", "s3_present", "integrity", "freshness", ""]),
    "ok": st.booleans(), "detail": st.text(max_size=80)}), max_size=30))
def test_daily_facts_keep_the_documented_shape_for_any_results(results):
    facts = daily_facts(results, ["trixtech-db", "trixtech-files"])
    assert set(facts) == {"trixtech-db", "trixtech-files"}
    for name, f in facts.items():
        assert f["ok"] == all(r["ok"] for r in results if r["artifact"].split("/", 1)[0] == name)
        assert len(f["problems"]) <= 20


def test_loading_the_plugin_touches_nothing(tmp_path):
    """Schedulers and workers load plugins too: the plugin file imports no FastAPI, health code or S3 client,
    and reads no configuration (BACKUPKIT_CONFIG points at a file that does not exist)."""
    import subprocess
    import sys

    import airflow_env

    code = ("import sys; import backup_health_plugin as p; plugin = p.BackupHealthPlugin();"
            "print(sorted(m for m in ('fastapi', 'boto3', 'backupkit.health_cache', 'backupkit.config',"
            " 'backup_airflow.health.app') if m in sys.modules)); print(len(plugin.external_views))")
    env = {**airflow_env.settings_env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(airflow_env.PLUGINS),
           "BACKUPKIT_CONFIG": str(tmp_path / "absent.yaml")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "2"]
