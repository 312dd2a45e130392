"""Stage `download`: fetch the CIFAR-10 archive named by `data.url` and verify it.

    python -m pipeline.download --params params.yaml --out data/cifar10.tar.gz

`data.url` is an http(s) URL, a file:// URL or a local path (relative to the
repository root, also when a queued DVC experiment runs in a copy of it). The archive is written to
`<out>.part`, checked against `data.sha256` (or `data.md5` when sha256 is
null) and only then renamed onto `<out>`, so `<out>` is never a partial or
unverified file. An interrupted http(s) download resumes from the `.part`.
"""
from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import file_digest
from pipeline.core.provenance import repo_root
from pipeline.core.schema import load_data_config

CHUNK = 1 << 20  # bytes per file read/write
NET_CHUNK = 1 << 16  # bytes per network read; what a dropped read was holding is lost
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0  # longest silence from the server before the attempt counts as dropped
STALL_S = 60.0  # an attempt that gains less than STALL_BYTES in this long counts as dropped,
STALL_BYTES = 64 << 10  # however often the server sends a byte or two
RETRY_WAIT_S = 2.0  # wait before the n-th retry: n * RETRY_WAIT_S seconds

_BY_HAND = ("download it by hand, then set data.url to its local path and data.sha256 to its checksum "
            "(see 'Data' in docs/usage.md)")


class _Dropped(Exception):
    """The connection broke after it was made; worth resuming."""


class _TooBig(Exception):
    """More bytes came than data.max_bytes allows."""


def _bar(total: int | None, initial: int, name: str, progress: bool) -> tqdm:
    # disable=None: a bar on a terminal, nothing in logs (tqdm writes to stderr).
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, disable=None if progress else True, file=sys.stderr)


