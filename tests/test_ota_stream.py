"""OTA fault suite, part 6: resumable, streamed downloads (issue 21 item 3).

A static server on 127.0.0.1 that honours ``Range`` (bench/ota_stream_memory.py's
RangeRepoServer) drops the bundle download mid-body, ignores the range, lies in its
``Content-Range`` or stalls the resumed body; the device updater resumes with ``Range``,
restarts from zero on a ``200``, refuses a lying ``206`` and keeps its wall-clock deadline
across resumes. The archive is hashed as it arrives and extracted member by member into the
inactive slot; a big bundle installs with bounded extra peak RSS (a real update child).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
import time
import tracemalloc
from pathlib import Path
from typing import Iterator, List

import pytest

from ota_support import (BOARD, MODEL, World, build_world, bundle_files, expect_refused, release_meta, tar_of,
                         update, write_tree)

from tuf.api import exceptions as tuf_ex

from edgeuq_runtime import load_bundle, sha256_file
from edgeuq_runtime.ota import core, current_bundle
from edgeuq_runtime.ota.archive import BundleArchive, pack_bundle
from edgeuq_runtime.ota.errors import UpdateRefused
from edgeuq_runtime.ota.fetchers import (HttpFetcher, RangeMismatchError, download_to_file, parse_content_range)
from edgeuq_runtime.ota.updater import UpdateConfig

ROOT = Path(__file__).resolve().parents[1]
NO_DELTA = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False)


def _bench():
    spec = importlib.util.spec_from_file_location("ota_stream_memory", ROOT / "bench" / "ota_stream_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("ota-stream-world"))


def _fetcher(deadline_s: float = 10.0, read_timeout: float = 2.0) -> HttpFetcher:
    return HttpFetcher(connect_timeout=2.0, read_timeout=read_timeout, deadline_s=deadline_s)


def _served(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    target = sim.url_of(core.bundle_target_path(BOARD, MODEL, 2))
    return dev, write_tree(sim.files, tmp_path / "www"), target


def _bundle_requests(srv, target: str):
    return [(rng, status) for rel, rng, status in srv.requests if rel == target]


def _assert_installed_r2(world, dev: Path) -> None:
    """The slot now serving holds exactly r2's files: the same sha256 for each, computed here."""
    served = current_bundle(dev)
    want = {n: hashlib.sha256(b).hexdigest() for n, b in bundle_files(world.bundles["r2"]).items()}
    got = {n: sha256_file(served / n) for n in want}
    assert got == want
    assert load_bundle(served, verify=True).digest == sha256_file(world.bundles["r2"] / "manifest.json")


# -- over HTTP ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drops,fraction", [(1, 0.4), (3, 0.4), (2, 0.0), (1, 0.99)],
                         ids=["once-at-40%", "three-times", "twice-before-the-first-byte", "once-at-99%"])
def test_dropped_connection_resumes_with_range_and_the_hash_matches(world, tmp_path, drops, fraction):
    dev, www, target = _served(world, tmp_path)
    size = (www / target).stat().st_size
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = drops
        srv.drop_fraction = fraction
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["release"] == 2 and out["delta"] is False
    assert out["download"] == {"resumes": drops if fraction else 0, "restarts": 0, "bytes": size,
                               "resumed_from_earlier_run": 0}
    reqs = _bundle_requests(srv, target)
    assert reqs[0] == (None, 200) and len(reqs) == drops + 1
    # each resume starts where the previous response broke off (``fraction`` of what it promised);
    # a drop before the first byte is retried from 0 (no Range header: nothing to resume)
    expect, done = [], 0
    for _ in range(drops):
        done += int((size - done) * fraction)
        expect.append(done)
    assert [rng for rng, _ in reqs[1:]] == [f"bytes={n}-" if n else None for n in expect]
    assert [st for _, st in reqs[1:]] == [206 if n else 200 for n in expect]
    _assert_installed_r2(world, dev)


