"""bench/text_teacher.py on a tiny BERT and tiny SST-2/TREC files: the teacher it reports is the
library's text-teacher stage's artifact (not a second implementation), and its tables JSON keeps
the format scripts/render_tables.py reads."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from require_extras import require_extra  # noqa: E402

require_extra("safetensors", "text")
sys.path.insert(0, str(Path(__file__).parent))
from text_teacher_support import questions, sentiment_rows, write_tiny_model, write_tsv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_text_teacher", REPO / "bench" / "text_teacher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(root: Path) -> Path:
    (root / "sst2").mkdir(parents=True)
    (root / "trec").mkdir(parents=True)
    for split, n, seed in (("train", 120, 1), ("dev", 40, 2), ("test", 40, 3)):
        rows = [(t, "1" if "up" in lab.lower() else "0") for t, lab in sentiment_rows(n, seed)]
        write_tsv(root / "sst2" / f"{split}.tsv", ("sentence", "label"), rows)
    for split, n, seed in (("test", 30, 4), ("train", 30, 5)):
        write_tsv(root / "trec" / f"{split}.tsv", ("text", "label_coarse"), [(q, "DESC") for q in questions(n, seed)])
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_text_teacher")
    model = write_tiny_model(tmp / "tiny-bert")
    data = _data(tmp / "data")
    out = tmp / "out"
    bench = _bench()
    argv = ["--data", str(data), "--out", str(out), "--model", str(model), "--train-layers", "1", "--epochs", "1",
            "--samples", "4", "--val-limit", "30", "--max-length", "16", "--tables-json", str(tmp / "tables.json")]
    rc = bench.main(argv)
    assert rc == 0
    return bench, out, tmp / "tables.json", argv


def test_bench_reports_the_stage_artifact(run):
    from edgeuq.text.pipeline import load_text_teacher

    _, out, _, _ = run
    res = json.loads((out / "results.json").read_text())
    art = load_text_teacher(out / "teacher", verify=True)  # the bench left the hashed artifact intact
    assert set(res["runtime"]) == set(art.bundles)
    for scheme, row in res["runtime"].items():
        assert row["runtime_acc"] == art.metrics[scheme]["accuracy"]
        assert Path(res["bundles"][scheme]) == art.bundle_path(scheme)
    assert res["train_phrases"] == 120 and res["train_layers"] == 1
    assert res["history"] == dict(art.history)


def test_bench_host_rows_match_the_artifact_model(run):
    """The deterministic row is recomputed independently from the artifact's weights."""
    import torch

    from edgeuq.data.text import load_sst2
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq.text.pipeline import load_text_teacher
    from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json

    _, out, _, argv = run
    res = json.loads((out / "results.json").read_text())
    data = Path(argv[argv.index("--data") + 1])
    art = load_text_teacher(out / "teacher")
    model = art.load_model()
    tok = wordpiece_from_tokenizer_json(load_pretrained(Path(argv[argv.index("--model") + 1])).tokenizer_json, 16)
    test = load_sst2(data / "sst2")["test"]
    with torch.no_grad():
        pred = model.head_forward(model.trunk(torch.from_numpy(tok.encode_batch(test.texts)))).argmax(-1).numpy()
    acc = float(np.mean(pred == test.y))
    assert abs(res["rows"]["deterministic"]["acc"] - acc) <= 1e-9


def test_bench_tables_json_renders(run):
    bench, _, tables, _ = run
    doc = json.loads(tables.read_text())
    assert set(doc["tables"]) == {"teacher"}
    t = doc["tables"]["teacher"]
    assert len(t["rows"]) == 1 + len(json.loads((tables.parent / "out" / "results.json").read_text())["runtime"])
    assert all(len(r) == len(t["headers"]) for r in t["rows"])
    assert "provenance" in doc and "command" in doc
