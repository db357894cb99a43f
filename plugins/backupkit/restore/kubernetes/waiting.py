"""Waiting for one Kubernetes object to reach a state: list, then watch, as a controller does.

The loop (client-go's reflector, cut down to one object) -- docs/kubernetes.md, "Waits":

1. **list** the object by ``metadata.name`` field selector: its state and the list's
   ``resourceVersion``; judge it;
2. **watch** from that ``resourceVersion`` with a server-side ``timeoutSeconds`` (at most
   :data:`WATCH_WINDOW`, never past the deadline) and a client read timeout (the window plus
   :data:`WATCH_GRACE`, never past the deadline either); judge every ADDED/MODIFIED event,
   a DELETED event is the object gone; BOOKMARKs only move the ``resourceVersion`` on;
3. a watch that **ends** (the server's timeout, a closed connection, a read timeout) is
   resumed from the last ``resourceVersion`` seen, so no event is lost and none is judged twice;
4. **410 Gone** -- as the HTTP status or as an ERROR event with code 410, the client raises
   both as ``ApiException(status=410)`` -- means that version is compacted away: list again;
5. 429 and 5xx answers (of the list, the watch request, or an ERROR event) are retried after
   ``Retry-After`` or a backoff, as every other call (:func:`.calls.call`); more than
   ``MAX_ATTEMPTS`` failures in a row without an event in between end the wait;
6. everything is bounded by one deadline, from the injected clock.

Polling (``read`` every ``poll_interval``) remains only where a watch is impossible: the API
object cannot stream (no ``api_client``: the recording stand-in of the unit tests), or the API
server refuses the watch with 403 (a Role from before watches were used) or 405 (a proxy that
does not stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backupkit.restore.kubernetes import calls

WATCH_WINDOW = 300  # seconds: timeoutSeconds of one watch; the API server closes it, we resume
WATCH_GRACE = 5.0  # seconds the client waits past the window before it calls the watch hung
WATCH_REFUSED = frozenset({403, 405})  # the server will not stream this: poll instead
GONE = 410

# What the judge of an object answers: keep waiting (with a description of why), or done.
Judge = Callable[[Any], "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """``done`` with the wait's ``value``; else ``detail`` says what is still missing."""

    done: bool
    value: Any = None
    detail: str = ""


@dataclass
class Target:
    """One namespaced object: ``api`` has ``list_namespaced_<kind>`` and ``read_namespaced_<kind>``."""

    api: Any
    kind: str
    namespace: str
    name: str

    @property
    def list_fn(self) -> Callable[..., Any]:
        return getattr(self.api, f"list_namespaced_{self.kind}")

    @property
    def read_fn(self) -> Callable[..., Any]:
        return getattr(self.api, f"read_namespaced_{self.kind}")

    @property
    def selector(self) -> str:
        return f"metadata.name={self.name}"

    def can_stream(self) -> bool:
        """Generated client classes carry their ``api_client`` (the HTTP side a watch needs)."""
        return getattr(self.api, "api_client", None) is not None


class WatchFailed(Exception):
    """Too many failures of the list/watch in a row: the last one is the cause."""


class MalformedWatch(OSError):
    """The stream said something that is not a watch event: counted like a broken connection."""


def wait_for(target: Target, judge: Judge, *, timeout: float, clock: Callable[[], float],
             sleep: Callable[[float], None], poll_interval: float,
             on_timeout: Callable[[Any, str], BaseException],
             request_timeout: tuple[float, float] | None = None) -> Any:
    """The value of the first verdict that is done; ``on_timeout(last object, detail)`` is raised at
    the deadline. ``judge`` sees the object (``None`` once it is gone) and raises for a state that no
    waiting fixes."""
    deadline = clock() + timeout
    waiter = _Watcher(target, judge, deadline, clock, sleep, request_timeout or calls.REQUEST_TIMEOUT)
    if target.can_stream():
        done, value = waiter.run()
        if done:
            return value
        if not waiter.refused:
            raise on_timeout(waiter.last, waiter.detail)
    return _poll(target, judge, deadline, clock, sleep, poll_interval, on_timeout, waiter)


def _poll(target: Target, judge: Judge, deadline: float, clock: Callable[[], float],
          sleep: Callable[[float], None], poll_interval: float, on_timeout: Callable[[Any, str], BaseException],
          state: "_Watcher") -> Any:
    """GET every ``poll_interval`` (where a watch is impossible)."""
    while True:
        obj = calls.call(target.read_fn, target.name, target.namespace, sleep=sleep,
                         request_timeout=state.request_timeout)
        verdict = judge(obj)
        if verdict.done:
            return verdict.value
        if clock() >= deadline:
            raise on_timeout(obj, verdict.detail)
        sleep(poll_interval)


