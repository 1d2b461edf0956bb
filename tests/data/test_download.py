"""SEN12MS-CR downloader against a real local HTTP server: resume, retries, verification, safe extraction."""

from __future__ import annotations

import io
import random
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sscr.config import DataConfig
from sscr.data import download as dl
from sscr.data.download import (
    EXTRACTED_BYTES,
    DownloadError,
    UnsafeArchiveError,
    download_sen12mscr,
    extract_archive,
)
from sscr.layout import MODALITIES, SEASONS, archive_name

S1 = "ROIs1158_spring_s1.tar.gz"
S2 = "ROIs1158_spring_s2.tar.gz"
PAYLOAD = 48 * 1024  # incompressible bytes per archive, so a cut lands mid-stream


# --------------------------------------------------------------------------- archives


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.isfile():
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def tif_member(name: str) -> str:
    """Path of patch p1 of ROI 1 inside archive ``name``, in the real naming."""
    top = name.removesuffix(".tar.gz")
    parts = top.split("_")
    season, modality = "_".join(parts[:2]), "_".join(parts[2:])
    return f"{top}/{modality}_1/{season}_{modality}_1_p1.tif"


def tif_bytes(name: str) -> bytes:
    return random.Random(name).randbytes(PAYLOAD)


def make_archive(name: str, extra: list[tuple[str, bytes, dict]] | None = None) -> bytes:
    """A tiny tar.gz shaped like the official one, plus ``extra`` (name, data, TarInfo attributes) members."""
    buffer = io.BytesIO()
    member = tif_member(name)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, member.split("/")[0], type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "/".join(member.split("/")[:2]), type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, member, tif_bytes(name), mode=0o644)
        for extra_name, data, attrs in extra or []:
            _add(tar, extra_name, data, **attrs)
    return buffer.getvalue()


