"""Device-side properties: no `cryptography` needed to verify (pure-Python ed25519), the
`python -m edgeuq_runtime update | status | rollback` verbs, the pure boot decision, and the
canaries manifest section."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ota_support import BOARD, MODEL, make_bundle, weights

from edgeuq.ota.keys import generate_keys
from edgeuq.ota.publish import publish_bundle
from edgeuq_runtime import ManifestError, load_bundle
from edgeuq_runtime.ota import core, parse_canaries

RUNTIME = str(Path(__file__).resolve().parents[1] / "runtime")

# Runs the device CLI with `cryptography` unimportable (as on a board without it).
NO_CRYPTO = """
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "cryptography" or name.startswith("cryptography."):
            raise ImportError("cryptography is blocked on this simulated device")
sys.meta_path.insert(0, Block())
sys.argv = ["edgeuq_runtime"] + sys.argv[1:]
try:
    runpy.run_module("edgeuq_runtime", run_name="__main__")
finally:
    assert not [m for m in sys.modules if m.startswith("cryptography")], "cryptography was imported"
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", NO_CRYPTO, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ota-dev")
    W, V = weights(0)
    b1, b2 = make_bundle(tmp, "b1", W, V, "1.0"), make_bundle(tmp, "b2", W, V + 0.02 * weights(1)[1], "1.1")
    generate_keys(tmp / "keys")
    publish_bundle(b1, tmp / "repo", tmp / "keys", BOARD)
    return tmp, b2


def test_cli_update_status_rollback_without_cryptography(repo, tmp_path):
    tmp, b2 = repo
    r = tmp / "repo"
    dev = tmp_path / "dev"
    first = _cli("update", "--root", str(dev), "--repo", r.as_uri(), "--board", BOARD, "--model", MODEL,
                 "--trust-root", str(r / "metadata" / "1.root.json"), "--healthy", "1")
    assert first.returncode == 0, first.stderr
    assert "installed release 1" in first.stdout
    st = json.loads(_cli("status", "--root", str(dev), "--json").stdout)
    assert st["current"] == "a" and st["pending"]["release"] == 1
    from edgeuq_runtime.ota import record_window
    assert record_window(dev, True) == "good"
    publish_bundle(b2, r, tmp / "keys", BOARD)
    second = _cli("update", "--root", str(dev))
    assert second.returncode == 0 and "installed release 2" in second.stdout and "via delta" in second.stdout
    back = _cli("rollback", "--root", str(dev))
    assert back.returncode == 0 and "slot a" in back.stdout
    st = json.loads(_cli("status", "--root", str(dev), "--json").stdout)
    assert st["current"] == "a" and st["serving"].endswith("slots/a") and st["rejected"] == 1


