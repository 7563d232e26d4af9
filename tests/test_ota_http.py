"""OTA fault suite, part 2: a real HTTP server on 127.0.0.1 (http.server in a thread) and the
urllib3 fetcher: broken transports and attacks over the wire are refused, the device untouched."""
from __future__ import annotations

import socket

import pytest

from ota_support import (FAST, RepoHTTPServer, World, build_world, expect_refused, update, write_tree)

from edgeuq_runtime.ota import core
from edgeuq_runtime.ota.fetchers import HttpFetcher
from edgeuq_runtime.ota.updater import UpdateConfig

BOARD, MODEL = "test-board", "tiny-har"
NO_DELTA = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("ota-http-world"))


def _serve(world, tmp_path, setup=None):
    sim, dev = world.fresh(tmp_path)
    if setup:
        setup(world, sim)
    else:
        sim.release(world.bundles["r2"])
    return sim, dev, write_tree(sim.files, tmp_path / "www")


def _fetcher():
    return HttpFetcher(connect_timeout=2.0, read_timeout=0.5, deadline_s=5.0)


def _r2(sim):
    return sim.url_of(core.bundle_target_path(BOARD, MODEL, 2))


def test_control_update_over_http(world, tmp_path):
    sim, dev, www = _serve(world, tmp_path)
    with RepoHTTPServer(www) as srv:
        out = update(dev, _fetcher(), srv.url)
    assert out["status"] == "installed" and out["release"] == 2 and out["delta"] is True


def _case(world, tmp_path, reasons, behaviour=None, setup=None, config=FAST, edit=None):
    sim, dev, www = _serve(world, tmp_path, setup)
    if edit:
        edit(sim, www)
    with RepoHTTPServer(www) as srv:
        srv.behaviour.update(behaviour(sim) if callable(behaviour) else (behaviour or {}))
        return expect_refused(dev, _fetcher(), reasons, repo_url=srv.url, config=config)


def _tamper(sim, www):
    p = www / _r2(sim)
    b = bytearray(p.read_bytes())
    b[-300] ^= 1
    p.write_bytes(bytes(b))


def test_http_tampered_target(world, tmp_path):
    _case(world, tmp_path, {"target-hash"}, edit=_tamper, config=NO_DELTA)


def test_http_truncated_body(world, tmp_path):
    _case(world, tmp_path, {"download"}, behaviour=lambda sim: {_r2(sim): "truncate"}, config=NO_DELTA)


def test_http_endless_target(world, tmp_path):
    _case(world, tmp_path, {"download-length"}, behaviour=lambda sim: {_r2(sim): "endless"}, config=NO_DELTA)


def test_http_endless_timestamp(world, tmp_path):
    _case(world, tmp_path, {"download-length"}, behaviour={"timestamp.json": "endless"})


def test_http_stalled_server(world, tmp_path):
    _case(world, tmp_path, {"download-slow"}, behaviour=lambda sim: {_r2(sim): "slow"}, config=NO_DELTA)


def test_http_server_error(world, tmp_path):
    _case(world, tmp_path, {"download-http"}, behaviour={"timestamp.json": "500"})


def test_http_redirect_not_followed(world, tmp_path):
    _case(world, tmp_path, {"download-http"}, behaviour={"timestamp.json": "redirect"})


def test_http_target_missing(world, tmp_path):
    _case(world, tmp_path, {"download-http"}, edit=lambda sim, www: (www / _r2(sim)).unlink(), config=NO_DELTA)


def test_http_expired_timestamp(world, tmp_path):
    def setup(w, sim):
        sim.release(w.bundles["r2"])
        sim.publish(timestamp=-1.0)
    _case(world, tmp_path, {"expired"}, setup=setup)


def test_http_wrong_board(world, tmp_path):
    _case(world, tmp_path, {"board"}, setup=lambda w, sim: sim.release(w.bundles["r2"], custom_override={"board": "other-board"}))


def test_http_tampered_metadata(world, tmp_path):
    def edit(sim, www):
        p = www / "metadata" / "2.targets.json"
        p.write_bytes(p.read_bytes().replace(b'"tiny-har"', b'"tiny-haR"', 1))
    _case(world, tmp_path, {"signature", "metadata-hash"}, edit=edit)


def test_http_canary_failure(world, tmp_path):
    from test_ota_faults import _bundle_with_r1_canaries
    from ota_support import weights

    def setup(w, sim):
        _, V = weights(0)
        sim.release(_bundle_with_r1_canaries(w, "swapped-http", V[:, ::-1].copy()))
    _case(world, tmp_path, {"canary-class"}, setup=setup)


def test_http_server_down(world, tmp_path):
    sim, dev, www = _serve(world, tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    expect_refused(dev, _fetcher(), {"download"}, repo_url=f"http://127.0.0.1:{port}")
