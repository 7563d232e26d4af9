"""The text-teacher stage: a labelled text file in, a versioned artifact with device bundles out.

    pretrained MiniLM (edgeuq.text.pretrained) + train/val/test/OOD files (edgeuq.text.datasets)
      -> the model: a ModelConfig with trunk "bert" (edgeuq.models.trunks), built by build_model,
         the pretrained weights loaded strictly into its encoder
      -> WordPiece ids -> frozen lower layers cached (edgeuq.text.cache; reused on re-run)
      -> fine-tune the top ``train_layers`` layers + head (edgeuq.text.finetune on the shared
         step loop; a line per epoch)
      -> one model per scheme built from the same config (the scheme registry's head) on the
         fine-tuned weights; a post-hoc posterior (last-layer Laplace, K-FAC GGN, prior precision
         by validation NLL) fitted for the scheme that declares one
      -> one device bundle per scheme through the common stages (edgeuq.text.export:
         save_checkpoint -> export_onnx -> build_bundle; ONNX Runtime == PyTorch checked)
      -> metrics of each bundle on the device runtime (held-out accuracy, ECE, NLL; OOD AUROC)
      -> TextTeacher artifact (edgeuq.artifact: staged, fsynced, renamed; hashed; envelope last)

Nothing is lost on failure: the frozen-layer caches (``OUT/cache/*.npz``) and the
fine-tuned weights (``OUT/cache/finetuned-*.pt``) are written atomically as soon as
they exist and keyed by what they were made from, so a re-run after a failed
export or evaluation resumes there; the artifact itself appears only complete.
A run whose inputs (weights, data files, options) match a stored artifact returns
it without recomputing (:func:`edgeuq.artifact.cached`).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from edgeuq_runtime.atomic import atomic_write

from ..artifact import Artifact, ArtifactWriter, cached, digest_of
from ..data.sources import DataOptions
from ..models.config import ModelConfig, bert_model_config
from ..models.transformer import DeployableModel, build_model
from ..models.trunks import load_head_state
from ..profile.harness import StageTimer
from .classifier import TEXT_SCHEMES
from .datasets import TextSplits, text_splits
from .heads import text_head

__all__ = ["TeacherOptions", "TextTeacher", "train_text_teacher", "load_text_teacher", "TEACHER_FILE", "cache_path",
           "seeded_rows", "teacher_model_config", "FINETUNE_SCHEME"]

TEACHER_FILE = "teacher.pt"
#: the head the network is fine-tuned with: MC dropout's dropouts at the head sites (as the text classifier
#: always trained); every scheme's head is then built on the same weights
FINETUNE_SCHEME = "mc_dropout"
_TOKENIZER_FILE = "tokenizer.json"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class TeacherOptions:
    """How the teacher is fine-tuned, fitted and bundled (``edgeuq text-teacher`` flags)."""

    train_layers: int = 2           # top encoder layers trained; the rest frozen and cached
    epochs: int = 1
    lr: float = 5e-5                # encoder layers
    lr_head: float = 1e-3
    batch: int = 32
    max_length: int = 64            # WordPiece ids incl. [CLS]/[SEP]
    train_limit: int = 0            # use the first N training rows (0 = all)
    train_subset: int = 0           # fine-tune on a random N of the (cached) rows (0 = all)
    val_limit: int = 0              # use a random N of the validation rows (0 = all)
    laplace_rows: int = 10000       # training rows whose features fit the Laplace GGN (0 = all)
    held_out: float = 0.1           # share of the training file held out per missing --val / --test
    hidden: int = 256               # head width
    head_dropout: float = 0.2
    seed: int = 0
    samples: int = 32               # S of the bundles and of the evaluation
    schemes: Tuple[str, ...] = ("laplace", "mc_dropout")
    threads: int = 1                # runtime threads in the evaluation
    ood_features: str = "frozen_avg"  # features the trunk emits for the density (edgeuq.text.ood; "none": off)
    time_cap_min: float = 0.0       # stop fine-tuning at the first step after this many minutes (0: none; resumable)
    keep_best: bool = False         # keep the epoch with the best validation accuracy, not the last

    def __post_init__(self) -> None:
        object.__setattr__(self, "schemes", tuple(self.schemes))
        problems = []
        for name in ("epochs", "batch", "max_length", "samples", "hidden", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        for name in ("train_layers", "train_limit", "train_subset", "val_limit", "laplace_rows", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")
        if not (isinstance(self.time_cap_min, (int, float)) and self.time_cap_min >= 0):  # NaN-safe
            problems.append(f"time_cap_min must be >= 0 minutes, got {self.time_cap_min!r}")
        if not isinstance(self.keep_best, bool):
            problems.append(f"keep_best must be a bool, got {self.keep_best!r}")
        for name in ("lr", "lr_head"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):  # NaN-safe
                problems.append(f"{name} must lie in (0, 1), got {v!r}")
        if not (0 <= self.head_dropout < 1):
            problems.append(f"head_dropout must lie in [0, 1), got {self.head_dropout!r}")
        if not (0 < self.held_out < 0.5):
            problems.append(f"held_out must lie in (0, 0.5), got {self.held_out!r}")
        if self.max_length < 3:
            problems.append(f"max_length must be >= 3 ([CLS], a token, [SEP]), got {self.max_length}")
        from .ood import OOD_KINDS

        if self.ood_features not in ("none", *OOD_KINDS):
            problems.append(f"ood_features must be one of {['none', *OOD_KINDS]}, got {self.ood_features!r}")
        bad = [s for s in self.schemes if s not in TEXT_SCHEMES]
        if bad or not self.schemes or len(set(self.schemes)) != len(self.schemes):
            problems.append(f"schemes must be distinct names among {list(TEXT_SCHEMES)}, got {list(self.schemes)}")
        if problems:
            raise ValueError("invalid TeacherOptions: " + "; ".join(problems))

    #: options added later: left out of :meth:`to_dict` at their defaults, so the keys of artifacts
    #: and fine-tuned weights made before they existed still match
    _LATER_DEFAULTS: ClassVar[Dict[str, Any]] = {"time_cap_min": 0.0, "keep_best": False}

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["schemes"] = list(self.schemes)
        for k, v in self._LATER_DEFAULTS.items():
            if d[k] == v:
                del d[k]
        return d


@dataclass(frozen=True)
class TextTeacher(Artifact):
    """A fine-tuned text teacher: weights, tokenizer, one verified device bundle per scheme,
    and the metrics of each bundle on the device runtime."""

    KIND: ClassVar[str] = "text_teacher"
    FORMAT_VERSION: ClassVar[int] = 2  # 2: model_config is a ModelConfig (trunk "bert"), teacher.pt its state dict
    META_FILE: ClassVar[str] = "text_teacher.json"

    base: str
    weights_sha256: str
    model_config: Mapping[str, Any]
    class_names: Tuple[str, ...]
    max_length: int
    options: Mapping[str, Any]
    data: Mapping[str, Any]
    history: Mapping[str, Any]
    laplace: Optional[Mapping[str, Any]]
    metrics: Mapping[str, Any]
    bundles: Mapping[str, str]                       # scheme -> folder inside the artifact
    bundle_files: Tuple[str, ...] = ()               # every bundle file (hashed here too)
    timings: Mapping[str, float] = field(default_factory=dict)

    def payload_files(self) -> Tuple[str, ...]:
        return (TEACHER_FILE, _TOKENIZER_FILE, *self.bundle_files)

    def to_meta(self) -> Dict[str, Any]:
        return {"base": self.base, "weights_sha256": self.weights_sha256, "model_config": dict(self.model_config),
                "class_names": list(self.class_names), "max_length": self.max_length, "options": dict(self.options),
                "data": dict(self.data), "history": dict(self.history),
                "laplace": None if self.laplace is None else dict(self.laplace), "metrics": dict(self.metrics),
                "bundles": dict(self.bundles), "bundle_files": list(self.bundle_files),
                "timings": dict(self.timings)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **base: Any) -> "TextTeacher":
        return cls(base=meta["base"], weights_sha256=meta["weights_sha256"], model_config=meta["model_config"],
                   class_names=tuple(meta["class_names"]), max_length=int(meta["max_length"]),
                   options=meta["options"], data=meta["data"], history=meta["history"], laplace=meta["laplace"],
                   metrics=meta["metrics"], bundles=meta["bundles"], bundle_files=tuple(meta["bundle_files"]),
                   timings=meta["timings"], **base)

    def bundle_path(self, name: str) -> Path:
        """The bundle of scheme ``name``."""
        if name not in self.bundles:
            raise KeyError(f"no {name!r} bundle in {self.directory} (has {sorted(self.bundles)})")
        return self.file_path(self.bundles[name])

    def load_density_model(self, scheme: Optional[str] = None,
                           pretrained: Optional[PathLike] = None) -> DeployableModel:
        """:meth:`load_model` whose trunk also emits the bundles' density features (the teacher's
        ``ood_features``), the pretrained layers from the encoder this teacher was fine-tuned from
        (``pretrained``: its folder or zip; default the packaged one), checked by its weights' SHA-256."""
        from .pretrained import load_pretrained

        kind = str(self.options.get("ood_features", "none"))
        if kind == "none":
            raise ValueError(f"{self.directory}: this teacher's bundles carry no density features (ood_features 'none')")
        pre = load_pretrained(pretrained)
        if pre.weights_sha256 != self.weights_sha256:
            raise ValueError(f"{self.directory}: fine-tuned from {self.base} ({self.weights_sha256[:12]}), the "
                             f"encoder given is {pre.name} ({pre.weights_sha256[:12]}): pass the one it came from")
        frozen = pre.config.num_hidden_layers - int(self.options["train_layers"])
        return with_pretrained_density(self.load_model(scheme), pre.encoder(), kind, frozen)

    def load_model(self, scheme: Optional[str] = None) -> DeployableModel:
        """The fine-tuned model with the head of ``scheme`` (default: the first bundled scheme), built
        from the stored ModelConfig by the scheme registry (a fitted posterior included)."""
        cfg = ModelConfig.from_dict(self.model_config)
        if scheme is not None:
            cfg = replace(cfg, scheme=scheme, scheme_options=None)
        model = build_model(cfg)
        load_head_state(model, torch.load(self.file_path(TEACHER_FILE), map_location="cpu", weights_only=True))
        return model.eval()


