"""Reports as Markdown (with SVG chart files) and as one self-contained HTML page.

matplotlib is not a dependency (and a whole plotting stack for a few bar and line
charts would be): charts are small hand-written SVG documents. A report is built once
as a :class:`Doc` (headings, paragraphs, lists, tables, charts) and rendered twice:
``report.md`` links the charts as ``NAME.svg`` files next to it (GitHub, GitLab and
most viewers render that), ``report.html`` inlines them so the page opens from the
bucket with nothing else.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence
from xml.sax.saxutils import escape as _xml

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units, as ``du -h`` and the AWS console show storage)."""
    if n is None:
        return "-"
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# -- SVG charts ----------------------------------------------------------------------------
def _nice_max(v: float) -> float:
    """Round an axis maximum up to 1, 2, 2.5 or 5 times a power of ten."""
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * 10 ** exp:
            return m * 10 ** exp
    return 10 ** (exp + 1)  # pragma: no cover - the loop always returns


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">'
            f'<title>{_xml(title)}</title>'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" '
            f'font-weight="bold">{_xml(title)}</text>' + "".join(body) + "</svg>\n")


def line_chart(title: str, x_labels: Sequence[str], series: dict[str, Sequence[float | None]], *,
               fmt=human_bytes, width: int = 640, height: int = 260) -> str:
    """One polyline per series over shared x labels; ``None`` values leave a break in the line."""
    left, right, top, bottom = 70, 150, 28, 40
    pw, ph = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None]
    ymax = _nice_max(max(values) if values else 0)
    n = max(len(x_labels), 1)

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    body = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>']
    for k in range(5):
        v = ymax * k / 4
        body.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_xml(fmt(v))}</text>')
    step = max(1, math.ceil(n / 8))
    for i, label in enumerate(x_labels):
        if i % step == 0 or i == n - 1:
            body.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{_xml(label)}</text>')
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(vs):
            if v is None:
                runs.append([])
                continue
            runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
            body.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}">'
                        f'<title>{_xml(f"{name} {x_labels[i] if i < len(x_labels) else i}: {fmt(v)}")}</title>'
                        f'</circle>')
        for run in runs:
            if len(run) > 1:
                body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(run)}"/>')
        ly = top + 12 + 16 * s
        body.append(f'<rect x="{left + pw + 12}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        body.append(f'<text x="{left + pw + 26}" y="{ly}">{_xml(name)}</text>')
    return _svg(width, height, title, body)


def bar_chart(title: str, items: Sequence[tuple[str, float]], *, fmt=human_bytes, width: int = 640,
              bar_height: int = 18) -> str:
    """Horizontal bars, one per (label, value), with the value printed after the bar."""
    left, right, top = 170, 90, 28
    height = top + 10 + max(len(items), 1) * (bar_height + 6)
    pw = width - left - right
    vmax = max((v for _, v in items), default=0) or 1
    body = []
    for i, (label, v) in enumerate(items):
        yy = top + 6 + i * (bar_height + 6)
        w = max(pw * v / vmax, 0)
        body.append(f'<text x="{left - 6}" y="{yy + bar_height - 5}" text-anchor="end">{_xml(label)}</text>')
        body.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar_height}" '
                    f'fill="{PALETTE[i % len(PALETTE)]}"><title>{_xml(f"{label}: {fmt(v)}")}</title></rect>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{yy + bar_height - 5}">{_xml(fmt(v))}</text>')
    if not items:
        body.append(f'<text x="{width / 2:.0f}" y="{top + 16}" text-anchor="middle">no data</text>')
    return _svg(width, height, title, body)


def bar_spark(title: str, labels: Sequence[str], values: Sequence[float | None], *, fmt=human_bytes,
              marks: dict[int, str] | None = None, limit: float | None = None, limit_label: str = "",
              width: int = 320, height: int = 96) -> str:
    """A small bar per value (one per night); ``marks`` (index -> why) are drawn red with a ring,
    ``limit`` as a dashed line. Missing values leave a gap. Every bar has a tooltip."""
    left, right, top, bottom = 4, 4, 22, 14
    pw, ph = width - left - right, height - top - bottom
    marks = marks or {}
    known = [v for v in values if v is not None]
    ymax = _nice_max(max(known + ([limit] if limit is not None else []), default=0))
    n = max(len(values), 1)
    slot = pw / n
    body = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
            f'<text x="{width / 2:.0f}" y="{height - 2}" text-anchor="middle" fill="#666">max {_xml(fmt(ymax))}</text>']
    for i, v in enumerate(values):
        if v is None:
            continue
        h = max(ph * v / ymax, 1.0)
        x, y = left + i * slot, top + ph - h
        why = marks.get(i)
        color = PALETTE[1] if why else PALETTE[0]
        tip = f"{labels[i] if i < len(labels) else i}: {fmt(v)}" + (f" -- {why}" if why else "")
        cls = ' class="anomaly"' if why else ""
        body.append(f'<rect x="{x + slot * 0.1:.1f}" y="{y:.1f}" width="{max(slot * 0.8, 1):.1f}" height="{h:.1f}" '
                    f'fill="{color}"{cls}><title>{_xml(tip)}</title></rect>')
        if why:
            body.append(f'<circle cx="{x + slot / 2:.1f}" cy="{y - 4:.1f}" r="3" fill="none" stroke="{PALETTE[1]}"/>')
    if limit is not None:
        ly = top + ph - ph * limit / ymax
        body.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{left + pw}" y2="{ly:.1f}" stroke="{PALETTE[1]}" '
                    f'stroke-dasharray="4 3"><title>{_xml(limit_label or fmt(limit))}</title></line>')
    if labels:
        body.append(f'<text x="{left}" y="{height - 2}" fill="#666">{_xml(labels[0])}</text>')
        body.append(f'<text x="{width - right}" y="{height - 2}" text-anchor="end" fill="#666">{_xml(labels[-1])}</text>')
    if not known:
        body.append(f'<text x="{width / 2:.0f}" y="{top + ph / 2:.0f}" text-anchor="middle">no data</text>')
    return _svg(width, height, title, body).replace('font-size="13"', 'font-size="11"', 1)