def test_pure_python_ed25519_still_refuses_a_bad_signature(repo, tmp_path):
    """Without cryptography the fallback verifier is used, and it is not a no-op."""
    tmp, _ = repo
    bad = tmp_path / "repo"
    shutil.copytree(tmp / "repo", bad)
    ts = bad / "metadata" / "timestamp.json"
    obj = json.loads(ts.read_text())
    sig = obj["signatures"][0]["sig"]
    obj["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    ts.write_text(json.dumps(obj))
    r = _cli("update", "--root", str(tmp_path / "dev"), "--repo", bad.as_uri(), "--board", BOARD, "--model", MODEL,
             "--trust-root", str(bad / "metadata" / "1.root.json"))
    assert r.returncode == 2 and "update refused [signature]" in r.stderr, r.stderr
    assert not (tmp_path / "dev" / "current").exists()


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("status")
    assert r.returncode == 2 and r.stderr.startswith("error: no device root")
    r = _cli("update", "--root", str(tmp_path / "dev"), "--repo", "ftp://example/repo", "--board", BOARD,
             "--model", MODEL, "--trust-root", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "must be http://, https:// or file://" in r.stderr
    assert not (tmp_path / "dev").exists()  # nothing stored for an unusable URL


@pytest.mark.parametrize("state,link,expected", [
    ({"pending": None}, "a", ("run", "a")),
    ({"pending": {"slot": "b", "previous": "a", "attempts_left": 2}}, "a", ("clear-stale", "a")),
    ({"pending": {"slot": "b", "previous": "a", "attempts_left": 2}}, "b", ("count", "b")),
    ({"pending": {"slot": "b", "previous": "a", "attempts_left": 0}}, "b", ("rollback", "a")),
])
def test_boot_decision_table(state, link, expected):
    d = core.decide_boot(state, link)
    assert (d.action, d.slot) == expected
    if d.action == "count":
        assert d.attempts_left == 1


def test_canaries_section_is_validated_and_round_trips(repo):
    tmp, b2 = repo
    m = load_bundle(b2).manifest
    spec = m.sections["canaries"]
    assert parse_canaries(spec.to_json()) == spec
    text = m.dumps()
    assert json.loads(text)["canaries"]["expected_class"] == list(spec.expected_class)
    bad = json.loads(text)
    bad["canaries"]["expected_mi"] = bad["canaries"]["expected_mi"][:-1]
    from edgeuq_runtime import Manifest
    with pytest.raises(ManifestError, match="canaries.expected_mi"):
        Manifest.from_json(bad)
    bad = json.loads(text)
    bad["canaries"]["mi_tolerance"] = float("nan")
    with pytest.raises(ManifestError, match="canaries.mi_tolerance"):
        parse_canaries(bad["canaries"])


def test_canary_check_is_nan_safe():
    from edgeuq_runtime.ota.errors import UpdateRefused
    with pytest.raises(UpdateRefused, match="canary-mi"):
        core.check_canaries([0, 1], [0.1, 0.2], 0.05, 100.0, [0, 1], [0.1, float("nan")], 1.0)
    with pytest.raises(UpdateRefused, match="canary-latency"):
        core.check_canaries([0], [0.1], 0.05, 1.0, [0], [0.1], float("nan"))
    ok = core.check_canaries([0, 1], [0.1, 0.2], 0.05, 100.0, [0, 1], [0.14, 0.16], 1.0)
    assert abs(ok.mi_max_error - 0.04) < 1e-12


def test_first_install_without_fallback_keeps_serving(repo, tmp_path):
    """A first install that is never marked good has nothing to roll back to: it keeps serving."""
    from edgeuq_runtime.ota import boot
    from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision
    tmp, _ = repo
    r = tmp / "repo"
    dev = tmp_path / "dev"
    provision(dev, BOARD, MODEL, r.as_uri(), (r / "metadata" / "1.root.json").read_bytes())
    OtaUpdater(dev, config=UpdateConfig(attempts=2, healthy_needed=5, threads=1)).update()
    actions = [boot(dev).action for _ in range(3)]
    assert actions == ["count", "count", "no-fallback"]
    assert boot(dev).bundle == dev / "slots" / "a"


def test_host_cli_keys_and_publish_with_synthetic_canaries(tmp_path, capsys):
    """`edgeuq keys generate|rotate` and `edgeuq publish --synthetic-canaries` through the real CLI,
    then the device installs the release and its canaries pass on it."""
    from edgeuq.cli import main as edgeuq_main
    from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision
    W, V = weights(0)
    b = make_bundle(tmp_path, "b", W, V, "1.0", canaries=False)
    assert edgeuq_main(["keys", "generate", str(tmp_path / "keys"), "--threshold", "root=2", "--count", "root=3"]) == 0
    assert edgeuq_main(["publish", str(b), "--repo", str(tmp_path / "repo"), "--keys", str(tmp_path / "keys"),
                        "--board", BOARD, "--synthetic-canaries", "4", "--expire-timestamp", "0.5",
                        "--allow-unknown-board"]) == 0
    out = capsys.readouterr().out
    assert "canaries: 4 windows" in out and "published release 1" in out
    spec = load_bundle(b).manifest.sections["canaries"]
    assert len(spec.expected_class) == 4
    root = json.loads((tmp_path / "repo" / "metadata" / "1.root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2 and len(root["signatures"]) == 3
    ts = json.loads((tmp_path / "repo" / "metadata" / "timestamp.json").read_text())
    from datetime import datetime, timezone
    left = datetime.fromisoformat(ts["signed"]["expires"].replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert 0.4 * 86400 < left.total_seconds() <= 0.5 * 86400
    dev = tmp_path / "dev"
    provision(dev, BOARD, MODEL, (tmp_path / "repo").as_uri(), json.dumps(root).encode())
    res = OtaUpdater(dev, config=UpdateConfig(threads=1)).update()
    assert res["release"] == 1 and res["canaries"]["class_ok"] == 4
    assert edgeuq_main(["keys", "rotate", str(tmp_path / "keys"), "timestamp"]) == 0
    assert "retired 1" in capsys.readouterr().out
    # a board that is not in the catalog is refused unless asked for
    assert edgeuq_main(["publish", str(b), "--repo", str(tmp_path / "repo"), "--keys", str(tmp_path / "keys"),
                        "--board", "no-such-board"]) != 0
    assert "no-such-board" in capsys.readouterr().err


def test_canaries_from_another_noise_stream_are_refused_as_such(tmp_path, monkeypatch):
    """Canaries whose expected values came from a runtime drawing other noise for the same seed
    (as a host on the pre-h2 runtime and a device on the h2 stream) are refused as
    `canary-stream`, not as a changed model; without a recorded stream, the `canary-mi`
    refusal says the stream is unrecorded. Positive control: same stream, same model -> passes."""
    import dataclasses

    import numpy as np

    from edgeuq.ota import canaries as host_canaries
    from edgeuq.ota.canaries import add_canaries
    from edgeuq_runtime import noise, session
    from edgeuq_runtime.ota.canaries import canaries_of, run_canaries
    from edgeuq_runtime.ota.errors import UpdateRefused
    from ota_support import CANARY_WINDOWS

    W, V = weights(0)
    b = make_bundle(tmp_path, "b", W, V, "1.0", canaries=False)
    ok = add_canaries(b, CANARY_WINDOWS, seed=0)
    assert ok.noise_stream == noise.NOISE_STREAM
    assert canaries_of(load_bundle(b).manifest).noise_stream == noise.NOISE_STREAM
    assert run_canaries(b, threads=1).class_ok == len(CANARY_WINDOWS)  # control: this runtime reproduces them

    def other_stream(specs, rows, rng):  # a different, still seeded, noise stream
        return noise.sample_noise_rows(specs, rows, np.random.default_rng(int(rng.integers(1 << 62))))

    with monkeypatch.context() as mp:  # the "host" draws another stream and names it
        mp.setattr(session, "sample_noise_rows", other_stream)
        mp.setattr(host_canaries, "NOISE_STREAM", "another-stream-0")
        spec = add_canaries(b, CANARY_WINDOWS, seed=0)
    assert spec.noise_stream == "another-stream-0"
    # the expected values really differ from this runtime's (independent of the stream check)
    assert max(abs(a - c) for a, c in zip(spec.expected_mi, ok.expected_mi)) > spec.mi_tolerance
    with pytest.raises(UpdateRefused, match=r"canary-stream.*another-stream-0") as exc:
        run_canaries(b, threads=1)
    assert exc.value.reason == "canary-stream"

    # the same expected MI with the stream field dropped (a section written before it existed); the
    # expected classes are this runtime's, so the refusal is about the MI (another seed's noise can
    # also flip a borderline window's class, which is refused as canary-class before the MI is read)
    load_bundle(b).amend(sections={"canaries": dataclasses.replace(spec, noise_stream=None,
                                                                   expected_class=ok.expected_class)})
    assert canaries_of(load_bundle(b).manifest).noise_stream is None
    with pytest.raises(UpdateRefused) as exc:
        run_canaries(b, threads=1)
    assert exc.value.reason == "canary-mi" and "do not record the noise stream" in exc.value.detail, exc.value


def test_canaries_noise_stream_field_is_validated():
    from edgeuq_runtime.noise import NOISE_STREAM

    base = {"file": "canaries.npz", "expected_class": [0], "expected_mi": [0.1], "mi_tolerance": 0.01,
            "latency_budget_ms": 50.0}
    assert parse_canaries(base).noise_stream is None and "noise_stream" not in parse_canaries(base).to_json()
    spec = parse_canaries({**base, "noise_stream": NOISE_STREAM})
    assert spec.noise_stream == NOISE_STREAM and parse_canaries(spec.to_json()) == spec
    for bad in (3, "", "x" * 65, "a\nb", ["x"]):
        with pytest.raises(ManifestError, match="canaries.noise_stream"):
            parse_canaries({**base, "noise_stream": bad})