# --------------------------------------------------------------------------- server


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; ``requests`` logs (method, name, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # first GET of name sends only N bytes
    fail_first: int = 0  # the first N GETs of each name answer 500
    fail_always: bool = False
    extra_length: int = 0  # announce this many bytes more than sent
    honour_range: bool = True
    allow_head: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, name: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and (name is None or r[1] == name)]


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            name = query["files"][0] if "files" in query else url.path.rsplit("/", 1)[-1]
            byte_range = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.command, name, byte_range))
                n_get = len(state.gets(name))
            if head and not state.allow_head:
                self.send_error(405)
                return
            if name not in state.files:
                self.send_error(404)
                return
            if not head and (state.fail_always or n_get <= state.fail_first):
                self.send_error(500)
                return
            data = state.files[name]
            start = 0
            if byte_range and state.honour_range and not head:
                start = int(byte_range.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body) + state.extra_length))
            self.end_headers()
            if head:
                return
            if n_get == 1 and name in state.cut_after:
                body = body[: state.cut_after[name]]
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[ServerState, str]]:
    """A ThreadingHTTPServer on 127.0.0.1 serving the official spring s1 and s2 archives."""
    state = ServerState(files={S1: make_archive(S1), S2: make_archive(S2)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def config(root: Path, base_url: str, modalities: tuple[str, ...] = ("s1",)) -> DataConfig:
    return DataConfig(source="sen12mscr", root=root, seasons=["spring"], modalities=list(modalities),
                      base_url=base_url)


def fetch(cfg: DataConfig, **kwargs) -> dl.DownloadReport:
    """download_sen12mscr with test-sized space needs, fast backoff and no progress bar."""
    kwargs.setdefault("required_bytes", dict.fromkeys(EXTRACTED_BYTES, 1024))
    kwargs.setdefault("retries", 2)
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("progress", False)
    return download_sen12mscr(cfg, **kwargs)


def leftovers(root: Path) -> list[str]:
    """Temporary extraction directories left in ``root``."""
    return sorted(p.name for p in root.glob(".extract-*")) if root.exists() else []


def assert_extracted(root: Path, name: str) -> None:
    path = root / tif_member(name)
    assert path.read_bytes() == tif_bytes(name)


# --------------------------------------------------------------------------- tests


def test_size_table_covers_every_archive_with_the_reference_figures():
    assert set(EXTRACTED_BYTES) == {archive_name(s, m) for s in SEASONS for m in MODALITIES}
    assert EXTRACTED_BYTES["ROIs1970_fall_s2.tar.gz"] == 68291864 * 1024
    assert EXTRACTED_BYTES["ROIs2017_winter_s1.tar.gz"] == 9460956 * 1024
    for season in SEASONS:
        assert EXTRACTED_BYTES[archive_name(season, "s2_cloudy")] == EXTRACTED_BYTES[archive_name(season, "s2")]


@pytest.mark.parametrize("url_form", ["directory", "mirror-query"])
def test_downloads_verifies_and_extracts_each_archive(server, tmp_path, url_form):
    state, base = server
    base_url = base if url_form == "directory" else f"{base}s/m1554803/download?path=/&files="
    root = tmp_path / "data"
    report = fetch(config(root, base_url, ("s1", "s2")))

    assert report.downloaded == [S1, S2] and report.extracted == [S1, S2] and report.skipped == []
    assert report.bytes_fetched == len(state.files[S1]) + len(state.files[S2])
    assert report.paths == [root / "ROIs1158_spring_s1", root / "ROIs1158_spring_s2"]
    assert_extracted(root, S1)
    assert_extracted(root, S2)
    assert leftovers(root) == []
    cache = root / ".downloads"
    assert (cache / f"{S1}.done").exists() and (cache / f"{S2}.done").exists()
    assert not (cache / S1).exists() and not (cache / f"{S1}.part").exists()  # archives removed once extracted
    assert all(r[2] is None for r in state.gets())  # nothing to resume: no Range sent


def test_second_call_is_skipped_without_network(server, tmp_path):
    state, base = server
    cfg = config(tmp_path / "data", base, ("s1", "s2"))
    fetch(cfg)
    seen = len(state.requests)

    report = fetch(cfg)

    assert len(state.requests) == seen
    assert report.skipped == [S1, S2] and report.downloaded == [] and report.bytes_fetched == 0


def test_cached_complete_archive_is_extracted_without_downloading(server, tmp_path):
    state, base = server
    root = tmp_path / "data"
    cfg = config(root, base)
    fetch(cfg, keep_archives=True)
    assert (root / ".downloads" / S1).stat().st_size == len(state.files[S1])
    # Lose the extraction (marker and directory): the kept archive is reused.
    (root / ".downloads" / f"{S1}.done").unlink()
    (root / tif_member(S1)).unlink()
    seen = len(state.gets())

    report = fetch(cfg, keep_archives=True)

    assert len(state.gets()) == seen
    assert report.downloaded == [] and report.extracted == [S1]
    assert_extracted(root, S1)


def test_marker_without_its_directory_fetches_again(server, tmp_path):
    state, base = server
    root = tmp_path / "data"
    cfg = config(root, base)
    fetch(cfg)
    shutil.rmtree(root / "ROIs1158_spring_s1")

    report = fetch(cfg)

    assert len(state.gets(S1)) == 2 and report.downloaded == [S1]
    assert_extracted(root, S1)


def test_extracted_file_cut_short_later_is_reported_not_kept(server, tmp_path):
    """Issue 21 row 5 for the real data set: a rerun of the stage checks the sizes recorded at extraction (one stat a
    file) and stops, naming the file and the fix, instead of letting DVC record the damaged file as the data."""
    state, base = server
    root = tmp_path / "data"
    cfg = config(root, base)
    fetch(cfg)
    patch = root / tif_member(S1)
    patch.write_bytes(patch.read_bytes()[: PAYLOAD // 3])
    seen = len(state.requests)
    with pytest.raises(DownloadError) as err:
        fetch(cfg)
    message = str(err.value)
    assert message.startswith(f"{patch} has {PAYLOAD // 3:,} bytes, {PAYLOAD:,} when extracted from {S1}")
    assert f"delete {root / 'ROIs1158_spring_s1'} and rerun" in message and "\n" not in message
    assert len(state.requests) == seen  # decided without the network
    shutil.rmtree(root / "ROIs1158_spring_s1")  # the fix the message gives
    fetch(cfg)
    assert_extracted(root, S1)


def test_season_directory_without_marker_is_replaced_whole(server, tmp_path):
    state, base = server
    root = tmp_path / "data"
    stale = root / "ROIs1158_spring_s1" / "s1_1" / "stale.tif"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted manual extraction")

    fetch(config(root, base))

    assert not stale.exists()
    assert_extracted(root, S1)
    assert leftovers(root) == []


def test_resume_after_a_cut_connection_sends_range(server, tmp_path):
    state, base = server
    state.cut_after[S1] = 10_000
    root = tmp_path / "data"

    report = fetch(config(root, base))

    ranges = [r[2] for r in state.gets(S1)]
    assert ranges == [None, "bytes=10000-"]
    assert report.bytes_fetched == len(state.files[S1])
    assert_extracted(root, S1)


def test_partial_file_from_a_previous_run_is_resumed(server, tmp_path):
    state, base = server
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{S1}.part").write_bytes(state.files[S1][:4096])

    report = fetch(config(root, base))

    assert [r[2] for r in state.gets(S1)] == ["bytes=4096-"]
    assert report.bytes_fetched == len(state.files[S1]) - 4096
    assert_extracted(root, S1)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    state, base = server
    state.honour_range = False
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{S1}.part").write_bytes(b"stale bytes that must be discarded")

    report = fetch(config(root, base))

    assert state.gets(S1)[0][2] == "bytes=34-"
    assert report.bytes_fetched == len(state.files[S1])
    assert_extracted(root, S1)


def test_complete_partial_file_is_accepted_on_416(server, tmp_path):
    state, base = server
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{S1}.part").write_bytes(state.files[S1])

    report = fetch(config(root, base), check_space=False)

    assert len(state.gets(S1)) == 1 and report.bytes_fetched == 0
    assert_extracted(root, S1)


def test_fewer_bytes_than_announced_is_rejected_and_the_partial_kept(server, tmp_path):
    state, base = server
    state.extra_length = 500
    state.honour_range = False
    root = tmp_path / "data"

    with pytest.raises(DownloadError) as err:
        fetch(config(root, base), retries=1)

    assert f"{base}{S1}" in str(err.value) and "rerun to resume" in str(err.value)
    assert len(state.gets(S1)) == 2
    part = root / ".downloads" / f"{S1}.part"
    assert part.stat().st_size == len(state.files[S1])
    assert not (root / ".downloads" / S1).exists()
    assert not (root / "ROIs1158_spring_s1").exists() and leftovers(root) == []


def test_http_500_once_is_retried(server, tmp_path):
    state, base = server
    state.fail_first = 1
    root = tmp_path / "data"

    report = fetch(config(root, base))

    assert len(state.gets(S1)) == 2 and report.downloaded == [S1]
    assert_extracted(root, S1)


def test_http_500_always_ends_in_a_clear_error_and_nothing_extracted(server, tmp_path):
    state, base = server
    state.fail_always = True
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="after 3 attempts") as err:
        fetch(config(root, base), retries=2)

    assert f"{base}{S1}" in str(err.value) and "HTTP 500" in str(err.value)
    assert len(state.gets(S1)) == 3
    assert not (root / "ROIs1158_spring_s1").exists() and leftovers(root) == []
    assert not (root / ".downloads" / f"{S1}.done").exists()


def test_missing_archive_is_not_retried(server, tmp_path):
    state, base = server
    del state.files[S1]

    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(config(tmp_path / "data", base))

    assert len(state.gets(S1)) == 1


@pytest.mark.parametrize("damage", ["truncated", "bad-crc"])
def test_archive_that_does_not_read_to_its_end_is_deleted_not_extracted(server, tmp_path, damage):
    state, base = server
    data = bytearray(state.files[S1])
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-8] ^= 0xFF  # gzip trailer CRC: only reading to the very end notices
    state.files[S1] = bytes(data)
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="truncated or corrupt"):
        fetch(config(root, base))

    assert not (root / "ROIs1158_spring_s1").exists() and leftovers(root) == []
    assert not (root / ".downloads" / S1).exists()


UNSAFE_MEMBERS = {
    "dotdot": ("../evil", b"x", {}),
    "absolute": ("/tmp/sscr-evil-absolute", b"x", {}),
    "symlink-abs": ("ROIs1158_spring_s1/etc", b"", {"type": tarfile.SYMTYPE, "linkname": "/etc"}),
    "symlink-up": ("ROIs1158_spring_s1/s1_1/up", b"", {"type": tarfile.SYMTYPE, "linkname": "../../../evil"}),
    "hardlink-up": ("ROIs1158_spring_s1/hl", b"", {"type": tarfile.LNKTYPE, "linkname": "../evil"}),
    "hardlink-abs": ("ROIs1158_spring_s1/pw", b"", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}),
    "device": ("ROIs1158_spring_s1/null", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_MEMBERS))
