"""The safe-archive rule: every member judged against the tree the archive builds.

``backupctl verify`` and the file restore both feed the members of an archive to one
:class:`ArchiveTree`, so they refuse exactly the same archives. A link is judged by where it
leads in the tree as it will be after extraction, through every other link of the archive
(a link that looks harmless alone can be the first hop of one that escapes), not by its
text. The rule is stated in ``docs/archive-rules.md`` ("Safety"); the restore writes the
tree this class accepts, links last.
"""

from __future__ import annotations

from collections import deque

from backupkit.checks.tarstream import BLOCKDEV, CHARDEV, DIRECTORY, FIFO, FILE, HARDLINK, SYMLINK, Member

MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS: links followed while resolving one path
MAX_PATH_BYTES = 4095  # PATH_MAX - 1
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_KEPT = 10_000  # problems and warnings kept one by one; the rest are counted
_ROOT_ONLY_DIR = "the archive root can only be a directory"


class Node:
    """One path of the tree; ``kind`` None is a directory implied by the members below it."""

    # Kept small (one per path of the archive): modes and times are read again by the restore.
    __slots__ = ("parent", "name", "children", "kind", "index", "source", "size", "link")

    def __init__(self, parent: Node | None, name: str):
        self.parent, self.name = parent, name
        self.children: dict[str, Node] | None = None
        self.kind: str | None = None
        self.index = self.source = self.size = 0
        self.link = ""  # a symbolic link's target, or the member a hard link names

    def child(self, name: str) -> Node | None:
        return self.children.get(name) if self.children else None

    def make_child(self, name: str) -> Node:
        if self.children is None:
            self.children = {}
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = Node(self, name)
        return node


def parts(name: str) -> list[str]:
    """``./a//b/`` -> ``["a", "b"]``: the components of a member name or link target."""
    return [p for p in name.split("/") if p not in ("", ".")]


