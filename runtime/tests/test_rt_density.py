"""Density score: tied-covariance class-conditional Gaussian against scipy's multivariate normal
(an independent implementation), fitting against a direct numpy estimate, pooling, storage."""
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from edgeuq_runtime.density import GaussianDensity, fit_density, pool_features
from edgeuq_runtime.errors import BundleError, InputError


def _blobs(rng, n=600, d=6, c=3):
    centres = rng.normal(0, 3, size=(c, d))
    a = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
    y = rng.integers(0, c, n)
    z = centres[y] + rng.normal(size=(n, d)) @ a.T
    return z, y


def test_score_matches_scipy_mixture_logpdf():
    rng = np.random.default_rng(0)
    z, y = _blobs(rng)
    dens = fit_density(z, y, ridge=0.0)
    cov = np.linalg.inv(dens.precision)
    test = rng.normal(0, 4, size=(50, z.shape[1]))
    ref = -logsumexp(np.stack([dens.log_priors[k] + multivariate_normal(dens.means[k], cov).logpdf(test)
                               for k in range(3)], axis=1), axis=1)
    got = dens.score(test)
    assert np.max(np.abs(got - ref)) <= 1e-8 * max(1.0, np.abs(ref).max())
    # squared Mahalanobis distances by the textbook formula
    diff = test[:, None, :] - dens.means[None]
    maha = np.einsum("bcd,de,bce->bc", diff, dens.precision, diff)
    assert np.allclose(dens.mahalanobis_sq(test), maha, rtol=1e-9, atol=1e-9)


def test_fit_matches_direct_estimate():
    rng = np.random.default_rng(1)
    z, y = _blobs(rng)
    dens = fit_density(z, y, ridge=0.0)
    means = np.stack([z[y == k].mean(0) for k in range(3)])
    cov = sum((z[y == k] - means[k]).T @ (z[y == k] - means[k]) for k in range(3)) / (len(z) - 3)
    assert np.allclose(dens.means, means)
    assert np.allclose(np.linalg.inv(dens.precision), cov, rtol=1e-8, atol=1e-10)
    assert np.allclose(np.exp(dens.log_priors), np.bincount(y) / len(y))


def test_far_points_score_higher():
    rng = np.random.default_rng(2)
    z, y = _blobs(rng)
    dens = fit_density(z, y)
    zi, _ = _blobs(np.random.default_rng(2), n=200)  # same distribution (same centres: same seed)
    far = zi + 25.0
    assert np.all(np.median(dens.score(far)) > np.percentile(dens.score(zi), 99))


def test_tokens_are_mean_pooled():
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(10, 7, 4)).astype(np.float32)
    assert np.allclose(pool_features(tokens), tokens.astype(np.float64).mean(1))
    z, y = _blobs(rng, d=4)
    dens = fit_density(z, y)
    assert np.allclose(dens.score(tokens), dens.score(tokens.mean(1)), rtol=1e-6)
    with pytest.raises(InputError, match="pool"):
        pool_features(tokens, "none")
    with pytest.raises(InputError, match="shape"):
        dens.score(np.zeros((3, 5)))


def test_save_load_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(4)
    z, y = _blobs(rng)
    dens = fit_density(z, y)
    back = GaussianDensity.load(dens.save(tmp_path / "density.npz"))
    assert np.array_equal(back.score(z), dens.score(z))
    np.savez(tmp_path / "bad.npz", means=dens.means)
    with pytest.raises(BundleError, match="lacks"):
        GaussianDensity.load(tmp_path / "bad.npz")
    with pytest.raises(BundleError, match="positive definite"):
        GaussianDensity(dens.means, -np.eye(z.shape[1]), dens.log_priors)
    with pytest.raises(InputError, match="every class"):
        fit_density(z, np.where(y == 1, 2, y))
