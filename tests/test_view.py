"""`edgeuq view LOG.jsonl` (the live-view page with a saved log embedded: one file, nothing
fetched) and `edgeuq evaluate --html` (tables and plots inlined)."""
import base64
import json
import re

import numpy as np
import pytest
import torch

from edgeuq.cli import main
from edgeuq.view import log_info, read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("normal", "inner_race", "outer_race")


def _log(n=60, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        c = int(rng.integers(0, 3))
        p = rng.dirichlet(np.ones(3))
        ab = i % 10 == 7
        recs.append({"type": "decision", "window": i, "t_signal": 0.1 * (i + 1), "time": 1.8e9 + 0.1 * i,
                     "class": CLASSES[c], "class_index": c, "confidence": float(p.max()), "total": float(rng.random()),
                     "aleatoric": 0.5, "epistemic": float(rng.random() * 0.1), "density": float(40 + rng.random()),
                     "set": [CLASSES[c]], "abstain": ab, "reasons": ["flatline_input"] if ab else [],
                     "flags": ["flatline_input"] if ab else [], "samples": 8, "latency_ms": 1.0,
                     "deadline_ms": 100.0, "late": False, "bundle_digest": "ab" * 32})
        if i == 30:
            recs.append({"type": "alarm", "state": "inner_race", "window": i, "time": 1.8e9 + 3, "rule": "3 of 5"})
            recs.append({"type": "status", "event": "stalled", "message": "no data for 2 s", "time": 1.8e9 + 3.1})
    recs.append({"type": "summary", "windows": n, "late": 0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0,
                 "real_time_factor": 50.0, "hop": 16, "rate_hz": 160.0, "source": "simulated sensor (test)"})
    return recs


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _embedded(html):
    m = re.search(r'<script type="application/json" id="embedded">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_view_writes_one_self_contained_file(tmp_path, capsys):
    recs = _log()
    log = _write(tmp_path / "run.jsonl", recs)
    out = tmp_path / "out" / "run.html"
    assert main(["view", str(log), "-o", str(out)]) == 0
    html = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) and "<link" not in html
    data = _embedded(html)
    assert data["mode"] == "log"
    got = data["records"]
    assert [r["type"] for r in got] == [r["type"] for r in recs]       # every record kept, in order
    for a, b in zip(got, recs):
        for k in ("class", "confidence", "epistemic", "abstain", "reasons", "state", "event"):
            assert a.get(k) == b.get(k)
    assert data["info"]["classes"] == list(CLASSES) and data["info"]["digest"] == "ab" * 32
    assert "simulated sensor (test)" in data["info"]["source"]


def test_view_thins_long_logs_but_keeps_every_abstention_and_alarm(tmp_path):
    recs = _log(5000, seed=1)
    log = _write(tmp_path / "long.jsonl", recs)
    out = tmp_path / "long.html"
    assert main(["view", str(log), "-o", str(out), "--max-decisions", "300"]) == 0
    got = _embedded(out.read_text())["records"]
    dec = [r for r in got if r["type"] == "decision"]
    n_abst = sum(r["type"] == "decision" and r["abstain"] for r in recs)
    assert sum(r["abstain"] for r in dec) == n_abst
    assert len(dec) - n_abst <= 301 + 1
    assert sum(r["type"] == "alarm" for r in got) == 1 and got[-1]["type"] == "summary"
    assert dec[-1]["window"] == 4999


def test_view_refuses_a_bad_log_naming_the_line(tmp_path, capsys):
    log = tmp_path / "bad.jsonl"
    log.write_text(json.dumps(_log(3)[0]) + "\n\n{not json\n")
    assert main(["view", str(log), "-o", str(tmp_path / "x.html")]) == 2
    assert "bad.jsonl:3" in capsys.readouterr().err
    log.write_text(json.dumps({"type": "summary"}) + "\n")
    with pytest.raises(ValueError, match="no decision records"):
        read_log(log)


def test_view_info_from_the_bundle_overrides_the_log(tmp_path):
    from edgeuq.bundle import build_bundle
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import save_checkpoint

    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=64, num_classes=3, patch=16, d_model=8, heads=2, depth=1,
                                      ffn=8, dropout=0.3, stochastic_blocks=(0,)))
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", CLASSES, 1000.0), tmp_path / "onnx")
    b = build_bundle(art, tmp_path / "bundle", "tiny-view", "0.3.1", default_samples=4)
    info = log_info(_log(), b.root)
    assert info["model"] == "tiny-view" and info["version"] == "0.3.1" and info["digest"] == b.digest
    assert "different bundle" in info["source"]          # the log's digest is not this bundle's


@pytest.fixture(scope="module")
def signal_bundle(tmp_path_factory):
    from edgeuq.bundle import build_bundle
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import save_checkpoint

    d = tmp_path_factory.mktemp("sig")
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2,
                                      ffn=16, dropout=0.3, stochastic_blocks=(1,)))
    art = export_onnx(save_checkpoint(m, d / "ck", CLASSES, 1000.0), d / "onnx")
    return build_bundle(art, d / "bundle", "tiny", "0.1.0", default_samples=8).root


def _signals(folder, n_files, seed, labels=CLASSES):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        sig = np.sin(2 * np.pi * (20 + 40 * i) * np.arange(1000) / 1000) + 0.2 * rng.standard_normal(1000)
        np.savez(folder / f"rec{i}.npz", signal=sig, fs=1000.0, label=labels[i % len(labels)])
    return folder


def test_evaluate_html_embeds_tables_and_plots(signal_bundle, tmp_path, capsys):
    data = _signals(tmp_path / "data", 3, 0)
    ood = _signals(tmp_path / "ood", 2, 1, labels=("compound",))
    out = tmp_path / "report.html"
    plots = tmp_path / "plots"
    js = tmp_path / "r.json"
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(data), "--ood", str(ood), "--samples", "8",
                 "--no-progress", "--html", str(out), "--plots", str(plots), "--json", str(js)]) == 0
    html = out.read_text()
    doc = json.loads(js.read_text())
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == len(doc["plots"]) == 4
    written = sorted(open(p, "rb").read() for p in doc["plots"].values())
    assert sorted(base64.b64decode(s) for s in imgs) == written      # the very PNGs, inlined
    assert "http" not in html.replace("http-equiv", "")
    # the tables carry the JSON's numbers (format_table's 4 significant digits)
    acc = doc["sets"]["data"]["accuracy"]
    assert f"<td>{acc:.4g}</td>" in html
    assert f"<td>{doc['ood_metrics']['auroc_mi']:.4g}</td>" in html
    # without --plots/--json: plots go to a temporary directory, still embedded
    out2 = tmp_path / "report2.html"
    assert main(["evaluate", "--bundle", str(signal_bundle), "--data", str(data), "--samples", "8",
                 "--no-progress", "--html", str(out2)]) == 0
    assert len(re.findall(r"data:image/png;base64,", out2.read_text())) == 2
