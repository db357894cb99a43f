"""A Kubernetes API server for contract tests, over real HTTP on loopback: the real client talks to it.

Why not ``kmock`` (PyPI, 0.8): its emulator lists every object whatever the ``labelSelector``
(the orphan sweep's selector would go untested), merges a PATCH as plain dicts (a strategic
merge of ``env`` by name -- what the switch relies on -- cannot be observed), has no scale
subresource, no ``resourceVersion`` and no 410 for an expired watch; it is asyncio-only while the
``kubernetes`` client is synchronous; and its pytest plugin imports ``pytest_asyncio``, which the
lock does not have, at every pytest start. So this module speaks the API paths and JSON that
the project uses, with the API server's rules where they matter to the contract:

* paths ``/api/v1/namespaces/NS/{pods,secrets,events}[/NAME]`` and
  ``/apis/apps/v1/namespaces/NS/deployments[/NAME[/scale]]``; answers and errors as ``Status``
  objects (``reason`` AlreadyExists 409, NotFound 404, Invalid 422 with ``details.causes``);
* creates are validated against the official schema (``kubernetes-validate``, strict): what the
  API server would refuse, this refuses with 422; ``metadata`` gets uid, resourceVersion,
  creationTimestamp; a Secret's ``stringData`` becomes base64 ``data``; an immutable Secret's data
  cannot be patched (422);
* ``labelSelector`` (equality terms) and ``fieldSelector`` (``metadata.name``,
  ``involvedObject.name``) filter lists; PATCH honours the content type (strategic merge: lists of
  containers and env merge by ``name``; merge patch; a JSON patch must be a list);
* pods move Pending -> Running/ready after ``ready_after`` reads, unless a ``pod_script`` says
  otherwise (image pull back-off, unschedulable: with their events), and fail with
  ``DeadlineExceeded`` once ``activeDeadlineSeconds`` have passed, as the kubelet does;
* deployments: the scale subresource reads and writes ``spec.replicas``; status follows at once,
  ready only when ``healthy_with`` accepts the pods' ``DATABASE_URL``;
* ``watch=true`` streams ``{"type", "object"}`` lines (chunked) of the changes after
  ``resourceVersion`` that match the selectors, until ``timeoutSeconds``; without a version
  (or ``0``) it starts with an ADDED event per object, as the API server does. A version older
  than ``compacted_before`` (what etcd compaction removed) gets 410 ``Expired``: as an ERROR event
  with the Status (the watch cache's way) or, with ``expired_as = "status"``, as the HTTP status;
  ``allowWatchBookmarks`` gets a BOOKMARK with the current version when the watch times out;
  ``watch_end_after`` ends each watch after that many events (``watch_cut`` drops the connection
  without the closing chunk), as an API server restart or a load balancer does; every watch's
  query and the versions it sent are recorded (``watches``); ``watch_junk`` lines go first (hostile-server tests);
* controllers move on while someone watches: the kubelet's pods, and the deployment controller,
  which with ``rollout_step`` makes one more replica ready per step instead of all at once;
* faults (status, headers such as ``Retry-After``, or a hang) are injected per verb and resource;
* ``pods/NAME/portforward`` (tests/_kube_portforward.py) speaks the websocket port-forward protocol (v4.channel.k8s.io) and relays
  the port to a real TCP address of the test's choosing (``port_targets``), so a real PostgreSQL
  client can talk to a real server through the client library's port-forward.

Every request is recorded as (verb, resource[/subresource], namespace, name).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _kube_portforward import PortForwardMixin
from backupkit import clock
from backupkit.checks.k8smanifests import DEFAULT_VERSIONS, validate_object

PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>apps)/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>[a-z]+)"
                  r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")
PORT_FORWARD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/portforward$")
KINDS = {"pods": ("v1", "Pod"), "secrets": ("v1", "Secret"), "events": ("v1", "Event"),
         "deployments": ("apps/v1", "Deployment")}


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status`` (or hang ``hang`` seconds first)."""

    verb: str
    resource: str
    status: int = 500
    times: int = 1
    headers: dict = field(default_factory=dict)
    reason: str = "InternalError"
    hang: float = 0.0


@dataclass
class PodScript:
    """What the kubelet and scheduler do with a pod: its status and the events they record."""

    phase: str = "Pending"
    waiting: tuple[str, str] | None = None  # (reason, message) of the container
    conditions: list = field(default_factory=list)
    events: list = field(default_factory=list)  # (reason, message, type)
    ready: bool = False  # the containers' readiness (Running pods)
    ip: str | None = None  # status.podIP


