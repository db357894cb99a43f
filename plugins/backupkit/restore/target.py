"""What a restore target already holds where an archive will write: per member, whether to
write, replace, skip or reuse (a directory), and the links or files that forbid it.

The target is walked exactly as the writer will walk it (:class:`~backupkit.restore.rootfs.Root`),
so what this inspection allows the writer can do, and a link in the target that leads
outside it (for a member's directory, or for where a link of the archive leads) is found
before anything is written.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.checks.tarstream import DIRECTORY, SYMLINK
from backupkit.checks.tartree import ArchiveTree, Node, parts
from backupkit.restore import rootfs
from backupkit.restore.rootfs import Escape, NotADirectory, Root


@dataclass
class TargetFindings:
    actions: dict[str, str] = field(default_factory=dict)  # path -> write | replace | skip | exists
    unsafe: list[str] = field(default_factory=list)  # links in the target leading outside it
    conflicts: list[str] = field(default_factory=list)  # files where directories go, existing files


def inspect_target(target: Path, tree: ArchiveTree, selected: list[tuple[str, Node]], existing: str) -> TargetFindings:
    """Per selected member, what writing it into ``target`` means under policy ``existing``."""
    found = TargetFindings()
    if not os.path.lexists(target):
        found.actions = {p: "write" for p, _ in selected}
        return found
    if not target.is_dir():
        found.conflicts.append(f"the target {target} is not a directory")
        return found
    by_parent: dict[str, list[tuple[str, Node]]] = {}
    for p, n in selected:
        by_parent.setdefault(posixpath.dirname(p), []).append((p, n))
    with Root(target) as root:
        for parent, items in by_parent.items():
            try:
                fd = root.walk(parts(parent), create=False)
            except Escape as exc:
                found.unsafe.append(str(exc))
                continue
            except NotADirectory as exc:
                found.conflicts.append(str(exc))
                continue
            if fd is None:
                found.actions.update((p, "write") for p, _ in items)
                continue
            try:
                for p, n in items:
                    found.actions[p] = _action(root, fd, p, n, existing, found)
            finally:
                os.close(fd)
        for p, n in selected:
            if n.kind == SYMLINK:
                _check_link(root, tree, p, n, found)
    return found


def _action(root: Root, fd: int, path: str, node: Node, existing: str, found: TargetFindings) -> str:
    st = rootfs.lstat(fd, posixpath.basename(path))
    if st is None:
        return "write"
    if node.kind == DIRECTORY:
        if stat.S_ISLNK(st.st_mode):
            try:
                inner = root.walk(parts(path), create=False)
                if inner is not None:
                    os.close(inner)
            except Escape as exc:
                found.unsafe.append(str(exc))
            except NotADirectory:
                found.conflicts.append(f"{path!r} exists and is not a directory")
        elif not stat.S_ISDIR(st.st_mode):
            found.conflicts.append(f"{path!r} exists and is not a directory")
        return "exists"
    if stat.S_ISDIR(st.st_mode):
        found.conflicts.append(f"{path!r} is an existing directory; the archive has a {node.kind} there")
    elif existing == "fail":
        found.conflicts.append(f"{path!r} already exists")
    return "replace" if existing == "overwrite" else "skip"


def _check_link(root: Root, tree: ArchiveTree, path: str, node: Node, found: TargetFindings) -> None:
    """A link of the archive must not lead outside through a link already in the target."""
    try:
        fd = root.walk(tree.resolved(node), create=False)
    except Escape as exc:
        found.unsafe.append(f"symbolic link {path!r} of the archive would lead outside the target: {exc}")
    except NotADirectory:
        pass  # leads to a file: nothing beyond it
    else:
        if fd is not None:
            os.close(fd)
