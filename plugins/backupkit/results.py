"""The one result type every check returns: (artifact, check, ok, detail)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class CheckResult:
    artifact: str
    check: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        return cls(artifact=d["artifact"], check=d["check"], ok=bool(d["ok"]), detail=d.get("detail", ""))

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.artifact}: {self.check}: {self.detail}"


def problems(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]
