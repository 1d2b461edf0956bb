"""Fetch SEN12MS-CR from the official mirror and extract it (stage ``download``, ``data.source: sen12mscr``).

The mirror (TUM mediaTUM, collection m1554803) serves one tar.gz per season and
modality, each extracting to its season directory (``ROIs1158_spring_s1/...``).
No checksums are published, so an archive is trusted only when

- its byte count equals the size the server announced (Content-Length, or the
  total of Content-Range on a resumed transfer), and
- it reads to its end as a tar stream (every header, every data block, the
  gzip trailer).

Transfers stream into ``<NAME>.part`` and resume with an HTTP Range request, so
a dropped connection costs a reconnect, not the 60 GB already received.
Extraction goes through an explicit check of every member and Python's
``filter="data"``, into a temporary directory inside ``data.root`` that is
renamed into place only when complete. A ``<NAME>.done`` marker in the cache
directory makes a rerun skip finished archives without touching the network.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3
from tqdm.auto import tqdm

from sscr.config import DataConfig
from sscr.fsutil import move_into_place, write_text
from sscr.layout import MODALITIES, SEASONS, archive_name

log = logging.getLogger(__name__)

_KIB = 1024
_CHUNK = 1 << 20
# Space each archive needs once extracted, in KiB (REFERENCE.md section 1, "Download").
# The s2_cloudy archives match s2 to within 0.01 %, so they reuse the s2 figure.
_S1_KIB = {"spring": 15026120, "summer": 17456784, "fall": 21127832, "winter": 9460956}
_S2_KIB = {"spring": 48568904, "summer": 56425520, "fall": 68291864, "winter": 30580552}

#: Bytes each official archive needs once extracted, keyed by archive name.
EXTRACTED_BYTES: dict[str, int] = {
    archive_name(season, modality): (_S1_KIB if modality == "s1" else _S2_KIB)[season] * _KIB
    for season in SEASONS
    for modality in MODALITIES
}


class DownloadError(RuntimeError):
    """A SEN12MS-CR archive could not be fetched, verified or extracted; the message says what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive holds a member that would land outside the target or is not a plain file or directory."""


@dataclass
class DownloadReport:
    """What one :func:`download_sen12mscr` call did.

    ``downloaded`` lists archives fetched (fully or by resuming) over the network,
    ``extracted`` those unpacked by this call (a complete cached archive is
    extracted without a download), ``skipped`` those already done before the
    call. ``paths`` holds the season directory of every selected archive.
    """

    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    paths: list[Path] = field(default_factory=list)


def archive_url(base_url: str, name: str) -> str:
    """URL of archive ``name``: plain concatenation, which fits both ``...&files=`` and ``http://host/dir/``."""
    return f"{base_url}{name}"


def archive_top_dir(name: str) -> str:
    """The season directory an archive extracts to: ``ROIs1158_spring_s1.tar.gz`` -> ``ROIs1158_spring_s1``."""
    return name.removesuffix(".tar.gz")


def _marker_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.done"


def _part_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".part")


