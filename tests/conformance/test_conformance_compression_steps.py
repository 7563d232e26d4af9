"""Every registered compression step (edgeuq.compress.steps: package scan + entry points) takes a
tiny model of a scheme and returns a new model that still samples like one (S, B, C finite
probabilities through the one MC sampler, the same noise inputs), leaving its input unchanged;
and its output goes the whole chain: step -> save_checkpoint -> load_checkpoint (the config alone
rebuilds the architecture: pruned widths, factorised ranks) -> ONNX export -> bundle -> device
runtime, which agrees with the step's own PyTorch model on the runtime's noise stream.

A step that reads token windows and their tokenizer (``needs_tokenizer``, e.g. ``vocab``) runs on a
tiny ``bert``-trunk model with a tiny WordPiece tokenizer instead, and its output checkpoint gets the
tokenizer files the step wrote (``StepResult.files``), which the bundle then ships.

A new step fails ``test_every_step_has_conformance_options`` until it is given options here.
Tolerance as in test_conformance_schemes.py (float32 graphs vs float32 PyTorch, ~1e-7 measured)."""
import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.compress.steps import COMPRESSION_STEPS, StepData, get_step, step_options
from edgeuq.compress.transfer import label_with_model
from edgeuq.export import export_onnx
from edgeuq.models import build_model, mc_sample_probs
from edgeuq.models.bert import BertConfig
from edgeuq.models.config import bert_model_config
from edgeuq.training import load_checkpoint, save_checkpoint
from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.wordpiece import WordPieceTokenizer

from chain import CLASSES, FS, TINY, max_err, tiny_config, torch_reference, windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCHEME = "mc_dropout"

#: step -> options small enough for a tiny model and a few seconds
OPTIONS = {
    "distill": {"epochs": 1, "batch_size": 16, "student_samples": 2, "teacher_samples": 2, "patience": 1},
    "prune": {"target_flops": 0.5},
    "lowrank": {"rank_fraction": 0.25},
    "vocab": {"rank": 4, "trim_positions": True},
    "posterior": {"rows": 16, "samples": 8},
    "rehead": {"scheme": SCHEME},          # the same scheme: the step must hand back the same network
}


def test_every_step_has_conformance_options():
    missing = sorted(set(COMPRESSION_STEPS) - set(OPTIONS))
    assert not missing, f"compression steps without conformance options in {__file__}: {missing}"


TOL = 1e-5
S, N, SEED = 4, 5, 3


#: the token case: a tiny WordPiece vocabulary, a tiny BERT on it, phrases over its words
WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "movie", "film", "plot", "great", "dull", "the", "a",
         "was", "g", "o", "##o", "##d")
TOKENIZER = WordPieceTokenizer(vocab=WORDS, max_length=10, special_tokens=WORDS[:4])
PHRASES = ("good movie", "bad film", "the plot was dull", "a good film", "the movie was bad", "good plot")


def token_windows(n: int, seed: int = 0, tokenizer: WordPieceTokenizer = TOKENIZER) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return tokenizer.encode_batch([PHRASES[int(i)] for i in rng.integers(0, len(PHRASES), n)])


def token_model() -> torch.nn.Module:
    bert = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)
    return build_model(bert_model_config(bert, TINY["num_classes"], TOKENIZER.max_length, scheme=SCHEME,
                                         head_hidden=8))


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def stepped(request):
    """(name, input model, its state before, the step's output model, inputs(n, seed) for the output
    model, the files the step wrote beside its checkpoint) for each step."""
    name = request.param
    step = get_step(name)
    torch.manual_seed(0)
    tokens = step.needs_tokenizer
    model = (token_model() if tokens else build_model(tiny_config(SCHEME))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make = token_windows if tokens else windows
    x, xv = make(32, 0), make(16, 1)
    y = np.arange(32) % TINY["num_classes"]
    data = StepData(x=x, y=y, x_val=xv, y_val=np.arange(16) % TINY["num_classes"],
                    teacher=lambda a, s, seed: label_with_model(model, a, s, seed),
                    tokenizer=TOKENIZER if tokens else None)
    res = step.apply(model, data, step_options(step, OPTIONS[name]))
    inputs = windows
    if tokens:
        tok = TOKENIZER
        if "tokenizer.json" in res.files:
            root = Path(tempfile.mkdtemp(prefix="conformance-tok-"))
            res.files["tokenizer.json"](root / "tokenizer.json")
            tok = WordPieceTokenizer.load(root / "tokenizer.json")
        inputs = functools.partial(token_windows, tokenizer=tok)
    return name, model, before, res.model.eval(), inputs, res.files


def test_step_output_samples_like_its_input_and_leaves_it_alone(stepped):
    name, model, before, out, inputs, _ = stepped
    xv = inputs(16, 1)
    assert out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), f"{name} changed its input"
    assert [s.name for s in out.noise_specs()] == [s.name for s in model.noise_specs()]
    p = mc_sample_probs(out, torch.from_numpy(xv), 3, rng=np.random.default_rng(0)).numpy()
    assert p.shape == (3, 16, TINY["num_classes"]) and np.isfinite(p).all()
    err = float(np.max(np.abs(p.sum(-1) - 1.0)))
    assert err <= 1e-5, (name, err)


@pytest.fixture(scope="module")
def round_trip(stepped, tmp_path_factory):
    name, _, _, out, inputs, files = stepped
    root = tmp_path_factory.mktemp(f"step-{name}")
    ck = save_checkpoint(out, root / "ck", CLASSES, FS)
    for fname, write in files.items():
        write(root / "ck" / fname)
    loaded = load_checkpoint(root / "ck")
    art = export_onnx(loaded, root / "onnx")
    bundle = build_bundle(art, root / "bundle", "conformance", "0.1.0", default_samples=S).root
    return name, out, loaded, art, bundle, inputs


def test_step_output_saves_and_loads_as_the_same_model(round_trip):
    """The checkpoint's config alone rebuilds the step's architecture: same parameters, same
    deterministic pass (a config that forgot a pruned width or a factorised rank fails to load or
    differs here)."""
    name, out, loaded, _, _, inputs = round_trip
    assert loaded.config == out.cfg, name
    model = loaded.load_model()
    want, got = out.state_dict(), model.state_dict()
    assert sorted(got) == sorted(want), (name, sorted(set(got) ^ set(want)))
    assert all(torch.equal(got[k], want[k]) for k in want), name
    x = torch.from_numpy(inputs(N, 2))
    out.set_sampling(False)
    model.set_sampling(False)
    with torch.no_grad():
        err = max_err(model(x).numpy(), out(x).numpy())
    assert err <= 1e-6, (name, err)


def test_step_output_runs_on_the_runtime_and_agrees_with_pytorch(round_trip):
    name, out, _, art, bundle, inputs = round_trip
    x = inputs(N)
    got = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    want = torch_reference(out, art, x, S, SEED)
    assert got.shape == want.shape == (S, N, TINY["num_classes"]), name
    err = max_err(got, want)
    assert err <= TOL, f"{name}: runtime vs the step's PyTorch model {err:.3g} > {TOL}"
    other = torch_reference(out, art, x, S, SEED + 1)   # control: another noise stream is told apart
    assert not max_err(got, other) <= TOL, name
