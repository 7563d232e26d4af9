"""Model configuration: architecture (per block), the stochastic scheme and its options."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Tuple, final

from ..schemes.registry import get_scheme
from ..settings import settings_from_dict
from .trunks import get_trunk

__all__ = ["ModelConfig", "BlockShape", "bert_model_config", "BLOCK_DROPOUT_POSITIONS", "HEAD_DROPOUT_POSITIONS"]

#: Dropout sites of an encoder block; ``attn_probs`` drops attention weights (opt-in).
BLOCK_DROPOUT_POSITIONS = ("attn_probs", "attn_out", "ffn_hidden", "ffn_out")
HEAD_DROPOUT_POSITIONS = ("head_in", "head_hidden")
_TUPLE_FIELDS = ("block_dropout_positions", "head_dropout_positions")


@final
@dataclass(frozen=True)
class BlockShape:
    """Widths of one encoder block: attention ``heads`` x ``head_dim`` and the FFN's hidden width."""

    heads: int
    head_dim: int
    ffn: int

    def __post_init__(self) -> None:
        for name in ("heads", "head_dim", "ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockShape.{name} must be an integer >= 1, got {value!r}")

    @property
    def inner(self) -> int:
        """Width of the concatenated head outputs (heads * head_dim)."""
        return self.heads * self.head_dim

    @classmethod
    def from_value(cls, value: Any) -> "BlockShape":
        if isinstance(value, BlockShape):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"heads", "head_dim", "ffn"}
            missing = {"heads", "head_dim", "ffn"} - set(value)
            if unknown or missing:
                raise ValueError(f"a block needs exactly heads, head_dim and ffn; unknown {sorted(unknown)}, "
                                 f"missing {sorted(missing)}")
            return cls(**value)
        raise ValueError(f"a block is a table with heads, head_dim and ffn, got {value!r}")


