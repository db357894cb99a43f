"""Database connection settings as applications hold them: parsed by libpq's rules, never printed whole.

A setting is one of (docs/restore.md, "Connection settings"):

* a **URL** ``postgresql://[user[:password]@]host[:port][,...][/dbname][?key=value&...]``
  (also ``postgres://``). Passwords written without percent-encoding are common, so the
  userinfo ends at the **last** ``@`` whose remainder is a host list followed by ``/``, ``?``,
  ``#`` or the end: ``postgresql://u:p#a/s?s@db/app`` has the password ``p#a/s?s``. The rest
  is split and decoded with :mod:`urllib.parse`; a ``dbname`` query parameter overrides the
  path, as in libpq.
* **keyword/value** pairs (libpq's ``conninfo``): ``key = value`` separated by blanks; a value
  is either unquoted up to the next blank, or in single quotes; in both a backslash takes the
  next character literally (``password=a\\ b`` is ``a b``, ``password='it\\'s'`` is ``it's``);
  a missing ``=`` or an unterminated quote is an error.
* a bare database **name** (``[A-Za-z_][A-Za-z0-9_$]*``).

Secret parts -- the URL's password, and the values of ``password`` and ``sslpassword`` in
either form -- are what :func:`redact` replaces with ``***`` (as written, quotes and escapes
included) and what :func:`secret_fragments` returns, decoded and as written, for the secrets
masker. Text that parses as none of the three is never shown: :func:`redact` says only that
it could not be parsed, and the whole text counts as secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

SECRET_KEYS = frozenset({"password", "sslpassword"})
_SCHEMES = ("postgresql://", "postgres://")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_HOSTS = re.compile(r"[A-Za-z0-9.\-_%:\[\],]*")
UNPARSEABLE = "<connection setting that could not be parsed: not shown>"


class SettingError(ValueError):
    """A setting that is neither a URL, keyword/value pairs nor a name; the message never quotes it."""


@dataclass
class Part:
    """One value of a setting: what it means, and where it is written (``text[start:end]``)."""

    value: str
    start: int
    end: int


@dataclass
class Setting:
    text: str
    form: str  # "url" | "keywords" | "name"
    params: dict[str, Part] = field(default_factory=dict)  # keyword / query parameter -> value
    password: Part | None = None  # the URL's userinfo password
    path: Part | None = None  # the URL's path (its database), "/" included

    @property
    def database(self) -> str | None:
        if "dbname" in self.params:
            return self.params["dbname"].value or None
        if self.form == "url":
            return self.path.value or None if self.path else None
        return self.params.get("_name", Part("", 0, 0)).value or None

    def secrets(self) -> list[Part]:
        parts = [p for k, p in self.params.items() if k in SECRET_KEYS]
        return parts + ([self.password] if self.password is not None else [])


def parse(text: str) -> Setting:
    """A setting by libpq's rules (module doc); :class:`SettingError` when it is none of them."""
    if not isinstance(text, str):
        raise SettingError("a connection setting must be text")
    stripped = text.strip()
    if stripped.startswith(_SCHEMES):
        return _parse_url(text)
    if _NAME.fullmatch(stripped):
        start = text.index(stripped)
        return Setting(text, "name", {"_name": Part(stripped, start, start + len(stripped))})
    return _parse_keywords(text)


