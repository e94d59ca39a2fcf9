"""``neurokedro.download``: resumable, verified IXI download and unpacking, against a local server.

Nothing here reaches the internet: a small tar of real IXI scans from ``../shared/data/ixi_fullres``
is served from 127.0.0.1 by an HTTP server that honours ``Range`` requests and can drop a
connection half-way through a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from neurokedro.download import (
    COMPLETE_MARKER,
    IXI_SOURCES,
    DownloadError,
    download,
    fetch_ixi,
    rebase_url,
    unpack,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FULLRES = Path(os.environ.get("NEUROKEDRO_IXI_FULLRES_DIR", PROJECT_ROOT.parent / "shared" / "data" / "ixi_fullres"))
# The two smallest scans (~2 MB each) keep the archive small and the tests fast.
SCANS = ("IXI429-Guys-0997-T1_skullstripped.nii.gz", "IXI329-HH-1908-T1_skullstripped.nii.gz")
SPREADSHEET = "IXI_demographics.csv"
T1_PATH = "/brain-development/downloads/IXI/IXI-T1.tar"
XLS_PATH = "/brain-development/downloads/IXI/IXI.xls"
CHUNK = 64 * 1024

pytestmark = pytest.mark.timeout(60)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# a local HTTP server with Range support and a "drop the connection half-way" switch
# ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: "FileServer"

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        range_header = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, range_header))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and srv.ranges:
            match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            if not match:
                self.send_error(400, "only 'bytes=N-' ranges are supported")
                return
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        if srv.drop_half:
            # Promise everything, deliver half, hang up: a connection lost mid-file.
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output quiet
        pass


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.ranges = True
        self.drop_half = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ixi_payload(tmp_path_factory) -> dict:
    """A small IXI-T1.tar of real scans and a spreadsheet, built from copies of ../shared files."""
    if not all((FULLRES / name).is_file() for name in (*SCANS, SPREADSHEET)):
        pytest.skip(f"real IXI scans not found in {FULLRES} (needs ../shared/data/ixi_fullres)")
    work = tmp_path_factory.mktemp("ixi_src")
    originals = {}
    for name in SCANS:
        copy = work / name
        shutil.copyfile(FULLRES / name, copy)  # the shared originals are only ever read
        originals[name] = sha256(copy.read_bytes())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in SCANS:  # flat, like the official archive
            tar.add(work / name, arcname=name)
    spreadsheet = (FULLRES / SPREADSHEET).read_bytes()
    return {"tar": buffer.getvalue(), "xls": spreadsheet, "scan_sha256": originals}


@pytest.fixture
def server(ixi_payload):
    srv = FileServer({T1_PATH: ixi_payload["tar"], XLS_PATH: ixi_payload["xls"]})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _no_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


def test_rebase_url():
    assert rebase_url(IXI_SOURCES["t1"], None) == IXI_SOURCES["t1"]
    assert rebase_url(IXI_SOURCES["t1"], "http://127.0.0.1:8000") == (
        "http://127.0.0.1:8000/brain-development/downloads/IXI/IXI-T1.tar"
    )
    assert rebase_url(IXI_SOURCES["spreadsheet"], "https://mirror.example/data/ixi/") == (
        "https://mirror.example/data/ixi/IXI.xls"
    )
    with pytest.raises(ValueError):
        rebase_url(IXI_SOURCES["t1"], "mirror.example")


def test_fetch_ixi_downloads_and_unpacks_identical_bytes(server, ixi_payload, tmp_path):
    dest = tmp_path / "data" / "01_raw" / "ixi"
    result = fetch_ixi(dest, base_url=server.base_url, progress=False, timeout=10, chunk_size=CHUNK)

    assert result["t1_dir"] == dest / "IXI-T1"
    assert result["spreadsheet"] == dest / "IXI.xls"
    assert sha256(result["t1_archive"].read_bytes()) == sha256(ixi_payload["tar"])
    for name, digest in ixi_payload["scan_sha256"].items():
        assert sha256((dest / "IXI-T1" / name).read_bytes()) == digest
    assert sha256((dest / "IXI.xls").read_bytes()) == sha256(ixi_payload["xls"])
    assert (dest / "IXI-T1" / COMPLETE_MARKER).is_file()
    assert not list(dest.glob("*.part")) and not _no_temporaries(dest)

    # A second run is a no-op: nothing is requested again, nothing is rewritten.
    n_requests = len(server.requests)
    mtime = (dest / "IXI-T1" / SCANS[0]).stat().st_mtime_ns
    fetch_ixi(dest, base_url=server.base_url, progress=False, timeout=10)
    assert len(server.requests) == n_requests
    assert (dest / "IXI-T1" / SCANS[0]).stat().st_mtime_ns == mtime


def test_interrupted_download_keeps_part_and_resumes(server, ixi_payload, tmp_path):
    url, dest = server.url(T1_PATH), tmp_path / "IXI-T1.tar"
    part = tmp_path / "IXI-T1.tar.part"
    server.drop_half = True
    with pytest.raises(DownloadError, match=r"(stopped early|interrupted).*resume"):
        download(url, dest, progress=False, timeout=10, chunk_size=CHUNK)
    assert not dest.exists()
    assert part.is_file()
    kept = part.stat().st_size
    assert 0 < kept < len(ixi_payload["tar"])

    server.drop_half = False
    server.requests.clear()
    assert download(url, dest, progress=False, timeout=10, chunk_size=CHUNK) == dest
    assert server.requests == [(T1_PATH, f"bytes={kept}-")]
    assert sha256(dest.read_bytes()) == sha256(ixi_payload["tar"])
    assert not part.exists()


def test_server_without_ranges_restarts_from_zero(server, ixi_payload, tmp_path):
    url, dest = server.url(T1_PATH), tmp_path / "IXI-T1.tar"
    (tmp_path / "IXI-T1.tar.part").write_bytes(b"stale bytes that must not survive")
    server.ranges = False
    download(url, dest, progress=False, timeout=10, chunk_size=CHUNK)
    assert sha256(dest.read_bytes()) == sha256(ixi_payload["tar"])


def test_complete_part_is_finished_without_refetching(server, ixi_payload, tmp_path):
    """A run killed between the last byte and the rename: the server answers 416, the .part is used."""
    url, dest = server.url(XLS_PATH), tmp_path / "IXI.xls"
    (tmp_path / "IXI.xls.part").write_bytes(ixi_payload["xls"])
    download(url, dest, progress=False, timeout=10, sha256=sha256(ixi_payload["xls"]))
    assert server.requests == [(XLS_PATH, f"bytes={len(ixi_payload['xls'])}-")]
    assert dest.read_bytes() == ixi_payload["xls"]


def test_wrong_sha256_raises_and_leaves_no_file(server, ixi_payload, tmp_path):
    url, dest = server.url(XLS_PATH), tmp_path / "IXI.xls"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as excinfo:
        download(url, dest, sha256=wrong, progress=False, timeout=10)
    message = str(excinfo.value)
    assert url in message and wrong in message and sha256(ixi_payload["xls"]) in message
    assert not dest.exists()
    assert not (tmp_path / "IXI.xls.part").exists()  # bad .part deleted: the next run starts afresh


def test_wrong_expected_size_raises(server, ixi_payload, tmp_path):
    url, dest = server.url(XLS_PATH), tmp_path / "IXI.xls"
    with pytest.raises(DownloadError, match=str(len(ixi_payload["xls"]))):
        download(url, dest, expected_size=len(ixi_payload["xls"]) + 1, progress=False, timeout=10)
    assert not dest.exists()


def test_existing_file_failing_checksum_is_moved_aside(server, ixi_payload, tmp_path):
    url, dest = server.url(XLS_PATH), tmp_path / "IXI.xls"
    dest.write_bytes(b"the user's own, different file")
    download(url, dest, sha256=sha256(ixi_payload["xls"]), progress=False, timeout=10)
    assert dest.read_bytes() == ixi_payload["xls"]
    (aside,) = tmp_path.glob("IXI.xls.bad-*")
    assert aside.read_bytes() == b"the user's own, different file"


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(server.url("/nope.tar"), tmp_path / "nope.tar", progress=False, timeout=10)
    assert not (tmp_path / "nope.tar").exists()


def test_truncated_archive_fails_to_unpack_without_leftovers(server, ixi_payload, tmp_path):
    server.files[T1_PATH] = ixi_payload["tar"][: int(len(ixi_payload["tar"]) * 0.6)]
    dest = tmp_path / "ixi"
    with pytest.raises(DownloadError, match="corrupt or truncated"):
        fetch_ixi(dest, base_url=server.base_url, progress=False, timeout=10, chunk_size=CHUNK)
    assert (dest / "IXI-T1.tar").is_file()  # the download itself verified (size as announced)
    assert not (dest / "IXI-T1").exists()
    assert not _no_temporaries(dest)


def test_unpack_refuses_unsafe_members(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DownloadError, match="outside"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not _no_temporaries(tmp_path)


def test_cli_main_end_to_end(server, ixi_payload, tmp_path, capsys):
    from neurokedro.__main__ import main

    dest = tmp_path / "ixi"
    status = main(["download-ixi", "--dest", str(dest), "--base-url", server.base_url,
                   "--sha256-xls", sha256(ixi_payload["xls"]), "--no-progress", "--timeout", "10"])
    assert status == 0
    assert str(dest / "IXI-T1") in capsys.readouterr().out
    for name, digest in ixi_payload["scan_sha256"].items():
        assert sha256((dest / "IXI-T1" / name).read_bytes()) == digest

    # A failure is reported on stderr with exit status 1.
    status = main(["download-ixi", "--dest", str(tmp_path / "other"), "--base-url", server.base_url,
                   "--sha256-t1", "f" * 64, "--no-progress", "--timeout", "10"])
    assert status == 1
    assert "Checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "other" / "IXI-T1.tar").exists()


def test_python_m_neurokedro_download_ixi(server, ixi_payload, tmp_path):
    dest = tmp_path / "ixi"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "neurokedro", "download-ixi", "--dest", str(dest),
         "--base-url", server.base_url, "--no-progress", "--timeout", "10"],
        capture_output=True, text=True, timeout=50, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sha256((dest / "IXI.xls").read_bytes()) == sha256(ixi_payload["xls"])
    assert len(list((dest / "IXI-T1").glob("*.nii.gz"))) == len(SCANS)


def test_other_arguments_still_run_kedro(monkeypatch):
    import neurokedro.__main__ as entry

    calls = []
    monkeypatch.setattr(entry, "configure_project", lambda name: calls.append(("configure", name)))
    monkeypatch.setattr(entry, "find_run_command",
                        lambda name: lambda *a, **k: calls.append(("run", a, k)))
    entry.main(["--pipeline", "age_regression"])
    assert calls == [("configure", "neurokedro"), ("run", (["--pipeline", "age_regression"],), {})]
