"""GET /backup-health/api/sources at sandbox scale: cached answers against recomputing every time.

Builds the sandbox's history (``--nights``, default 400, of every configured source: real pg_dump
and tar.gz, copies in moto's S3), runs the daily checks once for real, then asks Airflow's own API
app (``create_app`` with the plugin, the simple auth manager, a bearer token from POST /auth/token)
through FastAPI's TestClient, alternating rounds:

* cached: the plugin's service as shipped (stat the inputs, reuse the facts, judge against now);
* baseline: the same service forced to recompute (S3 listing, catalog, dry retention plan,
  histories) on every request -- what the endpoint would cost without the cache.

Prints p50/p95 of each, their ratio, the cold first request and the cost of the stat pass alone.
Goal: cached p95 <= 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO), str(REPO / "tests")]

import airflow_env  # noqa: E402  (a throwaway AIRFLOW_HOME before airflow is imported)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cached-per-round", type=int, default=40)
    ap.add_argument("--baseline-per-round", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="60 nights, 3 rounds (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.nights, args.rounds, args.cached_per_round = 60, 3, 20

    import pytest

    from _clock import SESSION_NOW
    from _health_helpers import build
    from backupkit.pgserver import LocalPostgres
    from sandbox.bookingdb import create_booking_db
    from sandbox.s3server import REGION, SANDBOX_KEY, SANDBOX_SECRET, MotoServer

    os.environ.update(AWS_ACCESS_KEY_ID=SANDBOX_KEY, AWS_SECRET_ACCESS_KEY=SANDBOX_SECRET, AWS_DEFAULT_REGION=REGION)
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    pg = LocalPostgres(work / "pg")
    pg.start()
    moto = MotoServer().start()
    try:
        create_booking_db(pg, "trixtech", scale=2000)
        t0 = time.perf_counter()
        hs = build(pg, moto, work / "sandbox", pytest.MonkeyPatch(), days=args.nights, database="trixtech", now=SESSION_NOW)
        objects = sum(1 for s in hs.config.sources for _ in hs.bucket.objects(s.s3_prefix))
        print(f"history: {args.nights} nights x {len(hs.config.sources)} sources, {objects} S3 objects "
              f"(built and verified in {time.perf_counter() - t0:.0f} s)")
        run(hs, args)
    finally:
        pg.destroy()
        moto.stop()


def run(hs, args) -> None:
    from fastapi.testclient import TestClient

    from backup_airflow.health import app as health_app
    from backupkit.health_cache import HealthService, fingerprint

    passwords = Path(tempfile.mkdtemp()) / "passwords.json"
    passwords.write_text(json.dumps({"viewer": "viewer-pw"}))
    os.environ.update({"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer",
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                       "AIRFLOW__API_AUTH__JWT_SECRET": "bench-" + "x" * 64,
                       "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    airflow_env.ensure_db()
    from airflow.api_fastapi.app import create_app

    cached = HealthService(lambda c: hs.bucket, config_path=hs.config.path)
    baseline = HealthService(lambda c: hs.bucket, config_path=hs.config.path, s3_ttl=0)
    with TestClient(create_app()) as client:
        tok = client.post("/auth/token", json={"username": "viewer", "password": "viewer-pw"}).json()["access_token"]
        headers = {"Authorization": f"Bearer {tok}"}

        def timed(svc) -> float:
            health_app.use_service(svc)
            t = time.perf_counter()
            r = client.get("/backup-health/api/sources", headers=headers)
            elapsed = time.perf_counter() - t
            assert r.status_code == 200 and len(r.json()["sources"]) == len(hs.config.sources), r.text[:300]
            return elapsed

        cold = timed(cached)
        warm, base = [], []
        for _ in range(args.rounds):
            warm += [timed(cached) for _ in range(args.cached_per_round)]
            for _ in range(args.baseline_per_round):
                baseline.invalidate()
                base.append(timed(baseline))
        size = len(client.get("/backup-health/api/sources", headers=headers).content)
    t = time.perf_counter()
    for _ in range(20):
        fingerprint(hs.config)
    stat_pass = (time.perf_counter() - t) / 20
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    print(f"cached:   n={len(warm)} p50 {ms(statistics.median(warm))} p95 {ms(pct(warm, 0.95))} "
          f"max {ms(max(warm))}  (recomputed {cached.refreshes - 1} times after the cold request)")
    print(f"baseline: n={len(base)} p50 {ms(statistics.median(base))} p95 {ms(pct(base, 0.95))} (recompute, S3 listing)")
    print(f"cold first request {ms(cold)}; stat pass alone {ms(stat_pass)}; response {size / 1024:.0f} KiB")
    print(f"ratio baseline/cached p95: {pct(base, 0.95) / pct(warm, 0.95):.1f}x; "
          f"goal cached p95 <= 200 ms: {'met' if pct(warm, 0.95) <= 0.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
