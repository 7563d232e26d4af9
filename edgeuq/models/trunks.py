"""The trunks a :class:`~edgeuq.models.config.ModelConfig` can name (``ModelConfig.trunk``).

A trunk is the deterministic part of the network that turns the input into the features the
head sees; the head (and any stochastic layer) is built by the scheme
(:class:`~edgeuq.models.transformer.ClassifierHead`), so every trunk gets every head-level scheme
with the same :class:`~edgeuq.models.layers.StochasticLayer` noise inputs, and every trunk is
built, checkpointed, exported, bundled and compressed by the same stages
(:func:`~edgeuq.models.transformer.build_model` -> ``Scheme.build_model`` -> ``Trunk.build``).

Built in:

``signal`` (default)
    :class:`~edgeuq.models.transformer.SignalTransformer`: conv / linear patch or token
    embedding and pre-norm blocks, whose layers the scheme builds (stochastic blocks allowed).
``bert``
    :class:`BertTransformer`: a pretrained post-norm BERT encoder (:mod:`edgeuq.models.bert`,
    transformers' parameter names, so a MiniLM/BERT state dict loads strictly into
    ``model.encoder``) + masked mean pooling, then the scheme's head. Its widths are the
    config's ``d_model`` (hidden size), ``heads``, ``depth`` (layers), ``ffn`` (intermediate
    size) and ``vocab_size``; ``embed = "token"``, ``patch = 1``, ``input_length`` = the
    tokenizer's ``max_length``; :class:`BertOptions` holds the rest. Only the head is
    stochastic (``stochastic_blocks = []``), and a scheme that builds layers inside the trunk
    (``Scheme.trunk_layers``: spectral norm, ensembles) is refused.

A new trunk is one :class:`Trunk` subclass registered with ``@register_trunk("name")`` here or
in another distribution (entry point group ``edgeuq.trunk``).
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, final

import torch
from torch import nn

from ..registry import Registry
from .bert import BertConfig, BertEncoder, key_bias_from_mask, masked_mean_pool
from .layers import NoiseDict, apply_layer
from .scheme_slot import SCHEMES
from .transformer import ClassifierHead, DeployableModel, SignalTransformer

if TYPE_CHECKING:  # pragma: no cover
    from .config import BlockShape

__all__ = ["Trunk", "TRUNKS", "register_trunk", "get_trunk", "BertOptions", "BertTransformer",
           "DENSITY_FEATURES", "bert_config_of", "load_head_state", "MaskableBlock",
           "with_density_features"]


def _check_trunk_name(name: str, value: Any = None) -> None:
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"trunk names are lower-case identifiers, got {name!r}")


#: name -> registered trunk instance (one per Trunk subclass); entry point group ``edgeuq.trunk``
TRUNKS: Registry[Any] = Registry("trunk", instantiate=True, check=_check_trunk_name)


#: class decorator: register one instance of the :class:`Trunk` subclass under a name
register_trunk = TRUNKS.register
#: the registered trunk of a name (a LookupError, also a ValueError, names the known ones)
get_trunk = TRUNKS.get


@final
@dataclass(frozen=True)
class NoTrunkOptions:
    """Options of a trunk that has none."""


class Trunk(ABC):
    """A trunk plug-in: its options dataclass, its validation of a config and its model class."""

    name: ClassVar[str] = ""
    options_type: ClassVar[type] = NoTrunkOptions
    #: True for the trunk of configs written before trunks existed: ``to_dict`` omits ``trunk``
    #: (and its empty options) then, so those configs and their checkpoint digests are unchanged
    implicit: ClassVar[bool] = False
    def maskable_blocks(self, model: nn.Module) -> List["MaskableBlock"]:
        """The encoder blocks whose heads and FFN neurons Kwon et al.'s pruning
        (:mod:`edgeuq.compress.kwon`) masks, tunes and slices, in network order; a trunk without
        them refuses (the default)."""
        raise ValueError(f"trunk {self.name!r} has no maskable attention/FFN blocks (Kwon et al. pruning)")

    def sliced_config(self, cfg: Any, kept: Sequence[int], shapes: Sequence[BlockShape]) -> Any:
        """The config of ``cfg``'s model keeping blocks ``kept`` (in order) with widths ``shapes``
        (``ModelConfig.blocks``); the default refuses (see :meth:`maskable_blocks`)."""
        raise ValueError(f"trunk {self.name!r} cannot be sliced (no maskable blocks)")

    def real_positions(self, model: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, T) bool: the block positions of input ``x`` that carry data (padding excluded),
        or None when every position does (the default). Mask tuning fits only these rows."""
        return None

    def options_from(self, value: Any) -> Any:
        """``value`` (None, a table or an instance) as :attr:`options_type`; unknown keys are refused."""
        if value is None:
            return self.options_type()
        if isinstance(value, self.options_type):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(self.options_type)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"invalid ModelConfig: unknown trunk_options {unknown} for trunk {self.name!r}; "
                                 f"known: {sorted(known)}")
            return self.options_type(**value)
        raise ValueError(f"invalid ModelConfig: trunk_options of trunk {self.name!r} must be a table "
                         f"({self.options_type.__name__}), got {type(value).__name__}")

    def options_to_dict(self, options: Any) -> Dict[str, Any]:
        return dataclasses.asdict(options)

    def problems(self, cfg: Any) -> List[str]:
        """What is wrong with ``cfg`` for this trunk (empty when nothing)."""
        return []

    @abstractmethod
    def build(self, cfg: Any) -> DeployableModel:
        """The model of ``cfg`` (its head built by the scheme)."""