def test_unsafe_members_are_refused_and_nothing_is_left(server, tmp_path, kind):
    state, base = server
    member = UNSAFE_MEMBERS[kind]
    state.files[S1] = make_archive(S1, [member])
    root = tmp_path / "data"

    with pytest.raises(UnsafeArchiveError) as err:
        fetch(config(root, base))

    assert repr(member[0]) in str(err.value) and S1 in str(err.value)
    assert not (root / "ROIs1158_spring_s1").exists() and leftovers(root) == []
    assert not (root / ".downloads" / f"{S1}.done").exists()
    assert not (tmp_path / "evil").exists() and not (root / "evil").exists()
    assert not Path("/tmp/sscr-evil-absolute").exists()


@pytest.mark.parametrize("kind", sorted(UNSAFE_MEMBERS))
def test_explicit_member_check_refuses_on_its_own(kind):
    name, _, attrs = UNSAFE_MEMBERS[kind]
    member = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(member, key, value)

    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name))):
        dl.check_member(member, S1)


def test_explicit_member_check_accepts_the_real_layout_and_inner_links():
    members = [tarfile.TarInfo("ROIs1158_spring_s1/"), tarfile.TarInfo(tif_member(S1)),
               tarfile.TarInfo("./ROIs1158_spring_s1/s1_1/alias.tif")]
    members[0].type = tarfile.DIRTYPE
    members[2].type, members[2].linkname = tarfile.SYMTYPE, "ROIs1158_spring_s1_1_p1.tif"
    for member in members:
        dl.check_member(member, S1)  # no exception


