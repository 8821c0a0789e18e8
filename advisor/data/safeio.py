"""Files and folders a hostile user or a crashed process can hand us, handled safely.

- Reading: a file is opened once (never blocking: a FIFO cannot hang the open) and checked
  as opened: a regular file, within a size bound (before and while reading). A FIFO, a
  device (``/dev/zero``), a folder, a symlink loop or an unreadable file raises OSError
  with a readable ``strerror``, which the callers already turn into one line.
- Writing: into a temp file created exclusively in the target's folder (``O_EXCL`` and
  ``O_NOFOLLOW``: never through a planted link), then renamed into place; without
  ``overwrite`` an existing target (a link included) is never replaced. The temp file is
  removed on every failure path, and the temp files of dead processes are removed by the
  next write into the same folder.
- Cache folders: created 0700; a folder others can write is refused (what it holds could
  have been planted by another user).
- A lock: ``fcntl.flock`` on a lock file, for read-merge-write cycles.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

# The suffix of every temp file we create: ``.<name>.<pid>.<random>.optadvise-tmp``.
TEMP_SUFFIX = ".optadvise-tmp"
# A temp file whose process is gone is stale at once; one whose pid looks alive (pids are
# reused) is stale after this long: a write takes milliseconds.
STALE_AFTER_S = 600.0
# How long to wait for another process's lock before giving up (the caller then serves the
# run without the cache).
LOCK_TIMEOUT_S = 30.0


class FileRefused(OSError):
    """A path that is not a regular file we may read or write (or a folder we must not
    use); ``strerror`` says why in words a user can act on."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    The file is opened once, without blocking, and checked as opened (``fstat``), so a file
    swapped in after a check cannot skip it.

    Raises:
        FileRefused: for a FIFO, device, socket or folder, or a file over ``limit`` bytes.
        OSError: for a missing or unreadable file or a symlink loop (the OS's reason).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(errno.ELOOP, "a symbolic link loop", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
            raise FileRefused(code, f"{_kind(st.st_mode)}, not a regular file", str(path))
        if st.st_size > limit:
            raise FileRefused(errno.EFBIG, _too_big(st.st_size, limit), str(path))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew after the fstat
                raise FileRefused(errno.EFBIG, _too_big(total, limit), str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_big(size: int, limit: int) -> str:
    return f"{size:,} bytes or more, over the {limit:,}-byte limit"


def read_text_bounded(path: Path, limit: int) -> str:
    """:func:`read_bounded`, decoded as UTF-8.

    Raises:
        FileRefused: as :func:`read_bounded`, and for bytes that are not UTF-8.
    """
    data = read_bounded(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(
            errno.EILSEQ, f"not UTF-8 text (byte {exc.start:,} is 0x{data[exc.start]:02x})"
        ) from None


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_atomic(path: Path, data: bytes, *, overwrite: bool, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` through an exclusive temp file and a rename.

    Args:
        path: the target; its folder must exist.
        data: the whole content.
        overwrite: replace an existing target; when False, an existing one (even a dangling
            link) raises FileExistsError and is left alone.
        mode: the new file's permissions before the umask (0o600 for cache files).

    Raises:
        FileExistsError: the target exists and ``overwrite`` is False.
        OSError: the folder cannot be written, the disk is full, the target is a folder...
            The temp file is gone in every case.
    """
    remove_stale_temps(path.parent)
    tmp = _temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s content the name ``path`` only if that name is free (atomically)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # NOTE: a file system without hard links (FAT, some FUSE mounts): check, then
        # rename; the window between the two is the price of such a file system.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.rename(tmp, path)


def remove_stale_temps(folder: Path, *, legacy: tuple[str, ...] = ()) -> int:
    """Remove the temp files that dead writers left in ``folder``; return how many.

    A temp file is ours by its suffix; it is stale when the pid in its name is not running
    (or after :data:`STALE_AFTER_S`, as pids are reused). ``legacy`` names glob patterns of
    older versions' temp files, removed when older than a minute. Only regular files owned
    by this user are removed; links and anything else are left alone. Never raises.
    """
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        ours = name.startswith(".") and name.endswith(TEMP_SUFFIX)
        old_style = any(Path(name).match(p) for p in legacy)
        if not (ours or old_style):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            continue
        age = now - st.st_mtime
        fresh = age <= 60 if not ours else age <= STALE_AFTER_S and _alive(_pid_of(name))
        if not fresh:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _pid_of(name: str) -> int:
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def private_dir(folder: Path) -> Path:
    """Create ``folder`` (and its missing parents) with mode 0700, or check an existing one.

    Raises:
        FileRefused: when the folder is not a folder, belongs to another user, or others can
            write it (group-writable counts unless the group is this process's own).
        OSError: when it cannot be created.
    """
    missing: list[Path] = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(q, 0o700)
    st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise FileRefused(errno.ENOTDIR, "not a folder", str(folder))
    if st.st_uid != os.geteuid():
        raise FileRefused(errno.EPERM, f"owned by another user (uid {st.st_uid})", str(folder))
    # NOTE: group-writable with the user's own primary group is the usual umask 002 on
    # systems with a private group per user; anyone else's write access is refused.
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != os.getegid()):
        raise FileRefused(
            errno.EPERM, f"writable by other users (mode {stat.S_IMODE(st.st_mode):o})", str(folder)
        )
    return folder


@contextlib.contextmanager
def locked(lock_file: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created 0600) for the block.

    Raises:
        OSError: when the lock file cannot be opened, is not a regular file, or another
            process holds the lock for longer than ``timeout_s`` (ETIMEDOUT).
    """
    import fcntl

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(lock_file, flags | getattr(os, "O_NONBLOCK", 0), 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRefused(errno.EINVAL, "the lock file is not a regular file", str(lock_file))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(
                        errno.ETIMEDOUT, "another optadvise process holds the lock", str(lock_file)
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def describe(exc: OSError) -> str:
    """An OSError in a few words: its strerror, else its class name."""
    return exc.strerror or type(exc).__name__