@final
@dataclass(frozen=True, eq=False)
class MaskableBlock:
    """One encoder block as Kwon et al.'s pruning sees it (:meth:`Trunk.maskable_blocks`).

    Names are relative to ``prefix`` (the block's module path / state-dict prefix, with the dot).
    ``head_rows``: the linears whose output rows are head-major (``parts`` > 1: a fused
    projection of ``parts`` head-major stacks, e.g. q|k|v); ``head_proj``: the linear reading the
    concatenated head outputs (a head mask scales its input columns); ``ffn_in`` / ``ffn_proj``:
    the FFN's first linear (one row per neuron) and the linear reading the neurons (a neuron mask
    scales its input). ``attn_sum`` / ``ffn_sum``: where the residual stream plus the output of
    ``head_proj`` / ``ffn_proj`` is seen, as (module name, ``"input"`` or ``"output"``; name ""
    = the block): a pre-norm block's next norm input and its output; a post-norm (BERT) layer's
    LayerNorm inputs. Mask tuning (Kwon's step 3) fits the kept scales so these sums match the
    unpruned model's."""

    module: nn.Module
    prefix: str
    heads: int
    head_dim: int
    ffn: int
    head_rows: Tuple[Tuple[str, int], ...]
    head_proj: str
    ffn_in: str
    ffn_proj: str
    attn_sum: Tuple[str, str]
    ffn_sum: Tuple[str, str]

    def sub(self, name: str) -> nn.Module:
        return self.module.get_submodule(name) if name else self.module

    def widths(self) -> Dict[str, int]:
        return {"heads": self.heads, "head_dim": self.head_dim, "ffn": self.ffn}


def _check_linear(blocks: Sequence[MaskableBlock]) -> List[MaskableBlock]:
    """Refuse blocks whose masked linears are not plain ``nn.Linear`` (factorised, variational, HSA)."""
    problems = []
    for b in blocks:
        for name in (*(n for n, _ in b.head_rows), b.head_proj, b.ffn_in, b.ffn_proj):
            try:
                m = b.module.get_submodule(name)
            except AttributeError:
                m = None
            if type(m) is not nn.Linear:
                problems.append(f"{b.prefix}{name} is {type(m).__name__}")
    if problems:
        raise ValueError("structured pruning needs plain nn.Linear attention and FFN layers (mc_dropout, ensemble "
                         "members, laplace; dense, not factorised); " + "; ".join(problems))
    return list(blocks)


