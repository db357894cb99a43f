"""The weekly maintenance report, rendered from what :mod:`backupkit.jobs.weekly` collected."""

from __future__ import annotations

from datetime import date

from backupkit.reports.render import Doc, bar_chart, human_bytes, human_seconds, line_chart
from backupkit.history import WEEKDAYS, anomaly_text
from backupkit.jobs.weekly import findings

MAX_LISTED = 50  # objects listed by name in the report (the count is always complete)


def weekly_doc(*, report_date: date, trends: dict | None, failures: dict | None, storage: dict | None,
               encryption: dict | None, location: str | None = None) -> Doc:
    """The weekly report: summary, trends with charts, failure pattern, storage and cost, encryption."""
    doc = Doc(f"Weekly backup review {report_date.isoformat()}")
    problems, warnings = findings({"trends": trends, "failures": failures, "storage": storage,
                                   "encryption": encryption})
    doc.heading("Summary")
    if location:
        doc.para(f"Report location: {location}")
    doc.para("Verdict: " + ("PROBLEMS FOUND" if problems else "no problems") +
             f" ({len(problems)} problem(s), {len(warnings)} item(s) flagged for review)")
    doc.bullets([f"PROBLEM: {p}" for p in problems] + [f"FLAG: {w}" for w in warnings])

    doc.heading("Backup duration and size trends")
    if trends is None:
        doc.para("Not available: the trends task failed.")
    else:
        doc.para(f"ISO weeks {trends['weeks'][0]} to {trends['weeks'][-1]}; anomaly = size or duration at least "
                 f"{trends['factor']:g}x (or at most 1/{trends['factor']:g}) the median of the previous backups "
                 f"of the same source.")
        labels = trends["weeks"]
        for src, t in trends["sources"].items():
            doc.heading(src, 3)
            # One chart per source and measure: a 2 GiB file set would flatten a 50 MiB database's line.
            doc.chart(f"size-{src}", line_chart(f"{src}: backup size per week", labels, {
                "max": [w["size_max"] for w in t["weeks"]], "median": [w["size_median"] for w in t["weeks"]],
                "min": [w["size_min"] for w in t["weeks"]]}), f"{src}: backup size per ISO week")
            doc.chart(f"duration-{src}", line_chart(f"{src}: backup duration per week", labels, {
                "max": [w["duration_max"] for w in t["weeks"]],
                "median": [w["duration_median"] for w in t["weeks"]]}, fmt=human_seconds),
                f"{src}: backup duration per ISO week")
            doc.table(["Week", "Backups", "Median size", "Min size", "Max size", "Median duration", "Max duration"],
                      [[w["week"], w["count"], human_bytes(w["size_median"]), human_bytes(w["size_min"]),
                        human_bytes(w["size_max"]), human_seconds(w["duration_median"]),
                        human_seconds(w["duration_max"])] for w in t["weeks"]])
            tests = t.get("restore_tests") or []
            target = t.get("restore_target_seconds")
            if tests:
                doc.para(f"Restore time of the last {len(tests)} restore test(s)"
                         + (f", target {human_seconds(target)} (restore.target_duration):" if target else
                            " (no restore.target_duration declared):"))
                doc.table(["Restore test", "Result", "Duration", "MB/s", "Within target"],
                          [[p["at"][:10], "passed" if p["ok"] else "FAILED", human_seconds(p["duration_seconds"]),
                            f"{p['mb_per_s']:g}" if p["mb_per_s"] else "-",
                            "-" if not target or p["duration_seconds"] is None else
                            ("yes" if p["duration_seconds"] <= target else "NO")] for p in tests])
            w = t.get("pitr_window")
            if w:
                doc.para(f"Point-in-time recovery window (verified {w['checked_at'][:16]}): {w['start'][:19]} to "
                         f"{w['end'][:19]} UTC, timeline {w['timeline']}; RPO {human_seconds(w['rpo_seconds'])}.")
            if t["missing_duration"]:
                doc.para(f"{t['missing_duration']} backup(s) in the window have no recorded duration "
                         f"(no 'backup completed' log line and no manifest).")
        anomalies = [a for t in trends["sources"].values() for a in t["anomalies"]]
        doc.heading("Anomalies", 3)
        doc.table(["Source", "Backup", "Metric", "Change", "Value vs baseline"],
                  [[a["source"], a["name"], a["metric"], a["kind"], anomaly_text(a)] for a in anomalies])
        doc.bullets(f"note: {n}" for n in trends["notes"])

    doc.heading("Failure pattern")
    if failures is None:
        doc.para("Not available: the failure-pattern task failed.")
    else:
        kinds = sorted({k for c in failures["by_weekday"].values() for k in c}) or ["missing backup", "log error",
                                                                                   "verification failed"]
        doc.para(f"Since {failures['since'][:10]}: missing backups, ERROR lines in the backup logs and failed "
                 f"verifications, by weekday, source and error. {failures['log_warnings']} WARNING line(s) "
                 f"were logged (not counted as failures).")
        doc.table(["Weekday", *kinds], [[d, *[failures["by_weekday"][d].get(k, 0) for k in kinds]] for d in WEEKDAYS])
        doc.chart("failures-by-weekday", bar_chart("Failure events by weekday",
                                                   [(d, sum(failures["by_weekday"][d].values())) for d in WEEKDAYS],
                                                   fmt=lambda v: f"{v:.0f}"),
                  "Failure events by weekday")
        doc.table(["Source", *kinds], [[s, *[c.get(k, 0) for k in kinds]] for s, c in failures["by_source"].items()])
        doc.table(["Kind", "Error (normalised)", "Count", "Sources", "Last", "Example"],
                  [[e["kind"], e["signature"], e["count"], ", ".join(e["sources"]), e["last"], e["example"][:200]]
                   for e in failures["top_errors"]])
        doc.bullets(f"note: {n}" for n in failures["notes"])

    doc.heading("Storage")
    if storage is None:
        doc.para("Not available: the storage task failed.")
    else:
        b = storage["bucket"]
        doc.para(f"s3://{b['bucket']}: {human_bytes(b['total_bytes'])} in {b['objects']} object versions "
                 f"(current and noncurrent; noncurrent versions are billed too).")
        doc.table(["Prefix", "Current", "Current objects", "Noncurrent", "Noncurrent objects", "Delete markers"],
                  [[p, human_bytes(c.get("current_bytes", 0)), c.get("current_objects", 0),
                    human_bytes(c.get("noncurrent_bytes", 0)), c.get("noncurrent_objects", 0),
                    c.get("delete_markers", 0)] for p, c in b["by_prefix"].items()])
        doc.table(["Prefix", "Storage class", "Bytes", "Objects"],
                  [[r["prefix"], r["storage_class"], human_bytes(r["bytes"]), r["objects"]]
                   for r in b["by_prefix_class"]])
        doc.chart("storage-by-prefix", bar_chart("Bucket usage by prefix",
                                                 [(p, c.get("current_bytes", 0) + c.get("noncurrent_bytes", 0))
                                                  for p, c in b["by_prefix"].items()]),
                  "Bucket usage by prefix")
        doc.heading("Local disk", 3)
        doc.table(["Source", "Directory", "Backups and companions", "Files", "Filesystem used", "Filesystem free"],
                  [[r["source"], r["path"], human_bytes(r.get("bytes")), r.get("files", "-"),
                    f"{r['fs_used_fraction']:.0%}" if r.get("fs_used_fraction") is not None else "-",
                    human_bytes(r.get("fs_free"))]
                   if r["exists"] else [r["source"], r["path"], "missing", "-", "-", "-"]
                   for r in storage["local"]])
        doc.heading("Growth per week", 3)
        weeks = list(b["uploaded_per_week"])
        doc.table(["Week", "Uploaded to S3", *[f"New local ({r['source']}{', WAL' if r.get('wal') else ''})" for r in storage["local"]
                                                if r["exists"]]],
                  [[w, human_bytes(b["uploaded_per_week"][w]),
                    *[human_bytes(r["added_per_week"][w]) for r in storage["local"] if r["exists"]]] for w in weeks])
        doc.chart("uploads-per-week", bar_chart("Bytes uploaded per week", [(w, b["uploaded_per_week"][w])
                                                                            for w in weeks]),
                  "Bytes uploaded to the bucket per ISO week")
        if storage["growth"]:
            doc.table(["Report date", "S3 total", "S3 change", "Local total", "Local change"],
                      [[g["date"], human_bytes(g["s3_bytes"]), human_bytes(g["s3_change"]),
                        human_bytes(g["local_bytes"]), human_bytes(g["local_change"])] for g in storage["growth"]])
        else:
            doc.para("Net growth: first recorded run; next week's report shows the change since this one.")
        doc.heading("Monthly cost estimate", 3)
        c = storage["cost"]
        doc.table(["Storage class", "Stored", "USD per GB-month", "USD per month"],
                  [[r["storage_class"], human_bytes(r["bytes"]),
                    "no price configured" if r["usd_per_gb_month"] is None else f"{r['usd_per_gb_month']:g}",
                    "-" if r["usd_per_month"] is None else f"{r['usd_per_month']:.4f}"] for r in c["rows"]])
        usd = c["usd_per_month"]
        amount = f"{usd:.2f}" if usd >= 1 else f"{usd:.4f}"
        doc.para(f"Estimate: {amount} USD per month ({c['note']})."
                 + (f" Classes without a price: {', '.join(c['unpriced'])}." if c["unpriced"] else ""))
        ce = storage["cost_explorer"]
        if ce.get("reachable"):
            doc.para(f"AWS Cost Explorer: {ce['amount']:.2f} {ce['unit']} for {ce['period']} ({ce['note']}).")
        else:
            doc.para(f"Cost Explorer not reachable: {ce['reason']}")

    doc.heading("Encryption")
    if encryption is None:
        doc.para("Not available: the encryption task failed.")
    else:
        d = encryption["default"]
        doc.para(f"Bucket default encryption: {'OK' if d['ok'] else 'PROBLEM'}: {d['detail']}.")
        o = encryption["objects"]
        if o is None:
            doc.para("Object encryption was not scanned in this run (scan_objects=false).")
        else:
            doc.para(f"{o['objects']} backup object(s) under {', '.join(o['prefixes'])}: "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(o["by_algorithm"].items())) + ".")
            n = o["counts"]["unencrypted"]
            if n:
                doc.para(f"Objects without server-side encryption ({n}):")
                doc.bullets(o["unencrypted"][:MAX_LISTED] + ([f"... and {n - MAX_LISTED} more"] if n > MAX_LISTED
                                                              else []))
            if o["wrong_kind"]:
                doc.para(f"Objects encrypted with another kind than {o['expected']} ({o['counts']['wrong_kind']}):")
                doc.bullets(f"{k} ({alg})" for k, alg in o["wrong_kind"][:MAX_LISTED])
            if o["errors"]:
                doc.bullets(f"could not inspect {k}: {err}" for k, err in o["errors"][:MAX_LISTED])
    return doc