def _human(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- free space


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def ensure_free_space(needs: Mapping[Path, int], what: str) -> None:
    """Raise :class:`DownloadError` when the file systems holding ``needs``' paths lack the bytes asked.

    Paths on the same file system are summed, so an archive cache inside
    ``data.root`` counts against the same free space as the extracted data.
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for path, need in needs.items():
        anchor = _existing_ancestor(Path(path))
        device = anchor.stat().st_dev
        first, total = by_device.get(device, (Path(path), 0))
        by_device[device] = (first, total + max(int(need), 0))
    for path, need in by_device.values():
        free = shutil.disk_usage(_existing_ancestor(path)).free
        if need > free:
            raise DownloadError(
                f"not enough free space for {what}: need {_human(need)} ({need} bytes) on the file system "
                f"of {path}, only {_human(free)} ({free} bytes) free. Free some space, point data.root to a "
                "larger disk, or select fewer data.seasons / data.modalities."
            )


def _remote_size(session: requests.Session, url: str, timeout: float) -> int | None:
    """Content-Length from a HEAD request, or None when the server does not tell (checked again on GET)."""
    try:
        resp = session.head(url, allow_redirects=True, timeout=timeout, headers={"Accept-Encoding": "identity"})
    except requests.RequestException as err:
        log.debug("HEAD %s failed (%s); size will be read from the download", url, err)
        return None
    length = resp.headers.get("Content-Length")
    if resp.status_code != 200 or not length or not length.isdigit():
        return None
    return int(length)


# --------------------------------------------------------------------------- transfer


class _Transient(Exception):
    """A failure worth retrying: 5xx, dropped connection, short body."""


_TRANSIENT_REQUESTS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _body(resp: requests.Response) -> Iterator[bytes]:
    """The raw body bytes as they arrive.

    ``read1`` hands over whatever the socket has, so when the connection drops
    every byte received is already on disk for the resume; ``iter_content``
    would lose the chunk in progress. No content decoding: the count must match
    Content-Length.
    """
    raw = resp.raw
    if hasattr(raw, "read1"):  # urllib3 >= 2.2
        while data := raw.read1(_CHUNK, decode_content=False):
            yield data
    else:
        yield from resp.iter_content(64 * 1024)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); unknown parts are None."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes "):].partition("/")
    start = int(span.split("-")[0]) if span != "*" and span.split("-")[0].isdigit() else None
    return start, int(total) if total.isdigit() else None


class _Transfer:
    """One archive's download into ``<archive>.part``, resumable across attempts and runs."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        archive: Path,
        timeout: float,
        progress: bool,
        known_total: int | None,
        on_total: Callable[[int], None] | None,
    ) -> None:
        self.session = session
        self.url = url
        self.archive = archive
        self.part = _part_path(archive)
        self.timeout = timeout
        self.progress = progress
        self.total = known_total
        self.on_total = on_total
        self.fetched = 0

    def attempt(self) -> None:
        """Fetch what is missing and rename the part file when complete; raise :class:`_Transient` to retry."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        # identity: the byte count must be the one Content-Length announces, not a decoded one.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout) as resp:
                total = self._start(resp, offset)
                if resp.status_code == 416:  # _start found the part file complete and renamed it
                    return
                if resp.status_code == 200:
                    offset = 0
                mode = "ab" if resp.status_code == 206 else "wb"
                with (
                    open(self.part, mode) as sink,
                    tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=self.archive.name, disable=not self.progress, leave=False,
                    ) as bar,
                ):
                    for chunk in _body(resp):
                        sink.write(chunk)
                        self.fetched += len(chunk)
                        bar.update(len(chunk))
        except (*_TRANSIENT_REQUESTS, urllib3.exceptions.HTTPError) as err:
            raise _Transient(f"connection failed: {err}") from err
        except requests.RequestException as err:
            raise DownloadError(f"cannot request {self.url}: {err}; check data.base_url") from err
        size = self.part.stat().st_size
        if total is None:
            log.warning("%s announced no size; the byte count cannot be checked, only the tar read", self.url)
        elif size < total:
            raise _Transient(f"received {size} of the {total} bytes announced")
        elif size > total:
            self.part.unlink()
            raise _Transient(f"received {size} bytes, more than the {total} announced; restarting from zero")
        move_into_place(self.part, self.archive)

    def _start(self, resp: requests.Response, offset: int) -> int | None:
        """Interpret the status line; return the full size of the file (None if unknown)."""
        status = resp.status_code
        if status == 416 and offset:
            _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if total == offset and self.total in (None, offset):
                # The part file already holds every byte (a previous run stopped before the rename).
                move_into_place(self.part, self.archive)
                return None
            self.part.unlink()
            raise _Transient(f"server refused to resume at byte {offset} (HTTP 416); restarting from zero")
        if status >= 500 or status in (408, 429):
            raise _Transient(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            raise DownloadError(
                f"{self.url} answered HTTP {status} {resp.reason}. Check data.base_url (the official mirror is "
                "https://dataserv.ub.tum.de/s/m1554803/download?path=/&files=) and that the archive name exists."
            )
        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                self.part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting from zero")
        else:
            if offset:
                log.info("%s ignored the Range request; downloading again from byte 0", self.url)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            offset = 0
        if total is not None:
            if self.total is not None and total != self.total:
                log.warning("%s: size changed from %d to %d bytes", self.url, self.total, total)
            self.total = total
            if self.on_total is not None:
                self.on_total(total - offset)
        return total


def fetch_archive(
    url: str,
    archive: Path,
    *,
    session: requests.Session | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60,
    known_total: int | None = None,
    on_total: Callable[[int], None] | None = None,
) -> int:
    """Download ``url`` to ``archive`` (resuming ``archive.part``); return the bytes fetched by this call.

    HTTP 5xx, timeouts, dropped connections and short bodies are retried
    ``retries`` times with exponential backoff (``backoff``, ``2 * backoff``,
    ...). Each retry resumes from the bytes already on disk. ``archive``
    appears only once its byte count equals the announced size; on final
    failure the part file is kept so the next run resumes it.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session or requests.Session()
    transfer = _Transfer(session, url, archive, timeout, progress, known_total, on_total)
    last: Exception | None = None
    try:
        for attempt in range(retries + 1):
            if attempt:
                delay = backoff * 2 ** (attempt - 1)
                log.warning("%s: %s; retry %d/%d in %.1f s", url, last, attempt, retries, delay)
                time.sleep(delay)
            try:
                transfer.attempt()
                return transfer.fetched
            except _Transient as err:
                last = err
    finally:
        if own_session:
            session.close()
    part = transfer.part
    kept = (
        f"{part} keeps the {part.stat().st_size} bytes received so far; rerun to resume"
        if part.exists() else "nothing was kept; rerun to try again"
    )
    raise DownloadError(
        f"could not download {url} after {retries + 1} attempts: {last}. {kept}, "
        "or check the network connection and data.base_url."
    )