def with_pretrained_density(model: DeployableModel, pretrained: Any, density_features: str,
                            frozen_layers: int) -> DeployableModel:
    """``model`` (a fine-tuned ``bert``-trunk model) whose trunk also emits ``density_features`` of
    the ``pretrained`` encoder (layers below ``frozen_layers`` shared): the same weights, the
    pretrained copies of the layers above from ``pretrained``."""
    m_cfg = replace(model.cfg, trunk_options=replace(model.cfg.trunk_options, density_features=density_features,
                                                     frozen_layers=int(frozen_layers)))
    out = build_model(m_cfg)
    # every weight from the fine-tuned model; pretrained_top (not in it) from the pretrained encoder
    load_head_state(out, {**out.state_dict(), **model.state_dict()})
    out.install_pretrained_top(pretrained)
    return out.eval()


def load_text_teacher(path: PathLike, verify: bool = True) -> TextTeacher:
    return TextTeacher.load(path, verify=verify)


# ----------------------------------------------------------------------------- helpers
def cache_path(out: PathLike, split: str, key: str) -> Path:
    """Where the stage keeps the frozen-layer cache of ``split`` (``key``: :func:`edgeuq.text.cache.cache_key`
    of the *pretrained* encoder, the ids and the first trained layer); a caller that needs the same
    cache (a benchmark's student) finds it here instead of recomputing it."""
    return Path(out) / "cache" / f"{split}-{key}.npz"