class _Watcher:
    """The list-then-watch loop of one wait; ``last`` and ``detail`` say where it stopped."""

    def __init__(self, target: Target, judge: Judge, deadline: float, clock: Callable[[], float],
                 sleep: Callable[[float], None], request_timeout: tuple[float, float]):
        self.target, self.judge, self.deadline, self.clock, self.sleep = target, judge, deadline, clock, sleep
        self.request_timeout = request_timeout  # of the list and the polls; the watch's read timeout is its own
        self.connect_timeout = float(request_timeout[0])
        self.last: Any = None
        self.detail = "not seen yet"
        self.refused = False
        self.failures = 0
        self.version: str | None = None  # where the next watch starts; None: list first

    def _judge(self, obj: Any) -> Verdict:
        self.last = obj if obj is not None else self.last
        verdict = self.judge(obj)
        self.detail = verdict.detail
        return verdict

    def _list(self) -> Verdict:
        """Judge the object as listed now; the watch goes on from the list's resourceVersion."""
        listed = calls.call(self.target.list_fn, self.target.namespace, field_selector=self.target.selector,
                            sleep=self.sleep, request_timeout=self.request_timeout)
        items = [o for o in (listed.items or []) if o.metadata.name == self.target.name]
        verdict = self._judge(items[0] if items else None)
        self.version = getattr(listed.metadata, "resource_version", None) or ""  # "": from now, with ADDED
        return verdict

    def run(self) -> tuple[bool, Any]:
        """(True, value) when the judge says done; (False, None) at the deadline or when refused."""
        from kubernetes.client.exceptions import ApiException

        while self.version is None or self.clock() < self.deadline:  # judged at least once, as listed
            try:
                verdict = self._list() if self.version is None else self._watch()
                if verdict is not None and verdict.done:
                    return True, verdict.value
            except ApiException as exc:
                status = calls.status_of(exc)
                if status == GONE:
                    self.version = None  # compacted: list again
                    continue
                if status in WATCH_REFUSED:
                    self.refused = True
                    return False, None
                self._failed(exc, retry_after=status in calls.RETRIED_STATUSES)
            except calls.TRANSPORT_ERRORS as exc:
                # No answer at all (refused, reset, a read timeout before any event): retry from the
                # same version after a backoff; the deadline and the failure count bound it.
                self._failed(exc, retry_after=False)
        return False, None

    def _failed(self, exc: BaseException, *, retry_after: bool) -> None:
        if not retry_after and calls.status_of(exc) is not None:
            raise exc  # 404, 422, ...: a verdict, not a hiccup
        self.failures += 1
        if self.failures >= calls.MAX_ATTEMPTS:
            raise WatchFailed(f"watch {self.target.kind} {self.target.namespace}/{self.target.name}: "
                              f"{self.failures} failures in a row, the last: {calls.api_error(exc)}") from exc
        if self.clock() < self.deadline:
            self.sleep(min(calls.retry_after(exc, self.failures), max(0.0, self.deadline - self.clock())))

    def _watch(self) -> Verdict | None:
        """One watch request from ``self.version``, moving it on with every event; the last verdict.
        A stream that breaks after events is an ordinary end: the next watch resumes at once."""
        from kubernetes import watch

        remaining = self.deadline - self.clock()
        window = max(1, min(WATCH_WINDOW, math.ceil(remaining)))
        read_timeout = max(0.05, min(remaining, window + WATCH_GRACE))
        w = watch.Watch()
        verdict, events = None, 0
        stream = w.stream(self.target.list_fn, self.target.namespace, field_selector=self.target.selector,
                          resource_version=self.version, timeout_seconds=window, allow_watch_bookmarks=True,
                          _request_timeout=(self.connect_timeout, read_timeout))
        try:
            for event in stream:
                events += 1
                self.version = w.resource_version or self.version
                if not isinstance(event, dict) or event.get("type") == "BOOKMARK":
                    continue  # the client yields None for a line that is not JSON
                self.failures = 0
                verdict = self._judge(None if event.get("type") == "DELETED" else event["object"])
                if verdict.done or self.clock() >= self.deadline:
                    break
        except calls.TRANSPORT_ERRORS:
            if not events:
                raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # What the client raises reading a line that is not a watch event of this kind (an ERROR
            # event without its Status, an object its model refuses), or the judge reading one.
            raise MalformedWatch(f"watch {self.target.kind} {self.target.namespace}/{self.target.name}: "
                                 f"not a watch event ({type(exc).__name__}: {exc})"[:1000]) from exc
        finally:
            stream.close()
        return verdict


__all__ = ["Target", "Verdict", "WatchFailed", "wait_for", "WATCH_WINDOW", "WATCH_GRACE"]
