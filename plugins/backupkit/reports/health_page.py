"""The Backup Health page as one server-rendered HTML document (no script, inline SVG charts).

Input: :meth:`backupkit.health_cache.HealthService.snapshot`, with each source's ``links``
(fact -> href) and ``restore`` (``{"href", "label"}`` or ``{"denied": why}``) added by the
Airflow adapter, which knows the UI's URLs and the user's permissions. Every value is
escaped: names and details come from files on disk and must not become markup.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

from backupkit.reports.render import bar_spark, human_bytes, human_seconds

COLORS = {"ok": "#e6f4ea", "warning": "#fff4d6", "failed": "#fde2e2"}
BADGES = {"ok": "#1e7e34", "warning": "#9a6700", "failed": "#c62828"}
LINK_LABELS = {"freshness": "freshness log", "verification": "integrity log", "s3": "S3 check log",
               "daily_run": "daily run", "restore_test": "restore-test run", "retention": "retention runs",
               "drill": "drill run"}
CSS = ("body{font-family:sans-serif;margin:1em;color:#222;font-size:14px}table{border-collapse:collapse;width:100%}"
       "td,th{border-bottom:1px solid #ddd;padding:.4em .5em;text-align:left;vertical-align:top}"
       "th{background:#f3f3f3}.badge{color:#fff;border-radius:3px;padding:.1em .45em;font-weight:bold}"
       ".muted{color:#666;font-size:12px}.charts svg{margin-right:.5em}ul{margin:.2em 0;padding-left:1.2em}"
       "a.action{display:inline-block;border:1px solid #1f77b4;border-radius:3px;padding:.15em .5em;"
       "text-decoration:none}.notes{background:#fff4d6;padding:.5em}"
       + "".join(f"tr.{k}>td{{background:{v}}}.badge.{k}{{background:{BADGES[k]}}}" for k, v in COLORS.items()))


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _when(iso: str | None) -> str:
    return "-" if not iso else iso[:16].replace("T", " ") + " UTC"


def _link(href: str | None, text: str, cls: str = "") -> str:
    if not href:
        return _e(text)
    c = f' class="{cls}"' if cls else ""
    return f'<a{c} href="{_e(href)}" target="_top">{_e(text)}</a>'


def _newest(s: Mapping) -> str:
    n = s["newest"]
    if n is None:
        return "none"
    where = "+".join(w for w in ("local", "s3") if n[w])
    return (f"{_e(n['name'])}<div class=muted>{_e(_when(n['timestamp']))}, {_e(human_bytes(n['size']))} ({where});"
            f" age {_e(s['age_hours'])} h of max {_e(s['max_age_hours'])} h</div>")


def _verification(s: Mapping) -> str:
    v = s["verification"]
    nv = v["newest"]
    head = "never read" if nv is None else f"{_e(nv['verdict'])} {_e(_when(nv['verified_at']))}"
    rot = v["oldest_full_read"]
    lines = [f"{v['stored']} stored, {v['failed_count']} failed, {v['never_read']} never read, "
             f"{v['changed_count']} changed since read",
             "oldest full read: " + ("-" if rot is None else f"{_when(rot['at'])} ({rot['name']})")]
    return head + "".join(f"<div class=muted>{_e(line)}</div>" for line in lines)


def _s3(s: Mapping) -> str:
    x = s["s3"]
    if x["error"]:
        return f"listing failed<div class=muted>{_e(x['error'])}</div>"
    check = x["newest_check"]
    head = ("no copy of the newest" if x["newest_has_copy"] is False else
            "newest: not checked yet" if check is None else
            f"newest: {'matches' if check['ok'] else 'MISMATCH'} ({check['method']})")
    evidence = ", ".join(f"{n} {m}" for m, n in x["evidence"].items()) or "none recorded"
    return (f"{_e(head)}<div class=muted>{x['copies']} copies, {x['s3_only']} only in S3, {x['local_only']} only "
            f"local; evidence: {_e(evidence)}; {x['mismatched_count']} bad</div>")


def _retention(s: Mapping) -> str:
    r = s["retention"]
    nxt = ", ".join(r["next_deletions"]) or "none"
    refused = f"<div class=muted>refused: {_e(r['violations'][0])}</div>" if r["refused"] else ""
    return (f"keep {r['keep']}, held {r['held']}, delete {r['delete']} ({_e(human_bytes(r['bytes_to_free']))})"
            f"<div class=muted>next: {_e(nxt)}</div>{refused}")


def _restore_test(s: Mapping) -> str:
    t = s["restore_test"]
    if t is None:
        return "none recorded"
    rows = "-" if t["rows"] is None else f"{t['rows']:.0f}"
    rate = f" at {t['mb_per_s']:g} MB/s" if t.get("mb_per_s") else ""
    return (f"{'passed' if t['all_ok'] else 'FAILED'} {_e(_when(t['at']))}<div class=muted>"
            f"{_e(human_seconds(t['duration_seconds']))}{_e(rate)} of target {_e(human_seconds(t['target_seconds']))}; "
            f"{_e(rows)} rows/files checked; {_e(t['backup'])}</div>")


def _pitr(s: Mapping) -> str:
    p = s["pitr"]
    return "-" if p is None else f"{_e(_when(p['start']))} .. {_e(_when(p['end']))}"


def _charts(s: Mapping) -> str:
    nights = s["charts"]["nights"]
    labels = [n["timestamp"][:10] for n in nights]
    marks = {i: "; ".join(n["anomalies"]) for i, n in enumerate(nights) if n["anomalies"]}
    sizes = bar_spark(f"{s['name']}: size, last {len(nights)} nights", labels, [n["size"] for n in nights],
                      marks=marks)
    ages = [n["age_reached_hours"] for n in nights]
    age_chart = bar_spark(f"{s['name']}: age before the next (h)", labels, ages,
                          fmt=lambda v: f"{v:.0f} h", limit=s["max_age_hours"],
                          limit_label=f"max_age_hours {s['max_age_hours']:g}")
    trend = (s.get("restore_test") or {}).get("trend") or []
    restore_chart = ""
    if trend:
        over = {i: f"over the target {human_seconds(p['target_seconds'])}" for i, p in enumerate(trend)
                if p["duration_seconds"] is not None and p["target_seconds"] is not None
                and p["duration_seconds"] > p["target_seconds"]}
        target = s["restore_test"]["target_seconds"]
        restore_chart = bar_spark(f"{s['name']}: restore time, last {len(trend)} restore tests",
                                  [p["at"][:10] for p in trend], [p["duration_seconds"] for p in trend],
                                  fmt=human_seconds, marks=over, limit=target,
                                  limit_label=f"target {human_seconds(target)}")
    return f"<div class=charts>{sizes}{age_chart}{restore_chart}</div>"


def _links(s: Mapping) -> str:
    links = s.get("links") or {}
    items = [_link(href, LINK_LABELS.get(fact, fact)) for fact, href in links.items() if href]
    return " &middot; ".join(items) or "-"


def _restore(s: Mapping) -> str:
    r = s.get("restore") or {}
    if r.get("href"):
        return _link(r["href"], r.get("label") or "restore this backup", "action")
    return f"<span class=muted>{_e(r.get('denied') or 'no backup to restore')}</span>"


def _drill(d: Mapping | None, link: str | None) -> str:
    if d is None:
        return "<p>Last DR drill: none recorded.</p>"
    rows = "".join(f"<li>{_e(x['name'])}: {'met' if x['ok'] else 'MISSED'}; RTO {_e(human_seconds(x['rto_seconds']))}"
                   f" (target {_e(human_seconds(x['rto_target_seconds']))}), RPO {_e(human_seconds(x['rpo_seconds']))}"
                   f" (target {_e(human_seconds(x['rpo_target_seconds']))})</li>" for x in d["scenarios"])
    overdue = " <b>overdue</b>" if d["overdue"] else ""
    return (f"<p>Last DR drill: {_link(link, _when(d['at']))}, {'passed' if d['ok'] else 'FAILED'}{overdue}</p>"
            f"<ul>{rows}</ul>")


def render_page(snapshot: Mapping, *, user: str | None = None, context: str | None = None,
                drill_link: str | None = None) -> str:
    """The whole page; ``context`` names the DAG whose tab shows it, when opened from one."""
    summary = snapshot["summary"]
    head = (f"<h1>Backup health</h1><p>{summary['failed']} failed, {summary['warning']} warning, {summary['ok']} ok"
            f" &middot; judged {_e(_when(snapshot['generated_at']))}, facts from {_e(_when(snapshot['facts_at']))},"
            f" S3 listed {_e(_when(snapshot['s3_listed_at']))}"
            + (f" &middot; signed in as {_e(user)}" if user else "")
            + (f" &middot; opened from {_e(context)}" if context else "") + "</p>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in snapshot["notes"])
    rows = []
    for s in snapshot["sources"]:
        st = s["status"]
        rows.append(
            f'<tr class="{st}" data-source="{_e(s["name"])}" data-status="{st}">'
            f'<td><span class="badge {st}">{st}</span></td>'
            f'<td><b>{_e(s["name"])}</b><div class=muted>{_e(s["label"])}</div></td>'
            f'<td class="reason">{_e(s["reason"])}' + "".join(
                f"<div class=muted>{_e(p['level'])}: {_e(p['text'])}</div>" for p in s["problems"][1:6]) + "</td>"
            f"<td>{_newest(s)}</td><td>{_verification(s)}</td><td>{_s3(s)}</td><td>{_retention(s)}</td>"
            f"<td>{_restore_test(s)}</td><td>{_pitr(s)}</td><td>{_links(s)}</td><td>{_restore(s)}</td></tr>"
            f'<tr class="charts-row" data-charts="{_e(s["name"])}"><td></td><td colspan="10">{_charts(s)}'
            f"<div class=muted>{s['charts']['anomalies']} anomalies since {_e(_when(s['charts']['since']))} "
            f"(red bars: the weekly report's rule)</div></td></tr>")
    table = ("<table><thead><tr><th>Status</th><th>Source</th><th>Why</th><th>Newest backup</th>"
             "<th>Verification</th><th>S3 copy</th><th>Retention (dry plan)</th><th>Restore test</th>"
             "<th>PITR window</th><th>Produced by</th><th>Action</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Backup health</title>"
            f"<style>{CSS}</style></head><body>{head}"
            + (f"<ul class=notes>{notes}</ul>" if notes else "")
            + _drill(snapshot.get("drill"), drill_link) + table + "</body></html>\n")


__all__ = ["render_page"]
