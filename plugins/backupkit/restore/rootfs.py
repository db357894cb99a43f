"""File-system operations confined to one directory, whatever it contains or comes to contain.

A restore must not write outside its target even when the target already holds symbolic
links, or when one is swapped in while the restore runs. So no path handed to the kernel
has more than one component: every path is walked from an open descriptor of the root with
``O_NOFOLLOW``, a symbolic link met on the way is read and followed by :meth:`Root.walk`
itself (inside the root only, at most 40 of them), and ``..`` is applied to the walk's own
record of where it is, never opened. Files are created with ``O_EXCL | O_NOFOLLOW`` under
temporary names and renamed into place, so a link at the destination is replaced, never
followed. (A directory moved out of the root by another process while we hold it open is
beyond this: the restore target must not be writable by untrusted users.)
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections import deque

from backupkit.checks.tartree import parts

MAX_LINK_HOPS = 40
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Escape(Exception):
    """A path would leave the root through a symbolic link (or too many of them)."""


class NotADirectory(Exception):
    """A component of a path exists and is not a directory."""


class Root:
    """An open directory, and walks below it that never leave it."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.realpath(path)
        self.fd = os.open(self.path, _O_DIR)

    @classmethod
    def opened(cls, fd: int, path: str | os.PathLike) -> Root:
        """A root for directory descriptor ``fd`` (taken over) known by ``path``."""
        root = cls.__new__(cls)
        root.path, root.fd = os.path.realpath(path), fd
        return root

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def walk(self, parts: list[str], *, create: bool) -> int | None:
        """A new descriptor of directory ``root/parts`` (the caller closes it).

        Missing directories are made when ``create``, else the answer is None. Raises
        :class:`Escape` when a symbolic link would lead outside the root, and
        :class:`NotADirectory` when a component is a file.
        """
        stack: list[tuple[str, int]] = [("", os.dup(self.fd))]
        todo, hops, retries = deque(parts), 0, 0
        try:
            while todo:
                name = todo.popleft()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) == 1:
                        raise Escape(f"{self._shown(stack)!r} leads above the target through '..'")
                    os.close(stack.pop()[1])
                    continue
                try:
                    fd = os.open(name, _O_DIR, dir_fd=stack[-1][1])
                except FileNotFoundError:
                    if not create:
                        return None
                    retries = self._retry(retries, stack, name)
                    try:
                        os.mkdir(name, 0o755, dir_fd=stack[-1][1])
                    except FileExistsError:
                        pass
                    todo.appendleft(name)  # open what is there now: it may have become a link
                    continue
                except OSError as exc:  # O_DIRECTORY | O_NOFOLLOW on a link: ENOTDIR (or ELOOP)
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    target = self._readlink(stack, name)
                    if target is None:
                        raise NotADirectory(f"{self._shown(stack, name)!r} exists and is not a directory") from None
                    if target == "":  # gone meanwhile: look again
                        retries = self._retry(retries, stack, name)
                        todo.appendleft(name)
                        continue
                    hops += 1
                    if hops > MAX_LINK_HOPS:
                        raise Escape(f"{self._shown(stack, name)!r}: more than {MAX_LINK_HOPS} symbolic links") from None
                    self._follow(stack, name, target, todo)
                    continue
                stack.append((name, fd))
            return stack.pop()[1]
        finally:
            for _, fd in stack:
                os.close(fd)

    @staticmethod
    def _readlink(stack: list[tuple[str, int]], name: str) -> str | None:
        """The link's target; None when ``name`` is no link; "" when it just disappeared."""
        try:
            return os.readlink(name, dir_fd=stack[-1][1])
        except FileNotFoundError:
            return ""
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise

    def _retry(self, retries: int, stack: list[tuple[str, int]], name: str) -> int:
        """Another look at a path that changes under the walk, a bounded number of times."""
        if retries >= 100:
            raise OSError(errno.EAGAIN, f"{self._shown(stack, name)!r} keeps changing; stopped")
        return retries + 1

    def _follow(self, stack: list[tuple[str, int]], name: str, target: str, todo: deque) -> None:
        """Replace ``name`` in the walk by ``target``, the link it is (inside the root only)."""
        if target.startswith("/"):
            real = os.path.normpath(target)
            if not (real == self.path or real.startswith(self.path.rstrip("/") + "/")):
                raise Escape(f"{self._shown(stack, name)!r} is a symbolic link to {target}, outside the target")
            while len(stack) > 1:
                os.close(stack.pop()[1])
            target = os.path.relpath(real, self.path)
        todo.extendleft(reversed(parts(target)))

    @staticmethod
    def _shown(stack: list[tuple[str, int]], name: str = "") -> str:
        return "/".join([n for n, _ in stack[1:]] + ([name] if name else [])) or "."


# -- operations in one directory (a descriptor from Root.walk) ----------------------------
def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def temp_name() -> str:
    return f".restore-{secrets.token_hex(6)}.tmp"


def create_file(dir_fd: int) -> tuple[int, str]:
    """A new empty file (mode 0600) under a fresh temporary name: (descriptor, name)."""
    name = temp_name()
    return os.open(name, _O_NEW, 0o600, dir_fd=dir_fd), name


def create_symlink(dir_fd: int, target: str) -> str:
    name = temp_name()
    os.symlink(target, name, dir_fd=dir_fd)
    return name


def remove(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def rename(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename within the file system; a link at ``dst`` is replaced, never followed."""
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def move_aside(src_fd: int, name: str, dst_fd: int, dst: str) -> None:
    """Move ``name`` to ``dst`` in another directory, copying when that is another file system."""
    try:
        rename(src_fd, name, dst_fd, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_fd), dst, dir_fd=dst_fd)
    else:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
        try:
            out = os.open(dst, _O_NEW, st.st_mode & 0o777, dir_fd=dst_fd)
            try:
                while chunk := os.read(src, 1 << 20):
                    write_all(out, chunk)
            finally:
                os.close(out)
        finally:
            os.close(src)
    os.unlink(name, dir_fd=src_fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def set_times(dir_fd: int, name: str, mtime: float) -> None:
    """Best effort: an archive's time that the file system cannot store is left as it is."""
    try:
        os.utime(name, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
    except (OverflowError, ValueError, OSError):
        pass


def set_fd_times(fd: int, mtime: float) -> None:
    try:
        os.utime(fd, (mtime, mtime))
    except (OverflowError, ValueError, OSError):
        pass
