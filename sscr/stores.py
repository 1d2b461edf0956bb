"""The SQLite files behind MLflow (``mlflow.db``) and Optuna (``optuna.db``): damaged, locked, read-only, in one line.

:func:`check_sqlite` runs before a store is used: a file that is not an SQLite
database, or fails SQLite's own ``PRAGMA quick_check``, is refused with nothing
written into it (a damaged store only gets worse). :func:`explain` turns the
errors a store raises later (locked by another process, read-only, damaged) into
one line that names the store and the fix, for the command line.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"
#: SQLite's messages -> what happened and the fix.
_PROBLEMS = (
    ("database is locked", "is locked by another process (a write in progress, or a process that holds the lock)",
     "wait for it to finish or stop it, then retry"),
    ("readonly database", "is read-only for this user",
     "make the file and its directory writable (chmod u+w), or point the store elsewhere"),
    ("unable to open database", "cannot be opened (its directory is missing or not writable)",
     "create the directory or make it writable, or point the store elsewhere"),
    ("file is not a database", "is damaged (not an SQLite database)",
     "restore it from a backup, or move it away to start a new store"),
    ("malformed", "is damaged (its SQLite image is malformed)",
     "restore it from a backup, or move it away to start a new store"),
    ("disk i/o error", "could not be read or written (disk I/O error)", "check the disk (dmesg) and retry"),
)


class StoreError(ValueError):
    """A tracking or study store that cannot be used as it is; the message names it and the fix."""


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLAlchemy SQLite URL (``sqlite:///rel.db``, ``sqlite:////abs.db``); None otherwise."""
    if not url.startswith("sqlite:///"):
        return None
    database = urllib.parse.unquote(url.removeprefix("sqlite:///").split("?", 1)[0])
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_sqlite(url: str, what: str) -> None:
    """Refuse a damaged SQLite store before anything is written to it (:class:`StoreError`); other URLs pass.

    A missing file is fine (it will be created). Checks the file header, then SQLite's
    ``PRAGMA quick_check``, read-only (nothing is written by the check).
    """
    path = sqlite_path(url)
    if path is None or not path.exists():
        return
    if path.is_dir():
        raise StoreError(f"{what} {path} is a directory, not an SQLite database file; point the store at a file")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"{what} {path} cannot be read ({err.strerror or err}); make it readable") from None
    if header and header != SQLITE_HEADER:
        raise StoreError(f"{what} {path} is damaged (not an SQLite database: its first bytes are {header[:8]!r}); "
                         "nothing was written to it. Restore it from a backup, or move it away to start a new store")
    if not header:
        return  # empty: SQLite treats it as a new database
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise StoreError(one_line(err, what, str(path)) or f"{what} {path}: {err}") from None
    if [row[0] for row in rows] != ["ok"]:
        first = "; ".join(str(row[0]) for row in rows[:2])
        raise StoreError(f"{what} {path} is damaged (SQLite quick_check: {first}); nothing was written to it. "
                         "Restore it from a backup, or move it away to start a new store")


def check_writable(url: str, what: str) -> None:
    """Refuse a read-only SQLite store before a write is attempted (:class:`StoreError`); other URLs pass."""
    path = sqlite_path(url)
    if path is None:
        return
    for place in (path, path.parent) if path.exists() else (path.parent,):
        if place.exists() and not os.access(place, os.W_OK):  # also False on a read-only mount, even for root
            raise StoreError(f"{what} {path} is read-only for this user ({place} is not writable): make the file "
                             "and its directory writable (chmod u+w), or point the store elsewhere; nothing was "
                             "written")


def one_line(err: BaseException, what: str, where: str) -> str | None:
    """One line for an SQLite error of a store anywhere in ``err``'s chain (as MLflow, SQLAlchemy and Optuna wrap it)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        module = type(current).__module__
        # Only the database layers' own errors: a "malformed" input file elsewhere is no store problem.
        if isinstance(current, sqlite3.Error) or module.startswith("sqlalchemy") or (
                module.startswith(("mlflow", "optuna")) and "sqlite3." in text):
            for phrase, problem, fix in _PROBLEMS:
                if phrase in text:
                    return f"{what} {where} {problem}: {fix}"
        current = current.__cause__ or current.__context__
    return None


def store_name(url: str) -> str:
    """How a store is named in a message: the SQLite file, else the URL's scheme (never its credentials)."""
    path = sqlite_path(url)
    if path is not None:
        return str(path)
    scheme = url.split(":", 1)[0] if ":" in url else url
    return f"({scheme} URL)" if scheme else "(none set)"


def mlflow_store() -> str:
    """The MLflow store in use, named for a message (``MLFLOW_TRACKING_URI``, else ``mlflow.db``)."""
    url = os.environ.get("MLFLOW_TRACKING_URI")
    return store_name(url) if url else "mlflow.db"