@final
@register_trunk("signal")
class SignalTrunk(Trunk):
    implicit = True

    def build(self, cfg: Any) -> DeployableModel:
        return SignalTransformer(cfg)

    def maskable_blocks(self, model: nn.Module) -> List[MaskableBlock]:
        """The pre-norm blocks: q|k|v fused in ``attn.qkv``, ``attn.proj``, ``fc1`` -> ``fc2``."""
        out = []
        for i, b in enumerate(model.blocks):
            attn, fc2 = getattr(b, "attn", None), getattr(b, "fc2", None)
            out.append(MaskableBlock(b, f"blocks.{i}.", int(getattr(attn, "heads", 0)),
                                     int(getattr(attn, "head_dim", 0)), int(getattr(fc2, "in_features", 0)),
                                     (("attn.qkv", 3),), "attn.proj", "fc1", "fc2", ("norm2", "input"), ("", "output")))
        return _check_linear(out)

    def sliced_config(self, cfg: Any, kept: Sequence[int], shapes: Sequence[BlockShape]) -> Any:
        kept = [int(i) for i in kept]
        if kept == list(range(cfg.depth)):
            return dataclasses.replace(cfg, blocks=tuple(shapes))
        if cfg.stochastic_blocks:
            raise ValueError(f"removing blocks of a signal model with stochastic blocks {list(cfg.stochastic_blocks)} "
                             f"is not supported (their noise inputs are named by block): keep every block")
        return dataclasses.replace(cfg, depth=len(kept), blocks=tuple(shapes))


#: what a BERT trunk may emit beside its classifier features, for the bundle's density score
#: (``none``; ``frozen_avg``: the token mean averaged over layers 1..frozen_layers; ``avgavg``:
#: over all layers of the pretrained encoder, Chen et al. 2022; ``pretrained``: the pretrained
#: encoder's last layer, Uppaal et al. 2023)
DENSITY_FEATURES = ("none", "frozen_avg", "avgavg", "pretrained")


@final
@dataclass(frozen=True)
class BertOptions:
    """The BERT trunk's fields that are not widths (``[model.trunk_options]``).

    ``density_features`` / ``frozen_layers``: the trunk also emits features of the *pretrained*
    encoder for the bundle's density score, ``(B, 2d)`` = [classifier features | density
    features]; layers ``0..frozen_layers-1`` are shared with the fine-tuned encoder (they stay
    pretrained), and for ``avgavg`` / ``pretrained`` the pretrained copies of the layers above run
    beside the fine-tuned ones (``model.pretrained_top``). The head reads the first d columns;
    :attr:`BertTransformer.density_columns` says where the others are.

    ``embedding_rank`` > 0: the word table is stored factorised, (V, r) @ (r, d)
    (:class:`~edgeuq.models.bert.FactorisedEmbeddings`).

    ``teacher_layers``: the provenance of a student cut from a teacher: layer ``j`` of this
    encoder started as the teacher's layer ``teacher_layers[j]`` (empty: layer ``j`` is layer
    ``j``). The ``distill`` step's hidden-state matching maps each layer to that teacher layer;
    written by a step that keeps a subset of layers (omitted from the config dict when empty)."""

    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    density_features: str = "none"
    frozen_layers: int = 0
    embedding_rank: int = 0
    teacher_layers: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.teacher_layers, (list, tuple)):   # TOML / JSON arrays arrive as lists
            object.__setattr__(self, "teacher_layers", tuple(self.teacher_layers))


def _int_problem(name: str, value: Any, low: int) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return f"trunk_options.{name} must be an integer >= {low}, got {value!r}"
    return None


