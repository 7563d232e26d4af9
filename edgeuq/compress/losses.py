"""Distillation losses that carry uncertainty, not only the mean prediction.

Pure functions of tensors; shapes: student logits ``(K, B, C)`` (K stochastic
samples of the student, K = 1 for a deterministic student), teacher per-sample
probabilities ``(S, B, C)``.

* :func:`mean_kl` — τ² · KL(p̄_T^τ ‖ p̄_S^τ), the teacher's mean predictive at
  temperature τ against the student's mean predictive (Bayesian dark knowledge).
* :func:`uncertainty_matching` — (MI_T − MI_S)² + (E H_T − E H_S)²: the student's
  epistemic (mutual information) and aleatoric (expected entropy) parts of the
  predictive entropy matched to the teacher's (Vadera & Marlin).
* :func:`dirichlet_nll` — EnD² (Malinin et al. 2020): −mean log Dir(π_s | α) of
  the teacher's sample probability vectors under the student's Dirichlet α.
* :func:`dirichlet_mutual_information` — closed-form epistemic part of a Dirichlet.
* :func:`feature_matching` — the student's pooled trunk features, mapped by a learned linear
  projection, against the teacher's (relative MSE or 1 − cosine): keeps the teacher's feature
  geometry, where the density (distance) score lives.
* :func:`hidden_matching` — TinyBERT's hidden-state loss: the token-masked MSE of each student
  hidden state (embedding output, every layer) against the teacher hidden state it maps to.
"""
from __future__ import annotations

import torch

from ..models.bert import masked_mean_pool

__all__ = [
    "EPS", "entropy", "decompose", "mean_kl", "uncertainty_matching", "dirichlet_nll",
    "dirichlet_mutual_information", "check_teacher_probs", "feature_matching", "FEATURE_LOSSES",
    "hidden_matching", "density_matching",
]

#: Feature-distillation distances (:func:`feature_matching`).
FEATURE_LOSSES = ("mse", "cosine")

#: Probability floor inside logs.
EPS = 1e-8


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis (nats)."""
    return -(p * torch.log(p.clamp_min(EPS))).sum(-1)


def decompose(probs: torch.Tensor):
    """(S, B, C) sample probabilities -> (mean (B, C), total H[p̄], expected entropy E H, MI), each (B,)."""
    mean = probs.mean(0)
    total = entropy(mean)
    expected = entropy(probs).mean(0)
    return mean, total, expected, (total - expected).clamp_min(0.0)


def check_teacher_probs(teacher: torch.Tensor, batch: int, classes: int) -> None:
    if teacher.dim() != 3 or teacher.shape[1] != batch or teacher.shape[2] != classes:
        raise ValueError(f"teacher probabilities must have shape (S, {batch}, {classes}), got {tuple(teacher.shape)}")


def _check_student(student_logits: torch.Tensor) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student logits must have shape (K, B, C), got {tuple(student_logits.shape)}")


def mean_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · mean over the batch of KL(p̄_T^τ ‖ p̄_S^τ).

    p̄^τ: the sample mean of softmax(logits / τ) for the student; for the
    teacher, softmax(log p̄_T / τ) (its mean predictive sharpened or softened).
    """
    _check_student(student_logits)
    check_teacher_probs(teacher_probs, student_logits.shape[1], student_logits.shape[2])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    p_t = torch.softmax(torch.log(teacher_probs.mean(0).clamp_min(EPS)) / t, dim=-1)
    p_s = torch.softmax(student_logits / t, dim=-1).mean(0)
    kl = (p_t * (torch.log(p_t.clamp_min(EPS)) - torch.log(p_s.clamp_min(EPS)))).sum(-1)
    return (t * t) * kl.mean()