def seeded_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """The sorted random ``limit`` of ``n`` rows the stage keeps (all when ``limit`` is 0 or >= n)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through the one atomic write (durable: the fine-tuned weights are the
    expensive part of a resumed run)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer(), durable=True)


def _runtime_metrics(bundle_dir: Path, test, oods: Sequence, samples: int, threads: int, seed: int) -> dict:
    """Accuracy, ECE, NLL on the held-out texts and OOD AUROC (MI, total entropy, 1 - max p),
    all from the device runtime running the bundle."""
    from edgeuq_runtime import UncertaintyRuntime

    from ..uq import auroc, expected_calibration_error, nll

    rt = UncertaintyRuntime(bundle_dir, threads=threads, seed=seed)
    r = rt.predict_text(list(test.texts), samples=samples, seed=seed)
    row: Dict[str, Any] = {"rows": len(test), "accuracy": float(np.mean(r.prediction == test.y)),
                           "ece": float(expected_calibration_error(r.probs, test.y)),
                           "nll": float(nll(r.probs, test.y)), "samples": int(samples),
                           "how": "device runtime (UncertaintyRuntime.predict_text) on the bundle"}
    ood = {}
    for i, ds in enumerate(oods):
        o = rt.predict_text(list(ds.texts), samples=samples, seed=seed + 1 + i)
        ood[ds.name] = {"rows": len(ds), "auroc_mi": float(auroc(r.epistemic, o.epistemic)),
                        "auroc_total": float(auroc(r.total, o.total)),
                        "auroc_maxp": float(auroc(1 - r.probs.max(-1), 1 - o.probs.max(-1)))}
    if ood:
        row["ood"] = ood
    return row


def teacher_model_config(pre_config: Any, num_classes: int, options: TeacherOptions,
                         scheme: str = FINETUNE_SCHEME) -> ModelConfig:
    """The teacher's ModelConfig: the pretrained encoder as a ``bert`` trunk reading
    ``options.max_length`` ids, a head ``options.hidden`` wide with dropout ``options.head_dropout``."""
    return bert_model_config(pre_config, num_classes, options.max_length, scheme=scheme, head_hidden=options.hidden,
                             head_dropout=options.head_dropout)


def _trunk_names(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A fine-tuned state dict under the trunk model's names (weights cached by an earlier version
    of the stage, a ``TextClassifier``'s, name the head ``fc1``/``fc2``)."""
    return {("head." + k if k.startswith(("fc1.", "fc2.")) else k): v for k, v in state.items()}


