"""Typed, path-aware access to the YAML: every error names the file, the key and the problem."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration is invalid; the message names file, key and problem."""

    def __init__(self, file: str | Path, key: str, problem: str):
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{file}: {key}: {problem}")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)-([^}]*))?\}")


def expand_env(value: str, file: Path, key: str) -> str:
    """Shell parameter expansion: ``${VAR}``, ``${VAR:-default}`` (default when VAR is unset
    *or empty*) and ``${VAR-default}`` (default only when VAR is unset)."""
    def repl(m: re.Match) -> str:
        name, colon, default = m.group(1), m.group(2), m.group(3)
        value = os.environ.get(name)
        if value is not None and not (colon and value == "" and default is not None):
            return value
        if default is not None:
            return default
        raise ConfigError(file, key, f"environment variable {name} is not set and has no default")

    return _ENV.sub(repl, value)


class Reader:
    """Typed access to one mapping of the YAML, with errors that carry the key path."""

    def __init__(self, data: Any, file: Path, key: str):
        if not isinstance(data, dict):
            raise ConfigError(file, key or "<top>", f"expected a mapping, got {type(data).__name__}")
        self.data, self.file, self.key = data, file, key
        self._used: set[str] = set()

    def at(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, typ: type | tuple, default: Any = ..., *, expand: bool = True) -> Any:
        self._used.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                raise ConfigError(self.file, self.at(name), "is required")
            return default
        value = self.data[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, float)):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ConfigError(self.file, self.at(name), f"expected {want}, got {value!r}")
        if expand and isinstance(value, str):
            value = expand_env(value, self.file, self.at(name))
        return value

    def non_negative(self, name: str, typ: type, default: Any) -> Any:
        value = self.get(name, typ, default)
        if value < 0:
            raise ConfigError(self.file, self.at(name), f"must be >= 0, got {value}")
        return value

    def child(self, name: str) -> "Reader":
        """The mapping under ``name`` (absent or empty: an empty one; anything else is an error)."""
        self._used.add(name)
        value = self.data.get(name)
        return Reader({} if value is None else value, self.file, self.at(name))

    def mark_used(self, name: str) -> None:
        """``name`` is read by the caller itself (so :meth:`reject_unknown` accepts it)."""
        self._used.add(name)

    def strings(self, name: str) -> tuple[str, ...]:
        values = self.get(name, list, [])
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise ConfigError(self.file, f"{self.at(name)}[{i}]", f"expected a string, got {v!r}")
        return tuple(expand_env(v, self.file, f"{self.at(name)}[{i}]") for i, v in enumerate(values))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise ConfigError(self.file, self.at(unknown[0]), "unknown key (typo?)")


__all__ = ["ConfigError", "Reader", "expand_env"]
