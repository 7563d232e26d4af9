"""``python -m edgeuq_runtime``: info / predict, exit code 2 and one line on errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rt_helpers import CLASSES, L


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeuq_runtime", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(proc, match):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert match in lines[0]


def test_info_ok(tiny):
    proc = cli("info", tiny.dir)
    assert proc.returncode == 0, proc.stderr
    assert "tiny-har 1.0.0" in proc.stdout and "sha256 OK" in proc.stdout
    assert "mask_0 dropout_mask[8]" in proc.stdout and "rest, walk, run" in proc.stdout


def test_predict_table_and_json(tiny, windows, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, windows)
    proc = cli("predict", tiny.dir, x, "--samples", 4, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split() == ["#", "prediction", "confidence", "total", "aleatoric", "epistemic"]
    assert len(rows) == 5 + 1 and rows[-1].startswith("(4 samples")
    assert all(r.split()[1] in CLASSES for r in rows[:-1])
    proc = cli("predict", tiny.dir, x, "--samples", 4, "--seed", 1, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["samples"] == 4 and len(data["results"]) == 5
    again = json.loads(cli("predict", tiny.dir, x, "--samples", 4, "--seed", 1, "--json").stdout)
    assert again == data  # seeded: reproducible across processes


def test_missing_bundle_exit_2(tmp_path):
    assert_one_line_error(cli("info", tmp_path / "nope"), "does not exist")


def test_corrupted_bundle_exit_2(tiny):
    (tiny.dir / "head.onnx").write_bytes(b"tampered")
    assert_one_line_error(cli("info", tiny.dir), "sha256 expected")


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, L - 1), np.float32), "must have 16 samples"),
    (np.zeros((2, L), np.int32), "dtype must be a real floating type"),
])
def test_bad_input_exit_2(tiny, tmp_path, array, match):
    x = tmp_path / "bad.npy"
    np.save(x, array)
    assert_one_line_error(cli("predict", tiny.dir, x), match)


def test_unreadable_input_exit_2(tiny, tmp_path):
    assert_one_line_error(cli("predict", tiny.dir, tmp_path / "missing.npy"), "cannot read input")
    assert_one_line_error(cli("predict", tiny.dir, tiny.dir / "manifest.json"), "cannot read input")


def test_bad_samples_exit_2(tiny, windows, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, windows)
    assert_one_line_error(cli("predict", tiny.dir, x, "--samples", 0), "samples must be an integer >= 1")


def test_info_prints_the_bundle_digest(tiny):
    import hashlib

    proc = cli("info", tiny.dir)
    digest = hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert proc.returncode == 0 and f"digest:    {digest}" in proc.stdout


def test_predict_json_records_the_bundle_digest_and_flags(tiny, windows, tmp_path):
    import hashlib

    x = tmp_path / "x.npy"
    data = windows.astype(np.float64)
    data[1] = 5.0  # a flat window
    np.save(x, data)
    out = json.loads(cli("predict", tiny.dir, x, "--samples", 3, "--seed", 0, "--json").stdout)
    assert out["bundle_digest"] == hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert out["results"][1]["input_flag"] == "flat" and out["results"][1]["prediction"] is None
    assert out["results"][0]["input_flag"] is None and out["results"][0]["prediction"] in CLASSES
    table = cli("predict", tiny.dir, x, "--samples", 3, "--seed", 0)
    assert "(flat input)" in table.stdout and "1 flagged input(s) not diagnosed" in table.stdout


@pytest.mark.parametrize("args, match", [
    (["--samples", "100000"], "samples must be an integer >= 1 and <= 4096"),
    (["--samples", str(2 ** 63)], "samples must be an integer >= 1 and <= 4096"),
    (["--samples", "9" * 5000], "expected an integer"),
    (["--samples", "abc"], "expected an integer"),
    (["--seed", "-1"], "seed must be None or a non-negative integer"),
    (["--threads", "1000"], "threads must be an integer >= 1 and <= 256"),
    (["--threads", "1000000"], "threads must be an integer >= 1 and <= 256"),
    (["--colour"], "unrecognized arguments"),
])
def test_bad_arguments_one_line_exit_2(tiny, windows, tmp_path, args, match):
    x = tmp_path / "x.npy"
    np.save(x, windows)
    assert_one_line_error(cli("predict", tiny.dir, x, *args), match)


def test_missing_subcommand_and_bundle_one_line(tmp_path):
    assert_one_line_error(cli(), "required")
    assert_one_line_error(cli("predict"), "required")
    assert_one_line_error(cli("nonsense", tmp_path), "invalid choice")


def test_npy_header_claiming_huge_shape_is_refused(tiny, tmp_path):
    x = tmp_path / "huge.npy"
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 16), }"
    raw = b"\x93NUMPY\x01\x00" + len(header.ljust(118) + b"\n").to_bytes(2, "little") + header.ljust(118) + b"\n"
    x.write_bytes(raw + b"\x00" * 64)
    assert_one_line_error(cli("predict", tiny.dir, x), "cannot read input")
