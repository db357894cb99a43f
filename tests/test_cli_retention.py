"""``backupctl retention plan``: from a list of timestamps and from a configured source."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backupkit.cli import main

SUNDAYS = [(datetime(2019, 9, 1, 11) + timedelta(weeks=i)).isoformat() for i in range(12)]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sundays(tmp_path) -> Path:
    f = tmp_path / "sundays.txt"
    f.write_text("# restic docs example: one backup every Sunday\n" + "\n".join(SUNDAYS) + "\n\n")
    return f


def test_timestamps_table(capsys, sundays):
    code, out, err = run(capsys, "retention", "plan", "--keep-daily", "4", "--max-delete-fraction", "0.7",
                         "--timestamps", str(sundays))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("policy: keep 4 daily snapshots; periods in UTC")
    rows = lines[1:13]
    assert [r.split()[0] for r in rows] == [f"{s}+00:00" for s in SUNDAYS]
    assert [r.split()[1] for r in rows] == ["delete"] * 8 + ["keep"] * 4
    assert rows[8].endswith("keep    daily snapshot 4/4")
    assert rows[11].endswith("keep    daily snapshot 1/4, newest backup, newest verified backup")
    assert lines[13] == "12 backups: keep 4, delete 8, held 0"


def test_refused_plan_exits_1_and_names_the_violation(capsys, sundays):
    code, out, err = run(capsys, "retention", "plan", "--keep-daily", "4", "--timestamps", str(sundays))
    assert code == 1
    assert "12 backups: keep 4, delete 8, held 0" in out  # the plan is still shown
    assert err == "refused: would delete 8 of 12 backups (67%), more than max_delete_fraction 0.5\n"
    code, _, err = run(capsys, "retention", "plan", "--keep-daily", "11", "--min-keep", "12",
                       "--timestamps", str(sundays))
    assert code == 1 and err == "refused: would leave 11 backups, fewer than min_keep 12\n"


def test_json_and_time_zone(capsys, tmp_path):
    f = tmp_path / "t.txt"
    # 23:30Z on 4 March is 4 March in UTC but 5 March in Berlin, like 00:30Z.
    f.write_text("2024-03-04T23:30:00Z\n2024-03-05T00:30:00+00:00\n2024-03-03T12:00\n")
    code, out, _ = run(capsys, "retention", "plan", "--keep-daily", "2", "--timezone", "Europe/Berlin",
                       "--json", "--timestamps", str(f))
    assert code == 0
    rows = json.loads(out)
    assert [(r["name"], r["action"]) for r in rows] == [
        ("2024-03-03T12:00", "keep"), ("2024-03-04T23:30:00Z", "delete"), ("2024-03-05T00:30:00+00:00", "keep")]
    assert rows[0] == {"timestamp": "2024-03-03T13:00:00+01:00", "name": "2024-03-03T12:00", "action": "keep",
                       "reasons": ["daily snapshot 2/2"], "verified": "passed"}
    code, out, _ = run(capsys, "retention", "plan", "--keep-daily", "2", "--json", "--timestamps", str(f))
    assert [r["action"] for r in json.loads(out)] == ["delete", "keep", "keep"]  # in UTC: two days


def test_stdin_through_the_installed_command(tmp_path):
    """A real process reading ``-`` from stdin, as a team would pipe a list of dates."""
    proc = subprocess.run(
        [sys.executable, "-m", "backupkit.cli", "retention", "plan", "--keep-weekly", "2", "--keep-within", "2d1h",
         "--json", "--timestamps", "-"],
        input="2020-12-28T01:00\n2020-12-31T01:00\n2021-01-01T01:00\n2021-01-03T01:00\n",
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    # All four are in ISO week 2020-W53: weekly keeps the newest (and, with count left,
    # the oldest); within 2d1h of 3 January 01:00 keeps 1 January 01:00 too.
    assert rows["2021-01-03T01:00"]["reasons"][:2] == ["within 2d1h", "weekly snapshot 1/2"]
    assert rows["2021-01-01T01:00"]["reasons"] == ["within 2d1h"]
    assert rows["2020-12-31T01:00"]["action"] == "delete"
    assert rows["2020-12-28T01:00"]["reasons"] == ["oldest weekly snapshot 2/2"]


@pytest.mark.parametrize("argv, message", [
    (["--timestamps", "{f}"], "give at least one --keep-* rule"),
    (["--keep-within", "0d", "--timestamps", "{f}"], "give at least one --keep-* rule"),
    (["--keep-daily", "3"], "give --source NAME, or --timestamps FILE"),
    (["--keep-daily", "3", "--timestamps", "{bad}"], "line 3: not an ISO-8601 timestamp: 'yesterday'"),
    (["--keep-daily", "3", "--timestamps", "{dup}"], "line 2: '2024-05-01T02:00' repeats line 1"),
    (["--keep-daily", "3", "--timestamps", "{missing}"], "cannot read"),
    (["--keep-within", "1w", "--timestamps", "{f}"], "expected a duration like 1y6m2d3h"),
    (["--keep-daily", "-1", "--timestamps", "{f}"], "must be >= 0"),
    (["--keep-daily", "1", "--timezone", "Mars/Olympus", "--timestamps", "{f}"], "unknown time zone"),
    (["--keep-daily", "1", "--max-delete-fraction", "2", "--timestamps", "{f}"], "between 0 and 1"),
    (["--keep-daily", "1", "--source", "x", "--timestamps", "{f}"], "not allowed with argument"),
])
def test_usage_errors_exit_2(capsys, tmp_path, argv, message):
    files = {"f": "2024-05-01T02:00\n", "bad": "2024-05-01T02:00\n\nyesterday\n",
             "dup": "2024-05-01T02:00\n2024-05-01T02:00\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = [a.format(**{k: tmp_path / k for k in (*files, "missing")}) for a in argv]
    code, out, err = run(capsys, "retention", "plan", *argv)
    assert code == 2
    assert message in err
    assert out == ""


# --- --source -------------------------------------------------------------------------

CONFIG = """
bucket: {{name: trixtech-backups}}
databases:
  - name: trixtech-db
    database: trixtech
    dump_format: custom
    local_dir: {root}/database
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
    retention:
      keep_daily: 5
      keep_weekly: 2
      max_delete_fraction: 0.9
      min_keep: 3
