"""Secrets this process must never print: one registry, fed by the core, drained by the orchestrator's masker.

The core finds secrets where it reads them (a connection setting's password when the replace
saga reads the application's configuration, :func:`backupkit.restore.conninfo.secret_fragments`)
and calls :func:`hide`; the Airflow layer registers its secrets masker once
(``airflow.sdk.log.mask_secret``), so task logs, rendered fields and error messages show
``***`` wherever a registered fragment appears. Without a registered masker (the CLI, tests)
:func:`hide` only remembers the fragments (:func:`hidden`), and the core's own redaction is
what keeps them out of journals, approval texts and results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

_maskers: list[Callable[[str], None]] = []
_hidden: set[str] = set()


def register_masker(masker: Callable[[str], None]) -> None:
    """Have ``masker(fragment)`` called for every fragment hidden from now on (and those before)."""
    if masker not in _maskers:
        _maskers.append(masker)
        for fragment in sorted(_hidden):
            masker(fragment)


def hide(fragments: Iterable[str]) -> None:
    """Register secret fragments with every masker."""
    for fragment in fragments:
        if fragment and fragment not in _hidden:
            _hidden.add(fragment)
            for masker in _maskers:
                masker(fragment)


def hidden() -> frozenset[str]:
    return frozenset(_hidden)


__all__ = ["register_masker", "hide", "hidden"]
