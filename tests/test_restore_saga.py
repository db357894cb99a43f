"""The replace saga (issue 9.16, 9.17): whatever stops the switch, the application ends on its old
database with its replicas.

The application is a file-backed platform (tests/_saga_helpers.py) so that a switch running in a
child process can be killed with SIGKILL mid-step and the rollback -- as the DAG's rollback task
runs it, from the journal alone -- acts on the same application; Kubernetes is the recording
stand-in of tests/_restore_helpers.py, which fails any call made without a request timeout.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

import airflow_env  # noqa: F401  (Airflow's exceptions are BaseExceptions the saga must survive)
from _restore_helpers import Deployment, FakeCluster
from _saga_helpers import (KINDS, NEW_DB, OLD, OLD_DB, REPLICAS, Fault, FilePlatform, killed_switch,
                           switch_calls)
from airflow.sdk.exceptions import AirflowTaskTimeout
from backupkit import masking
from backupkit.config import AppSwitch
from backupkit.restore.conninfo import setting_database
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.kubernetes.runtime import KubernetesAppPlatform
from backupkit.restore.rollback import Retry, RollbackIncomplete, finish_unfinished, sagas
from backupkit.restore.switch import SagaLog, SwitchFailed, SwitchPlan, plan_switch, switch_database

FAST = Retry(attempts=4, backoff=0.0, sleep=lambda s: None)


def plan_for(p) -> SwitchPlan:
    return plan_switch(p, namespace="trixtech", deployments=["api", "worker"], old_database=OLD_DB,
                       new_database=NEW_DB)


def actions(journal: RestoreJournal, run_id: str) -> list[str]:
    return [r["action"] for r in journal.records() if r["run_id"] == run_id]


def back_as_before(p: FilePlatform) -> bool:
    st = p.state()
    return st["replicas"] == REPLICAS and st["urls"] == OLD


@pytest.fixture
def journal(tmp_path):
    return RestoreJournal(tmp_path / "state")


# -- the forward switch --------------------------------------------------------------------------
def test_a_switch_journals_every_step_before_taking_it(tmp_path, journal):
    p = FilePlatform.create(tmp_path / "app.json")
    out = switch_database(p, plan_for(p), log=SagaLog(journal, "run-ok", "trixtech-db"), timeout=5,
                          health_checks=[p.health], retry=FAST)
    st = p.state()
    assert st["replicas"] == REPLICAS and {d: setting_database(u) for d, u in st["urls"].items()} == \
        {"api": NEW_DB, "worker": NEW_DB}
    assert st["urls"]["worker"] == OLD["worker"].replace(f"dbname={OLD_DB}", f"dbname={NEW_DB}")  # the rest intact
    recs = [r for r in journal.records() if r["run_id"] == "run-ok"]
    assert [r["action"] for r in recs] == ["switch_planned"] + ["switch_step"] * 11 + ["switch_done"]
    assert recs[0]["plan"]["replicas"] == REPLICAS  # recorded before the first change
    # each step is journaled before the platform sees it: the journal's n-th step is the n-th change
    steps = [(r["step"], r["target"]) for r in recs if r["action"] == "switch_step"]
    assert steps[:2] == [("scale_down", "api"), ("scale_down", "worker")] and steps[-1] == ("health_check", "1")
    text = json.dumps(recs) + json.dumps(out)
    assert "s3cret" not in text and "it\\'s" not in text  # passwords never reach the journal or the result


def test_the_secrets_of_the_settings_read_are_given_to_the_masker(tmp_path):
    seen: list[str] = []
    masking.register_masker(seen.append)
    plan_for(FilePlatform.create(tmp_path / "app.json"))
    assert "s3cret#x" in seen and "s3cret%23x" in seen and "it's s3cret" in seen


@pytest.mark.parametrize("call", switch_calls())
@pytest.mark.parametrize("kind", ["error", "timeout", "task_timeout", "terminated"])
def test_whatever_fails_at_whichever_step_the_application_is_put_back(call, kind, tmp_path, journal):
    p = FilePlatform.create(tmp_path / "app.json", faults=[Fault(call, kind)])
    plan = plan_for(p)
    with pytest.raises(BaseException) as err:
        switch_database(p, plan, log=SagaLog(journal, "run-1", "trixtech-db"), timeout=5,
                        health_checks=[p.health], retry=FAST)
    if kind in ("error", "timeout"):
        assert isinstance(err.value, SwitchFailed) and "rolled back" in str(err.value)
    else:  # a task timeout or kill is raised again, after the rollback
        assert not isinstance(err.value, Exception)
    assert back_as_before(p), p.state()
    assert actions(journal, "run-1")[-1] == "rollback_done"
    assert [s for s in sagas(journal) if not s.finished] == []


def test_two_transient_errors_in_a_row_during_the_rollback_are_retried(tmp_path, journal):
    p = FilePlatform.create(tmp_path / "app.json", healthy={OLD["api"], OLD["worker"]}, faults=[
        Fault(("wait", "api", 3), "timeout"),  # the switch fails after the scale-up ...
        Fault(("write", "api"), "error", times=2, skip=1),  # ... and its rollback meets two errors in a row, twice
        Fault(("scale", "worker", 2), "error", times=2, skip=1)])
    slept: list[float] = []
    with pytest.raises(SwitchFailed, match="rolled back"):
        switch_database(p, plan_for(p), log=SagaLog(journal, "r", "trixtech-db"), timeout=5,
                        retry=Retry(attempts=5, backoff=0.5, sleep=slept.append))
    assert back_as_before(p)
    assert slept == [0.5, 1.0, 0.5, 1.0]  # exponential backoff per step
    failed = [r for r in journal.records() if r["action"] == "rollback_step" and r["phase"] == "failed"]
    assert [(r["step"], r["attempt"]) for r in failed] == [("restore_setting", 1), ("restore_setting", 2),
                                                           ("scale_back", 1), ("scale_back", 2)]


def test_never_scale_up_on_a_setting_that_could_not_be_restored(tmp_path, journal):
    """Killed (a task timeout) after the setting was switched and before the scale-up; the setting
    cannot be written back: the application stays down, and the outcome says exactly so."""
    p = FilePlatform.create(tmp_path / "app.json", faults=[Fault(("scale", "api", 3), "task_timeout"),
                                                           Fault(("write",), "error", times=1000, skip=2)])
    with pytest.raises(AirflowTaskTimeout):
        switch_database(p, plan_for(p), log=SagaLog(journal, "r2", "trixtech-db"), timeout=5, retry=FAST)
    assert p.state()["replicas"] == {"api": 0, "worker": 0}  # not scaled up on the new database
    last = [r for r in journal.records() if r["run_id"] == "r2"][-1]
    assert last["action"] == "rollback_failed" and "not scaled up" in last["detail"]
    assert "api at 0 replicas (recorded 3)" in last["state"]
    assert f"deployment/api/app on database {NEW_DB!r}" in last["state"]
    # The API works again: the rollback task finishes it.
    healthy = FilePlatform(tmp_path / "app.json")
    finish_unfinished(journal, lambda: healthy, runs=["r2"], by="rollback-task", timeout=5, retry=FAST)
    assert back_as_before(healthy)


# -- recovery from outside: killed mid-switch ------------------------------------------------------
@pytest.mark.parametrize("call", [("scale", "worker", 0), ("write", "api"), ("write", "worker"), ("scale", "api", 3),
                                  ("wait", "worker", 2), ("health",)])
def test_a_switch_killed_mid_step_is_finished_by_the_rollback_task(call, tmp_path, journal):
    state = tmp_path / "app.json"
    FilePlatform.create(state)
    assert killed_switch(state, journal.path.parent.parent, "run-k", call) < 0  # died by the signal
    pending = [s for s in sagas(journal) if not s.finished]
    assert [s.run_id for s in pending] == ["run-k"] and pending[0].plan.replicas == REPLICAS
    p = FilePlatform(state)
    done = finish_unfinished(journal, lambda: p, runs=["run-k"], by="rollback-task", timeout=5,
                             health_checks=[p.health], retry=FAST)
    assert [o.ok for _, o in done] == [True] and back_as_before(p)
    assert actions(journal, "run-k")[-1] == "rollback_done"
    assert finish_unfinished(journal, lambda: p, by="next-run", timeout=5) == []  # nothing left to do


def test_the_next_run_finishes_what_a_failed_rollback_left(tmp_path, journal):
    state = tmp_path / "app.json"
    FilePlatform.create(state)
    killed_switch(state, journal.path.parent.parent, "run-old", ("scale", "api", 3))
    broken = FilePlatform(state, faults=[Fault(("write",), "error", times=1000)])
    with pytest.raises(RollbackIncomplete, match="ROLLBACK INCOMPLETE.*not scaled up"):
        finish_unfinished(journal, lambda: broken, runs=["run-old"], by="rollback-task", timeout=5, retry=FAST)
    assert broken.state()["replicas"] == {"api": 0, "worker": 0}  # left down: the setting is on the new db
    p = FilePlatform(state)  # the API works again: the next run's first task
    done = finish_unfinished(journal, lambda: p, skip_runs=["run-new"], by="run-new", timeout=5, retry=FAST)
    assert [s.run_id for s, _ in done] == ["run-old"] and back_as_before(p)


# -- fifty injected runs ----------------------------------------------------------------------------
def test_fifty_injected_runs_none_left_at_zero(tmp_path):
    """Hangs (killed), request timeouts, task timeouts and kills, API errors, at random steps, with
    transient errors during the rollback too: every run ends on the old database with its replicas."""
    rnd = random.Random(20250301)
    left_down = []
    for i in range(50):
        journal, state = RestoreJournal(tmp_path / f"s{i}"), tmp_path / f"app{i}.json"
        FilePlatform.create(state)
        call, kind = rnd.choice(switch_calls()), rnd.choice(KINDS)
        run_id = f"run-{i}"
        flaky = [Fault(rnd.choice([("write",), ("scale",), ("wait",), ("read",)]), rnd.choice(["error", "timeout"]),
                       times=rnd.randint(1, 2))]
        if kind == "hang":
            killed_switch(state, tmp_path / f"s{i}", run_id, call)
        else:
            p = FilePlatform(state, faults=[Fault(call, kind)])
            plan = plan_for(p)
            p.faults += flaky  # transient errors during the rollback in the same process
            with pytest.raises(BaseException):
                switch_database(p, plan, log=SagaLog(journal, run_id, "trixtech-db"), timeout=5,
                                health_checks=[p.health], retry=FAST)
        rollback_task = FilePlatform(state, faults=[replace(f) for f in flaky])
        finish_unfinished(journal, lambda: rollback_task, runs=[run_id], by="rollback-task", timeout=5,
                          health_checks=[rollback_task.health], retry=FAST)
        st = FilePlatform(state).state()
        if st["replicas"] != REPLICAS or st["urls"] != OLD:
            left_down.append((i, call, kind, st))
        assert actions(journal, run_id)[-1] == "rollback_done", (i, call, kind)
    assert left_down == []


# -- Kubernetes: every call with a request timeout, hangs and errors injected -------------------------
def k8s(cluster: FakeCluster) -> KubernetesAppPlatform:
    ticks = iter(range(10_000))
    return KubernetesAppPlatform(cluster, cluster, AppSwitch(namespace="trixtech", deployments=("api", "worker")),
                                 sleep=lambda s: None, clock=lambda: float(next(ticks)), request_timeout=(0.05, 0.05))


def k8s_cluster() -> FakeCluster:
    return FakeCluster(namespace="trixtech", deployments={
        "api": Deployment(3, {"DATABASE_URL": OLD["api"]}), "worker": Deployment(2, {"DATABASE_URL": OLD["api"]})})


@pytest.mark.parametrize("hang", ["patch_namespaced_deployment_scale", "patch_namespaced_deployment",
                                  "read_namespaced_deployment"])
def test_a_hung_kubernetes_call_times_out_and_the_switch_rolls_back(hang, journal):
    cluster = k8s_cluster()
    p = k8s(cluster)
    plan = plan_switch(p, namespace="trixtech", deployments=["api", "worker"], old_database=OLD_DB,
                       new_database=NEW_DB)
    cluster.hang[hang] = 1
    cluster.flaky["patch_namespaced_deployment"] = [RuntimeError("503"), RuntimeError("503")]  # and two errors
    with pytest.raises(SwitchFailed, match="rolled back"):
        switch_database(p, plan, log=SagaLog(journal, "k", "trixtech-db"), timeout=5, retry=FAST)
    assert {n: (d.replicas, d.env["DATABASE_URL"]) for n, d in cluster.deployments.items()} == {
        "api": (3, OLD["api"]), "worker": (2, OLD["api"])}
    assert cluster.timeouts and all(t == (0.05, 0.05) for _, t in cluster.timeouts)  # every call had one
