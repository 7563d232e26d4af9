"""What a stochastic scheme provides (copy a scheme module to add one).

A scheme is a subclass of :class:`Scheme`, registered with
``@register_scheme("name")`` (:mod:`edgeuq.schemes.registry`). It owns:

* ``options_type``: its frozen options dataclass (``ModelConfig.scheme_options``,
  ``[model.scheme_options]`` in recipes);
* :meth:`Scheme.problems`: its validation of a ``ModelConfig``;
* the layer factories the model builder calls at each site, in this order per
  block: :meth:`attention` (its qkv/proj via :meth:`block_linear`, then
  :meth:`attention_dropout`), :meth:`block_dropout` ``attn_out``,
  :meth:`block_linear` ``ffn_fc1``, :meth:`block_dropout` ``ffn_hidden``,
  :meth:`block_linear` ``ffn_fc2``, :meth:`block_dropout` ``ffn_out``; then for
  the head :meth:`head_dropout` ``head_in``, :meth:`head_linear` ``fc1``,
  :meth:`head_dropout` ``head_hidden``, :meth:`head_output`. The defaults build
  the deterministic network (plain linears, training-time dropout);
* :meth:`build_model`: the model class (the ensemble overrides it);
* :meth:`loss_fn` (the training loss of a batch, e.g. the ELBO),
  :meth:`train` (training + post-hoc fitting: ensemble members, Laplace prior
  search) and :meth:`fit` (``train`` + temperature scaling when asked);
* :meth:`noise_specs` (from its stochastic layers, in registration order) and
  :meth:`uses_sampling` (whether predictions are a sampled predictive);
* optionally ``text_head``: a :class:`TextHead` when the scheme has a stochastic head on the
  text classifier (its sampled sites and capabilities), so a scheme with a text head is
  declared in its own module only.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, final

import numpy as np
import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec

from ..models.attention import AttentionBase, SelfAttention
from ..models.layers import Dropout, is_stochastic_layer
from ..training.config import UqConfig

__all__ = ["Scheme", "NoOptions", "FitContext", "FitResult", "options_dataclass_from", "deterministic_config",
           "train_metrics", "TextHead", "TEXT_HEAD_SITES"]

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@final
@dataclass(frozen=True)
class NoOptions:
    """Options of a scheme that has none."""


def options_dataclass_from(options_type: type, value: Any, scheme: str) -> Any:
    """``value`` (None, a mapping or an instance) as ``options_type``; unknown keys are refused."""
    if value is None:
        return options_type()
    if isinstance(value, options_type):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(options_type)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"invalid ModelConfig: unknown scheme_options {unknown} for scheme {scheme!r}; "
                             f"known: {sorted(known)}")
        return options_type(**value)
    raise ValueError(f"invalid ModelConfig: scheme_options of scheme {scheme!r} must be a table "
                     f"({options_type.__name__}), got {type(value).__name__}")


@final
@dataclass(frozen=True)
class FitResult:
    """A trained (and fitted) model, the metrics to record, and the training runs behind it."""

    model: nn.Module
    metrics: Mapping[str, Any]
    runs: Tuple[Any, ...] = ()   # edgeuq.training.TrainResult per trained network


MemberSource = Callable[[Any, int], Tuple[nn.Module, Optional[Any]]]


@final
@dataclass(frozen=True)
class FitContext:
    """Data and settings of one training run. ``uq`` is the recipe's ``[uq]`` table
    (``kl_weight``, ``val_samples``, ``temperature_scaling``, ``samples``,
    ``laplace_samples``). ``member(cfg, m)`` returns deterministic network ``m``
    of architecture ``cfg`` and its TrainResult (None when it was not trained now);
    by default it is trained here with seed ``train_cfg.seed + m`` (the benchmark
    passes a cached source)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    train_cfg: Any
    uq: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    log: Log = _quiet
    member: Optional[MemberSource] = None

    def __post_init__(self) -> None:
        # strict: an unknown [uq] key (a typo) is an error naming it; every key then has its value
        object.__setattr__(self, "uq", UqConfig.from_dict(self.uq).to_dict())

    @property
    def kl_weight(self) -> float:
        return float(self.uq["kl_weight"])

    @property
    def val_samples(self) -> int:
        """Samples of the validation predictive (0: validate the deterministic pass)."""
        return int(self.uq["val_samples"])

    def deterministic_member(self, cfg: Any, index: int) -> Tuple[nn.Module, Optional[Any]]:
        if self.member is not None:
            return self.member(cfg, index)
        from ..bayes.train import fit_model
        from ..models.transformer import SignalTransformer

        seed = self.train_cfg.seed + index
        torch.manual_seed(seed)
        model = SignalTransformer(cfg)
        res = fit_model(model, self.x_train, self.y_train, self.x_val, self.y_val,
                        dataclasses.replace(self.train_cfg, seed=seed), kl_weight=0.0, progress=self.progress,
                        log=self.log)
        return model, res