def _local_source(url: str) -> Path | None:
    """The file a file:// URL or plain path names; None for http(s)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise PipelineError(f"data.url = {url!r} is not a valid URL ({exc}); give an http(s) URL, a file:// URL "
                            f"or a local path") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PipelineError(f"cannot read {url}: file:// URLs on another host are not supported; "
                                f"copy the archive here and set data.url to its local path")
        return Path(urllib.request.url2pathname(parts.path))
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        # Relative to the user's repository root, also from inside a queued
        # `dvc exp` run, which executes in a copy under .dvc/tmp/exps/.
        return repo_root() / url
    raise PipelineError(f"cannot fetch {url}: unsupported URL scheme '{parts.scheme}' "
                        f"(data.url must be an http(s) URL, a file:// URL or a local path)")


def _copy_local(url: str, src: Path, part: Path, progress: bool, cap: int) -> None:
    try:
        st = src.stat()  # before opening: opening a FIFO would wait for a writer
    except FileNotFoundError:
        raise PipelineError(f"cannot read {url}: no such file (a relative path is relative to "
                            f"{repo_root()}); check data.url") from None
    except OSError as exc:
        raise PipelineError(f"cannot read {url}: {exc.strerror or exc}; check data.url") from None
    if stat.S_ISDIR(st.st_mode):
        raise PipelineError(f"cannot read {url}: it is a folder, not an archive; check data.url")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise PipelineError(f"refusing data.url = {url}: it is {kind}, not an archive file")
    if st.st_size > cap:
        raise PipelineError(f"refusing data.url = {url}: it has {st.st_size:,} bytes, more than the "
                            f"{cap:,} allowed (data.max_bytes)")
    try:
        fin = open(src, "rb")
    except OSError as exc:
        raise PipelineError(f"cannot read {url}: {exc.strerror or exc}; check data.url") from None
    with fin, open(part, "wb") as fout, _bar(st.st_size, 0, src.name, progress) as bar:
        done = 0
        while block := fin.read(CHUNK):
            done += len(block)
            if done > cap:  # it grew while being copied
                raise _TooBig
            fout.write(block)
            bar.update(len(block))


def _reason(exc: BaseException) -> str:
    """A short reason from a requests/urllib3 exception, without object reprs."""
    inner = exc
    for _ in range(5):  # requests wraps urllib3, which wraps the socket error
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException) and inner.args and isinstance(inner.args[0], BaseException):
            nested = inner.args[0]
        if not isinstance(nested, BaseException):
            break
        inner = nested
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    text = re.sub(r"<[^<>]*>:?\s*", "", text)  # "<HTTPConnection object at 0x..>: "
    text = re.sub(r"^\w*Connection(Pool)?\([^)]*\):\s*", "", text)  # "HTTPConnection(host=.., port=..): "
    text = text.replace("Failed to establish a new connection: ", "")
    return " ".join(text.split()) or type(inner).__name__


def _cannot_connect(exc: requests.ConnectionError) -> bool:
    """True when no connection was made at all (refused, unknown host): retrying will not help."""
    inner = exc.args[0] if exc.args else None
    return isinstance(getattr(inner, "reason", inner), urllib3.exceptions.NewConnectionError)


def _content_range_start(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes a-b/total` header."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _http_attempt(session: requests.Session, url: str, part: Path, progress: bool, cap: int) -> None:
    """One GET, resuming from `part` when it has bytes. Raises _Dropped when worth retrying."""
    have = part.stat().st_size if part.exists() else 0
    # identity: the archive's own bytes, never re-compressed or decoded in transit
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    except requests.ConnectionError as exc:
        if _cannot_connect(exc):
            raise PipelineError(f"cannot download {url}: {_reason(exc)}; check the URL and the network, "
                                f"or {_BY_HAND}") from None
        raise _Dropped(_reason(exc)) from None
    except requests.Timeout as exc:
        raise _Dropped(f"no answer within the timeout ({_reason(exc)})") from None
    except requests.RequestException as exc:  # malformed URL and the like
        raise PipelineError(f"cannot download {url}: {_reason(exc)}; check the URL or {_BY_HAND}") from None

    with resp:
        if resp.status_code == 416:
            # Range not satisfiable: the part already holds the whole file; the checksum decides.
            return
        if resp.status_code >= 500:
            raise _Dropped(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code not in (200, 206):
            raise PipelineError(f"cannot download {url}: HTTP {resp.status_code} {resp.reason}; "
                                f"check the URL or {_BY_HAND}")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if length is not None and (have if resp.status_code == 206 else 0) + length > cap:
            raise _TooBig
        if resp.status_code == 206:
            start, total = _content_range_start(resp.headers.get("Content-Range"))
            if start != have:  # not the range we asked for: start over
                part.unlink(missing_ok=True)
                raise _Dropped(f"the server sent bytes from {start}, not from {have}")
            if total is None and length is not None:
                total = have + length
            mode, done = "ab", have
            print(f"resuming {part.name} at {have:,} bytes")
        else:
            if have:
                print("the server ignored the Range request; downloading from the start")
            mode, done, total = "wb", 0, length
        try:
            with open(part, mode) as f, _bar(total, done, part.name.removesuffix(".part"), progress) as bar:
                mark, mark_t = done, time.monotonic()  # progress is STALL_BYTES within STALL_S
                # read1: what has arrived (at most NET_CHUNK), so a slow server is noticed
                while block := resp.raw.read1(NET_CHUNK, decode_content=False):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
                    if done > cap:
                        raise _TooBig
                    now = time.monotonic()
                    if done - mark >= STALL_BYTES:
                        mark, mark_t = done, now
                    elif now - mark_t > STALL_S:
                        raise _Dropped(f"less than {STALL_BYTES:,} bytes in {STALL_S:.0f} s")
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError) as exc:
            raise _Dropped(_reason(exc)) from None
        if total is not None and done < total:
            raise _Dropped(f"the connection closed after {done:,} of {total:,} bytes")


def _http_fetch(url: str, part: Path, progress: bool, retries: int, cap: int) -> None:
    failures = 0
    with requests.Session() as session:
        while True:
            try:
                _http_attempt(session, url, part, progress, cap)
                return
            except _Dropped as exc:
                failures += 1
                kept = part.stat().st_size if part.exists() else 0
                if failures > retries:
                    raise PipelineError(
                        f"cannot download {url}: the connection failed {failures} times (last: {exc}); "
                        f"run the stage again to resume from the {kept:,} bytes kept in {part}, "
                        f"or {_BY_HAND}") from None
                print(f"download interrupted ({exc}); retry {failures} of {retries} from byte {kept:,}",
                      file=sys.stderr)
                time.sleep(RETRY_WAIT_S * failures)


def fetch(url: str, dest: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None,
          progress: bool = True, retries: int = 3, max_bytes: int = 1 << 30) -> str:
    """Fetch `url` to `dest`, verified; return the hex digest checked (sha256 when none was given).

    sha256 wins over md5. With neither, the archive is accepted unverified
    (with a warning). A `dest` that already matches the checksum is kept as is.
    """
    dest = Path(dest)
    algo, expected = ("sha256", sha256) if sha256 else ("md5", md5) if md5 else (None, None)
    expected = expected.lower() if expected else None

    if algo and dest.is_file():
        if file_digest(dest, algo) == expected:
            print(f"{dest} is already there and matches its {algo}; nothing to do")
            return expected
        print(f"{dest} exists but does not match its {algo}; fetching it again")

    src = _local_source(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    t0 = time.perf_counter()
    try:
        if src is not None:
            _copy_local(url, src, part, progress, max_bytes)
        else:
            _http_fetch(url, part, progress, retries, max_bytes)
    except _TooBig:
        part.unlink(missing_ok=True)
        raise PipelineError(f"refusing data.url = {url}: it sends more than {max_bytes:,} bytes (data.max_bytes; "
                            f"the official archive has 170,498,071); nothing was kept") from None

    got = file_digest(part, algo or "sha256")
    if algo and got != expected:
        part.unlink(missing_ok=True)  # a corrupt part must not be resumed
        other = "data.md5" if algo == "sha256" else "data.sha256"
        raise PipelineError(f"checksum mismatch for {url}: expected {algo} {expected} (data.{algo}), got {got}; "
                            f"the download is corrupt, or data.url names another archive than data.{algo} "
                            f"describes: set data.sha256 (it wins over data.md5) to that archive's checksum, "
                            f"or {other} to null (see 'Data' in docs/usage.md for offline use)")
    if not algo:
        print(f"warning: data.sha256 and data.md5 are both null, so {url} is unverified; "
              f"its sha256 is {got} (set data.sha256 to pin it)", file=sys.stderr)
    os.replace(part, dest)
    print(f"{dest}: {dest.stat().st_size:,} bytes in {time.perf_counter() - t0:.1f} s, {algo or 'sha256'} {got}")
    return got


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="reads data.url, data.sha256, data.md5")
    ap.add_argument("--out", default="data/cifar10.tar.gz", help="where the verified archive goes")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--retries", type=int, default=3, help="resumes after a dropped connection")
    args = ap.parse_args(argv)
    cfg = load_data_config(args.params)
    fetch(cfg.url, args.out, md5=cfg.md5, sha256=cfg.sha256, progress=not args.no_progress,
          retries=args.retries, max_bytes=cfg.download_cap)


if __name__ == "__main__":
    main()