verification:
  state_dir: {root}/state
hold_list: [{hold}]
"""


@pytest.fixture
def source(tmp_path):
    """A configured source with 20 nightly backups (1..20 May 2024) on disk."""
    folder = tmp_path / "database"
    folder.mkdir()
    for day in range(1, 21):
        (folder / f"trixtech_202405{day:02d}_020000.dump").write_bytes(b"x" * (1000 + day))
    (folder / "notes.txt").write_text("not a backup")

    def write(hold: str = "") -> Path:
        cfg = tmp_path / "backups.yaml"
        cfg.write_text(CONFIG.format(root=tmp_path, hold=hold))
        return cfg

    return folder, write


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_source_without_a_state_store_keeps_everything_and_touches_nothing(capsys, source, tmp_path):
    folder, write = source
    cfg = write()
    before = snapshot(folder)
    code, out, err = run(capsys, "--config", str(cfg), "retention", "plan", "--source", "trixtech-db")
    assert (code, err) == (0, "")
    assert "20 backups: keep 20, delete 0, held 0; 20 not verified" in out
    assert "trixtech_20240503_020000.dump  not verified; day 2024-05-03 has no verified representative" in out
    assert snapshot(folder) == before
    assert not (tmp_path / "state").exists()  # planning does not create the state store


def test_source_with_verification_states_and_hold_list(capsys, source, tmp_path):
    state = pytest.importorskip("backupkit.state")
    folder, write = source
    cfg = write(hold="database/trixtech_20240502_020000.dump")
    with state.VerificationState(tmp_path / "state") as store:
        for day in range(1, 21):
            if day == 18:
                continue  # never read in full
            store.record(f"trixtech-db/trixtech_202405{day:02d}_020000.dump", None, 1000 + day,
                         ok=day != 20, verified_at=datetime(2024, 5, 21, tzinfo=timezone.utc))
        store.record("other-source/trixtech_20240519_020000.dump", None, 1, ok=False,
                     verified_at=datetime(2024, 5, 21, tzinfo=timezone.utc))
    before = snapshot(folder)
    code, out, err = run(capsys, "--config", str(cfg), "retention", "plan", "--source", "trixtech-db", "--json")
    assert (code, err) == (0, "")
    rows = {r["name"][9:17]: (r["action"], r["verified"], r["reasons"]) for r in json.loads(out)}
    # Verified 1..17 and 19; 18 unverified; 20 (the newest) failed.
    # keep_daily 5 over the verified: 19, 17, 16, 15, 14; keep_weekly 2: 19 (W20), 12 (Sun, W19).
    assert rows["20240520"] == ("keep", "failed", [
        "newest backup", "verification failed; day 2024-05-20 has no verified representative"])
    assert rows["20240519"] == ("keep", "passed", ["daily snapshot 1/5", "weekly snapshot 1/2",
                                                   "newest verified backup"])
    assert rows["20240518"] == ("keep", "unverified", ["not verified; day 2024-05-18 has no verified representative"])
    assert rows["20240512"] == ("keep", "passed", ["weekly snapshot 2/2"])
    assert rows["20240502"] == ("held", "passed", ["held: on the configured hold list"])
    assert sorted(k for k, v in rows.items() if v[0] == "keep") == [
        "20240512", "20240514", "20240515", "20240516", "20240517", "20240518", "20240519", "20240520"]
    assert sum(1 for v in rows.values() if v[0] == "delete") == 11
    assert snapshot(folder) == before

    # Rules on the command line replace the configured ones; guard rails stay.
    code, out, err = run(capsys, "--config", str(cfg), "retention", "plan", "--source", "trixtech-db",
                         "--keep-last", "2")
    assert (code, err) == (0, "")
    assert out.startswith("policy: keep 2 latest snapshots; periods in UTC; refuse to delete more than 90%")
    assert "trixtech_20240517_020000.dump  last snapshot 2/2\n" in out
    freed = sum(1000 + day for day in (1, *range(3, 17)))  # 15134 bytes
    assert out.endswith(f"20 backups: keep 4, delete 15, held 1, {freed / 1024:.1f} KiB to free; 2 not verified\n")


def test_unknown_source_is_a_usage_error(capsys, source):
    _, write = source
    code, _, err = run(capsys, "--config", str(write()), "retention", "plan", "--source", "nope")
    assert code == 2 and "unknown source 'nope' (configured: trixtech-db)" in err
