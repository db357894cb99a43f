"""Backup file names carry the backup's own timestamp.

A source's ``pattern`` is a file name with strftime directives, e.g.
``trixtech_%Y%m%d_%H%M%S.dump``, and ``*`` for any run of characters. The timestamp parsed
from the name is what the checks and the retention policy order by: never an mtime or an
S3 LastModified, which a copy or re-upload changes.

Rules: directives match ASCII digits only (``\\d`` would accept fullwidth and other Unicode
digits); the date must exist (30 February does not match); the wall-clock time is read in
the pattern's zone (UTC unless the source declares ``name_timezone``), and in a DST fold
the first of the two instants is taken (as cron and most backup scripts name files).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo

_DIRECTIVES = {"Y": "[0-9]{4}", "m": "[0-9]{2}", "d": "[0-9]{2}", "H": "[0-9]{2}", "M": "[0-9]{2}", "S": "[0-9]{2}"}


class PatternError(ValueError):
    pass


class NamePattern:
    """A file-name template with strftime directives; matches names and parses timestamps."""

    def __init__(self, template: str, zone: tzinfo = timezone.utc):
        if "/" in template:
            raise PatternError(f"pattern must be a file name, not a path: {template!r}")
        parts, i = [], 0
        seen = set()
        while i < len(template):
            ch = template[i]
            if ch == "%":
                d = template[i + 1: i + 2]
                if d not in _DIRECTIVES:
                    raise PatternError(f"unsupported directive %{d} in {template!r} (use %Y %m %d %H %M %S)")
                parts.append(f"(?P<{d}>{_DIRECTIVES[d]})" if d not in seen else _DIRECTIVES[d])
                seen.add(d)
                i += 2
            elif ch == "*":
                parts.append(r"[^/]*?")
                i += 1
            else:
                parts.append(re.escape(ch))
                i += 1
        if not {"Y", "m", "d"} <= seen:
            raise PatternError(f"pattern {template!r} must contain at least %Y, %m and %d")
        self.template = template
        self.zone = zone
        self._regex = re.compile("".join(parts) + r"\Z", re.ASCII)

    def timestamp(self, name: str) -> datetime | None:
        """The instant encoded in ``name`` (aware, UTC), or None when the name does not match."""
        m = self._regex.match(name)
        if not m:
            return None
        g = m.groupdict()
        try:
            local = datetime(int(g["Y"]), int(g["m"]), int(g["d"]), int(g.get("H") or 0),
                             int(g.get("M") or 0), int(g.get("S") or 0), tzinfo=self.zone)
        except ValueError:
            return None
        return local.astimezone(timezone.utc)

    def name_for(self, when: datetime) -> str:
        return when.astimezone(self.zone).strftime(self.template)

    def fixed_ends(self) -> tuple[str, str]:
        """The literal text before the first directive or ``*``, and after the last one."""
        head = re.split(r"%[A-Za-z]|\*", self.template, maxsplit=1)[0]
        tail = re.split(r"%[A-Za-z]|\*", self.template)[-1]
        return head, tail

    def disjoint_from(self, other: "NamePattern") -> bool:
        """No file name can match both patterns, judged by their fixed leading and trailing texts."""
        (h1, t1), (h2, t2) = self.fixed_ends(), other.fixed_ends()
        heads_differ = not (h1.startswith(h2) or h2.startswith(h1))
        tails_differ = not (t1.endswith(t2) or t2.endswith(t1))
        return heads_differ or tails_differ

    def __repr__(self) -> str:
        return f"NamePattern({self.template!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamePattern) and (other.template, str(other.zone)) == (self.template, str(self.zone))

    def __hash__(self) -> int:
        return hash((self.template, str(self.zone)))