def deterministic_config(cfg: Any) -> Any:
    """The deterministic network of ``cfg``'s architecture (no stochastic site, temperature 1):
    an ensemble member, or the MAP network of a last-layer Laplace model."""
    return dataclasses.replace(cfg, scheme="mc_dropout", scheme_options=None, stochastic_blocks=(),
                               stochastic_head=False, temperature=1.0)


def train_metrics(res: Any) -> Dict[str, Any]:
    return {"best_epoch": res.best_epoch, "best_val_nll": res.best_val_nll, "epochs_run": len(res.history),
            "val_acc": res.history[res.best_epoch - 1].val_acc}


#: the layers of the text classifier's head that can carry noise (``edgeuq.text.classifier.TextClassifier``)
TEXT_HEAD_SITES = ("drop_in", "drop_hidden", "fc2")


@final
@dataclass(frozen=True)
class TextHead:
    """A scheme's head on the text classifier (the capability ``Scheme.text_head``).

    ``sites``: the head attributes whose noise is a graph input (the others act only in
    training); ``post_hoc_posterior``: the stochastic layer is a posterior fitted after training
    (the last layer ``fc2``, a Laplace fit); the text teacher fits it once, and a distilled text
    student of that scheme has its own posterior fitted after distillation.
    """

    sites: Tuple[str, ...]
    post_hoc_posterior: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        bad = [s for s in self.sites if s not in TEXT_HEAD_SITES]
        if bad or not self.sites:
            raise ValueError(f"TextHead.sites must be a non-empty subset of {list(TEXT_HEAD_SITES)}, "
                             f"got {list(self.sites)}")
        if self.post_hoc_posterior and "fc2" not in self.sites:
            raise ValueError("TextHead.post_hoc_posterior needs the last layer 'fc2' among its sites")