def image_pull_back_off(image: str) -> PodScript:
    msg = f'Back-off pulling image "{image}"'
    return PodScript(waiting=("ImagePullBackOff", msg), events=[
        ("Pulling", f'Pulling image "{image}"', "Normal"),
        ("Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = manifest unknown', "Warning"),
        ("BackOff", msg, "Normal")])


def unschedulable() -> PodScript:
    msg = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available."
    return PodScript(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": msg}], events=[("FailedScheduling", msg, "Warning")])


def _now() -> str:
    """RFC 3339 in UTC, from the project's clock (the tests' session time), as the API server writes it."""
    return clock.now().astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge as the API server does it for the fields used here: dicts merge, lists of
    objects with a ``name`` (containers, env, ports) merge by name, other lists are replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for k, v in patch.items():
            out[k] = None if v is None else strategic_merge(target.get(k), v)
        return {k: v for k, v in out.items() if v is not None}
    if (isinstance(target, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                     for x in target + patch)):
        merged = {x["name"]: x for x in target}
        for x in patch:
            merged[x["name"]] = strategic_merge(merged.get(x["name"]), x)
        return list(merged.values())
    return copy.deepcopy(patch)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _selected(obj: dict, labels: str | None, fields: str | None) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (labels or "").split(",")):
        k, _, v = term.partition("=")
        if have.get(k) != v.lstrip("="):
            return False
    for term in filter(None, (fields or "").split(",")):
        k, _, v = term.partition("=")
        node: Any = obj
        for part in k.split("."):
            node = (node or {}).get(part) if isinstance(node, dict) else None
        if node != v:
            return False
    return True


def _flag(value: str | None) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool): the Python
    client sends ``watch=True``."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, headers: dict | None = None, causes=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.headers, self.causes = code, reason, message, headers or {}, causes