# --------------------------------------------------------------------------- verification and extraction


def check_member(member: tarfile.TarInfo, archive: Path | str) -> None:
    """Refuse a tar member that could write outside the extraction directory or is not a file, dir or link.

    Absolute names, ``..`` components, links whose target leaves the
    directory, device files and FIFOs raise :class:`UnsafeArchiveError`. This
    runs in addition to ``tarfile``'s ``filter="data"`` (defence in depth).
    """

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"refusing to extract {archive}: member {member.name!r} {why}. The archive is not a genuine "
            "SEN12MS-CR archive or is corrupt; delete it and check data.base_url."
        )

    name = member.name
    if posixpath.isabs(name) or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise refuse("has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise refuse("contains '..' and would escape the target directory")
    if member.isdev():
        raise refuse("is a device file or FIFO")
    if member.issym() or member.islnk():
        link = member.linkname
        kind = "symlink" if member.issym() else "hard link"
        if posixpath.isabs(link):
            raise refuse(f"is a {kind} to the absolute path {link!r}")
        # A symlink resolves from its own directory, a hard link from the archive root.
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            raise refuse(f"is a {kind} to {link!r}, outside the target directory")
    elif not (member.isfile() or member.isdir()):
        raise refuse(f"has an unsupported type {member.type!r}")


def verify_archive(archive: Path) -> int:
    """Read ``archive`` to its end and check every member; return the number of members.

    A truncated or corrupt archive raises :class:`DownloadError`; an unsafe
    member raises :class:`UnsafeArchiveError`. Nothing is written.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            count = 0
            for member in tar:
                check_member(member, archive)
                count += 1
            # Iteration stops at the end-of-archive blocks; reading on reaches the gzip trailer (CRC, length).
            while tar.fileobj.read(_CHUNK):
                pass
    except UnsafeArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DownloadError(f"{archive} does not read to its end ({err}): it is truncated or corrupt") from err
    if count == 0:
        raise DownloadError(f"{archive} holds no members: it is not a SEN12MS-CR archive")
    return count


def extract_archive(archive: Path, root: Path, top: str) -> Path:
    """Extract ``archive`` into ``root`` and return ``root / top``; all or nothing.

    Members go through :func:`check_member` and ``filter="data"`` into a
    temporary directory inside ``root`` (same file system); ``top`` is then
    renamed into place. A previous ``root / top`` is replaced. On any failure the
    temporary directory is removed and ``root / top`` is left as it was.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".extract-{top}-", dir=root))

    def checked(tar: tarfile.TarFile):
        for member in tar:
            check_member(member, archive)
            yield member

    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(staging, members=checked(tar), filter="data")
        except tarfile.FilterError as err:
            name = err.tarinfo.name if getattr(err, "tarinfo", None) else "?"
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r}: {err}") from err
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DownloadError(f"extracting {archive} into {root} failed: {err}") from err
        extracted = staging / top
        if not extracted.is_dir():
            raise DownloadError(
                f"{archive} does not contain the directory {top}/ (found {sorted(p.name for p in staging.iterdir())}); "
                "it is not the expected SEN12MS-CR archive"
            )
        others = sorted(p.name for p in staging.iterdir() if p.name != top)
        if others:
            log.warning("%s: ignoring entries outside %s/: %s", archive.name, top, others)
        target = root / top
        if target.exists():
            log.warning("%s exists without a completion marker; replacing it with %s", target, archive.name)
            move_into_place(target, staging / ".previous")
        move_into_place(extracted, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- the stage


def _file_sizes(directory: Path) -> dict[str, int]:
    """``relative path -> bytes`` of every file under ``directory`` (what an extraction left there)."""
    return {path.relative_to(directory).as_posix(): path.stat().st_size
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _check_kept_files(directory: Path, sizes: Mapping[str, int], archive: str) -> None:
    """Raise :class:`DownloadError` naming the first file under ``directory`` whose size is not the extracted one.

    One ``stat`` per file (about a second for the whole data set), so every run of the stage checks what it keeps:
    a file cut short after extraction is reported instead of being recorded by DVC as the data.
    """
    for relative, expected in sizes.items():
        path = directory / relative
        try:
            have = path.stat().st_size
        except OSError as err:
            have, why = None, err.strerror
        if have != expected:
            what = f"has {have:,} bytes" if have is not None else f"cannot be read ({why})"
            raise DownloadError(f"{path} {what}, {expected:,} when extracted from {archive}: it was truncated or "
                                f"changed since; restore it, or delete {directory} and rerun to extract the archive "
                                "again")


def _is_done(root: Path, cache_dir: Path, name: str) -> bool:
    marker = _marker_path(cache_dir, name)
    if not marker.exists():
        return False
    target = root / archive_top_dir(name)
    if target.is_dir():
        sizes = json.loads(marker.read_text()).get("sizes")
        if sizes is not None:  # markers written before the sizes were recorded check nothing
            _check_kept_files(target, sizes, name)
        return True
    log.warning("%s is marked done but %s is missing; fetching it again", name, target)
    marker.unlink()
    return False


def _write_marker(cache_dir: Path, name: str, archive: Path, members: int, target: Path) -> None:
    marker = _marker_path(cache_dir, name)
    record = {"archive": name, "bytes": archive.stat().st_size, "members": members, "directory": str(target),
              "sizes": _file_sizes(target)}
    write_text(marker, json.dumps(record, indent=1) + "\n")


def download_sen12mscr(
    cfg: DataConfig,
    cache_dir: Path | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60,
    *,
    check_space: bool = True,
    required_bytes: Mapping[str, int] | None = None,
    keep_archives: bool = False,
) -> DownloadReport:
    """Download and extract the selected SEN12MS-CR archives into ``cfg.root``.

    For every season x modality of ``cfg``, ``cfg.base_url + <NAME>.tar.gz`` is
    fetched into ``cache_dir`` (default ``cfg.root / ".downloads"``), verified
    (byte count, full tar read, safe members) and extracted to
    ``cfg.root / <season>_<modality>``. Finished archives (marker present and
    season directory in place) are skipped without any network request; a
    complete cached archive is extracted without downloading it again.

    Before any download, the free space must cover the extracted sizes
    (:data:`EXTRACTED_BYTES`, entries overridden by ``required_bytes``) plus the
    archives still to fetch; ``check_space=False`` skips this. The archive is
    deleted after extraction unless ``keep_archives``.

    Raises :class:`DownloadError` with the URL or path and what to do.
    """
    root = Path(cfg.root)
    cache = Path(cache_dir) if cache_dir is not None else root / ".downloads"
    names = [archive_name(season, modality) for season in cfg.seasons for modality in cfg.modalities]
    report = DownloadReport(paths=[root / archive_top_dir(name) for name in names])

    pending = []
    for name in names:
        if _is_done(root, cache, name):
            report.skipped.append(name)
        else:
            pending.append(name)
    if not pending:
        log.info("SEN12MS-CR: all %d archives already extracted in %s", len(names), root)
        return report

    root.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    extracted_sizes = {**EXTRACTED_BYTES, **(required_bytes or {})}

    with requests.Session() as session:
        known_sizes: dict[str, int | None] = {}
        if check_space:
            to_fetch = 0
            for name in pending:
                archive = cache / name
                if archive.exists():
                    continue
                size = known_sizes[name] = _remote_size(session, archive_url(cfg.base_url, name), timeout)
                part = _part_path(archive)
                have = part.stat().st_size if part.exists() else 0
                to_fetch += max((size or 0) - have, 0)
            ensure_free_space(
                {root: sum(extracted_sizes.get(name, 0) for name in pending), cache: to_fetch},
                f"{len(pending)} SEN12MS-CR archive(s) (extracted data plus archives)",
            )

        for name in pending:
            archive = cache / name
            top = archive_top_dir(name)
            if not archive.exists():
                url = archive_url(cfg.base_url, name)

                def space_for(remaining: int, name: str = name) -> None:
                    # Rechecked with the size the GET announces: HEAD may not have told it.
                    if check_space:
                        ensure_free_space(
                            {root: extracted_sizes.get(name, 0), cache: remaining}, f"{name} (extracted plus archive)"
                        )

                log.info("downloading %s", url)
                report.bytes_fetched += fetch_archive(
                    url, archive, session=session, progress=progress, retries=retries, backoff=backoff,
                    timeout=timeout, known_total=known_sizes.get(name), on_total=space_for,
                )
                report.downloaded.append(name)
            try:
                members = verify_archive(archive)
            except UnsafeArchiveError:
                raise
            except DownloadError as err:
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{err}. It was deleted; rerun to download it again.") from err
            target = extract_archive(archive, root, top)
            _write_marker(cache, name, archive, members, target)
            report.extracted.append(name)
            if not keep_archives:
                archive.unlink()
            log.info("extracted %s (%d members) to %s", name, members, target)
    return report
