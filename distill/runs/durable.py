"""Writes that survive a power cut and a full disk.

Every file a run keeps is written under a temporary name in its own folder, flushed to disk
(`fsync`), renamed into place, and then the folder is flushed so that the rename itself is on
disk. Without the first flush, some filesystems (ext4 with delayed allocation, XFS) can show the
renamed name with missing contents after a crash. A write that fails removes its temporary file,
so the old file, if any, stays whole; a full disk becomes one `OutOfSpaceError` line.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from distill.errors import ConfigError, OutOfSpaceError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How the serializers report a full disk, seen on a full tmpfs (torch 2.14, safetensors 0.8):
#   safetensors save_file: SafetensorError "Error while serializing: I/O error: No space left on
#     device (os error 28)"
#   torch.save(obj, path): RuntimeError "[enforce fail at inline_container.cc:672] . unexpected pos
#     576 vs 534", raised while handling RuntimeError "basic_ios::clear: iostream error" (or that
#     one alone); torch's C++ writer loses errno, so only a filesystem that is now full says why.
#     (To an open file object, the same RuntimeError comes with an OSError errno 28 in its chain.)
#     "PytorchStreamWriter failed writing file ...: file write failed" is in the same library.
_SAYS_FULL = ("No space left on device", "Disk quota exceeded", "(os error 28)", "(os error 122)")
_SAYS_WRITE_FAILED = ("iostream error", "unexpected pos", "file write failed", "PytorchStreamWriter failed")
_NEARLY_FULL = 1 << 20  # bytes; a write that died for lack of space leaves less than a page or so


def _chain(exc: BaseException) -> list:
    seen = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def check_folder_path(path, what: str) -> None:
    """Refuse, before anything is written, a folder path that is a file or lies under one; `what`
    names the path in the one-line error (e.g. "--out")."""
    found = _existing(path)
    if not found.is_dir():
        where = "is a file" if found == Path(os.path.abspath(path)) else f"lies under the file {found}"
        raise ConfigError(f"{what} {path} {where}, not a folder: give a folder path")


def mount_point(path) -> Path:
    """The mount point of the filesystem that holds `path` (or would hold it)."""
    path = _existing(path).resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def is_out_of_space(exc: BaseException, path=None) -> bool:
    """True if `exc` means a full filesystem or quota. `path`, where the write went, lets torch's
    errors without an errno count when that filesystem is now (nearly) full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(s in str(e) for s in _SAYS_FULL):
            return True
    if path is None or not any(s in str(e) for e in _chain(exc) for s in _SAYS_WRITE_FAILED):
        return False
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


def remove(path) -> None:
    """Delete a file or a folder if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def out_of_space(what: str, path, cleanup: Iterable = ()):
    """Around a write under `path`: a full disk becomes `OutOfSpaceError` naming `what` and the
    filesystem; on any failure the paths in `cleanup` (the write's temporaries) are removed."""
    try:
        yield
    except BaseException as e:
        full = isinstance(e, Exception) and is_out_of_space(e, path)  # checked before cleanup frees space
        for p in cleanup:
            remove(p)
        if full:
            raise OutOfSpaceError(f"no space left on {mount_point(path)} while writing {what}; free space or lower "
                                  "train.keep_checkpoints, then resume with train.resume=auto") from e
        raise


def fsync(path) -> None:
    """Flush a file's contents, or a folder's entries (creations, renames, deletions), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """Flush every file and folder under `folder`, and `folder` itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync(os.path.join(root, name))
        fsync(root)


def replace_file(path, write: Callable[[Path], None], what: str) -> None:
    """Write `path` durably: `write(tmp)` fills a temporary file next to it, which is flushed,
    renamed into place, and the rename flushed. On failure the old `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with out_of_space(what, path, cleanup=[tmp]):
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)


def write_text(path, text: str, what: str) -> None:
    replace_file(path, lambda tmp: tmp.write_text(text), what)


def replace_dir(tmp, final) -> None:
    """Rename a fully written folder into place: flush everything in it, rename, flush the parent.
    `final` must not exist. Call inside `out_of_space(..., cleanup=[tmp])`."""
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync(Path(final).parent)


def append_line(path, line: str, what: str) -> None:
    """Append one line and flush it to disk; a failed append is cut off, so no half line remains."""
    with out_of_space(what, path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start, data = os.fstat(fd).st_size, line.encode()
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
