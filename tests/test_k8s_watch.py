"""Contract tests of the waits by watch (backupkit.restore.kubernetes.waiting) through the real client
against the HTTP API of tests/_kube_api.py: list, then watch from the list's resourceVersion; a watch
that ends is resumed from the last version seen; 410 (status or ERROR event) lists again; the deadline
holds when nothing comes; 429 on a watch waits for Retry-After; a refused watch falls back to polling.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import replace

import pytest

from _kube_api import Fault, PodScript
from backupkit.restore.kubernetes import waiting
from backupkit.restore.scratch import ScratchError
from test_k8s_contract import APP_NS, NS, SETTINGS, api, clients, platform, scratch  # noqa: F401 (fixtures)

CREATING = PodScript(phase="Pending", waiting=("ContainerCreating", ""))
STARTED = PodScript(phase="Running", ip="10.1.2.3")  # running, not ready yet
READY = PodScript(phase="Running", ready=True, ip="10.1.2.3")



def listed_version(api, index=0) -> str:
    """The resourceVersion the watch after the ``index``-th list started from."""
    return api.watches[index]["query"]["resourceVersion"]


def test_a_pod_becomes_ready_through_watch_events(api, clients):
    core, _ = clients
    s = scratch(core)
    api.pod_timelines[s.pod_name] = [CREATING, STARTED, READY]  # one state per kubelet step
    s.start()
    assert s.pod_ip == "10.1.2.3"
    (w,) = api.watches
    q = w["query"]
    assert q["fieldSelector"] == f"metadata.name={s.pod_name}" and q["allowWatchBookmarks"] == "True"
    assert 1 <= int(q["timeoutSeconds"]) <= waiting.WATCH_WINDOW
    # The watch starts where the list left off: the versions it sent are all newer, and the last is READY.
    assert int(q["resourceVersion"]) < int(w["sent"][0])
    last = next(o for v, _, r, o in api.changes if str(v) == w["sent"][-1])
    assert last["status"]["containerStatuses"][0]["ready"] is True
    assert [r[:2] for r in api.requests].count(("get", "pods")) == 0  # no polling
    s.teardown()


@pytest.mark.parametrize("cut", [False, True], ids=["closed", "connection-dropped"])
def test_a_watch_that_ends_midway_is_resumed_from_the_last_version(api, clients, cut):
    """The server ends every watch after one event (a restart, a load balancer): each new watch starts
    from the version of the last event seen, so no event is sent twice and none is skipped."""
    core, _ = clients
    s = scratch(core)
    api.watch_end_after, api.watch_cut = 1, cut
    api.pod_timelines[s.pod_name] = [CREATING, CREATING, STARTED, READY]
    s.start()
    assert s.pod_ip == "10.1.2.3"
    assert [r[:2] for r in api.requests].count(("list", "pods")) == 1  # resumed, never re-listed
    sent = [v for w in api.watches for v in w["sent"]]
    assert len(sent) == len(set(sent)) == len(api.watches) >= 2
    for before, after in zip(api.watches, api.watches[1:]):
        assert after["query"]["resourceVersion"] == before["sent"][-1]
    pod_changes = [str(v) for v, _, r, o in api.changes if r == "pods" and o["metadata"]["name"] == s.pod_name
                   and int(v) > int(listed_version(api))]
    assert sent == pod_changes[:len(sent)]  # every change after the list, in order
    s.teardown()


@pytest.mark.parametrize("expired_as", ["event", "status"])
def test_410_expired_relists_then_watches_again(api, clients, expired_as):
    """etcd compacted the listed version before the watch: the API server answers 410 as an ERROR event
    (watch cache) or as the HTTP status; both are the client's ApiException(410): list again."""
    core, _ = clients
    s = scratch(core)
    api.expired_as, api.compact_before_watch = expired_as, 1
    api.pod_timelines[s.pod_name] = [CREATING, STARTED, READY]
    s.start()
    assert s.pod_ip == "10.1.2.3"
    assert [r[:2] for r in api.requests if r[1] == "pods"][1:5] == [("list", "pods"), ("watch", "pods"),
                                                                   ("list", "pods"), ("watch", "pods")]
    first, second = api.watches[:2]
    assert first["expired"] == expired_as and first["sent"] == [] and second["expired"] is None
    assert int(second["query"]["resourceVersion"]) > int(first["query"]["resourceVersion"])
    s.teardown()