class Scheme(ABC):
    """A stochastic scheme (one registered instance per subclass)."""

    name: ClassVar[str] = ""
    options_type: ClassVar[type] = NoOptions
    #: True when the stochastic sites carry no fitted parameters of their own (e.g. MC
    #: dropout), so a trained model's stochastic blocks can be moved by changing
    #: ``stochastic_blocks`` / ``stochastic_head`` and reloading the same weights.
    relocatable_sites: ClassVar[bool] = False
    #: True when the scheme's uncertainty comes from one deterministic pass (no noise inputs, e.g.
    #: DDU, SNGP): export then accepts a model without stochastic layers (a head graph whose only
    #: input is the features) instead of refusing it as a forgotten stochastic site.
    deterministic_pass: ClassVar[bool] = False
    #: True when the scheme builds layers inside the trunk (spectral-normalised block linears, whole
    #: member networks): a trunk that does not take its layers from the scheme (``bert``) refuses it.
    trunk_layers: ClassVar[bool] = False
    #: The scheme's head on the text classifier (:class:`TextHead`), or None when it has none.
    text_head: ClassVar[Optional[TextHead]] = None

    # -- options and validation -------------------------------------------------------
    def options_from(self, value: Any) -> Any:
        return options_dataclass_from(self.options_type, value, self.name)

    def options_to_dict(self, options: Any) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}

    @abstractmethod
    def problems(self, cfg: Any) -> List[str]:
        """What is wrong with ``cfg`` for this scheme (empty when nothing)."""

    # -- layer factories (defaults: the deterministic network) ---------------------
    def block_linear(self, cfg: Any, index: int, site: str, n_in: int, n_out: int, stochastic: bool) -> nn.Module:
        """``site`` in attn_qkv, attn_proj, ffn_fc1, ffn_fc2; noise shape (tokens, n_out)."""
        return nn.Linear(n_in, n_out)

    def block_dropout(self, cfg: Any, index: int, site: str, shape: Tuple[int, ...], stochastic: bool) -> nn.Module:
        """``site`` in attn_out, ffn_hidden, ffn_out."""
        return Dropout(cfg.dropout)

    def attention_dropout(self, cfg: Any, index: int, stochastic: bool) -> Optional[nn.Module]:
        """Dropout on the attention weights (site ``attn_probs``); None: no such layer."""
        return None

    def attention(self, cfg: Any, index: int, stochastic: bool) -> AttentionBase:
        shape = cfg.block_shape(index)
        d = cfg.d_model
        qkv = self.block_linear(cfg, index, "attn_qkv", d, 3 * shape.inner, stochastic)
        proj = self.block_linear(cfg, index, "attn_proj", shape.inner, d, stochastic)
        return SelfAttention(d, shape.heads, shape.head_dim, qkv=qkv, proj=proj,
                             drop_probs=self.attention_dropout(cfg, index, stochastic))

    def head_dropout(self, cfg: Any, site: str, shape: Tuple[int, ...]) -> nn.Module:
        """``site`` in head_in, head_hidden."""
        return Dropout(cfg.head_p)

    def head_linear(self, cfg: Any, site: str, n_in: int, n_out: int) -> nn.Module:
        """``site`` fc1 (or fc2 through :meth:`head_output`); noise shape (n_out,)."""
        return nn.Linear(n_in, n_out)

    def head_output(self, cfg: Any, n_in: int, n_out: int) -> nn.Module:
        """The last layer (features -> logits)."""
        return self.head_linear(cfg, "fc2", n_in, n_out)

    # -- the model ------------------------------------------------------------------
    def check_model_class(self, cls: type) -> None:
        """Refuse a model class this scheme does not build (see :meth:`build_model`)."""

    def build_model(self, cfg: Any) -> nn.Module:
        """The model of ``cfg``'s trunk (:mod:`edgeuq.models.trunks`) with this scheme's layers."""
        from ..models.trunks import get_trunk

        return get_trunk(cfg.trunk).build(cfg)

    def noise_specs(self, model: nn.Module) -> Tuple[NoiseSpec, ...]:
        """One spec per stochastic layer, in registration order (= the head graph's noise inputs)."""
        return tuple(m.noise_spec() for m in model.modules() if is_stochastic_layer(m))

    def uses_sampling(self, model: nn.Module) -> bool:
        """True when predictions are a sampled predictive (the model has noise inputs)."""
        return bool(self.noise_specs(model))

    # -- training -------------------------------------------------------------------
    def decay_exempt(self, param_name: str) -> bool:
        """True for a parameter trained without weight decay (e.g. a posterior scale)."""
        return False

    def loss_fn(self, model: nn.Module, kl_weight: float, n_train: int) -> Callable:
        """The training loss of a batch (``edgeuq.training.loop.LossFn``); cross-entropy by default."""
        from ..training.loop import cross_entropy_loss

        return cross_entropy_loss

    def train(self, cfg: Any, ctx: FitContext) -> FitResult:
        """Train a model of ``cfg`` (and fit its post-hoc parts)."""
        from ..bayes.train import fit_model

        torch.manual_seed(ctx.train_cfg.seed)
        model = self.build_model(cfg)
        res = fit_model(model, ctx.x_train, ctx.y_train, ctx.x_val, ctx.y_val, ctx.train_cfg,
                        kl_weight=ctx.kl_weight, val_samples=ctx.val_samples, progress=ctx.progress, log=ctx.log)
        return FitResult(model, train_metrics(res), (res,))

    @final
    def fit(self, cfg: Any, ctx: FitContext) -> FitResult:
        """:meth:`train`, then temperature scaling on the validation predictive when
        ``uq.temperature_scaling`` (``uq.samples`` draws)."""
        from ..bayes.temperature import calibrate_temperature

        out = self.train(cfg, ctx)
        metrics = {"scheme": self.name, **dict(out.metrics)}
        if ctx.uq["temperature_scaling"]:
            metrics["temperature"] = calibrate_temperature(out.model, ctx.x_val, ctx.y_val,
                                                           samples=int(ctx.uq["samples"])).to_dict()
        return FitResult(out.model, metrics, out.runs)
