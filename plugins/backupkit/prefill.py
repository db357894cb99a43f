"""Form values carried in a link (``?conf={...}``), checked before they may pre-fill a restore form.

Airflow 3.3's UI cannot pre-fill a trigger form from the URL (apache/airflow#54800 is open; the
feature was merged as #59231 and reverted by #59769), so the health page's "restore this backup"
link carries the values as ``/dags/<dag>?conf=<JSON>`` -- the form Airflow 2 accepted and the
reverted change used -- and the plugin's middleware puts them into the form's defaults.

A link can be crafted by anyone, so the rule (``docs/health.md``) is strict: at most
:data:`MAX_CONF` bytes of JSON, an object with only the fields the restore forms choose a
backup with (``source`` or ``file_set``, ``which``, ``key``), each a string; the source must
be configured and of the DAG's kind, ``which`` one of the form's choices, the key a plain key
under that source's prefix (:func:`backupkit.restore.selection.check_key`). Anything else is
refused whole and the form keeps its defaults. Only defaults change: the person still reads
the form and presses Trigger, and the DAG validates the run again.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from backupkit.config import Config
from backupkit.restore.selection import WHICH, SelectionError, check_key

MAX_CONF = 2048
FIELDS = {"backup_restore": ("source", "database"), "backup_file_restore": ("file_set", "files")}


class PrefillRefused(ValueError):
    """The link's values may not pre-fill the form; the message says why."""


def prefill_values(conf_text: str, dag_id: str, config: Config) -> dict[str, str]:
    """The checked values of ``conf_text`` for ``dag_id``'s form, or :class:`PrefillRefused`."""
    if dag_id not in FIELDS:
        raise PrefillRefused(f"{dag_id!r} is not a restore DAG")
    field, kind = FIELDS[dag_id]
    if len(conf_text.encode("utf-8", "surrogatepass")) > MAX_CONF:
        raise PrefillRefused(f"conf longer than {MAX_CONF} bytes")
    try:
        conf = json.loads(conf_text)
    except (ValueError, RecursionError) as exc:
        raise PrefillRefused(f"conf is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise PrefillRefused("conf must be a JSON object")
    unknown = set(conf) - {field, "which", "key"}
    if unknown:
        raise PrefillRefused(f"conf has fields the form does not take: {', '.join(sorted(map(str, unknown)))[:200]}")
    if not all(isinstance(v, str) for v in conf.values()):
        raise PrefillRefused("conf values must be strings")
    name = conf.get(field)
    sources = {s.name: s for s in config.sources if s.kind == kind}
    if name not in sources:
        raise PrefillRefused(f"{field} must be one of {', '.join(sources) or '(none configured)'}")
    which = conf.get("which", "latest")
    if which not in WHICH:
        raise PrefillRefused(f"which must be one of {', '.join(WHICH)}")
    out = {field: name, "which": which}
    if "key" in conf:
        try:
            check_key(conf["key"], [sources[name].s3_prefix])
        except SelectionError as exc:
            raise PrefillRefused(str(exc)) from None
        out["key"] = conf["key"]
    elif which == "key":
        raise PrefillRefused("which is 'key' but no key is given")
    return out


def apply_to_params(details: Any, values: Mapping[str, str]) -> bool:
    """Set the defaults of the form fields in a DAG-details document (``params.NAME.value``); True if changed.

    Fields the DAG does not have are left out: the form only shows what the DAG declares.
    """
    params = details.get("params") if isinstance(details, dict) else None
    if not isinstance(params, dict):
        return False
    changed = False
    for name, value in values.items():
        param = params.get(name)
        if isinstance(param, dict) and "value" in param:
            param["value"] = value
            changed = True
    return changed


__all__ = ["MAX_CONF", "FIELDS", "PrefillRefused", "apply_to_params", "prefill_values"]
