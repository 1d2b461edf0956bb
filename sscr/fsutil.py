"""Atomic file writes, the one way SSCR puts a file in place; and the content hash that names a file.

Every output (checkpoints, GeoTIFFs, masks, tables, JSON records) is written
under a temporary name in the same directory, flushed to disk, then renamed
over its final name. A crash at any moment leaves either the previous complete
file or the new complete file, never a truncated one, so a file that exists
is a file that is done (which is what lets every stage resume by skipping it).
The directory is not flushed after the rename (it would triple the cost of a
small file): a power cut can forget a rename, which only means the work is redone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from sscr import faults

TEMP_SUFFIX = ".partial"


def temporary_path(path: str | Path) -> Path:
    """The temporary name ``path`` is written under: hidden, beside it (same file system), ``.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _fsync(path: Path) -> None:
    """Flush a file that is already closed (written by any library) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def move_into_place(source: str | Path, target: str | Path) -> Path:
    """Rename a finished file or directory over ``target`` in one step (both on the same file system).

    For outputs completed in place over many runs (a resumed download, an extracted archive);
    a file written in one go goes through :func:`atomic_path` instead.
    """
    target = Path(target)
    os.replace(source, target)
    return target


def staging_directory(target: str | Path) -> Path:
    """A fresh, empty, hidden directory beside ``target`` to build it in (see :func:`replace_directory`).

    One left by a killed earlier run (``.<name>.staging``) is removed first.
    """
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_directory(staging: str | Path, target: str | Path) -> Path:
    """Put the finished directory ``staging`` in place as ``target``: all its files appear together.

    A missing or empty ``target`` is replaced in one rename. An existing one (which the
    caller was told to replace) is renamed aside first and removed after the new one is in
    place, so ``target`` is the old set or the new one, never a mixture.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()):
        aside = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def disk_full(directory: str | Path) -> bool:
    """True when the file system holding ``directory`` has no block left for this process to write.

    Root may write into the blocks ext4 reserves, so root's limit is the free blocks, others' the available ones.
    """
    stat = os.statvfs(directory)
    return (stat.f_bfree if os.geteuid() == 0 else stat.f_bavail) == 0


def why_not_a_file(path: str | Path) -> str | None:
    """None when ``path`` is a regular file (links followed); else what it is instead, worded for an error message."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "is a symbolic link loop: point the link at a real file, or remove it"
            return f"is a broken symbolic link (its target {os.readlink(path)} does not exist)"
    if path.is_dir():
        return "is a directory, not a file"
    return "is not a regular file" if path.exists() else "does not exist"


def _naming(err: OSError, path: Path, tmp: Path) -> OSError:
    """``err`` naming ``path``: a failed write(2) names no file, and the temporary name means nothing to a user."""
    if err.filename is not None and err.filename not in (str(tmp), os.fspath(tmp)):
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno or 0), str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path, fault_point: str = "") -> Iterator[Path]:
    """Write ``path`` atomically: the block writes the yielded temporary path, which then replaces ``path``.

    When the block ends without error, the temporary file is flushed to disk
    and renamed over ``path``; if the block raises, it is removed and ``path``
    is left as it was. ``fault_point`` names a :func:`sscr.faults.checkpoint`
    between the flush and the rename, where reliability tests crash the process.
    Works for any writer that takes a path (``torch.save``, ``rasterio.open``,
    ``Path.open``); nest two blocks to put two files in place together.

    A full disk is an ``OSError`` (ENOSPC) naming ``path`` whatever the writer: some
    report it as another exception (``torch.save``: RuntimeError) or not at all (GDAL
    prints it and leaves a truncated file), so a file system left with no free block
    after the write fails it too; any ``OSError`` names ``path``, not the temporary name.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp)
        if disk_full(tmp.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if fault_point:
            faults.checkpoint(fault_point)  # a crash between the write and the rename
        move_into_place(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        named = _naming(err, path, tmp)
        if named is err:
            raise
        raise named from None
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and path.parent.is_dir() and disk_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks; about 1 GB/s on one core with SHA extensions)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def remove_stale_temporaries(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``directory`` when its process was killed.

    An exception removes its temporary file on the way out; a SIGKILL cannot, so
    the next run of the same stage calls this on its output directory first (while
    it alone writes there). Returns the files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".*{TEMP_SUFFIX}"
    stale = sorted(directory.rglob(pattern) if recursive else directory.glob(pattern))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_writable(path: str | Path) -> None:
    """Raise ``OSError`` now if ``path`` could not be written atomically later (before other side effects).

    Creates the parent directory, then creates and removes the temporary file
    :func:`atomic_path` would write; a directory in the way is refused too.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    with tmp.open("w"):
        pass
    tmp.unlink()
