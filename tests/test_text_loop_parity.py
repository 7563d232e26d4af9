"""The text fine-tuning loop and the text MC sampler now go through the shared pieces
(``edgeuq.training.loop.run_steps``, ``edgeuq.models.sampling.mc_sample_head_logits``); the
pre-change implementations are kept here verbatim as the references, and the new code must
give the same weights, losses and probabilities on a tiny seeded model. ``run_epochs`` (now on
``run_steps``) is compared against its own pre-change copy too."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeuq.text.bert import BertConfig
from edgeuq.text.cache import HiddenCache, cache_hidden
from edgeuq.text.classifier import TextClassifier
from edgeuq.training import TrainConfig
from edgeuq.text.finetune import FinetuneConfig, _batches, features_from_cache, finetune, fit_text_laplace, sample_probs

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=20)


# ----------------------------------------------------------------------------- references (pre-change, verbatim;
# the fine-tune reads its flat options from FinetuneConfig.train now: cfg.X -> cfg.train.X)
def finetune_reference(model, train: HiddenCache, cfg: FinetuneConfig, val=None):
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    enc_params = [p for layer in list(model.encoder.layers)[train.start:] for p in layer.parameters()]
    for p in enc_params:
        p.requires_grad_(True)
    head_params = list(model.fc1.parameters()) + [model.fc2.weight, model.fc2.bias]
    groups = [{"params": head_params, "lr": cfg.lr_head}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.train.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    steps = cfg.train.epochs * math.ceil(len(train) / cfg.train.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.06 * steps)) * max(0.0, 1 - s / steps))
    history = {"train_loss": [], "val_acc": []}
    for epoch in range(cfg.train.epochs):
        model.train()
        model.encoder.embeddings.eval()
        total, n = 0.0, 0
        batches = _batches(train, cfg.train.batch_size, rng)
        for b, idx in enumerate(batches):
            h, m = train.batch(idx)
            y = torch.from_numpy(train.labels[idx])
            logits = model.head_forward(model.trunk_from_hidden(h, m, train.start))
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        history["train_loss"].append(total / max(n, 1))
        if val is not None:
            feats = features_from_cache(model, val)
            with torch.no_grad():
                pred = model.head_forward(torch.from_numpy(feats)).argmax(-1).numpy()
            history["val_acc"].append(float(np.mean(pred == val.labels)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


@torch.no_grad()
def sample_probs_reference(model, feats, samples, seed=0):
    from edgeuq_runtime.noise import sample_noise

    rng = np.random.default_rng(seed)
    specs = model.noise_specs()
    f = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    out = []
    for _ in range(samples):
        noise = {k: torch.from_numpy(v.astype(np.float32)) for k, v in sample_noise(specs, len(feats), rng).items()}
        out.append(torch.softmax(model.head_forward(f, noise), -1).numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------- fixtures
def _ids(rng, n, t=10):
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(3, t + 1))
        ids[i, :k] = rng.integers(1, TINY.vocab_size, size=k)
    return ids


def _setup(scheme="mc_dropout", n=70, start=1):
    torch.manual_seed(0)
    model = TextClassifier(TINY, num_classes=2, hidden=8, scheme=scheme).eval()
    rng = np.random.default_rng(0)
    ids = _ids(rng, n)
    y = (ids[:, 1] % 2).astype(np.int64)  # a learnable label
    cache = cache_hidden(model.encoder, ids, y, start=start, name="t")
    val = cache_hidden(model.encoder, _ids(rng, 20), rng.integers(0, 2, 20), start=start, name="v")
    return model, cache, val


def _max_param_diff(a, b) -> float:
    return max(float(torch.max(torch.abs(pa - pb))) for pa, pb in zip(a.state_dict().values(), b.state_dict().values())
               if pa.dtype.is_floating_point)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("start", [1, 2])  # train the top 2 layers + head, or the top one + head
def test_finetune_on_the_shared_step_loop_equals_the_old_loop(start):
    model, cache, val = _setup(start=start)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = FinetuneConfig(train_layers=TINY.num_hidden_layers - start, lr_head=3e-3,
                         train=TrainConfig(epochs=3, batch_size=16, lr=1e-3, weight_decay=0.01, seed=3))
    ha = finetune_reference(a, cache, cfg, val=val)
    hb = finetune(b, cache, cfg, val=val)
    assert _max_param_diff(model, b) > 1e-3  # it trained
    err = _max_param_diff(a, b)
    assert err <= 1e-6, err
    assert np.allclose(ha["train_loss"], hb["train_loss"], rtol=0, atol=1e-7)
    assert ha["val_acc"] == hb["val_acc"]


@pytest.mark.parametrize("scheme", ["mc_dropout", "laplace"])
def test_sample_probs_through_the_shared_sampler_equals_the_old_sampler(scheme):
    model, cache, val = _setup(scheme)
    feats = features_from_cache(model, cache)
    if scheme == "laplace":
        fit_text_laplace(model, feats, features_from_cache(model, val), val.labels, samples=8)
    assert len(model.noise_specs()) == (2 if scheme == "mc_dropout" else 1)  # several specs: the draw order matters
    old = sample_probs_reference(model, feats, 7, seed=5)
    new = sample_probs(model, feats, 7, seed=5)
    assert old.shape == new.shape == (7, len(feats), 2)
    err = float(np.max(np.abs(old - new)))
    assert err <= 1e-6, err
    # and the samples really differ (noise is drawn, not the mean)
    assert float(np.max(np.abs(new[0] - new[1]))) > 1e-4


def test_run_epochs_on_run_steps_equals_the_old_loop():
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import TrainConfig
    from edgeuq.training.loop import cross_entropy_loss, run_epochs

    ns: dict = {}
    exec(compile(_OLD_RUN_EPOCHS, "old_run_epochs", "exec"), ns)  # the pre-change source, verbatim
    tiny = dict(input_length=64, num_classes=3, patch=8, d_model=8, heads=2, depth=1, ffn=8, dropout=0.1,
                stochastic_blocks=())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 64)).astype(np.float32), rng.integers(0, 3, 50)
    out = []
    for fn in (ns["run_epochs"], run_epochs):
        torch.manual_seed(0)
        m = SignalTransformer(ModelConfig(**tiny))
        vals = iter([1.0, 0.9, 0.95, 0.8])
        res = fn(m, x, y, TrainConfig(epochs=4, batch_size=16, lr=1e-3, patience=5), m.parameters(),
                 lambda: (next(vals), 0.5), loss_fn=cross_entropy_loss, progress=False)
        out.append((m, res))
    (ma, ra), (mb, rb) = out
    assert _max_param_diff(ma, mb) <= 1e-6
    assert ra.best_epoch == rb.best_epoch == 4
    for ea, eb in zip(ra.history, rb.history):
        assert abs(ea.train_loss - eb.train_loss) <= 1e-7 and ea.train_acc == eb.train_acc



def test_distil_student_with_shared_options_and_helpers_equals_the_old_one():
    """distil_student now reads TrainConfig (DistilConfig.train) and uses the shared schedule and
    length buckets; against its pre-change source (with its own flat DistilConfig), verbatim."""
    from edgeuq.text.student import DistilConfig, StudentSpec, build_student, distil_student, mask_fisher

    ns: dict = {}
    exec(compile(_OLD_DISTIL, "old_distil_student", "exec"), ns)
    torch.manual_seed(0)
    teacher = TextClassifier(TINY, num_classes=2, hidden=8, scheme="mc_dropout").eval()
    spec = StudentSpec(layers=(0, 2), ffn=16, rank=4, max_length=10)
    ids = _ids(np.random.default_rng(7), 48)
    fisher = mask_fisher(teacher, ids[:8], batch_size=8)
    s0, _ = build_student(teacher, spec, np.arange(TINY.vocab_size), fisher)
    a, b = copy.deepcopy(s0), copy.deepcopy(s0)
    ha = ns["distil_student"](a, teacher, spec, ids, ids, ns["DistilConfig"](epochs=3, batch_size=16, lr=3e-3,
                                                                             lr_head=2e-3, seed=4), log=lambda m: None)
    hb = distil_student(b, teacher, spec, ids, ids,
                        DistilConfig(lr_head=2e-3, train=TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=4)),
                        log=lambda m: None)
    assert _max_param_diff(s0, b) > 1e-3  # it trained
    err = _max_param_diff(a, b)
    assert err <= 1e-6, err
    for k in ("loss", "kl", "hidden"):
        assert np.allclose(ha[k], hb[k], rtol=0, atol=1e-7), k


_OLD_DISTIL = '''
import math, time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple
import numpy as np
import torch
from torch import nn
from edgeuq.text.bert import key_bias_from_mask, masked_mean_pool
def _hidden_all(encoder, ids: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    mask = encoder.mask(ids)
    bias = key_bias_from_mask(mask)
    h = encoder.embeddings(ids)
    out = []
    for layer in encoder.layers:
        h = layer(h, bias)
        out.append(h)
    return out, mask


@dataclass(frozen=True)
class DistilConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-4
    lr_head: float = 5e-4
    temperature: float = 2.0
    hidden_weight: float = 1.0
    seed: int = 0
    max_seconds: float = 0.0        # stop early after this much training time (0 = no limit)


def distil_student(student: TextClassifier, teacher: TextClassifier, spec: StudentSpec, teacher_ids: np.ndarray,
                   student_ids: np.ndarray, cfg: DistilConfig = DistilConfig(),
                   log: Callable[[str], None] = print) -> Dict[str, list]:
    """KL(teacher || student) at temperature T (times T^2) on the deterministic logits, plus
    the token-masked MSE of every student layer's output against the teacher layer it was
    cut from, on teacher-labelled text (the teacher computed on the fly, no gradients)."""
    if teacher_ids.shape != student_ids.shape:
        raise ValueError("teacher_ids and student_ids must be the same texts")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    teacher.eval()
    head = list(student.fc1.parameters()) + [student.fc2.weight, student.fc2.bias]
    hid = set(id(p) for p in head)
    body = [p for p in student.parameters() if id(p) not in hid]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.lr_head}], weight_decay=0.01)
    lengths = (teacher_ids != 0).sum(1)
    steps = cfg.epochs * math.ceil(len(teacher_ids) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.06 * steps)) * max(0.0, 1 - s / steps))
    hist: Dict[str, list] = {"loss": [], "kl": [], "hidden": [], "seconds": []}
    t0 = time.time()
    T = cfg.temperature
    step = 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(teacher_ids))
        chunks = [order[i:i + cfg.batch_size * 50] for i in range(0, len(order), cfg.batch_size * 50)]
        batches = []
        for c in chunks:
            c = c[np.argsort(lengths[c], kind="stable")]
            batches += [c[i:i + cfg.batch_size] for i in range(0, len(c), cfg.batch_size)]
        rng.shuffle(batches)
        student.train()
        tot = [0.0, 0.0, 0.0]
        n = 0
        for idx in batches:
            t = int(lengths[idx].max())
            xt = torch.from_numpy(teacher_ids[idx, :t])
            xs = torch.from_numpy(student_ids[idx, :t])
            with torch.no_grad():
                th, tmask = _hidden_all(teacher.encoder, xt)
                tz = teacher.head_forward(masked_mean_pool(th[-1], tmask))
            sh, smask = _hidden_all(student.encoder, xs)
            student.set_sampling(False)
            sz = student.head_forward(masked_mean_pool(sh[-1], smask))
            kl = nn.functional.kl_div(nn.functional.log_softmax(sz / T, -1), nn.functional.softmax(tz / T, -1),
                                      reduction="batchmean") * T * T
            m = smask.unsqueeze(-1)
            mse = sum(((s_h - th[i]) ** 2 * m).sum() / (m.sum() * s_h.shape[-1])
                      for s_h, i in zip(sh, spec.layers))
            loss = kl + cfg.hidden_weight * mse
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot[0] += float(loss.detach()) * len(idx)
            tot[1] += float(kl.detach()) * len(idx)
            tot[2] += float(mse.detach()) * len(idx)
            n += len(idx)
            if step % 100 == 0:
                log(f"distil epoch {epoch + 1} step {step}/{steps}: loss {tot[0] / n:.4f} (kl {tot[1] / n:.4f}, "
                    f"hidden {tot[2] / n:.4f}) {time.time() - t0:.0f}s")
            if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
                break
        for key, v in zip(("loss", "kl", "hidden"), tot):
            hist[key].append(v / max(n, 1))
        hist["seconds"].append(time.time() - t0)
        if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
            log(f"distillation stopped at the time limit ({cfg.max_seconds:.0f}s) after {step} of {steps} steps")
            hist["stopped_at_step"] = [step, steps]
            break
    student.eval()
    return hist
'''


_OLD_RUN_EPOCHS = '''
import copy, math
from typing import Callable, Iterable, List, Optional, Tuple
import numpy as np
import torch
from tqdm.auto import tqdm
from edgeuq.training.config import TrainConfig
from edgeuq.training.loop import Batch, EpochStats, TrainResult, _bars_wanted, cross_entropy_loss
LossFn = Callable
def run_epochs(
    model: torch.nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    cfg: TrainConfig,
    param_groups: Iterable,
    validate: Callable[[], Tuple[float, float]],
    loss_fn: LossFn = cross_entropy_loss,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """The loop every trainer shares: AdamW + one-cycle schedule, gradient clipping,
    ``loss_fn(model, batch)`` (cross-entropy by default), ``validate() -> (nll, acc)``
    after each epoch; keeps the weights of the epoch with the lowest validation NLL
    and stops after ``patience`` epochs without improvement. ``log`` gets one line
    per epoch; with ``progress`` and no ``log``, that line is printed when no
    progress bar is drawn (output is not a terminal)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train.astype(np.int64))
    best_state, best_nll, best_epoch, bad_epochs = None, math.inf, -1, 0
    history: List[EpochStats] = []
    stopped_early = False
    bars = _bars_wanted(progress)
    epoch_line = log if log is not None else (print if progress and not bars else None)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(order_rng.permutation(len(xt)))
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not bars, leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            out = loss_fn(model, Batch(xt[idx], yt[idx], idx))
            logits, loss = out.logits, out.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == yt[idx]).sum())
            total += len(idx)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        val_nll, val_acc = validate()
        stats = EpochStats(epoch + 1, loss_sum / total, correct / total, val_nll, val_acc)
        history.append(stats)
        if epoch_line is not None:
            epoch_line(
                f"epoch {stats.epoch:>2}: train loss {stats.train_loss:.4f} acc {stats.train_acc:.3f} | "
                f"val nll {stats.val_nll:.4f} acc {stats.val_acc:.4f}"
            )
        if val_nll < best_nll - 1e-5:
            best_state, best_nll, best_epoch, bad_epochs = copy.deepcopy(model.state_dict()), val_nll, epoch + 1, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(tuple(history), best_epoch, best_nll, stopped_early)
'''