def _bundle_files(root: Path, folder: str) -> Tuple[str, ...]:
    return tuple(sorted(f"{folder}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()))


# ----------------------------------------------------------------------------- the stage
def train_text_teacher(train: PathLike, out: PathLike, options: TeacherOptions = TeacherOptions(), *,
                       val: Optional[PathLike] = None, test: Optional[PathLike] = None, ood: Sequence[PathLike] = (),
                       class_names: Optional[Sequence[str]] = None, data_options: DataOptions = DataOptions(),
                       model: Optional[PathLike] = None, name: str = "text-teacher",
                       log: Callable[[str], None] = print, force: bool = False) -> TextTeacher:
    """Fine-tune the packaged MiniLM (or the model folder/zip ``model``) on a labelled text
    file and write a :class:`TextTeacher` artifact to ``out`` (see the module docstring)."""
    from .cache import cache_hidden, cache_key, token_rows
    from .export import export_text_bundle
    from .finetune import FINETUNE_TRAIN, FinetuneConfig, features_from_cache, finetune, fit_text_laplace
    from .pretrained import load_pretrained
    from .wordpiece import wordpiece_from_tokenizer_json

    out = Path(out)
    t_start, timer = time.perf_counter(), StageTimer()  # stages: cache, train, export_eval
    torch.manual_seed(options.seed)
    splits: TextSplits = text_splits(Path(train), Path(val) if val else None, Path(test) if test else None,
                                     [Path(p) for p in ood], class_names, data_options, options.held_out,
                                     options.seed)
    pre = load_pretrained(model)
    if options.train_layers > pre.config.num_hidden_layers:
        raise ValueError(f"train_layers {options.train_layers} exceeds the encoder's "
                         f"{pre.config.num_hidden_layers} layers")
    if options.max_length > pre.config.max_position_embeddings:
        raise ValueError(f"max_length {options.max_length} exceeds the encoder's "
                         f"{pre.config.max_position_embeddings} positions")
    if options.ood_features == "frozen_avg" and options.train_layers >= pre.config.num_hidden_layers:
        raise ValueError("ood_features 'frozen_avg' needs a frozen layer (train_layers < "
                         f"{pre.config.num_hidden_layers}); use 'avgavg', 'pretrained' or 'none'")
    key = digest_of("text_teacher", pre.weights_sha256, splits.sources, list(splits.class_names), options.to_dict(),
                    {"text_column": data_options.text_column, "label_column": data_options.label_column,
                     "label_map": dict(data_options.label_map)}, name)
    if not force:
        hit = cached(TextTeacher, out, key)
        if hit is not None:
            log(f"{out}: up to date (a text_teacher made from the same weights, data and options)")
            return hit
    names = splits.class_names
    if options.val_limit and options.val_limit < len(splits.val):
        splits = replace(splits, val=splits.val.subset(seeded_rows(len(splits.val), options.val_limit,
                                                                    options.seed)))
    log(f"data: train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} rows, "
        f"classes {list(names)}" + "".join(f", {d.name} {len(d)}" for d in splits.ood))
    train_ds = splits.train
    if options.train_limit and options.train_limit < len(train_ds):
        train_ds = train_ds.subset(np.arange(options.train_limit))

    tok = wordpiece_from_tokenizer_json(pre.tokenizer_json, options.max_length)
    torch.manual_seed(options.seed)
    cfg = teacher_model_config(pre.config, len(names), options)
    teacher = build_model(cfg)
    teacher.encoder.load_bert_state(pre.state)
    teacher.eval()
    start = pre.config.num_hidden_layers - options.train_layers
    cache_dir = out / "cache"
    caches, cache_keys = {}, {}
    with timer.stage("cache"):
        for split, ds in (("train", train_ds), ("val", splits.val)):
            ids = tok.encode_batch(list(ds.texts))
            ck = cache_keys[split] = cache_key(teacher.encoder, ids, start)
            if start == 0:  # every layer trains: nothing to cache; ids padded per batch, embeddings frozen
                caches[split] = token_rows(ids, ds.y, teacher.encoder.embeddings, pre.config.pad_token_id)
            else:
                caches[split] = cache_hidden(teacher.encoder, ids, ds.y, start, path=cache_path(out, split, ck),
                                             name=f"{name} {split}")
    t_cache = timer.seconds["cache"]
    if start == 0:
        log(f"all {pre.config.num_hidden_layers} layers train (embeddings frozen): {len(caches['train'])} + "
            f"{len(caches['val'])} rows as token ids, padded per length-bucketed batch")
    else:
        log(f"frozen layers 0..{start - 1}: cached {len(caches['train'])} + {len(caches['val'])} rows "
            f"under {cache_dir} ({t_cache:.0f}s)")
    train_cache = caches["train"]
    if options.train_subset and options.train_subset < len(train_cache):
        train_cache = train_cache.subset(seeded_rows(len(train_cache), options.train_subset, options.seed))

    ft = FinetuneConfig(train_layers=options.train_layers, lr_head=options.lr_head,
                        time_cap_s=60.0 * options.time_cap_min, keep_best=options.keep_best,
                        train=replace(FINETUNE_TRAIN, epochs=options.epochs, batch_size=options.batch, lr=options.lr,
                                      seed=options.seed))
    # keep_best changes the weights (a key only when set: to_dict leaves it out at its default); the time cap
    # does not (a capped run stores no finished weights)
    recorded = options.to_dict()
    trained_on = {k: recorded[k] for k in ("train_layers", "epochs", "lr", "lr_head", "batch", "max_length",
                                           "train_limit", "train_subset", "val_limit", "hidden", "head_dropout",
                                           "seed", "keep_best") if k in recorded}
    tuned_key = digest_of(cache_keys, train_ds.y.tolist(), splits.val.y.tolist(), list(names), trained_on)[:16]
    tuned = cache_dir / f"finetuned-{tuned_key}.pt"
    state = cache_dir / f"finetune-state-{tuned_key}.pt"  # a time-capped run's resumable state
    with timer.stage("train"):
        if tuned.is_file():
            saved = torch.load(tuned, map_location="cpu", weights_only=True)
            load_head_state(teacher, _trunk_names(saved["state"]))
            history = json.loads(saved["history"])
            log(f"fine-tuned weights reused from {tuned}")
        else:
            log(f"fine-tuning layers {start}..{pre.config.num_hidden_layers - 1} + head on {len(train_cache)} rows, "
                f"{options.epochs} epoch(s)")
            cache_dir.mkdir(parents=True, exist_ok=True)
            history = finetune(teacher, train_cache, ft, val=caches["val"], state_path=state)
            if "stopped" in history:  # not a finished fine-tune: a re-run with --force resumes from `state`
                log(f"fine-tuning stopped by the time cap at epoch {history['stopped'][0]} step "
                    f"{history['stopped'][1]}; the artifact carries these weights and says so (history.stopped)")
            else:
                _save_atomic({"state": teacher.state_dict(), "history": json.dumps(history)}, tuned)
    teacher.eval()

    # one model per scheme, built from the same config by the scheme registry, on the fine-tuned weights
    heads: Dict[str, DeployableModel] = {}
    for scheme in options.schemes:
        heads[scheme] = build_model(replace(cfg, scheme=scheme, scheme_options=None))
        load_head_state(heads[scheme], teacher.state_dict())
        heads[scheme].eval()
    val_feats = features_from_cache(teacher, caches["val"])
    laplace = None
    posterior = next((s for s in options.schemes if text_head(s).post_hoc_posterior), None)
    if posterior is not None:
        fit_cache = train_cache
        if options.laplace_rows and options.laplace_rows < len(fit_cache):
            fit_cache = fit_cache.subset(seeded_rows(len(fit_cache), options.laplace_rows, options.seed + 1))
        laplace = fit_text_laplace(heads[posterior], features_from_cache(teacher, fit_cache), val_feats,
                                   splits.val.y, seed=options.seed)
        log(f"last-layer Laplace (K-FAC GGN on {len(fit_cache)} rows): prior precision "
            f"{laplace['prior_precision']:g} by validation NLL")

    density = {}
    if options.ood_features != "none":
        if options.ood_features == "frozen_avg" and start == 0:
            raise ValueError("ood_features 'frozen_avg' needs a frozen layer (train_layers < "
                             f"{pre.config.num_hidden_layers}); use 'avgavg', 'pretrained' or 'none'")
        density = {"density_features": options.ood_features, "frozen_layers": start}
        log(f"bundles: the trunk also emits {options.ood_features} features of the pretrained encoder "
            f"({options.train_layers} pretrained layer(s) run beside the fine-tuned ones) for the density score")

    def exported(scheme: str) -> DeployableModel:
        """The bundled model of ``scheme``: its config with the density trunk option, the same weights."""
        if not density:
            return heads[scheme]
        return with_pretrained_density(heads[scheme], pre.encoder(), **density)

    stored = heads[posterior] if posterior is not None else teacher  # the posterior's factors travel with it
    with ArtifactWriter(out) as w:
        with timer.stage("export_eval"):
            torch.save(stored.state_dict(), w.path / TEACHER_FILE)
            tok.save(w.path / _TOKENIZER_FILE)
            bundles, files, metrics = {}, [], {}
            check = list(splits.test.texts[:8])
            for scheme in options.schemes:
                folder = f"bundle-{scheme}"
                b = export_text_bundle(exported(scheme), tok, w.path / folder, names, f"{name}-{scheme}",
                                       default_samples=options.samples, check_texts=check,
                                       metadata={"base": pre.name, "weights_sha256": pre.weights_sha256,
                                                 "stage": "text_teacher"})
                bundles[scheme] = folder
                files += _bundle_files(b.root, folder)
                metrics[scheme] = _runtime_metrics(b.root, splits.test, splits.ood, options.samples, options.threads,
                                                   options.seed)
                m = metrics[scheme]
                log(f"[{scheme}] held-out acc {m['accuracy']:.4f}, ECE {m['ece']:.4f}, NLL {m['nll']:.3f}"
                    + "".join(f", {k} AUROC MI {v['auroc_mi']:.3f} / H {v['auroc_total']:.3f}"
                              for k, v in m.get("ood", {}).items()))
        data = {"splits": splits.sources, "rows": {"train": len(train_cache), "val": len(splits.val),
                                                   "test": len(splits.test)},
                "text_column": data_options.text_column, "label_column": data_options.label_column,
                "label_map": dict(data_options.label_map)}
        # load_model()'s default head: the first scheme
        model_config = replace(cfg, scheme=options.schemes[0], scheme_options=None).to_dict()
        art = TextTeacher(base=pre.name, weights_sha256=pre.weights_sha256, model_config=model_config,
                          class_names=tuple(names), max_length=options.max_length, options=options.to_dict(),
                          data=data, history=history, laplace=laplace, metrics=metrics, bundles=bundles,
                          bundle_files=tuple(files),
                          timings={**{f"{k}_s": round(v, 3) for k, v in timer.seconds.items()},
                                   "total_s": round(time.perf_counter() - t_start, 3)},
                          inputs=key)
        committed = w.commit(art)
    log(f"text teacher -> {out} ({len(files) + 2} files hashed; bundles: "
        + ", ".join(f"{s}: {out / f}" for s, f in bundles.items()) + ")")
    return committed