@final
@register_trunk("bert")
class BertTrunk(Trunk):
    options_type = BertOptions

    def problems(self, cfg: Any) -> List[str]:
        o: BertOptions = cfg.trunk_options
        problems = [p for p in (_int_problem("max_positions", o.max_positions, 1),
                                _int_problem("type_vocab_size", o.type_vocab_size, 1),
                                _int_problem("pad_token_id", o.pad_token_id, 0),
                                _int_problem("frozen_layers", o.frozen_layers, 0),
                                _int_problem("embedding_rank", o.embedding_rank, 0)) if p]
        if isinstance(o.layer_norm_eps, bool) or not isinstance(o.layer_norm_eps, (int, float)) \
                or not o.layer_norm_eps > 0:
            problems.append(f"trunk_options.layer_norm_eps must be > 0, got {o.layer_norm_eps!r}")
        tl = o.teacher_layers
        if not isinstance(tl, tuple) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in tl) \
                or list(tl) != sorted(set(tl)):
            problems.append(f"trunk_options.teacher_layers must be distinct teacher layer indices >= 0 in order, "
                            f"got {tl!r}")
        if o.density_features not in DENSITY_FEATURES:
            problems.append(f"trunk_options.density_features must be one of {list(DENSITY_FEATURES)}, "
                            f"got {o.density_features!r}")
        if not problems:
            if o.teacher_layers and len(o.teacher_layers) != cfg.depth:
                problems.append(f"trunk_options.teacher_layers names {len(o.teacher_layers)} layers for depth "
                                f"{cfg.depth}")
            if o.frozen_layers > cfg.depth:
                problems.append(f"trunk_options.frozen_layers ({o.frozen_layers}) exceeds depth ({cfg.depth})")
            if o.density_features == "frozen_avg" and o.frozen_layers < 1:
                problems.append("trunk_options.density_features 'frozen_avg' needs frozen_layers >= 1")
            if cfg.input_length > o.max_positions:
                problems.append(f"input_length ({cfg.input_length}) exceeds trunk_options.max_positions "
                                f"({o.max_positions})")
        if cfg.embed != "token":
            problems.append(f"trunk 'bert' reads token ids: set embed = 'token', got {cfg.embed!r}")
        if cfg.stochastic_blocks:
            problems.append("trunk 'bert' is deterministic (only the head is stochastic): set stochastic_blocks = []")
        if cfg.blocks and o.density_features in ("avgavg", "pretrained"):
            problems.append("trunk 'bert' with per-layer widths (blocks, a pruned encoder) has no pretrained copies "
                            "of its layers: use density_features 'none' or 'frozen_avg'")
        if cfg.pool != "mean":
            problems.append(f"trunk 'bert' pools by the masked mean: set pool = 'mean', got {cfg.pool!r}")
        scheme = SCHEMES.get(cfg.scheme)
        if scheme.trunk_layers:
            problems.append(f"scheme {cfg.scheme!r} builds layers inside the trunk, which trunk 'bert' does not "
                            f"take from schemes (use a head scheme such as mc_dropout or laplace)")
        return problems

    def options_to_dict(self, options: Any) -> Dict[str, Any]:
        d = dataclasses.asdict(options)
        if not d["teacher_layers"]:      # configs written before the field existed keep their digests
            del d["teacher_layers"]
        else:
            d["teacher_layers"] = list(d["teacher_layers"])
        return d

    def build(self, cfg: Any) -> DeployableModel:
        return BertTransformer(cfg)

    def maskable_blocks(self, model: nn.Module) -> List[MaskableBlock]:
        """The post-norm layers of the model's :class:`~edgeuq.models.bert.BertEncoder`:
        query/key/value rows per head, ``attention.output.dense`` reads the heads,
        ``intermediate.dense`` -> ``output.dense`` the neurons; the sums are the inputs of the two
        LayerNorms (Kwon et al. tune against exactly these pre-LayerNorm outputs)."""
        out = []
        for i, layer in enumerate(model.encoder.layers):
            out.append(MaskableBlock(layer, f"encoder.encoder.layer.{i}.", int(layer.heads), int(layer.head_dim),
                                     int(layer.output.dense.in_features),
                                     (("attention.self.query", 1), ("attention.self.key", 1),
                                      ("attention.self.value", 1)),
                                     "attention.output.dense", "intermediate.dense", "output.dense",
                                     ("attention.output.LayerNorm", "input"), ("output.LayerNorm", "input")))
        return _check_linear(out)

    def real_positions(self, model: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The non-padding tokens (the padded positions' hidden states never reach the pooled output)."""
        return model.encoder.mask(x) > 0

    def sliced_config(self, cfg: Any, kept: Sequence[int], shapes: Sequence[BlockShape]) -> Any:
        """Embeddings (word, position, type) and the pooled head unchanged; ``depth`` = the layers
        kept, ``blocks`` = their widths. A model emitting density features of frozen pretrained
        layers is refused (removing or slicing those layers would change its density score)."""
        o: BertOptions = cfg.trunk_options
        if o.density_features != "none" or o.frozen_layers:
            raise ValueError(f"slicing a bert trunk with density_features {o.density_features!r} / frozen_layers "
                             f"{o.frozen_layers} is not supported (it would change the pretrained layers its density "
                             f"score reads): prune a model with density_features 'none'")
        kept = [int(i) for i in kept]
        if kept != list(range(cfg.depth)):
            # layer j of the sliced encoder started as layer kept[j] of this one, i.e. as the teacher layer
            # this one's layer kept[j] came from (hidden-state matching in distill maps layers by it)
            came_from = o.teacher_layers or tuple(range(cfg.depth))
            o = dataclasses.replace(o, teacher_layers=tuple(int(came_from[i]) for i in kept))
        return dataclasses.replace(cfg, depth=len(kept), blocks=tuple(shapes), trunk_options=o)


def bert_config_of(cfg: Any) -> BertConfig:
    """The :class:`~edgeuq.models.bert.BertConfig` of a ``bert``-trunk ModelConfig."""
    o: BertOptions = cfg.trunk_options
    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.depth,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=o.max_positions,
                      type_vocab_size=o.type_vocab_size, layer_norm_eps=o.layer_norm_eps, pad_token_id=o.pad_token_id)


@final
class BertTransformer(DeployableModel):
    """``encoder`` (all layers) + masked mean pooling = the trunk, run once; ``head`` (the
    scheme's :class:`~edgeuq.models.transformer.ClassifierHead`: drop_in -> fc1 -> GELU ->
    drop_hidden -> fc2) runs S times. The padding mask (ids != pad) is computed inside the trunk,
    so the trunk graph has the one ``tokens`` input."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        SCHEMES.get(cfg.scheme).check_model_class(type(self))
        self.cfg = cfg
        bert = bert_config_of(cfg)
        shapes = ([(b.heads, b.head_dim, b.ffn) for b in cfg.blocks] if cfg.blocks else None)
        self.encoder = BertEncoder(bert, dropout=cfg.dropout, embedding_rank=cfg.trunk_options.embedding_rank,
                                   shapes=shapes)
        self.head = ClassifierHead(cfg)
        o: BertOptions = cfg.trunk_options
        self.frozen_layers = int(o.frozen_layers)
        extra = cfg.depth - o.frozen_layers if o.density_features in ("avgavg", "pretrained") else 0
        #: pretrained copies of the layers above ``frozen_layers`` (``avgavg`` / ``pretrained`` density)
        self.pretrained_top = nn.ModuleList(copy.deepcopy(self.encoder.layers[o.frozen_layers + i])
                                            for i in range(extra))

    # -- what the text stages read ----------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def feature_dim(self) -> int:
        """Width of the classifier features (the head's input)."""
        return self.cfg.d_model

    @property
    def density_features(self) -> str:
        return self.cfg.trunk_options.density_features

    @property
    def density_columns(self) -> Optional[Tuple[int, int]]:
        """Columns [A, B) of the trunk output that hold the density features (None: none)."""
        d = self.cfg.d_model
        return None if self.density_features == "none" else (d, 2 * d)

    @property
    def last_layer(self) -> nn.Module:
        """The head's output layer (``head.fc2``; a fitted posterior lives there)."""
        return self.head.fc2

    def head_parameters(self) -> List[nn.Parameter]:
        """The head's trained parameters (fine-tuning's head group)."""
        return list(self.head.parameters())

    @torch.no_grad()
    def install_pretrained_top(self, pretrained: BertEncoder) -> None:
        """Copy the pretrained encoder's layers ``frozen_layers..`` into :attr:`pretrained_top` (the
        ``avgavg`` / ``pretrained`` density features); the layers below must be the pretrained ones."""
        for a, b in ((self.encoder.embeddings, pretrained.embeddings),
                     *zip(list(self.encoder.layers)[:self.frozen_layers], pretrained.layers)):
            for (name, p), q in zip(a.named_parameters(), b.parameters()):
                if p.shape != q.shape or not torch.equal(p, q):
                    raise ValueError(f"layers below frozen_layers={self.frozen_layers} must be the pretrained ones; "
                                     f"{name} differs")
        for mine, theirs in zip(self.pretrained_top, list(pretrained.layers)[self.frozen_layers:]):
            mine.load_state_dict(theirs.state_dict())

    def last_layer_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Input of ``head.fc2`` in the deterministic pass (posterior fitting)."""
        h = self.head
        return h.act(apply_layer(h.fc1, h.drop_in(feats, None), None))

    # -- deployment split ---------------------------------------------------------------
    def trunk_from_hidden(self, h: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Classifier features (B, d) from the hidden states entering layer ``start`` (a cache of
        the frozen layers below it)."""
        return masked_mean_pool(self.encoder.run_layers(h, mask, start), mask)

    def hidden_states(self, ids: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """([embedding output, output of layer 0, ..., of layer L-1] each (B, T, d), mask (B, T)):
        what hidden-state distillation matches (transformers' ``output_hidden_states`` order).
        The last one's masked mean is :meth:`trunk`'s output when the trunk emits no density
        features."""
        enc = self.encoder
        mask = enc.mask(ids)
        bias = key_bias_from_mask(mask)
        h = enc.embeddings(ids)
        out = [h]
        for layer in enc.layers:
            h = layer(h, bias)
            out.append(h)
        return out, mask

    def real_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Non-padding tokens per row (B,) (length-bucketed batching, edgeuq.compress.distill)."""
        return (ids != self.cfg.trunk_options.pad_token_id).sum(1)

    def trim_padding(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` cut to its longest real row (at least one column): the padding mask makes the outputs
        the same (padded keys get zero attention, pooling skips them), the work is that of the real tokens."""
        real = (ids != self.cfg.trunk_options.pad_token_id).any(0).nonzero()
        return ids[:, :max(1, int(real.max()) + 1 if len(real) else 1)]

    def features_from_hidden(self, hidden: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """:meth:`trunk`'s output from :meth:`hidden_states` (a trunk without density features)."""
        if self.density_columns is not None:
            raise ValueError("features_from_hidden: this trunk also emits density features; use trunk()")
        return masked_mean_pool(hidden[-1], mask)

    @property
    def teacher_layers(self) -> Tuple[int, ...]:
        """The teacher layer each encoder layer started as (:class:`BertOptions`)."""
        return tuple(self.cfg.trunk_options.teacher_layers) or tuple(range(self.cfg.depth))

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        mask = enc.mask(ids)
        if self.density_columns is None:
            return masked_mean_pool(enc.run_layers(enc.embeddings(ids), mask), mask)
        return with_density_features(enc, self.pretrained_top, self.frozen_layers, self.density_features, ids)

    def density_feature(self, ids: torch.Tensor) -> torch.Tensor:
        """The density columns of :meth:`trunk` alone (B, d), without running the fine-tuned layers
        above ``frozen_layers`` (what the ``distill`` step's ``density_weight`` matches a student to)."""
        if self.density_columns is None:
            raise ValueError("density_feature: this trunk emits no density features (density_features 'none')")
        return with_density_features(self.encoder, self.pretrained_top, self.frozen_layers, self.density_features,
                                     ids, tuned=False)

    def head_forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        if self.density_columns is not None:
            features = features[:, :self.cfg.d_model]
        logits = self.head(features, noise)
        if self.cfg.temperature != 1.0:
            logits = logits / self.cfg.temperature
        return logits

    def feature_shape(self) -> Tuple[int, ...]:
        return (self.cfg.d_model if self.density_columns is None else 2 * self.cfg.d_model,)


def with_density_features(encoder: BertEncoder, pretrained_top: Sequence[nn.Module], frozen_layers: int, kind: str,
                          ids: torch.Tensor, tuned: bool = True) -> torch.Tensor:
    """[fine-tuned pooled features | density features] (B, 2d) (:class:`BertOptions`): ``encoder``'s
    layers ``0..frozen_layers-1`` are the pretrained ones; ``pretrained_top`` continues them (empty
    for ``frozen_avg``). ``frozen_avg`` / ``avgavg`` average the token means of the pretrained
    layers run, ``pretrained`` takes the last one's. ``tuned=False``: the density features alone
    (B, d); the fine-tuned layers above ``frozen_layers`` do not run."""
    mask = encoder.mask(ids)
    bias = key_bias_from_mask(mask)
    h = encoder.embeddings(ids)
    pooled = []
    for layer in list(encoder.layers)[:frozen_layers]:
        h = layer(h, bias)
        pooled.append(masked_mean_pool(h, mask))
    below = h
    for layer in pretrained_top:
        h = layer(h, bias)
        pooled.append(masked_mean_pool(h, mask))
    density = pooled[-1] if kind == "pretrained" else torch.stack(pooled, 0).mean(0)
    if not tuned:
        return density
    for layer in list(encoder.layers)[frozen_layers:]:
        below = layer(below, bias)
    return torch.cat([masked_mean_pool(below, mask), density], dim=-1)


def load_head_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` strictly, except for the last layer's non-parameter tensors
    (a fitted posterior's factors): a model of another head scheme on the same weights (the MAP
    weights of a Laplace head, or an MC-dropout head from a Laplace model) loads them this way.
    Every parameter must be there with its shape; anything else missing or left over is an error."""
    own = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    last = "head.fc2."
    unexpected = sorted(k for k in state if k not in own and not (k.startswith(last) and k not in params))
    missing = sorted(k for k in own if k not in state and (k in params or not k.startswith(last)))
    bad = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    if unexpected or missing or bad:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"other shapes {bad[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
