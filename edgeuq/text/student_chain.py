"""The text student: the compression chain run over the text teacher, as over the bearing teacher.

    TextTeacher artifact (edgeuq text-teacher: a ``bert``-trunk ModelConfig, its fitted head, the
    WordPiece tokenizer)
      -> the teacher as a Checkpoint with tokenizer.json beside it          (OUT/teacher)
      -> the transfer set: training phrases (a random ``transfer`` of them) + ``augment_copies``
         augmented copies each (edgeuq.text.augment: masking, n-gram sampling; teacher-labelled
         only), validation phrases; WordPiece ids of the teacher's tokenizer
      -> StepData: the ids, labels where known, the teacher's S sample probabilities
         (``label``), its hidden states (``teacher_hidden``), the tokenizer
      -> run_chain over the recipe's ``[[compress.steps]]``, e.g. prune (keep_layers,
         target_flops) -> vocab (vocabulary pruning, SVD-factorised embedding) -> distill
         (uncertainty losses + hidden-state matching to the teacher layers each student layer
         was cut from) -> posterior (the last-layer Laplace refit on the student's features)
                                                                       (OUT/chain/<i>-<step>)
      -> the student's bundle through the common stages (edgeuq.text.export:
         save_checkpoint -> export_onnx -> build_bundle, checked against PyTorch), its device
         tokenizer the one the chain left beside the last checkpoint      (OUT/bundle)
      -> OUT/text_student.json: what was run (records of every step, teacher, data, options)

The transfer set goes through the same step code path as the signal student's
(:class:`~edgeuq.compress.steps.StepData` -> the ``distill`` step's teacher labelling); the
text-specific part is only how the windows are made (phrases -> ids, word-level augmentation
instead of signal perturbations, which is why the step's own ``copies`` stay 0 here).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from edgeuq_runtime.atomic import atomic_write
from edgeuq_runtime.wordpiece import WordPieceTokenizer

from ..artifact import cached, digest_of
from ..catalog import Recipe, get_recipe
from ..compress.chain import ChainResult, chain_from_table, chain_table, data_key, run_chain, tokenizer_of
from ..compress.slicing import count_params
from ..compress.steps import StepData
from ..data.sources import DataOptions
from ..models import mc_sample_probs
from ..models.eval_mode import frozen_call
from ..training import Checkpoint, save_checkpoint
from ..training.checkpoint import TOKENIZER_FILE
from .cache import length_buckets

__all__ = ["StudentOptions", "TextStudent", "build_text_student", "student_options_from", "label_ids",
           "STUDENT_FILE", "STUDENT_OOD_FEATURES", "DEPLOY_DIR", "with_ood_features"]

STUDENT_FILE = "text_student.json"
#: the student's density features (a pruned encoder has no pretrained copies of its layers)
STUDENT_OOD_FEATURES = ("none", "frozen_avg")
#: OUT/<DEPLOY_DIR>: the bundled student as a checkpoint (+ tokenizer.json), density features included
DEPLOY_DIR = "student"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class StudentOptions:
    """The transfer set (a text recipe's ``[train]`` table, read strictly); the teacher's samples per
    phrase are the ``distill`` step's ``teacher_samples``."""

    transfer: int = 0            # training phrases labelled by the teacher (a random N; 0 = all)
    augment_copies: int = 0      # augmented copies per transfer phrase (edgeuq.text.augment), teacher-labelled
    p_mask: float = 0.1
    p_ngram: float = 0.25
    val: int = 0                 # validation phrases (a random N; 0 = all): the distill step's validation
    seed: int = 0
    #: what the bundle's trunk emits beside the classifier features for the density score:
    #: ``none``, or ``frozen_avg`` = the token means of *every* student layer averaged (the student's
    #: own Avg-Avg feature, Chen et al. 2022; the trunk option ``frozen_avg`` with ``frozen_layers`` =
    #: depth). The head reads the classifier features only, so predictions do not change.
    ood_features: str = "none"

    def __post_init__(self) -> None:
        for name in ("transfer", "augment_copies", "val", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"text student option {name} must be an integer >= 0, got {v!r}")
        if self.ood_features not in STUDENT_OOD_FEATURES:
            raise ValueError(f"text student option ood_features must be one of {list(STUDENT_OOD_FEATURES)}, "
                             f"got {self.ood_features!r}")
        for name in ("p_mask", "p_ngram"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"text student option {name} must lie in [0, 1], got {v!r}")


def student_options_from(table: Mapping[str, Any], where: str = "train") -> StudentOptions:
    known = {f.name for f in dataclasses.fields(StudentOptions)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown text student option; known: {sorted(known)}")
    return StudentOptions(**dict(table))


@dataclass(frozen=True)
class TextStudent:
    """What :func:`build_text_student` made: the last checkpoint, the bundle and the chain's records."""

    checkpoint: Checkpoint
    bundle: Path
    chain: ChainResult
    summary: Mapping[str, Any]


@torch.no_grad()
def label_ids(model: torch.nn.Module, ids: np.ndarray, samples: int, seed: int = 0, chunk: int = 128) -> np.ndarray:
    """(S, N, C) sample probabilities of a token model on padded ids, in chunks of similar length
    trimmed to their longest row (the padding mask makes the trim exact), noise from the runtime's
    samplers seeded by ``seed``."""
    ids = np.asarray(ids, dtype=np.int64)
    lengths = (ids != int(model.cfg.trunk_options.pad_token_id)).sum(1)
    rng = np.random.default_rng(seed)
    out = None
    model.eval()
    for idx in length_buckets(lengths, chunk, None):
        x = torch.from_numpy(np.ascontiguousarray(ids[idx, :max(1, int(lengths[idx].max()))]))
        p = mc_sample_probs(model, x, samples, rng=rng).numpy()
        if out is None:
            out = np.zeros((samples, len(ids), p.shape[-1]), np.float32)
        out[:, idx] = p
    return out


def with_ood_features(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """``model`` (a ``bert``-trunk student) whose trunk also emits ``kind`` density features
    (:data:`STUDENT_OOD_FEATURES`; ``frozen_avg``: the mean over all its layers), same weights;
    ``model`` itself for ``none``."""
    from ..models import build_model

    if kind == "none":
        return model
    if kind not in STUDENT_OOD_FEATURES:
        raise ValueError(f"ood_features must be one of {list(STUDENT_OOD_FEATURES)}, got {kind!r}")
    cfg = model.cfg
    out = build_model(dataclasses.replace(cfg, trunk_options=dataclasses.replace(
        cfg.trunk_options, density_features=kind, frozen_layers=int(cfg.depth))))
    out.load_state_dict(model.state_dict())
    return out.eval()


def _teacher_hidden(model: torch.nn.Module) -> Callable[[torch.Tensor], Sequence[torch.Tensor]]:
    """ids -> the teacher's hidden states (eval mode, no gradient)."""
    return frozen_call(model, lambda ids: model.hidden_states(ids)[0])


def _teacher_density(teacher: Any, weight: float,
                     pretrained: Optional[PathLike] = None) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """ids -> the teacher's density feature (its bundles' density columns: e.g. the pretrained
    encoder's Avg-Avg); None when no ``distill`` step matches it (``weight`` 0) or the teacher has none."""
    if not weight > 0 or str(teacher.options.get("ood_features", "none")) == "none":
        return None
    model = teacher.load_density_model(pretrained=pretrained)
    return frozen_call(model, model.density_feature)


def _density_weight(chain: Sequence[Any]) -> float:
    """The largest ``density_weight`` a step of ``chain`` declares (0: none matches the density feature)."""
    return max((float(getattr(s.options, "density_weight", 0.0)) for s in chain), default=0.0)


def _teacher_checkpoint(teacher: Any, model: torch.nn.Module, tok: WordPieceTokenizer, out: Path) -> Checkpoint:
    where = out / "teacher"
    key = digest_of("text_student_teacher", teacher.digest, model.cfg.to_dict())
    hit = cached(Checkpoint, where, key)
    if hit is None:
        hit = save_checkpoint(model, where, tuple(teacher.class_names), 1.0, "none",
                              metrics={"text_teacher": str(teacher.directory), "teacher_digest": teacher.digest},
                              inputs=key)
    if not (where / TOKENIZER_FILE).is_file():
        tok.save(where / TOKENIZER_FILE)
    return hit


def _splits(teacher: Any, train: Optional[PathLike], val: Optional[PathLike]):
    """The teacher's data split again (same files, held-out share and seed), ``train``/``val`` files
    replacing its recorded ones when given."""
    from .datasets import text_splits

    src, d, o = teacher.data.get("splits", {}), teacher.data, teacher.options

    def recorded(name: str) -> Optional[Path]:
        rec = src.get(name, {})
        return Path(rec["path"]) if isinstance(rec, Mapping) and "path" in rec else None

    train_path = Path(train) if train else recorded("train")
    if train_path is None or not train_path.is_file():
        raise FileNotFoundError(f"text student: no training file (the teacher recorded {recorded('train')}); "
                                f"pass --train")
    val_path = Path(val) if val else recorded("val")
    test_path = recorded("test")
    opts = DataOptions(text_column=d.get("text_column"), label_column=d.get("label_column"),
                       label_map=dict(d.get("label_map") or {}))
    return text_splits(train_path, val_path, test_path if test_path and test_path.is_file() else None, (),
                       tuple(teacher.class_names), opts, float(o.get("held_out", 0.1)), int(o.get("seed", 0)))


def _rows(n: int, limit: int, seed: int) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def build_text_student(teacher_dir: PathLike, out: PathLike, recipe: Union[str, Path, Recipe] = "text-student", *,
                       steps: Optional[Sequence[str]] = None, overrides: Sequence[Tuple[str, str, Any]] = (),
                       options: Optional[StudentOptions] = None, train: Optional[PathLike] = None,
                       val: Optional[PathLike] = None, log: Callable[[str], None] = print,
                       progress: bool = False, pretrained: Optional[PathLike] = None) -> TextStudent:
    """Run the recipe's compression chain over the text teacher in ``teacher_dir`` and bundle the
    student (module docstring). ``steps`` / ``overrides``: as ``edgeuq compress --steps / --option``.
    ``pretrained``: the encoder the teacher was fine-tuned from (default the packaged one), read only
    when a ``distill`` step matches the teacher's density feature (``density_weight`` > 0)."""
    from .augment import AugmentConfig, augment_texts
    from .export import export_text_bundle
    from .pipeline import load_text_teacher
    from .recipe import text_recipe

    out = Path(out)
    rec = text_recipe(recipe if isinstance(recipe, Recipe) else get_recipe(recipe))
    opts = options or student_options_from(rec.train, f"recipe {rec.name} [train]")
    chain = chain_from_table(chain_table(rec.compress, steps, overrides),
                             where=f"compress (recipe {rec.name}{' + steps/options' if steps or overrides else ''})")
    if not chain:
        raise ValueError(f"recipe {rec.name} declares no [[compress.steps]] and no steps were given")
    teacher = load_text_teacher(teacher_dir)
    model = teacher.load_model()
    tok = WordPieceTokenizer.load(teacher.file_path(TOKENIZER_FILE))
    splits = _splits(teacher, train, val)
    tr_rows = _rows(len(splits.train), opts.transfer, opts.seed)
    texts = [splits.train.texts[i] for i in tr_rows]
    y = np.asarray(splits.train.y)[tr_rows]
    if opts.augment_copies:
        extra = augment_texts(texts, AugmentConfig(copies=opts.augment_copies, p_mask=opts.p_mask,
                                                   p_ngram=opts.p_ngram, seed=opts.seed))
        texts, y = texts + list(extra), np.concatenate([y, np.full(len(extra), -1, np.int64)])
    va_rows = _rows(len(splits.val), opts.val, opts.seed + 1)
    va_texts = [splits.val.texts[i] for i in va_rows]
    log(f"text student: transfer set {len(tr_rows)} training phrases + {len(texts) - len(tr_rows)} augmented "
        f"copies, {len(va_texts)} validation phrases; chain {[s.name for s in chain]}")
    x, x_val = tok.encode_batch(texts), tok.encode_batch(va_texts)
    teacher_ck = _teacher_checkpoint(teacher, model, tok, out)
    data = StepData(x=x, y=y, x_val=x_val, y_val=np.asarray(splits.val.y)[va_rows],
                    teacher=lambda ids, s, seed: label_ids(model, ids, s, seed), tokenizer=tok,
                    teacher_hidden=_teacher_hidden(model),
                    teacher_density=_teacher_density(teacher, _density_weight(chain), pretrained),
                    teacher_info={"teacher": str(teacher.directory), "teacher_digest": teacher.digest},
                    progress=progress, log=log)
    res = run_chain(teacher_ck, chain, data, out / "chain", data_key(data, teacher.digest), progress=progress,
                    log=log)
    final = res.checkpoint
    student_tok = tokenizer_of(final)
    student = with_ood_features(final.load_model().eval(), opts.ood_features)
    deploy = final
    if opts.ood_features != "none":
        # the bundled network as a checkpoint of its own (what a board compile reads)
        deploy = save_checkpoint(student, out / DEPLOY_DIR, tuple(teacher.class_names), 1.0, "none",
                                 metrics={"from": str(final.directory), "ood_features": opts.ood_features},
                                 inputs=digest_of("text_student_deploy", final.digest, opts.ood_features))
        student_tok.save(out / DEPLOY_DIR / TOKENIZER_FILE)
    samples = int(rec.uq.get("samples", 32))
    bundle = export_text_bundle(student, student_tok, out / "bundle", tuple(teacher.class_names),
                                str(rec.bundle.get("model_name", rec.name)),
                                str(rec.bundle.get("model_version", "1")), default_samples=samples,
                                check_texts=list(splits.test.texts[:8]),
                                metadata={"stage": "text_student", "teacher": str(teacher.directory),
                                          "teacher_digest": teacher.digest, "recipe": rec.name,
                                          "steps": [s.name for s in chain]},
                                overwrite=True)
    params = count_params(student)
    summary = {"teacher": str(teacher.directory), "teacher_digest": teacher.digest, "recipe": rec.name,
               "options": dataclasses.asdict(opts), "transfer_rows": int(len(x)), "val_rows": int(len(x_val)),
               # which rows of the validation split (file order) the distill step saw: a later calibration
               # on the same file can leave them out
               "val_split_rows": int(len(splits.val)), "val_row_index": [int(i) for i in va_rows],
               "data": dict(splits.sources), "steps": [dict(r) for r in res.records],
               "checkpoint": str(final.directory), "deploy_checkpoint": str(deploy.directory),
               "bundle": str(bundle.root), "params": params,
               "teacher_params": count_params(model),
               "vocab": int(student_tok.vocab_size), "samples": samples}
    atomic_write(out / STUDENT_FILE, json.dumps(summary, indent=1, default=str).encode())
    log(f"text student -> {bundle.root} ({params / 1e6:.2f}M parameters, vocabulary {student_tok.vocab_size}; "
        f"teacher {summary['teacher_params'] / 1e6:.2f}M)")
    return TextStudent(final, Path(bundle.root), res, summary)