class KubeApi:
    """The server's state and rules; :meth:`serve` runs it on a loopback port."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str, str, str]] = []
        self.content_types: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.pod_scripts: dict[str, PodScript] = {}  # pod name -> script (absent: normal start)
        self.pod_timelines: dict[str, list[PodScript]] = {}  # pod name -> the next scripts, one per step
        self.compact_before_watch = 0  # the next N watches find history compacted up to their start
        self.port_targets: dict[tuple[str, str, int], tuple[str, int]] = {}  # (ns, pod, port) -> a real TCP address
        self.ready_after = 1  # reads of a pod before it is Running and ready
        self.healthy_with: set[str] | None = None  # DATABASE_URL values of pods that get ready (None: any)
        self.compacted_before = 0  # watches from an older resourceVersion get 410 Expired
        self.expired_as = "event"  # or "status": the 410 as the HTTP answer instead of an ERROR event
        self.watch_end_after: int | None = None  # events per watch before the server ends it
        self.watch_cut = False  # end it by dropping the connection (no closing chunk)
        self.watches: list[dict] = []  # {"query": ..., "sent": [resourceVersion of each event]}
        self.rollout_step: int | None = None  # ready replicas added per controller step (None: all)
        self.watch_junk: list[bytes] = []  # lines sent first by the next watch (hostile-server tests)
        self.rv = itertools.count(1000)
        self.changes: list[tuple[int, str, str, dict]] = []  # (rv, type, resource, object)
        self.lock = threading.Condition()
        self._reads: dict[str, int] = {}
        self._started: dict[str, float] = {}

    # -- helpers for tests ----------------------------------------------------------------
    def verbs(self) -> set[tuple[str, str]]:
        return {(verb, resource) for verb, resource, _, _ in self.requests}

    def add(self, resource: str, namespace: str, obj: dict) -> dict:
        with self.lock:
            return self._store(resource, namespace, copy.deepcopy(obj), "ADDED")

    def deployment(self, namespace: str, name: str, *, replicas: int, env: dict[str, str],
                   container: str = "app") -> dict:
        """A Deployment with a sidecar (no database variable) and the app container."""
        return self.add("deployments", namespace, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "sidecar", "image": "busybox", "env": [{"name": "LOG_LEVEL", "value": "info"}]},
                    {"name": container, "image": "trixtech/backend:1",
                     "env": [{"name": k, "value": v} for k, v in env.items()]}]}}}})

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((resource, namespace, name))

    def env_of(self, namespace: str, deployment: str, container: str = "app") -> dict[str, str]:
        dep = self.objects[("deployments", namespace, deployment)]
        (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == container]
        return {e["name"]: e.get("value") for e in c.get("env", [])}

    # -- state ------------------------------------------------------------------------------
    def compact(self) -> None:
        """What etcd compaction does: every version up to now is gone for watches."""
        with self.lock:
            self.compacted_before = next(self.rv)

    def _store(self, resource: str, ns: str, obj: dict, event: str, *, spec_changed: bool = True) -> dict:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(next(self.rv))
        if resource == "deployments" and spec_changed:
            meta["generation"] = int(meta.get("generation", 0)) + 1
        self.objects[(resource, ns, meta["name"])] = obj
        self.changes.append((int(meta["resourceVersion"]), event, resource, copy.deepcopy(obj)))
        self.lock.notify_all()
        return obj

    def _event(self, ns: str, pod: dict, reason: str, message: str, kind: str) -> None:
        name = f"{pod['metadata']['name']}.{reason.lower()}"
        if ("events", ns, name) not in self.objects:
            self._store("events", ns, {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
                                       "involvedObject": {"kind": "Pod", "name": pod["metadata"]["name"],
                                                          "namespace": ns},
                                       "reason": reason, "message": message, "type": kind, "count": 1}, "ADDED")

    def _pod_status(self, ns: str, pod: dict) -> None:
        """Advance a pod as the scheduler and kubelet would; events for what they report."""
        name = pod["metadata"]["name"]
        spec, status = pod["spec"], pod.setdefault("status", {"phase": "Pending"})
        if status.get("phase") in ("Failed", "Succeeded"):
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - self._started.setdefault(name, time.monotonic()) > deadline:
            pod["status"] = {**status, "phase": "Failed", "reason": "DeadlineExceeded",
                             "message": "Pod was active on the node longer than the specified deadline"}
            self._event(ns, pod, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline",
                        "Normal")
            return
        if self.pod_timelines.get(name):
            self.pod_scripts[name] = self.pod_timelines[name].pop(0)
        script = self.pod_scripts.get(name)
        containers = spec["containers"]
        if script is not None:
            state = ({"waiting": {"reason": script.waiting[0], "message": script.waiting[1]}} if script.waiting
                     else {"running": {"startedAt": _now()}} if script.phase == "Running" else None)
            pod["status"] = {"phase": script.phase, "conditions": script.conditions,
                             "containerStatuses": [
                                 {"name": c["name"], "image": c["image"], "imageID": "", "ready": script.ready,
                                  "restartCount": 0, "state": state} for c in containers] if state else []}
            if script.ip:
                pod["status"]["podIP"] = script.ip
            for reason, message, kind in script.events:
                self._event(ns, pod, reason, message, kind)
            return
        self._reads[name] = self._reads.get(name, 0) + 1
        if self._reads[name] >= self.ready_after:
            env = {e["name"]: e.get("value") for c in containers for e in c.get("env", [])}
            ready = self._healthy(env)
            started = status.get("startTime") or _now()  # a running pod keeps its start time
            pod["status"] = {"phase": "Running", "podIP": "127.0.0.1", "startTime": started,
                             "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "",
                                                    "ready": ready, "restartCount": 0,
                                                    "state": {"running": {"startedAt": started}}}
                                                   for c in containers]}

    def _healthy(self, env: dict) -> bool:
        """Pods get ready unless ``healthy_with`` is set and their DATABASE_URL is not in it."""
        url = env.get("DATABASE_URL")
        return self.healthy_with is None or url is None or url in self.healthy_with

    def _deployment_status(self, dep: dict) -> None:
        """One step of the controller: pods as many as wanted, ready if they pass their probe -- all at
        once, or ``rollout_step`` more per step (a scale-up seen as it happens)."""
        want = int(dep["spec"].get("replicas", 1))
        (app,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] != "sidecar"][:1] or [{}]
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        ready = want if self._healthy(env) else 0
        before = dep.get("status") or {}
        have = int(before.get("readyReplicas") or 0)
        if self.rollout_step is not None and ready > have:
            ready = min(ready, have + self.rollout_step)
        dep["status"] = {"replicas": want, "updatedReplicas": want, "readyReplicas": ready,
                         "availableReplicas": ready, "observedGeneration": dep["metadata"]["generation"]}

    # -- the API --------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, ctype: str) -> tuple[int, Any]:
        m = PATH.match(path)
        if not m:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns, resource, name, sub = m["ns"], m["resource"], m["name"], m["sub"]
        if resource not in KINDS or (sub and (resource, sub) != ("deployments", "scale")):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        watch = _flag(query.get("watch"))
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PATCH": "patch",
                "PUT": "update", "DELETE": "delete"}[method]
        what = f"{resource}/{sub}" if sub else resource
        with self.lock:
            self.requests.append((verb, what, ns, name or ""))
            if method == "PATCH":
                self.content_types.append((what, ctype))
            fault = next((f for f in self.faults if f.verb == verb and f.resource == what and f.times > 0), None)
            if fault:
                fault.times -= 1
        if fault:
            if fault.hang:
                time.sleep(fault.hang)
            raise ApiError(fault.status, fault.reason, f"injected {fault.status} for {verb} {what}", fault.headers)
        if watch:
            rv = int(query.get("resourceVersion") or 0)
            record = {"query": dict(query), "sent": [], "expired": None}
            with self.lock:
                self.watches.append(record)
                if self.compact_before_watch > 0:
                    self.compact_before_watch -= 1
                    self.compacted_before = next(self.rv)
            if rv and rv < self.compacted_before:
                record["expired"] = self.expired_as
                if self.expired_as == "status":
                    raise ApiError(410, "Gone", f"too old resource version: {rv} ({self.compacted_before})")
            return 200, ("watch", resource, ns, query, record)
        with self.lock:
            return getattr(self, f"_{verb}")(resource, sub, ns, name, query, body, ctype)

    def _not_found(self, resource: str, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{resource} "{name}" not found')

    def _create(self, resource, sub, ns, name, query, body, ctype):
        api_version, kind = KINDS[resource]
        if not isinstance(body, dict) or (body.get("apiVersion"), body.get("kind")) != (api_version, kind):
            raise ApiError(400, "BadRequest", f"the body is not a {api_version} {kind}")
        problems, _ = validate_object(body, DEFAULT_VERSIONS)
        if problems:
            raise ApiError(422, "Invalid", f'{kind} "{(body.get("metadata") or {}).get("name")}" is invalid: '
                           + "; ".join(problems[:3]), causes=[{"message": p} for p in problems[:3]])
        key = (resource, ns, body["metadata"]["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource} "{key[2]}" already exists')
        obj = copy.deepcopy(body)
        if resource == "secrets" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        if resource == "pods":
            obj["status"] = {"phase": "Pending"}
            self._started[obj["metadata"]["name"]] = time.monotonic()
        return 201, self._store(resource, ns, obj, "ADDED")

    def _get(self, resource, sub, ns, name, query, body, ctype):
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            raise self._not_found(resource, name)
        self._advance(resource, ns, obj)
        if resource == "deployments":
            if sub == "scale":
                return 200, self._scale(obj)
        return 200, obj

    @staticmethod
    def _scale(dep: dict) -> dict:
        m = dep["metadata"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": m["name"], "namespace": m["namespace"], "resourceVersion": m["resourceVersion"]},
                "spec": {"replicas": dep["spec"].get("replicas", 1)},
                "status": {"replicas": (dep.get("status") or {}).get("replicas", 0), "selector": f"app={m['name']}"}}

    def _list(self, resource, sub, ns, name, query, body, ctype):
        items = [o for (r, n, _), o in sorted(self.objects.items())
                 if r == resource and n == ns and _selected(o, query.get("labelSelector"), query.get("fieldSelector"))]
        for o in items:
            self._advance(resource, ns, o)
        api_version, kind = KINDS[resource]
        return 200, {"apiVersion": api_version, "kind": f"{kind}List", "items": items,
                     "metadata": {"resourceVersion": str(next(self.rv))}}

    def _patch(self, resource, sub, ns, name, query, body, ctype):
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            raise self._not_found(resource, name)
        if ctype == "application/json-patch+json" and not isinstance(body, list):
            raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        if ctype not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
        merge = strategic_merge if ctype.startswith("application/strategic") else merge_patch
        if sub == "scale":
            replicas = ((body or {}).get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", f"Scale.spec.replicas: Invalid value: {replicas!r}")
            obj["spec"]["replicas"] = replicas
            self._store(resource, ns, obj, "MODIFIED")
            return 200, self._scale(obj)
        if resource == "secrets" and obj.get("immutable") and "data" in (body or {}):
            raise ApiError(422, "Invalid", f'Secret "{name}" is invalid: data: Forbidden: field is immutable '
                                           "when `immutable` is set")
        new = merge(obj, body)
        new["metadata"]["generation"] = obj["metadata"].get("generation", 0)
        return 200, self._store(resource, ns, new, "MODIFIED")

    def _delete(self, resource, sub, ns, name, query, body, ctype):
        obj = self.objects.pop((resource, ns, name), None)
        if obj is None:
            raise self._not_found(resource, name)
        obj["metadata"]["resourceVersion"] = str(next(self.rv))  # a deletion is a change of its own
        self.changes.append((int(obj["metadata"]["resourceVersion"]), "DELETED", resource, obj))
        self.lock.notify_all()
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                     "details": {"name": name, "kind": resource}}

    def watch_events(self, resource: str, ns: str, query: dict[str, str], record: dict):
        """Events after ``resourceVersion`` (or every object now, as ADDED), until ``timeoutSeconds``."""
        rv = int(query.get("resourceVersion") or 0)
        if record["expired"] == "event":
            yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                               "status": "Failure", "code": 410, "reason": "Expired",
                                               "message": f"too old resource version: {rv} ({self.compacted_before})"}}
            return
        end = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        seen = rv
        news: list = []
        with self.lock:
            if not rv:
                for o in self._list(resource, None, ns, None, query, None, "")[1]["items"]:
                    seen = max(seen, int(o["metadata"]["resourceVersion"]))
                    news.append((seen, "ADDED", copy.deepcopy(o)))
        while True:
            for v, t, o in news:
                seen = max(seen, v)
                record["sent"].append(str(v))
                yield {"type": t, "object": o}
                if self.watch_end_after is not None and len(record["sent"]) >= self.watch_end_after:
                    if self.watch_cut:
                        raise ConnectionAbortedError("the server went away")
                    return
            if time.monotonic() >= end:
                break
            with self.lock:
                self._controllers(resource, ns)
                news = [(v, t, copy.deepcopy(o)) for v, t, r, o in self.changes
                        if v > seen and r == resource and o["metadata"].get("namespace") == ns
                        and _selected(o, query.get("labelSelector"), query.get("fieldSelector"))]
                if not news:
                    self.lock.wait(0.05)
        if _flag(query.get("allowWatchBookmarks")):
            with self.lock:
                now = max(seen, max((v for v, *_ in self.changes), default=seen))
            yield {"type": "BOOKMARK", "object": {"kind": KINDS[resource][1], "apiVersion": KINDS[resource][0],
                                                  "metadata": {"resourceVersion": str(now)}}}

    def _controllers(self, resource: str, ns: str) -> None:
        """The kubelet and the deployment controller move their objects on while someone watches."""
        for (r, n, _), o in list(self.objects.items()):
            if r == resource and n == ns:
                self._advance(r, ns, o)

    def _advance(self, resource: str, ns: str, obj: dict) -> None:
        """One step of the object's controller; a status that changed is a change (new resourceVersion,
        a MODIFIED event), as the kubelet's and the controllers' status updates are."""
        if resource not in ("pods", "deployments"):
            return
        before = json.dumps(obj.get("status"), sort_keys=True)
        (self._pod_status(ns, obj) if resource == "pods" else self._deployment_status(obj))
        if json.dumps(obj.get("status"), sort_keys=True) != before:
            self._store(resource, ns, obj, "MODIFIED", spec_changed=False)


class _Handler(PortForwardMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: KubeApi

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self, code: int, payload: Any, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        forward = PORT_FORWARD.match(url.path)
        if forward and self.headers.get("Upgrade", "").lower() == "websocket":
            self._port_forward(forward["ns"], forward["name"], int(query.get("ports", "0")))
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
            code, payload = self.api.handle(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
        except Exception as exc:  # noqa: BLE001 - a bug of the mock answers 500 and says so
            if not isinstance(exc, ApiError):
                exc = ApiError(500, "InternalError", f"mock failure: {type(exc).__name__}: {exc}")
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": exc.message, "reason": exc.reason, "code": exc.code}
            if exc.causes:
                status["details"] = {"causes": exc.causes}
            try:
                self._answer(exc.code, status, exc.headers)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                self.close_connection = True
            return
        if isinstance(payload, tuple) and payload[0] == "watch":
            self._stream(*payload[1:])
        else:
            self._answer(code, payload)

    def _stream(self, resource: str, ns: str, query: dict, record: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while self.api.watch_junk:
                line = self.api.watch_junk.pop(0) + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            for event in self.api.watch_events(resource, ns, query, record):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionAbortedError:  # watch_cut: the connection drops mid-stream
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch


def serve(api: KubeApi) -> tuple[ThreadingHTTPServer, str]:
    """Run ``api`` on a free loopback port in a daemon thread: (server, base URL)."""
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def kubeconfig(url: str, namespace: str = "default") -> dict:
    """A kube config for the mock (bearer token; the mock does not check it)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "mock",
            "clusters": [{"name": "mock", "cluster": {"server": url}}],
            "users": [{"name": "backupkit", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "backupkit", "namespace": namespace}}]}

