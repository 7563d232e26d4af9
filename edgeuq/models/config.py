"""Model configuration: architecture plus which parts are stochastic."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Tuple

from ..settings import settings_from_dict

__all__ = ["ModelConfig", "SCHEMES", "BLOCK_DROPOUT_POSITIONS", "HEAD_DROPOUT_POSITIONS", "BAYES_POSITIONS"]

#: Stochastic schemes (one layer module each under edgeuq/models/).
SCHEMES = ("mc_dropout", "variational", "hsa", "ensemble", "laplace")
#: Dropout sites of an encoder block; ``attn_probs`` drops attention weights (opt-in).
BLOCK_DROPOUT_POSITIONS = ("attn_probs", "attn_out", "ffn_hidden", "ffn_out")
HEAD_DROPOUT_POSITIONS = ("head_in", "head_hidden")
#: Linear layers of a stochastic block that the variational scheme makes Bayesian.
BAYES_POSITIONS = ("attn", "ffn")
_TUPLE_FIELDS = ("block_dropout_positions", "head_dropout_positions", "bayes_positions")


@dataclass(frozen=True)
class ModelConfig:
    """A 1-D signal transformer classifier.

    ``stochastic_blocks`` lists the encoder blocks whose dropout stays on at
    inference (MC dropout); ``stochastic_head`` does the same for the classifier
    head. The deterministic trunk ends at the first stochastic layer: everything
    before it runs once per input, everything after it S times.

    Everything below ``stem_channels`` is opt-in; the defaults reproduce the
    original MC-dropout model (same modules, noise names and ONNX graphs).

    * ``scheme``: ``mc_dropout``; ``variational`` (mean-field Gaussian weights,
      local reparameterization, in the ``bayes_positions`` of stochastic blocks
      and in the head's two linears when ``stochastic_head``); ``hsa``
      (hierarchical stochastic attention in stochastic blocks, Gumbel-softmax
      temperatures ``hsa_tau1`` over values and ``hsa_tau2`` over
      ``hsa_centroids`` learnable centroids; the head, when stochastic, keeps
      MC dropout); ``ensemble`` (``ensemble_members`` deterministic members,
      one picked per sample); ``laplace`` (last-layer Laplace on ``head.fc2``,
      ``laplace_structure`` ``kron`` or ``full``; fitted after training).
    * ``block_dropout_positions`` / ``head_dropout_positions``: which dropout
      sites of a stochastic block / the head are MC (``mc_dropout`` and, for the
      head, ``hsa``); the others are ordinary training-time dropout.
      ``attn_probs`` (dropout on attention weights) exists only when listed.
    * ``temperature``: logits are divided by it inside the head graph
      (post-hoc temperature scaling; 1 adds no operation).
    * ``embed="token"`` with ``vocab_size``: a text model on int64 token ids
      (``patch`` 1, id 0 = padding, masked in attention and pooling).
    * ``pool``: how token features become one vector, ``mean`` or ``max``
      (over non-padding tokens; max keeps a strong local cue from being diluted
      by many neutral tokens, e.g. sentiment words in long sentences).
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
    embed: str = "conv"
    stem_channels: int = 32
    block_dropout_positions: Tuple[str, ...] = ("attn_out", "ffn_hidden", "ffn_out")
    head_dropout_positions: Tuple[str, ...] = ("head_in", "head_hidden")
    bayes_positions: Tuple[str, ...] = ("attn", "ffn")
    vi_prior_sigma: float = 0.1
    vi_init_sigma: float = 1e-3
    hsa_centroids: int = 16
    hsa_tau1: float = 1.0
    hsa_tau2: float = 1.0
    ensemble_members: int = 1
    laplace_structure: str = "kron"
    temperature: float = 1.0
    vocab_size: int = 0
    pool: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stochastic_blocks", tuple(sorted({int(b) for b in self.stochastic_blocks})))
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        problems = []
        if self.input_length <= 0 or self.patch <= 0 or self.input_length % self.patch:
            problems.append(f"input_length ({self.input_length}) must be a positive multiple of patch ({self.patch})")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if self.d_model % self.heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.depth < 1 or self.ffn < 1:
            problems.append("depth and ffn must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        bad = [b for b in self.stochastic_blocks if not 0 <= b < self.depth]
        if bad:
            problems.append(f"stochastic_blocks {bad} out of range for depth {self.depth}")
        if self.embed not in ("conv", "linear", "token"):
            problems.append(f"unknown embed {self.embed!r}; use 'conv', 'linear' or 'token'")
        if self.embed == "conv" and self.patch % 8:
            problems.append(f"the conv patch embedding needs patch divisible by 8, got {self.patch}")
        problems += self._scheme_problems()
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def _scheme_problems(self) -> list:
        problems = []
        if self.scheme not in SCHEMES:
            return [f"unknown stochastic scheme {self.scheme!r}; available: {list(SCHEMES)}"]
        for name, allowed in (("block_dropout_positions", BLOCK_DROPOUT_POSITIONS),
                              ("head_dropout_positions", HEAD_DROPOUT_POSITIONS), ("bayes_positions", BAYES_POSITIONS)):
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
        if self.pool not in ("mean", "max"):
            problems.append(f"pool must be 'mean' or 'max', got {self.pool!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.scheme == "ensemble":
            if self.ensemble_members < 2:
                problems.append(f"scheme 'ensemble' needs ensemble_members >= 2, got {self.ensemble_members}")
            if self.stochastic_blocks:
                problems.append("scheme 'ensemble' has deterministic members: set stochastic_blocks = []")
        elif self.ensemble_members != 1:
            problems.append(f"ensemble_members applies to scheme 'ensemble' only (got {self.ensemble_members} "
                            f"with {self.scheme!r})")
        if self.scheme == "laplace":
            if self.stochastic_blocks or not self.stochastic_head:
                problems.append("scheme 'laplace' is last-layer: set stochastic_blocks = [] and stochastic_head = true")
            if self.laplace_structure not in ("kron", "full"):
                problems.append(f"laplace_structure must be 'kron' or 'full', got {self.laplace_structure!r}")
        if self.scheme == "hsa":
            if not self.stochastic_blocks:
                problems.append("scheme 'hsa' needs at least one stochastic block")
            if self.hsa_centroids < 1 or not (self.hsa_tau1 > 0 and self.hsa_tau2 > 0):
                problems.append("hsa_centroids must be >= 1 and hsa_tau1, hsa_tau2 > 0")
        if self.scheme == "variational":
            if not (self.vi_prior_sigma > 0 and self.vi_init_sigma > 0):
                problems.append("vi_prior_sigma and vi_init_sigma must be > 0")
            if self.stochastic_blocks and not self.bayes_positions:
                problems.append("scheme 'variational' with stochastic blocks needs bayes_positions")
        return problems

    @property
    def tokens(self) -> int:
        return self.input_length // self.patch

    @property
    def split_index(self) -> int:
        """Index of the first stochastic block (``depth`` when only the head is)."""
        return self.stochastic_blocks[0] if self.stochastic_blocks else self.depth

    @property
    def is_stochastic(self) -> bool:
        return bool(self.stochastic_blocks) or self.stochastic_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stochastic_blocks"] = list(self.stochastic_blocks)
        for name in _TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        return settings_from_dict(cls, d, "model", **overrides)
