"""Golden files: our policy engine against restic's own code, case by case.

``tests/golden/retention_input.json`` holds timestamps (as restic stores them: RFC 3339 with
the host zone's offset) and policies; ``retention_expected.json`` what restic's
``ApplyPolicy`` keeps and why, computed by restic's ``snapshot_policy.go`` itself with ``TZ``
set to the policy's zone, once, outside this repository (no restic code or build recipe is kept here). Cases cover GFS with
gaps, intra-day backups, DST changes in Berlin, New York and Auckland (hourly buckets across
the fold, keep_within across the change), ISO week 53, restic's oldest-snapshot clause and
Go's month overflow.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backupkit.config import RetentionPolicy
from backupkit.retention.plan import Candidate
from backupkit.retention.policy import apply_policy

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = json.loads((GOLDEN / "retention_input.json").read_text())
EXPECTED = json.loads((GOLDEN / "retention_expected.json").read_text())
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)  # after every case (restic took its own clock)


def table(case: dict) -> dict[str, list[str]]:
    """time -> reasons of every kept backup, in restic's words (our "k/n" counters dropped)."""
    items = [Candidate(t, datetime.fromisoformat(t), "passed") for t in case["times"]]
    outcome = apply_policy(items, RetentionPolicy(timezone=case["zone"], **case["policy"]), now=NOW)
    return {name: [re.sub(r" \d+/\d+$", "", r) for r in keep.reasons] for name, keep in sorted(outcome.kept.items())}


def test_every_golden_case_has_restics_answer():
    assert [c["id"] for c in CASES] == list(EXPECTED)
    assert sum(len(c["times"]) for c in CASES) > 1500  # a table worth the name
    kept = sum(len(v) for v in EXPECTED.values())
    assert 0 < kept < sum(len(c["times"]) for c in CASES)  # both keep and delete occur


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_keep_delete_table_equals_restics(case):
    expected = EXPECTED[case["id"]]
    got = table(case)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"kept by restic only: {missing[:5]}; by us only: {extra[:5]}"
    assert got == expected