def test_the_deadline_holds_when_no_event_ever_comes(api, clients):
    core, _ = clients
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=1.0))
    api.pod_scripts[s.pod_name] = CREATING  # no change, so no event, ever
    t0 = time.monotonic()
    with pytest.raises(ScratchError, match=r"not ready after 1s \(phase Pending.*ContainerCreating"):
        s.start()
    assert time.monotonic() - t0 < 4
    assert all(w["query"]["timeoutSeconds"] == "1" for w in api.watches)  # never past the deadline
    s.teardown()


def test_the_deadline_is_the_injected_clocks(api, clients):
    """Time is an input: once the injected clock is past the deadline, the wait ends after the list
    (the last state judged), without a watch and without real waiting."""
    core, _ = clients
    ticks = iter([0.0])
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=300), clock=lambda: next(ticks, 301.0))
    api.pod_scripts[s.pod_name] = CREATING
    t0 = time.monotonic()
    with pytest.raises(ScratchError, match=r"not ready after 300s \(phase Pending"):
        s.start()
    assert time.monotonic() - t0 < 5 and api.watches == []
    s.teardown()


def test_a_watch_that_never_answers_is_cut_at_the_deadline(api, clients):
    """The API server takes the watch and says nothing (not even its headers): the client's read
    timeout, never longer than the time left, ends it."""
    core, _ = clients
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=0.5))
    api.pod_scripts[s.pod_name] = CREATING
    api.faults.append(Fault("watch", "pods", hang=10.0, times=5))
    t0 = time.monotonic()
    with pytest.raises(ScratchError, match=r"not ready after 0.5s"):
        s.start()
    assert time.monotonic() - t0 < 3
    s.teardown()


def test_429_on_a_watch_waits_for_retry_after_then_watches_again(api, clients):
    core, _ = clients
    waits = []
    s = scratch(core, sleep=waits.append)
    api.faults.append(Fault("watch", "pods", status=429, reason="TooManyRequests", headers={"Retry-After": "3"}))
    api.pod_timelines[s.pod_name] = [CREATING, READY]
    s.start()
    assert waits == [3.0] and s.pod_ip == "10.1.2.3"
    assert [r[:2] for r in api.requests].count(("watch", "pods")) == 2
    s.teardown()


def test_a_watch_that_keeps_failing_ends_the_wait_with_the_cause(api, clients):
    core, _ = clients
    s = scratch(core, sleep=lambda _: None)
    api.faults.append(Fault("watch", "pods", status=503, reason="ServiceUnavailable", times=10))
    api.pod_timelines[s.pod_name] = [CREATING, READY]
    with pytest.raises(waiting.WatchFailed, match=r"4 failures in a row, the last: 503 ServiceUnavailable"):
        s.start()
    s.teardown()


def test_a_refused_watch_falls_back_to_polling(api, clients):
    """A Role from before the waits watched (no ``watch`` verb): 403 on the watch, the wait polls."""
    core, _ = clients
    s = scratch(core, sleep=lambda _: None)
    api.faults.append(Fault("watch", "pods", status=403, reason="Forbidden"))
    api.pod_timelines[s.pod_name] = [CREATING, STARTED, READY]
    s.start()
    assert s.pod_ip == "10.1.2.3"
    assert [r[:2] for r in api.requests].count(("watch", "pods")) == 1
    assert [r[:2] for r in api.requests].count(("get", "pods")) >= 1
    s.teardown()


def test_a_pod_deleted_while_awaited_is_reported_at_once(api, clients):
    core, _ = clients
    s = scratch(core, replace(SETTINGS, ready_timeout_seconds=30))
    api.pod_scripts[s.pod_name] = CREATING
    api.pod_timelines[s.pod_name] = [CREATING]
    original = api._controllers

    def kubelet_then_delete(resource, ns):  # someone deletes the pod once the watch runs
        original(resource, ns)
        if api.get("pods", NS, s.pod_name) is not None:
            api._delete("pods", None, NS, s.pod_name, {}, None, "")

    api._controllers = kubelet_then_delete
    t0 = time.monotonic()
    with pytest.raises(ScratchError, match="is gone"):
        s.start()
    assert time.monotonic() - t0 < 10
    s.teardown()


