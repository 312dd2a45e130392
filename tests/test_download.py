"""Stage `download`: local paths, file:// and http(s) URLs, verification, resuming."""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import download
from pipeline.core.errors import PipelineError

PAYLOAD = np.random.default_rng(0).bytes(300_000)  # stands in for the archive
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
WRONG = "0" * 64


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


def _params(tmp_path: Path, url: str, *, sha256: str | None = SHA256, md5: str | None = None) -> Path:
    path = tmp_path / "params.yaml"
    q = lambda v: f"'{v}'" if v else "null"  # quoted: YAML reads 000... as a number
    path.write_text(f"data:\n  url: {q(url)}\n  sha256: {q(sha256)}\n  md5: {q(md5)}\n")
    return path


def _main(params: Path, out: Path):
    return download.main(["--params", str(params), "--out", str(out)])


def _error_line(capsys) -> str:
    """The one error line (warnings about retries may come before it)."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def _folder_is(folder: Path, names: list[str]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ------------------------------------------------------------------ local files

@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src" / "cifar.tar.gz"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_local_path_is_copied_and_verified(tmp_path, source):
    dest = tmp_path / "data" / "cifar10.tar.gz"
    assert download.fetch(str(source), dest, sha256=SHA256, progress=False) == SHA256
    assert dest.read_bytes() == PAYLOAD
    _folder_is(dest.parent, ["cifar10.tar.gz"])


def test_relative_path_is_relative_to_the_current_folder(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "data" / "cifar10.tar.gz"
    assert download.fetch("src/cifar.tar.gz", "data/cifar10.tar.gz", md5=MD5, progress=False) == MD5
    assert dest.read_bytes() == PAYLOAD


def test_file_url_and_main(tmp_path, source, capsys):
    dest = tmp_path / "data" / "cifar10.tar.gz"
    _main(_params(tmp_path, source.as_uri()), dest)
    assert dest.read_bytes() == PAYLOAD
    assert SHA256 in capsys.readouterr().out


def test_sha256_wins_over_md5(tmp_path, source):
    dest = tmp_path / "cifar10.tar.gz"
    # A wrong md5 is ignored when sha256 is given.
    assert download.fetch(str(source), dest, sha256=SHA256, md5="0" * 32, progress=False) == SHA256


def test_no_checksum_warns_and_returns_the_sha256(tmp_path, source, capsys):
    dest = tmp_path / "cifar10.tar.gz"
    assert download.fetch(str(source), dest, progress=False) == SHA256
    err = capsys.readouterr().err
    assert "warning:" in err and "unverified" in err and SHA256 in err


def test_existing_verified_output_is_kept(tmp_path, capsys):
    dest = tmp_path / "cifar10.tar.gz"
    dest.write_bytes(PAYLOAD)
    # The source does not even exist: nothing is fetched.
    assert download.fetch(str(tmp_path / "gone.tar.gz"), dest, sha256=SHA256, progress=False) == SHA256
    assert "nothing to do" in capsys.readouterr().out


def test_existing_wrong_output_is_replaced(tmp_path, source):
    dest = tmp_path / "cifar10.tar.gz"
    dest.write_bytes(b"old and wrong")
    download.fetch(str(source), dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(tmp_path, source, capsys):
    out_dir = tmp_path / "data"
    with pytest.raises(SystemExit) as exc:
        _main(_params(tmp_path, str(source), sha256=WRONG), out_dir / "cifar10.tar.gz")
    assert exc.value.code == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: checksum mismatch for {source}: expected sha256 {WRONG} (data.sha256), "
                           f"got {SHA256}; ")
    assert "data.sha256" in line and "data.md5" in line and "docs/usage.md" in line  # both keys, where to read more
    _folder_is(out_dir, [])


def test_md5_mismatch_names_md5(tmp_path, source, capsys):
    with pytest.raises(SystemExit):
        _main(_params(tmp_path, str(source), sha256=None, md5="0" * 32), tmp_path / "out.tar.gz")
    assert "expected md5 " + "0" * 32 in _error_line(capsys)
    assert not (tmp_path / "out.tar.gz").exists() and not (tmp_path / "out.tar.gz.part").exists()


def test_missing_local_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(_params(tmp_path, str(tmp_path / "nope.tar.gz")), tmp_path / "out.tar.gz")
    assert exc.value.code == 2
    line = _error_line(capsys)
    assert f"cannot read {tmp_path / 'nope.tar.gz'}: no such file" in line and "data.url" in line


def test_unsupported_scheme(tmp_path):
    with pytest.raises(PipelineError, match="unsupported URL scheme 'ftp'"):
        download.fetch("ftp://example.com/x.tar.gz", tmp_path / "x", progress=False)


# ------------------------------------------------------------------------ http

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        if self.path != "/cifar.tar.gz":
            self.send_error(404)
            return
        body, start = srv.payload, 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.honor_range:
            start = int(m.group(1))
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
        chunk = body[start:]
        if srv.endless:  # no Content-Length, and bytes for ever
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        self.send_header("Content-Length", str(len(chunk)))
        # As some servers label a .tar.gz; the client must still save the bytes as they are.
        self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if srv.drip:  # a byte now and then: never silent for long, never done
            try:
                for b in chunk:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(srv.drip)
            except OSError:
                return
            return
        if srv.drops:  # send part of the body, then hang up
            srv.drops -= 1
            self.wfile.write(chunk[:len(chunk) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.payload, srv.honor_range, srv.drops, srv.requests = PAYLOAD, True, 0, []
    srv.drip, srv.endless = 0.0, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/cifar.tar.gz"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_download(tmp_path, server):
    dest = tmp_path / "cifar10.tar.gz"
    assert download.fetch(server.url, dest, sha256=SHA256, progress=False) == SHA256
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None]
    _folder_is(tmp_path, ["cifar10.tar.gz"])


def test_http_resumes_from_part(tmp_path, server, capsys):
    dest = tmp_path / "cifar10.tar.gz"
    (tmp_path / "cifar10.tar.gz.part").write_bytes(PAYLOAD[:100_000])
    assert download.fetch(server.url, dest, sha256=SHA256, progress=False) == SHA256
    assert server.requests == ["bytes=100000-"]
    assert dest.read_bytes() == PAYLOAD
    assert "resuming" in capsys.readouterr().out
    _folder_is(tmp_path, ["cifar10.tar.gz"])


def test_http_restarts_when_server_ignores_range(tmp_path, server, capsys):
    server.honor_range = False
    dest = tmp_path / "cifar10.tar.gz"
    (tmp_path / "cifar10.tar.gz.part").write_bytes(b"garbage that must not be kept")
    assert download.fetch(server.url, dest, sha256=SHA256, progress=False) == SHA256
    assert server.requests == ["bytes=29-"]
    assert dest.read_bytes() == PAYLOAD
    assert "ignored the Range request" in capsys.readouterr().out


def test_http_complete_part_gets_416_and_verifies(tmp_path, server):
    dest = tmp_path / "cifar10.tar.gz"
    (tmp_path / "cifar10.tar.gz.part").write_bytes(PAYLOAD)
    assert download.fetch(server.url, dest, sha256=SHA256, progress=False) == SHA256
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]
    assert dest.read_bytes() == PAYLOAD


def test_http_retries_a_dropped_connection_by_resuming(tmp_path, server, capsys):
    server.drops = 2
    dest = tmp_path / "cifar10.tar.gz"
    assert download.fetch(server.url, dest, sha256=SHA256, progress=False, retries=3) == SHA256
    assert dest.read_bytes() == PAYLOAD
    # Each retry asks for the rest, from what the previous attempts kept.
    assert server.requests[0] is None and len(server.requests) == 3
    starts = [int(re.fullmatch(r"bytes=(\d+)-", r).group(1)) for r in server.requests[1:]]
    assert 0 < starts[0] < starts[1] < len(PAYLOAD)
    err = capsys.readouterr().err
    assert err.count("retry") == 2 and "Connection broken" in err


def test_http_gives_up_after_retries_and_keeps_the_part(tmp_path, server, capsys):
    server.drops = 10
    url = server.url
    with pytest.raises(SystemExit) as exc:
        download.main(["--params", str(_params(tmp_path, url)), "--out", str(tmp_path / "o.tar.gz"),
                       "--retries", "1"])
    assert exc.value.code == 2
    line = _error_line(capsys)
    assert f"cannot download {url}: the connection failed 2 times" in line and "resume" in line
    assert len(server.requests) == 2
    assert not (tmp_path / "o.tar.gz").exists()
    assert 0 < (tmp_path / "o.tar.gz.part").stat().st_size < len(PAYLOAD)


def test_http_corrupt_download_is_removed(tmp_path, server, capsys):
    server.payload = PAYLOAD[:-1] + b"\0"
    with pytest.raises(SystemExit):
        _main(_params(tmp_path, server.url), tmp_path / "out" / "cifar10.tar.gz")
    assert f"checksum mismatch for {server.url}" in _error_line(capsys)
    _folder_is(tmp_path / "out", [])


def test_http_404(tmp_path, server, capsys):
    url = server.url.replace("cifar.tar.gz", "missing.tar.gz")
    with pytest.raises(SystemExit):
        _main(_params(tmp_path, url), tmp_path / "out.tar.gz")
    line = _error_line(capsys)
    assert f"cannot download {url}: HTTP 404" in line
    assert "download it by hand, then set data.url to its local path and data.sha256" in line


def test_unreachable_url(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar.tar.gz"
    with pytest.raises(SystemExit) as exc:
        _main(_params(tmp_path, url), tmp_path / "out.tar.gz")
    assert exc.value.code == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: cannot download {url}: ")
    assert "refused" in line.lower() and "set data.url to its local path" in line
    assert "object at 0x" not in line
    _folder_is(tmp_path, ["params.yaml"])


# ------------------------------------------------------------------ bounded inputs

def test_a_device_or_fifo_is_refused_without_reading_it(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for url in ("/dev/zero", str(fifo)):  # /dev/zero would fill the disk; a FIFO would hang
        with pytest.raises(SystemExit):
            _main(_params(tmp_path, url), tmp_path / "data" / "cifar10.tar.gz")
        line = _error_line(capsys)
        assert "not an archive file" in line and ("a device" in line or "a FIFO" in line)
    _folder_is(tmp_path / "data", [])


def test_a_local_file_larger_than_the_cap_is_refused(tmp_path, source, capsys):
    with pytest.raises(download.PipelineError, match=r"more than the 1,000 allowed \(data.max_bytes\)"):
        download.fetch(str(source), tmp_path / "out.tar.gz", sha256=SHA256, progress=False, max_bytes=1000)
    assert not list(tmp_path.glob("out.tar.gz*"))


def test_an_endless_download_stops_at_the_cap_and_keeps_nothing(tmp_path, server):
    server.endless = True
    dest = tmp_path / "cifar10.tar.gz"
    with pytest.raises(download.PipelineError, match=r"sends more than 1,000,000 bytes \(data.max_bytes"):
        download.fetch(server.url, dest, sha256=SHA256, progress=False, max_bytes=1_000_000)
    assert not list(tmp_path.glob("cifar10.tar.gz*"))


def test_a_content_length_over_the_cap_is_refused_before_reading(tmp_path, server):
    with pytest.raises(download.PipelineError, match="data.max_bytes"):
        download.fetch(server.url, tmp_path / "c.tar.gz", sha256=SHA256, progress=False, max_bytes=1000)
    assert server.requests == [None]


def test_a_server_that_drips_a_byte_at_a_time_times_out(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(download, "STALL_S", 0.5)
    server.drip = 0.05  # 20 bytes a second: never 60 s of silence, yet no real progress
    t0 = time.monotonic()
    with pytest.raises(download.PipelineError, match="less than 65,536 bytes in 0 s"):
        download.fetch(server.url, tmp_path / "c.tar.gz", sha256=SHA256, progress=False, retries=1)
    assert time.monotonic() - t0 < 10


def test_a_malformed_url_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _main(_params(tmp_path, "http://[::1:80/x.tar.gz"), tmp_path / "c.tar.gz")
    line = _error_line(capsys)
    assert "is not a valid URL" in line and "Invalid IPv6 URL" in line