def uncertainty_matching(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of (MI_T − MI_S)² + (E H_T − E H_S)² (nats²)."""
    _check_student(student_logits)
    check_teacher_probs(teacher_probs, student_logits.shape[1], student_logits.shape[2])
    _, _, eh_s, mi_s = decompose(torch.softmax(student_logits, dim=-1))
    _, _, eh_t, mi_t = decompose(teacher_probs)
    return ((mi_t - mi_s) ** 2 + (eh_t - eh_s) ** 2).mean()


def dirichlet_nll(alpha: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """EnD²: −mean over batch and teacher samples of log Dir(π_s | α), α of shape (B, C).

    Teacher probabilities are smoothed by EPS and renormalised (a Dirichlet
    density is undefined on the simplex boundary).
    """
    if alpha.dim() != 2:
        raise ValueError(f"alpha must have shape (B, C), got {tuple(alpha.shape)}")
    check_teacher_probs(teacher_probs, alpha.shape[0], alpha.shape[1])
    if not bool((alpha > 0).all()):
        raise ValueError("Dirichlet concentrations must be > 0")
    c = alpha.shape[1]
    pi = (teacher_probs + EPS) / (1.0 + c * EPS)
    log_norm = torch.lgamma(alpha.sum(-1)) - torch.lgamma(alpha).sum(-1)  # (B,)
    log_density = log_norm[None] + ((alpha[None] - 1.0) * torch.log(pi)).sum(-1)  # (S, B)
    return -log_density.mean()


def dirichlet_mutual_information(alpha: torch.Tensor) -> torch.Tensor:
    """MI between label and categorical π ~ Dir(α): H[E π] − E H[Cat(π)], shape (B,)."""
    a0 = alpha.sum(-1, keepdim=True)
    p = alpha / a0
    expected_entropy = -(p * (torch.digamma(alpha + 1.0) - torch.digamma(a0 + 1.0))).sum(-1)
    return entropy(p) - expected_entropy


def feature_matching(student_features: torch.Tensor, teacher_features: torch.Tensor,
                     projection: torch.nn.Module, kind: str = "mse") -> torch.Tensor:
    """Distance between ``projection(student_features)`` (B, d_t) and ``teacher_features`` (B, d_t).

    ``"mse"``: mean squared error over the batch divided by the teacher features' mean square
    (scale-free: 1 = predicting zeros); ``"cosine"``: mean of 1 − cosine similarity (direction
    only). Student features (B, T, d_s) are mean-pooled over tokens first.
    """
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature loss {kind!r}; available: {list(FEATURE_LOSSES)}")
    s = student_features.mean(1) if student_features.dim() == 3 else student_features
    if s.dim() != 2 or teacher_features.dim() != 2 or s.shape[0] != teacher_features.shape[0]:
        raise ValueError(f"features must be (B, d) with one batch size, got {tuple(s.shape)} and "
                         f"{tuple(teacher_features.shape)}")
    z = projection(s)
    if z.shape != teacher_features.shape:
        raise ValueError(f"projection maps to {tuple(z.shape)}, teacher features are {tuple(teacher_features.shape)}")
    if kind == "mse":
        return ((z - teacher_features) ** 2).mean() / (teacher_features ** 2).mean().clamp_min(EPS)
    return (1.0 - torch.nn.functional.cosine_similarity(z, teacher_features, dim=-1, eps=EPS)).mean()


def hidden_matching(student_hidden, teacher_hidden, mask: torch.Tensor, layer_map) -> torch.Tensor:
    """Mean over ``j`` of the token-masked MSE between ``student_hidden[j]`` and
    ``teacher_hidden[layer_map[j]]`` (each (B, T, d); ``mask`` (B, T) 1 for real tokens): the
    squared error summed over real tokens and features, divided by (real tokens x d)."""
    if len(layer_map) != len(student_hidden):
        raise ValueError(f"hidden_matching: {len(student_hidden)} student hidden states, layer map of "
                         f"{len(layer_map)}")
    m = mask.unsqueeze(-1)
    total = student_hidden[0].new_zeros(())
    for s, i in zip(student_hidden, layer_map):
        t = teacher_hidden[i]
        if s.shape != t.shape:
            raise ValueError(f"hidden_matching: student hidden state {tuple(s.shape)} vs teacher layer {i} "
                             f"{tuple(t.shape)} (matching needs the teacher's width)")
        total = total + ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp_min(1.0)
    return total / len(layer_map)


def density_matching(student_layers, mask: torch.Tensor, teacher_density: torch.Tensor) -> torch.Tensor:
    """Squared error between the student's density feature -- the mean over ``student_layers`` (each
    (B, T, d), the outputs of its layers; ``mask`` (B, T) 1 for real tokens) of their token means,
    the feature a ``frozen_avg`` trunk over all its layers emits -- and ``teacher_density`` (B, d),
    summed over features, averaged over rows, divided by the teacher feature's summed variance over
    the batch (so 1 is the error of predicting the batch mean; a Mahalanobis density reads
    exactly that spread)."""
    if len(student_layers) == 0:
        raise ValueError("density_matching: no student layers")
    z = torch.stack([masked_mean_pool(h, mask) for h in student_layers], 0).mean(0)
    if z.shape != teacher_density.shape:
        raise ValueError(f"density_matching: student feature {tuple(z.shape)} vs teacher {tuple(teacher_density.shape)} "
                         f"(matching needs the teacher's width)")
    spread = ((teacher_density - teacher_density.mean(0, keepdim=True)) ** 2).sum(1).mean()
    return ((z - teacher_density) ** 2).sum(1).mean() / spread.clamp_min(EPS)
