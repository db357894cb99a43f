"""Choosing the backup to restore: pure and table-tested."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backupkit.model import Backup, LocalCopy
from backupkit.naming import NamePattern
from backupkit.restore.selection import SelectionError, check_key, random_older, select_backup

UTC = timezone.utc
PATTERN = NamePattern("trixtech_%Y%m%d_%H%M%S.dump")
PREFIXES = ("database/",)


def backup(y, mo, d, h=2):
    ts = datetime(y, mo, d, h, tzinfo=timezone.utc)
    name = PATTERN.name_for(ts)
    return Backup("trixtech-db", name, ts, LocalCopy(Path("/opt/backups/database") / name, 1000))


# Deliberately unsorted: selection must not rely on the order it is given.
BACKUPS = [backup(2025, 3, 2), backup(2025, 2, 28), backup(2025, 3, 1), backup(2025, 3, 1, 14), backup(2025, 1, 15)]


@pytest.mark.parametrize("kwargs, expected", [
    (dict(which="latest"), "trixtech_20250302_020000.dump"),
    (dict(which="latest_before", before=datetime(2025, 3, 1, 12, tzinfo=UTC)), "trixtech_20250301_020000.dump"),
    (dict(which="latest_before", before=datetime(2025, 3, 1, 14, tzinfo=UTC)), "trixtech_20250301_020000.dump"),
    (dict(which="latest_before", before=datetime(2025, 3, 1, 14, 0, 1, tzinfo=timezone.utc)),
     "trixtech_20250301_140000.dump"),
    (dict(which="latest_before", before=datetime(2025, 3, 1, 12)), "trixtech_20250301_020000.dump"),  # naive = UTC
    (dict(which="latest_before", before=datetime(2025, 3, 1, 13, tzinfo=timezone(timedelta(hours=-2)))),
     "trixtech_20250301_140000.dump"),  # 13:00-02:00 is 15:00 UTC
    (dict(which="latest_before", before=datetime(2030, 1, 1, tzinfo=timezone.utc)), "trixtech_20250302_020000.dump"),
    (dict(which="key", key="database/trixtech_20250228_020000.dump"), "trixtech_20250228_020000.dump"),
])
def test_selection(kwargs, expected):
    chosen = select_backup(BACKUPS, allowed_prefixes=PREFIXES, source="trixtech-db", pattern=PATTERN, **kwargs)
    assert chosen.name == expected
    assert chosen in BACKUPS


@pytest.mark.parametrize("kwargs, words", [
    (dict(which="newest"), "unknown choice 'newest'"),
    (dict(which="latest_before"), "needs a time"),
    (dict(which="latest_before", before=datetime(2025, 1, 15, 2, tzinfo=timezone.utc)),
     "no backup of source 'trixtech-db' before 2025-01-15T02:00:00Z (the oldest is trixtech_20250115_020000.dump"),
    (dict(which="key"), "needs a key"),
    (dict(which="key", key="files/trixtech_20250228_020000.dump"), "outside the configured prefixes 'database/'"),
    (dict(which="key", key="/database/trixtech_20250228_020000.dump"), "malformed key"),
    (dict(which="key", key="database/../files/x.tar.gz"), "malformed key"),
    (dict(which="key", key="database//trixtech_20250228_020000.dump"), "malformed key"),
    (dict(which="key", key=" database/trixtech_20250228_020000.dump"), "malformed key"),
    (dict(which="key", key="database/trixtech_20250228_020000.dump\n"), "malformed key"),
    (dict(which="key", key="s3://trixtech-backups/database/trixtech_20250228_020000.dump"), "not an s3:// URI"),
    (dict(which="key", key="database/sub/trixtech_20250228_020000.dump"), "not directly under"),
    (dict(which="key", key="database/notes.txt"), "does not match the backup name pattern"),
    (dict(which="key", key="database/trixtech_20240228_020000.dump"), "no backup 'trixtech_20240228_020000.dump'"),
])
def test_selection_errors_are_clear(kwargs, words):
    with pytest.raises(SelectionError) as err:
        select_backup(BACKUPS, allowed_prefixes=PREFIXES, source="trixtech-db", pattern=PATTERN, **kwargs)
    assert words in str(err.value)


def test_no_backups_at_all():
    for which in ("latest", "latest_before"):
        with pytest.raises(SelectionError, match="source 'x' has no backups"):
            select_backup([], which=which, before=datetime(2025, 1, 1), source="x")


def test_prefix_without_slash_and_no_prefixes_configured():
    assert check_key("database/a.dump", ["database"]) == ("database/", "a.dump")
    with pytest.raises(SelectionError, match="none configured"):
        check_key("database/a.dump", [])
    with pytest.raises(SelectionError, match="outside"):
        check_key("databases/a.dump", ["database"])  # a prefix is a folder, not a string prefix


NOW = datetime(2025, 3, 3, 9, tzinfo=timezone.utc)
DAILY = [Backup("s", f"b{i}", NOW - timedelta(days=i, hours=7), LocalCopy(Path(f"/b{i}"), 1)) for i in range(60)]


def test_random_older_stays_in_the_window_and_skips_the_newest():
    rng = random.Random(7)
    picks = Counter(random_older(DAILY, 30, NOW, rng).name for _ in range(3000))
    newest = max(DAILY, key=lambda b: b.timestamp)
    in_window = {b.name for b in DAILY if NOW - timedelta(days=30) <= b.timestamp and b is not newest}
    assert set(picks) == in_window  # every candidate is reachable, nothing else is
    assert len(in_window) == 29


def test_random_older_is_reproducible_with_the_same_seed_and_none_when_empty():
    a = [random_older(DAILY, 30, NOW, random.Random("run-1")).name for _ in range(3)]
    b = [random_older(DAILY, 30, NOW, random.Random("run-1")).name for _ in range(3)]
    assert a == b
    assert random_older(DAILY[:1], 30, NOW, random.Random(1)) is None  # only the newest
    assert random_older([], 30, NOW, random.Random(1)) is None
    assert random_older(DAILY, 0, NOW, random.Random(1)) is None
    old_only = [b for b in DAILY if b.timestamp < NOW - timedelta(days=40)]
    assert random_older(old_only, 30, NOW, random.Random(1)) is None