def test_server_ignoring_range_restarts_from_zero(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        srv.ignore_range.add(target)
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["download"]["restarts"] == 1 and out["download"]["resumes"] == 0
    reqs = _bundle_requests(srv, target)
    assert reqs[0] == (None, 200) and reqs[1][0] is not None and reqs[1][1] == 200  # asked for a range, got it all
    _assert_installed_r2(world, dev)


@pytest.mark.parametrize("lie", ["start", "total", "malformed", "missing"])
def test_lying_content_range_is_refused(world, tmp_path, lie):
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        srv.lie[target] = lie
        err = expect_refused(dev, _fetcher(), {"download-range"}, repo_url=srv.url, config=NO_DELTA)
    assert "Content-Range" in str(err)
    assert [s for _, s in _bundle_requests(srv, target)] == [200, 206]  # refused at the first lying 206


@pytest.mark.parametrize("code,reason", [(416, "download-http"), (500, "download-http"), (404, "download-http")])
def test_error_status_to_a_range_request_is_refused(world, tmp_path, code, reason):
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        srv.range_status[target] = code
        err = expect_refused(dev, _fetcher(), {reason}, repo_url=srv.url, config=NO_DELTA)
    assert f"HTTP {code}" in str(err) and "Range: bytes=" in str(err)
    assert [s for _, s in _bundle_requests(srv, target)] == [200, code]


def test_dropped_metadata_download_is_refused_then_the_next_run_installs(world, tmp_path):
    """Metadata goes through tuf (small, never resumed): a drop refuses this run cleanly."""
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops["timestamp.json"] = 1
        expect_refused(dev, _fetcher(), {"download"}, repo_url=srv.url, config=NO_DELTA)
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["release"] == 2
    _assert_installed_r2(world, dev)


def test_dropped_delta_download_is_refused_then_the_next_run_installs(world, tmp_path):
    """A delta is small and goes through tuf's download (not resumed): a drop refuses this run."""
    sim, dev = world.fresh(tmp_path)
    res = sim.release(world.bundles["r2"])
    assert res.deltas, "r2 publishes a delta against r1"
    www = write_tree(sim.files, tmp_path / "www")
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[".bsdiff"] = 1
        expect_refused(dev, _fetcher(), {"download"}, repo_url=srv.url)
        out = update(dev, _fetcher(), srv.url)
    assert out["status"] == "installed" and out["delta"] is True
    _assert_installed_r2(world, dev)
    assert not (dev / "slots" / "b.tmp").exists()


def test_resume_past_the_deadline_is_refused_without_hanging(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        srv.stall_ranged.add(target)   # the resumed body drips a byte every 0.2 s: no read timeout
        t0 = time.monotonic()
        err = expect_refused(dev, _fetcher(deadline_s=2.0, read_timeout=1.0), {"download-slow"}, repo_url=srv.url,
                             config=NO_DELTA)
        took = time.monotonic() - t0
    assert "deadline" in str(err)
    assert [s for _, s in _bundle_requests(srv, target)] == [200, 206]  # it did resume, then ran out of time
    assert took < 12.0, took  # the refresh and the one download share nothing but the 2 s deadline per file


def test_resumes_are_bounded(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    cfg = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False, max_resumes=2)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 50
        err = expect_refused(dev, _fetcher(), {"download"}, repo_url=srv.url, config=cfg)
    assert "gave up after 2 resumes" in str(err)
    assert len(_bundle_requests(srv, target)) == 3


def test_bytes_after_a_resume_are_hashed_too(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    p = www / target
    data = bytearray(p.read_bytes())
    data[-300] ^= 1   # past the 40% the first response delivers: only the resumed 206 carries it
    p.write_bytes(bytes(data))
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        expect_refused(dev, _fetcher(), {"target-hash"}, repo_url=srv.url, config=NO_DELTA)
    assert [s for _, s in _bundle_requests(srv, target)] == [200, 206]


# -- download_to_file without a network ---------------------------------------------------------------------
class _Flaky:
    """A fetcher whose transfers break after ``cut`` bytes, ``breaks`` times; ``ranged`` chooses
    whether it resumes (fetch_from) or only restarts (plain _fetch / fetch)."""

    def __init__(self, data: bytes, breaks: int, cut: int, ranged: bool) -> None:
        self.data, self.breaks, self.cut = data, breaks, cut
        self.calls: List[int] = []
        if ranged:
            self.fetch_from = self._fetch_from

    def _gen(self, start: int) -> Iterator[bytes]:
        end = len(self.data)
        if self.breaks > 0:
            self.breaks -= 1
            end = min(end, start + self.cut)
        for i in range(start, end, 7):
            yield self.data[i:min(i + 7, end)]
        if end < len(self.data):
            raise tuf_ex.DownloadError("connection reset")

    def _fetch_from(self, url, offset, total, deadline_at=None):
        self.calls.append(offset)
        return offset, self._gen(offset)

    def fetch(self, url):
        self.calls.append(0)
        return self._gen(0)


@pytest.mark.parametrize("ranged", [True, False])
def test_download_to_file_hashes_across_resumes(tmp_path, ranged):
    data = bytes(range(256)) * 40
    f = _Flaky(data, breaks=3, cut=1000, ranged=ranged)
    dl = download_to_file(f, "x://t", tmp_path / "t.bin", len(data), ["sha256", "sha512"])
    assert (tmp_path / "t.bin").read_bytes() == data
    assert dl.hashes == {"sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}
    assert dl.length == len(data)
    if ranged:
        assert (dl.resumes, dl.restarts) == (3, 0) and f.calls == [0, 1000, 2000, 3000]
    else:
        assert (dl.resumes, dl.restarts) == (0, 3) and f.calls == [0, 0, 0, 0]  # a restart from zero each time


def test_download_to_file_refuses_more_than_the_signed_length(tmp_path):
    f = _Flaky(b"y" * 5000, breaks=0, cut=0, ranged=True)
    with pytest.raises(tuf_ex.DownloadLengthMismatchError):
        download_to_file(f, "x://t", tmp_path / "t.bin", 4999, ["sha256"])


@pytest.mark.parametrize("header,ok", [
    ("bytes 100-999/1000", True), ("bytes 99-999/1000", False), ("bytes 100-998/1000", False),
    ("bytes 100-1099/1100", False), ("bytes 100-999/*", False), ("bytes=100-999/1000", False), (None, False),
    ("bytes 100-999/1000 ", True), ("bytes 0100-999/1000", True),
])
def test_content_range_must_continue_the_file(header, ok):
    if ok:
        parse_content_range(header, 100, 1000)
    else:
        with pytest.raises(RangeMismatchError):
            parse_content_range(header, 100, 1000)


# -- the archive read member by member ------------------------------------------------------------------------
def _open(data: bytes, max_total: int) -> BundleArchive:
    return BundleArchive(io.BytesIO(data), max_total=max_total)


def test_bundle_archive_reads_members_in_bounded_memory(tmp_path):
    big = b"\x5a" * (24 << 20)
    data = tar_of({"manifest.json": b"{}", "weights.bin": big})
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    del data
    with open(path, "rb") as fh:
        tracemalloc.start()
        try:
            arch = BundleArchive(fh, max_total=path.stat().st_size)
            h = hashlib.sha256()
            for block in arch.chunks("weights.bin"):
                h.update(block)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert h.hexdigest() == hashlib.sha256(big).hexdigest()
    assert peak < 4 << 20, peak   # a 24 MB member through 1 MiB pieces


def _member(name: str, kind: bytes, data: bytes = b"", linkname: str = "") -> callable:
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, linkname, len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)
    return add


def _pax_member(tar):
    info = tarfile.TarInfo("notes.txt")
    info.pax_headers = {"path": "../../escape.txt"}   # a pax record renaming the member
    info.size = 1
    tar.addfile(info, io.BytesIO(b"x"))


def _archive_e2e(world, kind: str) -> bytes:
    """Signed archives the updater must refuse (cases not covered by test_ota_faults/test_ota_redteam)."""
    files = bundle_files(world.bundles["r2"])
    if kind == "dot-segment":
        return tar_of({**files, "a/./b.onnx": b"x"})
    if kind == "double-slash":
        return tar_of({**files, "a//b.onnx": b"x"})
    if kind == "backslash":
        return tar_of({**files, "..\\evil.onnx": b"x"})
    if kind == "dot-slash-duplicate":
        return tar_of({**files, "./head.onnx": files["head.onnx"]})
    if kind == "long-name-traversal":   # GNU long name (> 100 bytes) that climbs out
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in {**files, "a/" * 60 + "../" * 70 + "evil.onnx": b"x"}.items():
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
        return buf.getvalue()
    if kind == "hard-link":
        return tar_of(files, _member("head2.onnx", tarfile.LNKTYPE, linkname="head.onnx"))
    if kind == "directory":
        return tar_of(files, _member("extra_dir", tarfile.DIRTYPE))
    if kind == "fifo":
        return tar_of(files, _member("pipe", tarfile.FIFOTYPE))
    if kind == "char-device":
        return tar_of(files, _member("null", tarfile.CHRTYPE))
    if kind == "pax-rename":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files.items():
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
            _pax_member(tar)
        return buf.getvalue()
    if kind == "oversized-manifest":   # a 5 MB manifest.json: refused before it is read
        return tar_of({**files, "manifest.json": b" " * (5 << 20)})
    if kind == "truncated-mid-member":   # cut 100 bytes into the last member's data
        data = tar_of(files)
        return data[:_header_offsets(data)[-1] + 512 + 100]
    if kind == "member-declares-beyond-archive":
        data = bytearray(tar_of(files))
        # the last member's size field (octal at 124..135) rewritten to 8 GiB - 1, checksum fixed
        off = _header_offsets(bytes(data))[-1]
        data[off + 124:off + 136] = b"%011o\0" % ((8 << 30) - 1)
        data[off + 148:off + 156] = b" " * 8
        data[off + 148:off + 156] = b"%06o\0 " % sum(data[off:off + 512])
        return bytes(data)
    raise KeyError(kind)


def _header_offsets(data: bytes) -> List[int]:
    out, off = [], 0
    while off + 512 <= len(data) and data[off:off + 512].strip(b"\0"):
        out.append(off)
        size = int(data[off + 124:off + 135].strip(b"\0 ") or b"0", 8)
        off += 512 + (size + 511) // 512 * 512
    return out


ARCHIVE_E2E = ["dot-segment", "double-slash", "backslash", "dot-slash-duplicate", "long-name-traversal", "hard-link",
               "directory", "fifo", "char-device", "pax-rename", "oversized-manifest", "truncated-mid-member",
               "member-declares-beyond-archive"]


@pytest.mark.parametrize("kind", ARCHIVE_E2E)
def test_signed_hostile_archive_is_refused_by_the_streaming_installer(world, tmp_path, kind):
    sim, dev = world.fresh(tmp_path)
    sim.raw_release(_archive_e2e(world, kind), release_meta(world.bundles["r2"], 2))
    expect_refused(dev, sim, {"archive"}, config=NO_DELTA)
    assert not (dev / "slots" / "b.tmp").exists() and not (dev / "slots" / "b").exists()
    assert not any(p.name.startswith("escape") or p.name.startswith("evil") for p in tmp_path.rglob("*"))


def test_bundle_archive_refuses_duplicates_and_sizes_beyond_the_signed_length():
    dup = tar_of({"manifest.json": b"{}"}, lambda t: t.addfile(_info("manifest.json", 2), io.BytesIO(b"{}")))
    with pytest.raises(UpdateRefused, match="appears twice"):
        _open(dup, len(dup))
    data = tar_of({"manifest.json": b"{}", "w.bin": b"z" * 5000})
    with pytest.raises(UpdateRefused, match="declare more than 4000"):
        _open(data, 4000)   # the signed length is smaller than what the members declare


def _info(name: str, size: int) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.size = size
    return i


def test_bundle_archive_refuses_a_sparse_member():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_info("manifest.json", 2), io.BytesIO(b"{}"))
    raw = bytearray(buf.getvalue())
    raw[156] = ord("S")   # the manifest's typeflag -> GNU sparse (a member that expands past its bytes)
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    with pytest.raises(UpdateRefused) as ei:
        _open(bytes(raw), len(raw))
    assert ei.value.reason == "archive"


@pytest.mark.parametrize("cut", [512 * 3 + 1000, 512 * 3 + 4095, 700])
def test_truncated_archive_is_refused_before_extraction(cut):
    data = tar_of({"manifest.json": b"{}", "w.bin": b"q" * 4096})
    with pytest.raises(UpdateRefused) as ei:
        _open(data[:cut], 10 ** 6)   # w.bin (or the manifest) declares more bytes than the file holds
    assert ei.value.reason == "archive"


def test_member_shrinking_under_the_reader_is_refused():
    data = tar_of({"manifest.json": b"{}", "w.bin": b"q" * 4096})
    fh = io.BytesIO(data)
    arch = BundleArchive(fh, max_total=len(data))
    fh.truncate(512 * 3 + 1000)   # the file changes after its headers were checked
    with pytest.raises(UpdateRefused, match="truncated"):
        b"".join(arch.chunks("w.bin"))


def test_archive_missing_a_listed_file_is_refused_before_extraction(world, tmp_path):
    """An archive without a file its manifest lists is refused before a byte is extracted."""
    sim, dev = world.fresh(tmp_path)
    files = bundle_files(world.bundles["r2"])
    del files["head.onnx"]
    sim.raw_release(tar_of(files), release_meta(world.bundles["r2"], 2))
    err = expect_refused(dev, sim, {"bundle-integrity"}, config=NO_DELTA)
    assert "missing ['head.onnx']" in str(err)
    assert not (dev / "slots" / "b.tmp").exists() and not (dev / "slots" / "b").exists()


# -- memory: a real update child, big vs small bundle -----------------------------------------------------------
@pytest.mark.slow
def test_big_bundle_installs_with_bounded_extra_peak_rss(tmp_path):
    """64 MB payload over HTTP with one dropped connection: the update child's peak RSS exceeds the
    small bundle's by less than 32 MB (an install that held the archive in memory even once would
    add at least 64 MB)."""
    doc = BENCH.measure(tmp_path, payload_mb=64, pairs=1, drops=1, log=lambda *a: None)
    pair = doc["pairs"][0]
    assert pair["big"]["verified"] and pair["small"]["verified"]
    assert pair["big"]["download"]["resumes"] == 1 and pair["big"]["ranged_requests"] == 1
    assert pair["big"]["fetched_bytes"] > 64 << 20
    assert pair["extra_mb"] < 32.0, pair


# -- a partial download survives the run that was cut off ---------------------------------------------------
def _partial(dev: Path) -> List[Path]:
    d = dev / "downloads"
    return sorted(d.iterdir()) if d.is_dir() else []


def test_partial_download_is_continued_by_the_next_run(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    size = (www / target).stat().st_size
    cfg = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False, max_resumes=1)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 2   # both tries of this run are cut: refused, the partial kept
        expect_refused(dev, _fetcher(), {"download"}, repo_url=srv.url, config=cfg)
    parts = _partial(dev)
    sha = target.rsplit("/", 1)[1].split(".", 1)[0]
    assert [p.name for p in parts] == [f"{sha}.part"]
    kept = parts[0].stat().st_size
    assert kept == int(size * 0.4) + int((size - int(size * 0.4)) * 0.4)
    assert parts[0].read_bytes() == (www / target).read_bytes()[:kept]
    with BENCH.RangeRepoServer(www) as srv:   # the next run (say after a reboot): continues at byte `kept`
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["download"]["resumed_from_earlier_run"] == kept
    assert _bundle_requests(srv, target) == [(f"bytes={kept}-", 206)]
    assert not (dev / "downloads").exists()
    _assert_installed_r2(world, dev)


def test_corrupt_partial_download_is_discarded_and_started_over(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    sha = target.rsplit("/", 1)[1].split(".", 1)[0]
    (dev / "downloads").mkdir()
    (dev / "downloads" / f"{sha}.part").write_bytes(b"\0" * 3000)   # e.g. data lost in a power cut
    (dev / "downloads" / ("ab" * 32 + ".part")).write_bytes(b"another target's partial")
    with BENCH.RangeRepoServer(www) as srv:
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["download"]["restarts"] == 1
    assert _bundle_requests(srv, target) == [("bytes=3000-", 206), (None, 200)]
    assert not (dev / "downloads").exists()
    _assert_installed_r2(world, dev)


def test_partial_longer_than_the_signed_target_is_not_continued(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    sha = target.rsplit("/", 1)[1].split(".", 1)[0]
    size = (www / target).stat().st_size
    (dev / "downloads").mkdir()
    (dev / "downloads" / f"{sha}.part").write_bytes(b"\1" * (size + 10))
    with BENCH.RangeRepoServer(www) as srv:
        out = update(dev, _fetcher(), srv.url, NO_DELTA)
    assert out["status"] == "installed" and out["download"]["resumed_from_earlier_run"] == 0
    assert _bundle_requests(srv, target) == [(None, 200)]
    _assert_installed_r2(world, dev)


def test_partial_of_a_lying_range_is_removed(world, tmp_path):
    dev, www, target = _served(world, tmp_path)
    with BENCH.RangeRepoServer(www) as srv:
        srv.drops[target] = 1
        srv.lie[target] = "start"
        expect_refused(dev, _fetcher(), {"download-range"}, repo_url=srv.url, config=NO_DELTA)
    assert _partial(dev) == []


def test_delta_is_skipped_for_archives_above_the_in_memory_limit(world, tmp_path):
    """Patching needs the base and the result in memory: above delta_max_bytes the full archive
    is streamed instead, although a delta is signed for the installed release."""
    sim, dev = world.fresh(tmp_path)
    assert sim.release(world.bundles["r2"]).deltas
    out = update(dev, sim, config=UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta_max_bytes=1000))
    assert out["status"] == "installed" and out["delta"] is False
    assert not any(r.startswith("targets/deltas/") for r in sim.requests)
    _assert_installed_r2(world, dev)
    sim2, dev2 = world.fresh(tmp_path / "control")
    sim2.release(world.bundles["r2"])
    assert update(dev2, sim2)["delta"] is True   # control: with the default limit the delta is used
    assert any(r.startswith("targets/deltas/") for r in sim2.requests)


def test_streamed_packing_is_byte_identical_to_the_published_archive(world, tmp_path):
    """The factory image's identity (archive sha256) is computed streaming; it must be exactly the
    archive ``edgeuq publish`` signs -- checked against an in-memory tar built here independently."""
    from edgeuq_runtime.ota.archive import bundle_archive_sha256

    b = world.bundles["r2"]
    files = bundle_files(b)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ["manifest.json"] + sorted(n for n in files if n != "manifest.json"):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(files[name]), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    assert pack_bundle(b) == ref.getvalue()
    assert bundle_archive_sha256(b) == (hashlib.sha256(ref.getvalue()).hexdigest(), len(ref.getvalue()))