# -- the document -------------------------------------------------------------------------
@dataclass
class Doc:
    """A report as a list of blocks, rendered to Markdown (:meth:`markdown`) or HTML (:meth:`html`)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)
    charts: dict[str, str] = field(default_factory=dict)  # file name (NAME.svg) -> SVG text

    def heading(self, text: str, level: int = 2) -> "Doc":
        self.blocks.append(("h", level, text))
        return self

    def para(self, text: str) -> "Doc":
        self.blocks.append(("p", text))
        return self

    def bullets(self, items: Iterable[str]) -> "Doc":
        items = list(items)
        if items:
            self.blocks.append(("ul", items))
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> "Doc":
        rows = [[("-" if c is None else str(c)) for c in r] for r in rows]
        self.blocks.append(("table", list(headers), rows))
        return self

    def code(self, text: str) -> "Doc":
        self.blocks.append(("code", text))
        return self

    def chart(self, name: str, svg: str, alt: str) -> "Doc":
        """Add a chart; ``name`` becomes the file ``NAME.svg`` beside report.md."""
        file = name if name.endswith(".svg") else f"{name}.svg"
        if file in self.charts:
            raise ValueError(f"chart {file} added twice")
        self.charts[file] = svg
        self.blocks.append(("img", file, alt))
        return self

    # -- Markdown ---------------------------------------------------------------------
    @staticmethod
    def _md_cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += [f"{'#' * block[1]} {block[2]}", ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(self._md_cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(self._md_cell(c) for c in r) + " |" for r in rows]
                if not rows:
                    out.append("| " + " | ".join(["(none)"] + [""] * (len(headers) - 1)) + " |")
                out.append("")
            elif kind == "code":
                fence = "````" if "```" in block[1] else "```"
                out += [fence, block[1].rstrip("\n"), fence, ""]
            elif kind == "img":
                out += [f"![{block[2]}]({block[1]})", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    # -- HTML -------------------------------------------------------------------------
    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
               "text-align:left;vertical-align:top}th{background:#f3f3f3}pre{background:#f6f6f6;padding:.8em;"
               "overflow-x:auto}figure{margin:1em 0}</style>", "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{e(block[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in block[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows or '<tr><td>(none)</td></tr>'}"
                           f"</tbody></table>")
            elif kind == "code":
                out.append(f"<pre>{e(block[1])}</pre>")
            elif kind == "img":
                out.append(f"<figure>{self.charts[block[1]]}<figcaption>{e(block[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def files(self) -> dict[str, str]:
        """Every file of the report: report.md, report.html and the charts."""
        return {"report.md": self.markdown(), "report.html": self.html(), **self.charts}


CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".html": "text/html; charset=utf-8",
                 ".svg": "image/svg+xml", ".json": "application/json"}


def content_type(name: str) -> str:
    for suffix, ctype in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return ctype
    return "application/octet-stream"


# -- where a report goes ---------------------------------------------------------------------
def report_prefix(base: str, kind: str, report_date) -> str:
    """``<reports.prefix><kind>/<YYYY-MM-DD>/`` -- one folder per report in the bucket."""
    return f"{base}{kind}/{report_date.isoformat()}/"


def publish_files(files: dict[str, str | bytes], *, bucket, prefix: str, local_dir,
                  sse: str | None = None) -> dict:
    """Write the report's files to ``local_dir`` first (the copy that survives an S3 outage),
    then upload them under ``prefix`` with server-side encryption ``sse``.

    Returns ``{"uri": s3://.../report.md, "html": s3://.../report.html, "local": path, "keys": [...]}``.
    """
    from pathlib import Path

    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        data = body.encode() if isinstance(body, str) else body
        (local_dir / name).write_bytes(data)
    keys = []
    for name, body in files.items():
        data = body.encode() if isinstance(body, str) else body
        extra = {"ServerSideEncryption": sse} if sse else {}
        # A checksum header is mandatory in a bucket with object-lock default retention (put sends SHA-256).
        bucket.put(prefix + name, data, content_type=content_type(name), **extra)
        keys.append(prefix + name)
    return {"uri": bucket.uri(f"{prefix}report.md"), "html": bucket.uri(f"{prefix}report.html"),
            "local": str(local_dir / "report.md"), "keys": keys}


__all__ = ["Doc", "line_chart", "bar_chart", "bar_spark", "human_bytes", "human_seconds", "content_type", "report_prefix",
           "publish_files"]