@final
@dataclass(frozen=True)
class ModelConfig:
    """A 1-D signal (or token) transformer classifier.

    ``stochastic_blocks`` lists the encoder blocks that are stochastic at inference;
    ``stochastic_head`` does the same for the classifier head. The deterministic
    trunk ends at the first stochastic layer: everything before it runs once per
    input, everything after it S times.

    * ``scheme``: a registered stochastic scheme (``edgeuq.schemes``; built in:
      ``mc_dropout``, ``variational``, ``hsa``, ``ensemble``, ``laplace``) and
      ``scheme_options``, that scheme's own frozen options dataclass (a table
      ``[model.scheme_options]`` in recipes; defaults when omitted). The scheme
      builds the stochastic layers at each site and validates the config.
    * ``blocks``: per-block widths (:class:`BlockShape`), one per block; empty =
      every block has ``heads`` heads of ``d_model // heads`` and FFN width ``ffn``.
      :meth:`block_shape` gives the effective shape of block i.
    * ``block_dropout_positions`` / ``head_dropout_positions``: which dropout
      sites of a stochastic block / the head are MC dropout (schemes that use MC
      dropout there); the others are ordinary training-time dropout.
      ``attn_probs`` (dropout on attention weights) exists only when listed.
    * ``temperature``: logits are divided by it inside the head graph
      (post-hoc temperature scaling; 1 adds no operation).
    * ``embed="token"`` with ``vocab_size``: a text model on int64 token ids
      (``patch`` 1, id 0 = padding, masked in attention and pooling).
    * ``pool``: how token features become one vector, ``mean`` or ``max``.
    * ``ranks``: linear layers stored factorised, ``(module path, rank)`` pairs (a table
      ``[model.ranks]`` of ``"blocks.0.fc1" = 8`` in recipes and checkpoints; sorted by path).
      Each names an ``nn.Linear`` of the built model, which becomes a rank-r
      :class:`~edgeuq.models.layers.LowRankLinear` (what the ``lowrank`` compression step
      writes). Empty (the default) = every layer dense; omitted from :meth:`to_dict` then.
    * ``stochastic_tokens``: 0, or the number of tokens the stochastic blocks see: the trunk
      average-pools its token features (groups of ``tokens // stochastic_tokens`` neighbours)
      before the first stochastic block, so the part that runs S times costs that much less.
    * ``trunk``: a registered trunk (:data:`edgeuq.models.trunks.TRUNKS`): ``signal`` (the
      default: the transformer above) or ``bert`` (a pretrained post-norm BERT encoder whose widths
      are ``d_model``/``heads``/``depth``/``ffn``/``vocab_size``, ``embed = "token"``, masked mean
      pooling; only the head is stochastic), with ``trunk_options`` its own frozen options
      dataclass (``[model.trunk_options]``; unknown keys refused). Omitted from :meth:`to_dict`
      when ``signal``.
    * ``head_hidden``: width of the head's hidden layer (0 = ``d_model``); ``head_dropout``: the
      head's dropout rate (None = ``dropout``). Both omitted from :meth:`to_dict` at their defaults.
    """

    input_length: int
    num_classes: int
    patch: int = 32
    d_model: int = 64
    heads: int = 4
    depth: int = 3
    ffn: int = 128
    dropout: float = 0.1
    stochastic_blocks: Tuple[int, ...] = (2,)
    stochastic_head: bool = True
    scheme: str = "mc_dropout"
    scheme_options: Any = None
    embed: str = "conv"
    stem_channels: int = 32
    block_dropout_positions: Tuple[str, ...] = ("attn_out", "ffn_hidden", "ffn_out")
    head_dropout_positions: Tuple[str, ...] = ("head_in", "head_hidden")
    temperature: float = 1.0
    vocab_size: int = 0
    pool: str = "mean"
    blocks: Tuple[BlockShape, ...] = ()
    ranks: Tuple[Tuple[str, int], ...] = ()
    stochastic_tokens: int = 0
    trunk: str = "signal"
    trunk_options: Any = None
    head_hidden: int = 0
    head_dropout: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", _normalise_ranks(self.ranks, self.depth))
        object.__setattr__(self, "stochastic_blocks", tuple(sorted({int(b) for b in self.stochastic_blocks})))
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        if isinstance(self.blocks, (str, bytes, Mapping)):
            raise ValueError(f"invalid ModelConfig: blocks must be a list of block tables, got {self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(BlockShape.from_value(b) for b in self.blocks))
        scheme = get_scheme(self.scheme)
        object.__setattr__(self, "scheme_options", scheme.options_from(self.scheme_options))
        trunk = get_trunk(self.trunk)
        object.__setattr__(self, "trunk_options", trunk.options_from(self.trunk_options))
        problems = []
        if self.input_length <= 0 or self.patch <= 0 or self.input_length % self.patch:
            problems.append(f"input_length ({self.input_length}) must be a positive multiple of patch ({self.patch})")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if self.depth < 1 or self.ffn < 1 or self.heads < 1:
            problems.append("depth, heads and ffn must be >= 1")
        elif not self.blocks and self.d_model % self.heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.blocks and len(self.blocks) != self.depth:
            problems.append(f"blocks lists {len(self.blocks)} block shapes for depth {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        bad = [b for b in self.stochastic_blocks if not 0 <= b < self.depth]
        if bad:
            problems.append(f"stochastic_blocks {bad} out of range for depth {self.depth}")
        if self.embed not in ("conv", "linear", "token"):
            problems.append(f"unknown embed {self.embed!r}; use 'conv', 'linear' or 'token'")
        if self.embed == "conv" and self.patch % 8:
            problems.append(f"the conv patch embedding needs patch divisible by 8, got {self.patch}")
        problems += self._common_problems()
        problems += trunk.problems(self)
        problems += scheme.problems(self)
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def _common_problems(self) -> list:
        problems = []
        for name, allowed in (("block_dropout_positions", BLOCK_DROPOUT_POSITIONS),
                              ("head_dropout_positions", HEAD_DROPOUT_POSITIONS)):
            bad = sorted(set(getattr(self, name)) - set(allowed))
            if bad:
                problems.append(f"{name} has unknown entries {bad}; allowed: {list(allowed)}")
        if self.embed == "token":
            if self.vocab_size < 3:
                problems.append(f"embed='token' needs vocab_size >= 3, got {self.vocab_size}")
            if self.patch != 1:
                problems.append(f"embed='token' needs patch = 1 (one token per position), got {self.patch}")
        elif self.vocab_size:
            problems.append(f"vocab_size only applies to embed='token', not {self.embed!r}")
        st = self.stochastic_tokens
        if isinstance(st, bool) or not isinstance(st, int) or st < 0:
            problems.append(f"stochastic_tokens must be an integer >= 0, got {st!r}")
        elif st:
            if not self.stochastic_blocks:
                problems.append("stochastic_tokens needs a stochastic block (it pools the tokens they see)")
            if self.embed == "token":
                problems.append("stochastic_tokens does not apply to embed='token' (padded token ids)")
            if self.input_length % self.patch == 0 and self.tokens % st:
                problems.append(f"stochastic_tokens ({st}) must divide the token count ({self.tokens})")
        if self.pool not in ("mean", "max"):
            problems.append(f"pool must be 'mean' or 'max', got {self.pool!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        hh = self.head_hidden
        if isinstance(hh, bool) or not isinstance(hh, int) or hh < 0:
            problems.append(f"head_hidden must be an integer >= 0 (0 = d_model), got {hh!r}")
        hd = self.head_dropout
        if hd is not None and (isinstance(hd, bool) or not isinstance(hd, (int, float)) or not 0.0 <= hd < 1.0):
            problems.append(f"head_dropout must be in [0, 1) (or omitted: dropout), got {hd!r}")
        return problems

    @property
    def head_width(self) -> int:
        """Width of the head's hidden layer (``head_hidden``, or ``d_model`` when 0)."""
        return self.head_hidden or self.d_model

    @property
    def head_p(self) -> float:
        """Dropout rate of the head's dropout sites (``head_dropout``, or ``dropout``)."""
        return float(self.dropout if self.head_dropout is None else self.head_dropout)

    def block_shape(self, index: int) -> BlockShape:
        """The effective widths of block ``index`` (the uniform default when ``blocks`` is empty)."""
        if not 0 <= index < self.depth:
            raise IndexError(f"block {index} out of range for depth {self.depth}")
        if self.blocks:
            return self.blocks[index]
        return BlockShape(self.heads, self.d_model // self.heads, self.ffn)

    @property
    def tokens(self) -> int:
        return self.input_length // self.patch

    def block_tokens(self, index: int) -> int:
        """Tokens block ``index`` sees: ``stochastic_tokens`` from the first stochastic block on
        when it is set, else ``tokens``."""
        if self.stochastic_tokens and index >= self.split_index:
            return self.stochastic_tokens
        return self.tokens

    @property
    def split_index(self) -> int:
        """Index of the first stochastic block (``depth`` when only the head is)."""
        return self.stochastic_blocks[0] if self.stochastic_blocks else self.depth

    @property
    def is_stochastic(self) -> bool:
        return bool(self.stochastic_blocks) or self.stochastic_head

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stochastic_blocks"] = list(self.stochastic_blocks)
        for name in _TUPLE_FIELDS:
            d[name] = list(d[name])
        d["scheme_options"] = get_scheme(self.scheme).options_to_dict(self.scheme_options)
        d["blocks"] = [asdict(b) for b in self.blocks]
        if self.ranks:
            d["ranks"] = dict(self.ranks)
        else:
            del d["ranks"]  # dense: configs (and checkpoint digests) read exactly as before ranks existed
        if get_trunk(self.trunk).implicit and not dataclasses.asdict(self.trunk_options):
            del d["trunk"], d["trunk_options"]  # likewise for configs from before trunks existed
        else:
            d["trunk_options"] = get_trunk(self.trunk).options_to_dict(self.trunk_options)
        for name, default in (("head_hidden", 0), ("head_dropout", None)):
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """From a recipe's ``[model]`` table or a checkpoint's config (unknown keys are refused)."""
        return settings_from_dict(cls, d, "model", **overrides)


def bert_model_config(bert: Any, num_classes: int, max_length: int, **fields: Any) -> ModelConfig:
    """The ModelConfig of a BERT trunk with ``bert``'s widths reading ``max_length`` token ids;
    ``fields`` sets the others (``scheme``, ``head_hidden``, ``head_dropout``, ``dropout``, and
    ``trunk_options`` entries such as ``density_features``)."""
    opts = {"max_positions": bert.max_position_embeddings, "type_vocab_size": bert.type_vocab_size,
            "layer_norm_eps": bert.layer_norm_eps, "pad_token_id": bert.pad_token_id,
            **dict(fields.pop("trunk_options", None) or {})}
    base = dict(input_length=int(max_length), num_classes=int(num_classes), patch=1, d_model=bert.hidden_size,
                heads=bert.num_attention_heads, depth=bert.num_hidden_layers, ffn=bert.intermediate_size,
                embed="token", vocab_size=bert.vocab_size, stochastic_blocks=(), stochastic_head=True)
    return ModelConfig(**{**base, **fields}, trunk="bert", trunk_options=opts)


def _normalise_ranks(value: Any, depth: Any) -> Tuple[Tuple[str, int], ...]:
    """``ranks`` as sorted ``(path, rank)`` pairs, from a table {path: rank} or a list of pairs."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"invalid ModelConfig: ranks must be a table of layer path = rank, got {value!r}")
    else:
        items = []
        for pair in value:
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"invalid ModelConfig: ranks entries are (layer path, rank) pairs, got {pair!r}")
            items.append(tuple(pair))
    out = {}
    for name, rank in items:
        if not isinstance(name, str) or not name or any(not part.isidentifier() and not part.isdigit()
                                                        for part in name.split(".")):
            raise ValueError(f"invalid ModelConfig: ranks key {name!r} is not a module path such as 'blocks.0.fc1'")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"invalid ModelConfig: ranks[{name!r}] must be an integer >= 1, got {rank!r}")
        if name in out:
            raise ValueError(f"invalid ModelConfig: ranks lists {name!r} twice")
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() and isinstance(depth, int) \
                and not int(parts[1]) < depth:
            raise ValueError(f"invalid ModelConfig: ranks[{name!r}] names block {parts[1]} of a depth-{depth} model")
        out[name] = rank
    return tuple(sorted(out.items()))
