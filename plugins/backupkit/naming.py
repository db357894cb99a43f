"""Backup file names carry the backup's own timestamp.

A source's ``pattern`` is a file name with strftime directives, e.g.
``trixtech_%Y%m%d_%H%M%S.dump``. The timestamp parsed from the name is what the
checks and the retention policy order by: never an mtime or an S3 LastModified,
which a copy or re-upload changes.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_DIRECTIVES = {"Y": r"\d{4}", "m": r"\d{2}", "d": r"\d{2}", "H": r"\d{2}", "M": r"\d{2}", "S": r"\d{2}"}


class PatternError(ValueError):
    pass


class NamePattern:
    """A file-name template with strftime directives; matches names and parses timestamps."""

    def __init__(self, template: str):
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
        self._regex = re.compile("".join(parts) + r"\Z")

    def timestamp(self, name: str) -> datetime | None:
        """The UTC timestamp encoded in ``name``, or None when the name does not match."""
        m = self._regex.match(name)
        if not m:
            return None
        g = m.groupdict()
        try:
            return datetime(int(g["Y"]), int(g["m"]), int(g["d"]), int(g.get("H") or 0),
                            int(g.get("M") or 0), int(g.get("S") or 0), tzinfo=timezone.utc)
        except ValueError:
            return None

    def name_for(self, when: datetime) -> str:
        return when.astimezone(timezone.utc).strftime(self.template)

    def __repr__(self) -> str:
        return f"NamePattern({self.template!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamePattern) and other.template == self.template

    def __hash__(self) -> int:
        return hash(self.template)