def test_a_deployment_scale_up_is_judged_ready_only_when_every_replica_is(api, clients):
    core, apps = clients
    api.deployment(APP_NS, "trixtech-backend", replicas=0, env={"DATABASE_URL": "postgresql://db/app"})
    api.rollout_step = 1  # one more replica ready per controller step
    p = platform(core, apps)
    p.scale(APP_NS, "trixtech-backend", 3)
    p.wait_for_replicas(APP_NS, "trixtech-backend", 3, timeout=10)
    (w,) = [w for w in api.watches if "trixtech-backend" in w["query"]["fieldSelector"]]
    seen = [o["status"]["readyReplicas"] for v, _, r, o in api.changes if str(v) in w["sent"]]
    assert seen[-1] == 3 and all(n < 3 for n in seen[:-1]) and len(seen) >= 2  # stopped at the first 3/3
    assert api.get("deployments", APP_NS, "trixtech-backend")["status"]["readyReplicas"] == 3


def test_a_scale_down_that_never_settles_times_out_with_the_state(api, clients):
    core, apps = clients
    api.deployment(APP_NS, "trixtech-backend", replicas=2, env={})
    p = platform(core, apps)  # the deployment still wants 2: waiting for 0 can only time out
    with pytest.raises(TimeoutError, match=r"deployment trixtech/trixtech-backend: 2/0 ready, 2 pods.* after 0.5s"):
        p.wait_for_replicas(APP_NS, "trixtech-backend", 0, timeout=0.5)
    assert ("watch", "deployments") in api.verbs()


@pytest.mark.parametrize("junk", [b"not json at all", b"", b'{"type": "ERROR", "object": {"kind": "Status"}}',
                                  b'{"type": "ERROR", "object": null}'])
def test_a_hostile_watch_line_is_skipped_or_counted_never_a_traceback(api, clients, junk):
    """A line that is not JSON is skipped (the client yields nothing for it); an ERROR event without
    its Status ends that watch like a broken connection; the wait still gets the pod ready."""
    core, _ = clients
    s = scratch(core, sleep=lambda _: None)
    api.watch_junk = [junk]
    api.pod_timelines[s.pod_name] = [CREATING, STARTED, READY]
    s.start()
    assert s.pod_ip == "10.1.2.3"
    s.teardown()


def _mutations(line: bytes, rng: random.Random, n: int) -> list[bytes]:
    """Seeded mutations of a real watch line: truncations, flipped bytes, fields of the wrong type."""
    event = json.loads(line)
    out = [line[:rng.randrange(1, len(line))] for _ in range(n // 3)]
    for _ in range(n // 3):
        b = bytearray(line)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    wrong = [None, 5, "x", [], {}, True, -1]
    paths = [("object", "status"), ("object", "status", "containerStatuses"), ("object", "status", "phase"),
             ("object", "metadata"), ("object", "metadata", "resourceVersion"), ("object",), ("type",)]
    for _ in range(n - len(out)):
        e = copy.deepcopy(event)
        path = rng.choice(paths)
        node = e
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[path[-1]] = rng.choice(wrong)
        if rng.random() < 0.5 and isinstance(e.get("object"), dict):
            for cs in ((e["object"].get("status") or {}).get("containerStatuses") or []):
                if isinstance(cs, dict):
                    cs.pop(rng.choice(["name", "image", "ready", "restartCount"]), None)
        out.append(json.dumps(e).encode())
    return out


def test_fuzz_watch_lines_are_verdicts_never_tracebacks(api, clients):
    """Seeded mutations of a real MODIFIED line (bounded: 24 cases): every wait ends with the pod's
    IP (the junk was skipped or survived) or a ScratchError/WatchFailed naming the pod."""
    core, _ = clients
    s = scratch(core, sleep=lambda _: None)
    api.pod_timelines[s.pod_name] = [READY]
    s.start()
    (line,) = [json.dumps({"type": "MODIFIED", "object": o}).encode()
               for v, _, r, o in api.changes if r == "pods" and o["status"].get("podIP")][-1:]
    s.teardown()
    for junk in _mutations(line, random.Random(13), 24):
        api.watch_junk = [junk]
        s = scratch(core, replace(SETTINGS, ready_timeout_seconds=3), sleep=lambda _: None)
        api.pod_timelines[s.pod_name] = [CREATING, READY]
        try:
            s.start()
            assert s.pod_ip == "10.1.2.3"
        except (ScratchError, waiting.WatchFailed) as exc:
            assert s.pod_name in str(exc), junk
        finally:
            s.teardown()