# -- keyword/value pairs (fe-connect.c, conninfo_parse) --------------------------------------------
def _parse_keywords(text: str) -> Setting:
    s = Setting(text, "keywords")
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        k0 = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[k0:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise SettingError(f"missing '=' after keyword {len(s.params) + 1} of a keyword/value setting")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        v0 = i
        value, i = _quoted(text, i) if i < n and text[i] == "'" else _unquoted(text, i)
        s.params[key] = Part(value, v0, i)
    if not s.params:
        raise SettingError("an empty connection setting")
    return s


def _unquoted(text: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(text) and not text[i].isspace():
        if text[i] == "\\":
            i += 1
            if i < len(text):
                out.append(text[i])
                i += 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out), i


def _quoted(text: str, i: int) -> tuple[str, int]:
    out, i = [], i + 1
    while True:
        if i >= len(text):
            raise SettingError("unterminated quoted value in a keyword/value setting")
        c = text[i]
        if c == "\\":
            i += 1
            if i < len(text):
                out.append(text[i])
                i += 1
            continue
        if c == "'":
            return "".join(out), i + 1
        out.append(c)
        i += 1


# -- URLs ---------------------------------------------------------------------------------------------
def _parse_url(text: str) -> Setting:
    s = Setting(text, "url")
    lead = len(text) - len(text.lstrip())
    body = lead + len(next(p for p in _SCHEMES if text.lstrip().startswith(p)))
    end = len(text.rstrip())
    at = _userinfo_end(text, body, end)
    host0 = body
    if at is not None:
        colon = text.find(":", body, at)
        if colon >= 0:
            s.password = Part(unquote(text[colon + 1:at]), colon + 1, at)
        host0 = at + 1
    m = _HOSTS.match(text, host0, end)
    i = m.end()
    if i < end and text[i] == "/":
        q = min((x for x in (text.find("?", i, end), text.find("#", i, end)) if x >= 0), default=end)
        s.path = Part(unquote(text[i + 1:q]), i, q)
        i = q
    if i < end and text[i] == "?":
        q = text.find("#", i, end)
        _query(s, text, i + 1, q if q >= 0 else end)
    elif i < end and text[i] != "#":
        raise SettingError("a URL setting whose host part cannot be read")
    return s


def _userinfo_end(text: str, body: int, end: int) -> int | None:
    """The ``@`` ending the userinfo: the last one followed by a host list and then ``/ ? #`` or the end."""
    at = text.rfind("@", body, end)
    while at >= 0:
        m = _HOSTS.match(text, at + 1, end)
        if m.end() == end or text[m.end()] in "/?#":
            return at
        at = text.rfind("@", body, at)
    return None


def _query(s: Setting, text: str, start: int, end: int) -> None:
    i = start
    while i < end:
        amp = text.find("&", i, end)
        stop = amp if amp >= 0 else end
        key, eq, _ = text[i:stop].partition("=")
        if key:
            v0 = i + len(key) + len(eq)
            s.params[unquote(key)] = Part(unquote(text[v0:stop].replace("+", " ")), v0, stop)
        i = stop + 1


# -- what the rest of the restore asks -------------------------------------------------------------------
def redact(text: str) -> str:
    """The setting with every secret value replaced by ``***`` (never the text if it does not parse)."""
    try:
        s = parse(text)
    except SettingError:
        return UNPARSEABLE
    out = text
    for p in sorted(s.secrets(), key=lambda p: p.start, reverse=True):
        out = out[:p.start] + "***" + out[p.end:]
    return out


def secret_fragments(text: str) -> list[str]:
    """Every secret of the setting as written and decoded, for the secrets masker (the whole text
    when it does not parse)."""
    try:
        s = parse(text)
    except SettingError:
        return [text] if text else []
    out = []
    for p in s.secrets():
        out += [p.value, text[p.start:p.end]]
    return [f for f in dict.fromkeys(out) if f]


def setting_database(text: str) -> str | None:
    """The database a setting points at, or None when it names none (or does not parse)."""
    try:
        return parse(text).database
    except SettingError:
        return None


def point_setting_at(text: str, old_database: str, new_database: str) -> str:
    """``text`` with its database changed from ``old_database`` to ``new_database``, every other
    byte as it was (so pointing it back gives the original exactly).

    Refuses a setting that does not point at ``old_database``: then this is not the
    application of the backup's source, and guessing would break it.
    """
    if not _NAME.fullmatch(new_database or ""):
        raise ValueError(f"not a plain database name: {new_database!r}")
    try:
        s = parse(text)
    except SettingError as exc:
        raise ValueError(f"the application's database setting cannot be parsed ({exc}); refusing to guess "
                         "how to switch it") from None
    current = s.database
    if current != old_database:
        raise ValueError(f"the setting {redact(text)!r} points at database {current!r}, not at the source's "
                         f"database {old_database!r}; refusing to guess how to switch it")
    if "dbname" in s.params:
        part = s.params["dbname"]
        written = quote(new_database, safe="") if s.form == "url" else new_database
    elif s.form == "url":
        part, written = s.path, "/" + quote(new_database, safe="")
    else:
        part, written = s.params["_name"], new_database
    return text[:part.start] + written + text[part.end:]


__all__ = ["Setting", "SettingError", "parse", "redact", "secret_fragments", "setting_database", "point_setting_at",
           "SECRET_KEYS", "UNPARSEABLE"]