def test_extraction_failing_midway_leaves_nothing_behind(tmp_path):
    archive = tmp_path / S1
    # A good file first, so the failure happens after something was written to the staging directory.
    archive.write_bytes(make_archive(S1, [("ROIs1158_spring_s1/s1_1/../../../evil", b"x", {})]))
    root = tmp_path / "data"

    with pytest.raises(UnsafeArchiveError, match="evil"):
        extract_archive(archive, root, "ROIs1158_spring_s1")

    assert list(root.iterdir()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", sorted(UNSAFE_MEMBERS))
def test_tarfile_data_filter_still_guards_without_the_explicit_check(tmp_path, monkeypatch, kind):
    member = UNSAFE_MEMBERS[kind]
    archive = tmp_path / S1
    archive.write_bytes(make_archive(S1, [member]))
    monkeypatch.setattr(dl, "check_member", lambda member, archive: None)
    root = tmp_path / "data"

    if kind == "absolute":
        # The data filter makes an absolute name relative: it lands in the staging dir and is dropped.
        extract_archive(archive, root, "ROIs1158_spring_s1")
        assert sorted(p.name for p in root.iterdir()) == ["ROIs1158_spring_s1"]
    else:
        with pytest.raises(UnsafeArchiveError, match=re.escape(member[0])):
            extract_archive(archive, root, "ROIs1158_spring_s1")
        assert list(root.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/sscr-evil-absolute").exists()


def test_archive_without_its_season_directory_is_refused(tmp_path):
    archive = tmp_path / S1
    archive.write_bytes(make_archive(S2))  # well-formed, but extracts to ROIs1158_spring_s2
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="does not contain the directory ROIs1158_spring_s1/"):
        extract_archive(archive, root, "ROIs1158_spring_s1")

    assert list(root.iterdir()) == []


def test_free_space_check_refuses_before_any_download(server, tmp_path):
    state, base = server
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="not enough free space") as err:
        fetch(config(root, base), required_bytes={S1: 10**18})

    assert str(root) in str(err.value) and "free" in str(err.value)
    assert state.gets() == []
    assert not (root / ".downloads" / f"{S1}.part").exists()


@pytest.mark.parametrize("allow_head", [True, False])
def test_free_space_counts_the_archive_size_from_head_or_get(server, tmp_path, monkeypatch, allow_head):
    state, base = server
    state.allow_head = allow_head
    size = len(state.files[S1])
    real_usage = dl.shutil.disk_usage
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=size - 1))
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="not enough free space"):
        fetch(config(root, base), required_bytes={S1: 0})

    # With HEAD the refusal comes before any GET; without it, at the first GET before a byte is written.
    assert len(state.gets(S1)) == (0 if allow_head else 1)
    assert not (root / ".downloads" / f"{S1}.part").exists()
    assert not (root / "ROIs1158_spring_s1").exists()
