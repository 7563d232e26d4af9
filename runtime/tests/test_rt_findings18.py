"""Issue 18 item 6: the runtime's remaining fuzz findings, one test (or table) per finding.

1. noise memory bounded by max_batch whatever B, results independent of max_batch;
2. repeated calls keep nothing (traced memory does not grow);
3. lone surrogates in manifest strings are refused naming the field (and `info` never crashes);
4. NaN / Infinity / overflowing numbers / > 19-digit integers are refused naming the field path;
5. a flagged row carries no diagnosis anywhere (prediction -1, NaN numbers, None in rows);
6. verify=False reports no digest (never the stale one of the manifest);
7. `info` runs the load-time checks and exits 2 on a bundle the runtime refuses.
"""
from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from edgeuq_runtime import (GraphSpec, IntegrityError, Manifest, ManifestError, NoiseSpec,
                            UncertaintyResult, UncertaintyRuntime, load_bundle, write_bundle)
from edgeuq_runtime.noise import sample_noise_rows, sample_noise_tiled
from rt_helpers import CLASSES, C, F, L, make_head, make_manifest, softmax


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeuq_runtime", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-400:], proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ---------------------------------------------------------------------------------------------- 1
WIDE = 256  # features = noise elements per row of the wide bundle


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory):
    """trunk: signal (B, 16) @ W (16, 256); head: (features * mask_0) @ V (256, 3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tmp = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(3)
    W = rng.standard_normal((L, WIDE)).astype(np.float32) / 4
    V = rng.standard_normal((WIDE, C)).astype(np.float32) / 16
    vi = helper.make_tensor_value_info

    def save(nodes, name, ins, outs, inits, path):
        m = helper.make_model(helper.make_graph(nodes, name, ins, outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, str(path))
        return path

    t = save([helper.make_node("MatMul", ["signal", "W"], ["features"])], "trunk",
             [vi("signal", TensorProto.FLOAT, ["B", L])], [vi("features", TensorProto.FLOAT, ["B", WIDE])],
             [numpy_helper.from_array(W, "W")], tmp / "t.onnx")
    h = save([helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("MatMul", ["m", "V"], ["logits"])],
             "head", [vi("features", TensorProto.FLOAT, ["N", WIDE]), vi("mask_0", TensorProto.FLOAT, ["N", WIDE])],
             [vi("logits", TensorProto.FLOAT, ["N", C])], [numpy_helper.from_array(V, "V")], tmp / "h.onnx")
    m = make_manifest(noise=(NoiseSpec("mask_0", "dropout_mask", (WIDE,), {"p": 0.25}),))
    root = write_bundle(tmp / "b", m, {"trunk.onnx": t, "head.onnx": h}).root
    return root, W, V


@pytest.mark.parametrize("B", [5, 23])
def test_results_do_not_depend_on_max_batch(wide_bundle, B):
    root, W, V = wide_bundle
    x = np.random.default_rng(B).standard_normal((B, L)).astype(np.float32)
    S, seed = 6, 17
    rts = {mb: UncertaintyRuntime(root, max_batch=mb) for mb in (1, 7, 4096)}
    feats = rts[4096].trunk_features(x)
    # an independent reference: float64 numpy with the documented noise (sample by sample)
    mask = sample_noise_tiled(rts[1].manifest.noise, S, B, np.random.default_rng(seed))["mask_0"]
    ref = ((np.tile(feats.astype(np.float64), (S, 1)) * mask) @ V.astype(np.float64)).reshape(S, B, C)
    for mb, rt in rts.items():
        lg = rt.sample_logits(feats, S, np.random.default_rng(seed))
        err = float(np.max(np.abs(lg - ref)))
        assert err <= 1e-4 * max(1.0, float(np.abs(ref).max())), (mb, err)   # NaN-safe
        got = rt.predict(x, samples=S, seed=seed).samples
        assert float(np.max(np.abs(got - softmax(ref)))) <= 1e-5, mb
    # the noise rows themselves: any split of the rows is the same draw, exactly
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    whole = sample_noise_rows(rts[1].manifest.noise, 3 * B, g1)["mask_0"]
    parts = [sample_noise_rows(rts[1].manifest.noise, n, g2)["mask_0"] for n in (1, B - 1, 2, B + 1, B - 2)[:5]]
    np.testing.assert_array_equal(np.concatenate(parts)[:3 * B], whole)


def test_noise_memory_is_bounded_by_max_batch_not_by_batch(wide_bundle):
    root, W, V = wide_bundle
    B, S, MB = 20_000, 2, 64
    rt = UncertaintyRuntime(root, max_batch=MB)
    feats = np.random.default_rng(0).standard_normal((B, WIDE)).astype(np.float32)
    all_at_once = B * WIDE * 4            # one sample's float32 mask for all B rows, the old peak's share
    result = S * B * C * 4                # the (S, B, C) logits the call returns
    rt.sample_logits(feats[:100], 1, np.random.default_rng(0))  # warm up (lazy imports, caches)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = rt.sample_logits(feats, S, np.random.default_rng(1))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.shape == (S, B, C) and np.isfinite(out).all()
    per_chunk = MB * WIDE * (4 + 2 + 4)   # mask + its raw bits + bool/float temporaries, one chunk
    print(f"\npeak traced {peak / 1e6:.2f} MB for B={B}, max_batch={MB} (all-at-once noise {all_at_once / 1e6:.1f} MB)")
    assert peak <= result + 4 * per_chunk + 256 * 1024, peak
    assert peak * 4 < all_at_once, peak


# ---------------------------------------------------------------------------------------------- 2
def test_repeated_calls_do_not_grow_traced_memory(tiny):
    rt = UncertaintyRuntime(tiny.dir, seed=0, max_batch=64)
    x = np.random.default_rng(0).standard_normal((256, L)).astype(np.float32)
    rt.predict(x[:1], samples=1)   # lazy imports and first-call setup only: no large call yet
    rt.deterministic(x[:1])
    gc.collect()
    tracemalloc.start()  # from here, anything a large call keeps (a cache, the largest buffers) is counted
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(6):
            r = rt.predict(x, samples=16)
            rt.deterministic(x)
        del r
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    noise_bytes = 256 * 16 * F * 4
    assert grown <= 64 * 1024 < noise_bytes, f"{grown} bytes kept after 6 calls of 256 x 16"


# ---------------------------------------------------------------------------------------------- 3, 4
def _manifest_text_with(tiny, path, token):
    """The tiny bundle's manifest.json text with the JSON value at ``path`` replaced by ``token``."""
    data = json.loads((tiny.dir / "manifest.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "@@TOKEN@@"
    return json.dumps(data, indent=2).replace('"@@TOKEN@@"', token)


def _dotted(path):
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "12345678901234567890", "-99999999999999999999999"]
PATHS = [("default_samples",), ("input", "length"), ("input", "sample_rate_hz"), ("noise", 0, "shape", 0),
         ("noise", 0, "params", "p"), ("metadata", "metrics", "acc"), ("graphs", "head", "inputs", 1)]


@pytest.mark.parametrize("path", PATHS, ids=_dotted)
@pytest.mark.parametrize("token", BAD_NUMBERS)
def test_bad_numbers_are_refused_naming_the_field_path(tiny, path, token):
    text = _manifest_text_with(tiny, path, token)
    with pytest.raises(ManifestError) as exc:
        Manifest.loads(text)
    assert f": {_dotted(path)}: " in str(exc.value), str(exc.value)


def test_bad_number_through_load_and_info(tiny):
    path = ("noise", 0, "shape", 0)
    (tiny.dir / "manifest.json").write_text(_manifest_text_with(tiny, path, "1e400"))
    with pytest.raises(ManifestError, match=r"noise\[0\]\.shape\[0\]: holds a number '1e400'"):
        load_bundle(tiny.dir)
    one_line_error(cli("info", tiny.dir), "noise[0].shape[0]", "1e400")


@pytest.mark.parametrize("where", ["key", "value"])
def test_lone_surrogate_is_refused_naming_the_field(tiny, where):
    text = (tiny.dir / "manifest.json").read_text()
    if where == "key":
        text = text.replace('"created_by"', '"bad\\ud800key"')
        field = "metadata['bad\\ud800key']"
    else:
        text = text.replace('"rt-tests"', '"bad\\ud800value"')
        field = "metadata.created_by"
    assert "\\ud800" in text
    (tiny.dir / "manifest.json").write_text(text)
    with pytest.raises(ManifestError) as exc:
        load_bundle(tiny.dir)
    assert field in str(exc.value) and "lone surrogate" in str(exc.value), str(exc.value)
    one_line_error(cli("info", tiny.dir), "lone surrogate", "metadata")


def test_lone_surrogate_in_code_built_metadata_is_refused():
    with pytest.raises(ManifestError, match=r"metadata\.note: .*lone surrogate"):
        make_manifest(metadata={"note": "x\ud800"})
    with pytest.raises(ManifestError, match="lone surrogate"):
        GraphSpec("h.onnx", ("a",), ("b",), options={"\udfff": 1})


# ---------------------------------------------------------------------------------------------- 5
def _flat_and_good(n_good=3):
    x = np.random.default_rng(1).standard_normal((n_good + 2, L)).astype(np.float32)
    x[1] = 0.25           # flat
    x[3, :6] = 50.0       # clipped: a run at the maximum
    x[3, 6:] = np.linspace(-1, 1, L - 6)
    return x


def test_flagged_rows_carry_no_diagnosis_anywhere(tiny):
    rt = UncertaintyRuntime(tiny.dir, seed=0)
    x = _flat_and_good()
    for r in (rt.predict(x, samples=5, seed=2), rt.deterministic(x)):
        flagged = np.array([bool(f) for f in r.input_flags])
        assert flagged.tolist() == [False, True, False, True, False], r.input_flags
        assert np.array_equal(r.diagnosed, ~flagged)
        assert (r.prediction[flagged] == -1).all() and (r.prediction[~flagged] >= 0).all()
        for name in ("probs", "confidence", "total", "aleatoric", "epistemic"):
            v = getattr(r, name)
            assert np.isnan(v[flagged]).all() and np.isfinite(v[~flagged]).all(), name
        assert np.isnan(r.samples[:, flagged]).all() and np.isfinite(r.samples[:, ~flagged]).all()
        rows = r.to_rows()
        for i, row in enumerate(rows):
            if flagged[i]:
                assert row["prediction"] is None and row["class_index"] is None and row["probs"] is None
                assert row["confidence"] is None and row["epistemic"] is None and row["input_flag"]
            else:
                assert row["prediction"] in CLASSES and len(row["probs"]) == C
        json.dumps(rows, allow_nan=False)  # valid JSON: no NaN leaks into the rows
        assert [lab is None for lab in r.labels()] == flagged.tolist()
        # unflagged rows are the same as predicting them alone (masking touches only flagged rows)
        good = r.select(r.diagnosed)
        assert good.input_flags == ("",) * 3 and np.isfinite(good.probs).all()
    alone = rt.predict(x[[0, 2, 4]], samples=5, seed=2)
    assert np.isfinite(alone.probs).all()


def test_flags_survive_concatenate_and_hand_built_results(tiny):
    rt = UncertaintyRuntime(tiny.dir, seed=0)
    x = _flat_and_good()
    a, b = rt.predict(x[:2], samples=4, seed=1), rt.predict(x[2:], samples=4, seed=1)
    cat = UncertaintyResult.concatenate([a, b])
    assert cat.input_flags == a.input_flags + b.input_flags and len(cat.prediction) == 5
    assert cat.prediction[1] == -1 and cat.prediction[3] == -1 and np.isnan(cat.probs[[1, 3]]).all()
    assert cat.bundle_digest == rt.bundle_digest
    # a result built by hand with flags is masked on construction too
    p = np.full((2, 3), 1 / 3)
    r = UncertaintyResult(probs=p, prediction=np.array([0, 2]), confidence=p.max(1), total=np.ones(2),
                          aleatoric=np.ones(2), epistemic=np.zeros(2), samples=p[None], input_flags=("", "flat"))
    assert r.prediction.tolist() == [0, -1] and np.isnan(r.probs[1]).all() and not np.isnan(r.probs[0]).any()
    assert p[1, 0] == 1 / 3  # the caller's array is not modified
    with pytest.raises(ValueError, match="one string per row"):
        UncertaintyResult(probs=p, prediction=np.array([0, 2]), confidence=p.max(1), total=np.ones(2),
                          aleatoric=np.ones(2), epistemic=np.zeros(2), samples=p[None], input_flags=("",))


def test_cli_predict_shows_no_numbers_for_flagged_rows(tiny, tmp_path):
    x = _flat_and_good()
    np.save(tmp_path / "x.npy", x)
    proc = cli("predict", tiny.dir, tmp_path / "x.npy", "--samples", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert [r["prediction"] is None for r in rows] == [False, True, False, True, False]
    assert rows[1]["probs"] is None and rows[1]["confidence"] is None
    table = cli("predict", tiny.dir, tmp_path / "x.npy", "--samples", 3)
    assert table.returncode == 0, table.stderr
    line = table.stdout.splitlines()[2]  # row 1
    assert "(flat input)" in line and line.split()[-4:] == ["-", "-", "-", "-"], line


# ---------------------------------------------------------------------------------------------- 6
def test_verify_false_never_reports_a_stale_digest(build_bundle, tmp_path):
    tiny = build_bundle()
    verified = UncertaintyRuntime(tiny.dir)
    digest = hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert verified.bundle_digest == digest == load_bundle(tiny.dir).digest
    # modify a graph (a different V) without touching the manifest
    make_head(tmp_path / "other.onnx", np.ones((F, C), np.float32))
    (tiny.dir / "head.onnx").write_bytes((tmp_path / "other.onnx").read_bytes())
    with pytest.raises(IntegrityError):
        UncertaintyRuntime(tiny.dir)
    rt = UncertaintyRuntime(tiny.dir, verify=False)
    x = np.random.default_rng(0).standard_normal((2, L)).astype(np.float32)
    assert rt.bundle_digest is None and load_bundle(tiny.dir, verify=False).digest is None
    assert rt.predict(x, samples=2).bundle_digest is None
    assert "digest=)" in repr(rt)


# ---------------------------------------------------------------------------------------------- 7
def test_info_runs_the_load_time_checks(build_bundle):
    wrong = build_bundle("four", class_names=("a", "b", "c", "d"))  # the head returns 3 logits
    with pytest.raises(ManifestError, match="classes lists 4 names"):
        UncertaintyRuntime(wrong.dir)
    one_line_error(cli("info", wrong.dir), "classes lists 4 names")
    ok = build_bundle("ok")
    proc = cli("info", ok.dir)
    assert proc.returncode == 0 and "one row -> 3 logits OK" in proc.stdout, proc.stderr


def test_large_calls_hand_free_heap_back_small_calls_do_not(tiny, monkeypatch):
    """The RSS a large call leaves behind is glibc's free heap (finding: +117 MB on the demo bundle);
    a call that drew >= TRIM_NOISE_BYTES of raw noise trims it, a small call never pays for that."""
    import edgeuq_runtime.session as session
    from edgeuq_runtime.noise import words_per_row

    calls = []
    monkeypatch.setattr(session, "_malloc_trim", lambda: calls.append(1) or True)
    rt = UncertaintyRuntime(tiny.dir, seed=0, max_batch=64)
    row_bytes = 8 * words_per_row(rt.manifest.noise)
    monkeypatch.setattr(session, "TRIM_NOISE_BYTES", 100 * 16 * row_bytes)
    x = np.random.default_rng(0).standard_normal((100, L)).astype(np.float32)
    rt.predict(x[:99], samples=16)
    assert calls == []
    rt.predict(x, samples=16)
    assert calls == [1]


def test_malloc_trim_runs_on_glibc():
    import platform

    from edgeuq_runtime.session import _malloc_trim

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("not glibc: malloc_trim may be absent (the runtime then skips the trim)")
    assert _malloc_trim() is True


def test_stream_decisions_claim_no_digest_for_an_unverified_bundle():
    """A Diagnoser over a runtime loaded with verify=False records bundle_digest None, not a hash of
    the manifest's (unchecked) file list; a verified runtime records its manifest's sha256."""
    from edgeuq_runtime.stream.decide import bundle_digest

    class Verified:
        bundle_digest = "ab" * 32

    class Unverified:
        bundle_digest = None

    class Double:   # a test double without the attribute: the file-list hash
        class manifest:
            files = {"a.onnx": "00" * 32}

    assert bundle_digest(Verified()) == "ab" * 32
    assert bundle_digest(Unverified()) is None
    assert bundle_digest(Double()) is not None and len(bundle_digest(Double())) == 64