def name_problem(name: str) -> str | None:
    """Why a member name (or hard-link target) cannot be extracted inside the root, if it cannot."""
    if "\0" in name:
        return "NUL byte in the name"
    if name.startswith("/"):
        return "absolute path"
    components = name.split("/")
    if ".." in components:
        return "parent reference"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return f"name longer than {MAX_PATH_BYTES} bytes"
    if any(len(c.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for c in components):
        return f"a path component longer than {MAX_NAME_BYTES} bytes"
    return None


class _Walk:
    """Resolution of one symbolic link: a position in the tree plus components below it
    that no member creates (``extra``), the components still to apply, links followed."""

    __slots__ = ("link", "node", "extra", "todo", "hops")

    def __init__(self, link: Node):
        self.link, self.node, self.extra = link, link.parent, []
        self.todo, self.hops = deque(parts(link.link)), 1  # opening the link follows it: one hop


class ArchiveTree:
    """Feed every member in archive order to :meth:`add`, then call :meth:`finish`."""

    def __init__(self) -> None:
        self.root = Node(None, "")
        self.order: list[Node] = []  # nodes in the order their first member appeared
        self.problems: list[tuple[int, str, str]] = []  # (index, member name, reason)
        self.warnings: list[tuple[int, str, str]] = []
        self.n_problems = self.n_warnings = 0
        self._symlinks: list[tuple[Node, str]] = []
        self._memo: dict[Node, tuple | str] = {}

    # -- members ---------------------------------------------------------------------------
    def _refuse(self, m: Member | tuple[int, str], reason: str) -> None:
        index, name = (m.index, m.name) if isinstance(m, Member) else m
        self.n_problems += 1
        if len(self.problems) < MAX_KEPT:
            self.problems.append((index, name, reason))

    def _warn(self, m: Member, reason: str) -> None:
        self.n_warnings += 1
        if len(self.warnings) < MAX_KEPT:
            self.warnings.append((m.index, m.name, reason))

    def add(self, m: Member) -> None:
        reason = name_problem(m.name) or self._kind_problem(m)
        if reason:
            return self._refuse(m, reason)
        names = parts(m.name)
        if not names:
            if m.kind != DIRECTORY:
                self._refuse(m, f"{_ROOT_ONLY_DIR}, not a {m.kind}")
            return  # the root itself exists already; nothing to record
        node = self.root
        for name in names[:-1]:
            node = node.make_child(name)
            if node.kind not in (None, DIRECTORY):
                what = "a symbolic link of the same archive" if node.kind == SYMLINK else f"a {node.kind} of the archive"
                return self._refuse(m, f"lies below {self.path(node)!r}, {what}")
        leaf = node.make_child(names[-1])
        source = self._hardlink_source(m) if m.kind == HARDLINK else (m.index, m.size)
        if isinstance(source, str):
            return self._refuse(m, source)
        if reason := self._replacement_problem(m, leaf):
            return self._refuse(m, reason)
        if m.kind in (FILE, HARDLINK) and m.mode & 0o6000:
            bits = " and ".join(b for bit, b in ((0o4000, "set-user-ID"), (0o2000, "set-group-ID")) if m.mode & bit)
            self._warn(m, f"{bits} (mode {m.mode & 0o7777:04o}); restored without it")
        if leaf.kind is None:
            self.order.append(leaf)
        leaf.kind, leaf.index = m.kind, m.index
        leaf.source, leaf.size = source
        leaf.link = m.linkname if m.kind in (SYMLINK, HARDLINK) else ""
        if m.kind == SYMLINK:
            self._symlinks.append((leaf, m.name))

    def _kind_problem(self, m: Member) -> str | None:
        if m.kind in (CHARDEV, BLOCKDEV, FIFO):
            return "device or fifo file"
        if m.kind not in (FILE, HARDLINK, SYMLINK, DIRECTORY):
            return f"{m.kind} (only files, directories and links are extracted)"
        if m.kind == SYMLINK:
            target = m.linkname
            if not target:
                return "symbolic link with an empty target"
            if "\0" in target or len(target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
                return f"symbolic link target with a NUL byte or longer than {MAX_PATH_BYTES} bytes"
            if target.startswith("/"):
                return f"symbolic link to the absolute path {target!r}"
        return None

    def _hardlink_source(self, m: Member) -> tuple[int, int] | str:
        """(index, size) of the file whose content hard link ``m`` gets, or why it gets none."""
        target = m.linkname
        if reason := name_problem(target):
            return f"hard link to {target!r}: {reason}"
        node: Node | None = self.root
        for name in parts(target):
            if node is not None and node.kind == SYMLINK:
                return f"hard link to {target!r} goes through {self.path(node)!r}, a symbolic link"
            node = node.child(name) if node is not None else None
        if node is None or node is self.root or node.kind not in (FILE, HARDLINK):
            what = f"a {node.kind}" if node is not None and node.kind else "not an earlier file of the archive"
            return f"hard link to {target!r}, which is {what}"
        return node.source, node.size

    def _replacement_problem(self, m: Member, leaf: Node) -> str | None:
        if leaf.children and m.kind != DIRECTORY:
            return f"a {m.kind} where the archive has members below {self.path(leaf)!r}"
        if leaf.kind is None or (leaf.kind == DIRECTORY and m.kind == DIRECTORY):
            return None
        if SYMLINK in (leaf.kind, m.kind):
            return f"a {m.kind} replaces an earlier {leaf.kind} of the same name (links are never replaced)"
        self._warn(m, f"duplicate name: replaces the earlier {leaf.kind} of the same name")
        return None

    # -- links -----------------------------------------------------------------------------
    def finish(self) -> None:
        """Judge every symbolic link against the whole tree; problems end up in archive order."""
        for node, name in self._symlinks:
            result = self._resolve(node)
            if isinstance(result, str):
                self._refuse((node.index, name), f"symbolic link to {node.link!r} {result}")
        self.problems.sort()

    def _resolve(self, link: Node) -> tuple | str:
        """Where ``link`` leads: (node, extra components, links followed including itself),
        or why it is refused.

        Links met on the way are resolved first (an explicit stack, not recursion) and
        remembered, so each link's target is walked once however many links use it.
        """
        if link in self._memo:
            return self._memo[link]
        stack, active = [_Walk(link)], {link}
        while stack:
            w = stack[-1]
            result = self._advance(w, active)
            if isinstance(result, Node):  # a link met on the way: resolve it first, then resume
                stack.append(_Walk(result))
                active.add(result)
                continue
            self._memo[w.link] = result
            active.discard(w.link)
            stack.pop()
        return self._memo[link]

    def _advance(self, w: _Walk, active: set[Node]) -> tuple | str | Node:
        while w.todo:
            c = w.todo.popleft()
            if c == "..":
                if w.extra:
                    w.extra.pop()
                elif w.node is self.root:
                    return "climbs above the root of the archive"
                else:
                    w.node = w.node.parent
                continue
            nxt = None if w.extra else w.node.child(c)
            if nxt is None or nxt.kind != SYMLINK:
                if nxt is None:
                    w.extra.append(c)
                else:
                    w.node = nxt
                continue
            done = self._memo.get(nxt)
            if done is None:
                if nxt in active:
                    return f"loops through {self.path(nxt)!r}"
                w.todo.appendleft(c)
                return nxt
            if isinstance(done, str):
                if done.startswith("loops"):
                    return f"loops through {self.path(nxt)!r}"
                return f"goes through {self.path(nxt)!r}, an unsafe symbolic link"
            w.hops += done[2]
            if w.hops > MAX_LINK_HOPS:
                return f"follows more than {MAX_LINK_HOPS} symbolic links"
            w.node, w.extra = done[0], list(done[1])
        return (w.node, tuple(w.extra), w.hops)

    def resolved(self, link: Node) -> list[str]:
        """The components (from the root) a safe symbolic link leads to."""
        node, extra, _ = self._memo[link]
        return [*self.components(node), *extra]

    # -- paths -----------------------------------------------------------------------------
    def components(self, node: Node) -> list[str]:
        out = []
        while node is not self.root and node is not None:
            out.append(node.name)
            node = node.parent
        return out[::-1]

    def path(self, node: Node) -> str:
        return "/".join(self.components(node))
