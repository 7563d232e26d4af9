"""The order-tracking front end (numpy): angular resampling against a closed form, the speed
estimator against signals of known speed, the strict ``preprocessing`` manifest section, and the
runtime applying it (given or estimated speed) before normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeuq_runtime import InputError, Manifest, ManifestError, UncertaintyRuntime, load_bundle
from edgeuq_runtime.front_end import OrderFrontEnd, front_end_of, parse_preprocessing
from edgeuq_runtime.preprocess import LANCZOS_A, angular_resample, estimate_shaft_hz, order_track, zscore_windows

FS = 12000.0


@pytest.mark.parametrize("rpm", [1730.0, 1797.0, 1900.0, 2400.0])
@pytest.mark.parametrize("order", [1.0, 3.5848, 5.4152, 37.3])
def test_a_tone_at_k_orders_has_k_cycles_per_revolution_at_any_speed(rpm, order):
    n, p = 4096, int(np.floor(60 * FS / 1700))    # every speed here covers the window
    fr = rpm / 60.0
    t = np.arange(n) / FS
    phase = 0.7
    x = np.cos(2 * np.pi * order * fr * t + phase)
    y = angular_resample(x, FS, fr, p)[0]
    j = np.arange(n)
    ref = np.cos(2 * np.pi * order * j / p + phase)   # closed form: `order` cycles per p samples
    inner = slice(LANCZOS_A, int((n - 1 - LANCZOS_A) * (p * fr) / FS))  # every tap inside the window
    err = np.max(np.abs(y[inner] - ref[inner]))
    # Lanczos (a = 8) ripple is ~1e-3; a speed off by 0.1 % would drift the phase by ~0.3 rad here
    assert err <= 5e-3, f"max interior error {err:.2e} at {order} orders, {rpm} rpm"


def test_speeds_differ_but_the_order_domain_windows_agree():
    """The same machine at 1797 and at 1730 rpm: in time the lines move (3.8 %), in order they do not."""
    n, p = 2048, int(60 * FS // 1600)
    t = np.arange(n) / FS
    orders, amps = np.array([1.0, 2.0, 3.5848, 5.4152]), np.array([0.5, 0.3, 1.0, 0.8])
    sig = lambda fr: (amps[:, None] * np.sin(2 * np.pi * orders[:, None] * fr * t)).sum(0)  # noqa: E731
    a, b = sig(1797 / 60), sig(1730 / 60)
    time_gap = np.max(np.abs(zscore_windows(a[None]) - zscore_windows(b[None])))
    oa = order_track(a, FS, p, 1600, 2000, rpm=1797.0)
    ob = order_track(b, FS, p, 1600, 2000, rpm=1730.0)
    inner = slice(LANCZOS_A, n - 64)
    order_gap = np.max(np.abs(zscore_windows(oa)[0, inner] - zscore_windows(ob)[0, inner]))
    assert time_gap > 0.5 and order_gap <= 1e-2, (time_gap, order_gap)


def test_a_speed_too_low_for_the_window_is_refused():
    p = int(60 * FS // 1600)
    with pytest.raises(InputError, match="below the front end's minimum"):
        angular_resample(np.zeros((2, 512)), FS, np.array([1700 / 60, 1500 / 60]), p)
    with pytest.raises(InputError, match="positive and finite"):
        angular_resample(np.zeros((1, 512)), FS, np.nan, p)


def _machine(fr: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Shaft harmonics 1..20 (random amplitudes, a rising sensor response), speed-locked lines at
    non-integer orders (as CWRU's drive shows at 4.93 / 5.40 / 6.40 orders), mains lines, bearing
    impacts ringing a 3 kHz resonance at BPFO, white noise."""
    t = np.arange(n) / FS
    x = np.zeros(n)
    for h in range(1, 21):
        x += (0.2 + h / 10) * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * h * fr * t + rng.uniform(0, 2 * np.pi))
    for o in (4.93, 5.40, 6.40):
        x += 1.5 * np.sin(2 * np.pi * o * fr * t + rng.uniform(0, 2 * np.pi))
    for f in (60.0, 120.0, 360.0):
        x += 0.8 * np.sin(2 * np.pi * f * t)
    bpfo = 3.5848 * fr
    k = np.arange(int(bpfo * n / FS) + 1)
    imp = np.zeros(n)
    imp[np.minimum((k / bpfo * FS).astype(int), n - 1)] = 8.0
    ring = np.exp(-0.05 * 2 * np.pi * 3000 * t[:200]) * np.sin(2 * np.pi * 3000 * t[:200])
    x += np.convolve(imp, ring)[:n]
    return x + rng.standard_normal(n)


def test_speed_estimate_error_is_bounded_on_signals_of_known_speed():
    rng = np.random.default_rng(0)
    rpms = rng.uniform(1620, 1980, 24)
    one_s = np.stack([_machine(r / 60, 12000, rng) for r in rpms])
    est = estimate_shaft_hz(one_s, FS, 1600, 2000, harmonics=16) * 60
    err = np.abs(est / rpms - 1)
    assert np.max(err) <= 2e-3, f"1-s windows: worst relative speed error {np.max(err):.2e}"
    short = np.stack([_machine(r / 60, 2048, rng) for r in rpms])   # 0.17 s: ~6 Hz bins, coarser
    err_s = np.abs(estimate_shaft_hz(short, FS, 1600, 2000, harmonics=16) * 60 / rpms - 1)
    assert np.median(err_s) <= 1e-2, f"2048-sample windows: median relative error {np.median(err_s):.2e}"


def test_the_comb_prefers_the_speed_to_its_half_and_its_double():
    """Search ranges that hold f/2 and 2f as well as f: the half-way teeth pick f."""
    rng = np.random.default_rng(1)
    fr = 30.0
    x = _machine(fr, 12000, rng)
    est = estimate_shaft_hz(x, FS, 60 * fr * 0.45, 60 * fr * 2.2, harmonics=8)[0]
    assert abs(est / fr - 1) <= 5e-3, est


def test_flat_window_gives_a_finite_speed():
    est = estimate_shaft_hz(np.zeros((1, 2048)), FS, 1600, 2000)
    assert np.isfinite(est).all() and 1600 / 60 <= est[0] <= 2000 / 60


# -- manifest section ------------------------------------------------------------------------------------
def _doc():
    return {"front_end": "order", "samples_per_rev": 450, "rpm_min": 1600.0, "rpm_max": 2000.0, "harmonics": 16}


def test_section_round_trips_and_old_manifests_have_no_front_end(build_bundle):
    spec = parse_preprocessing(_doc())
    assert spec.to_json() == _doc()
    text = (build_bundle().dir / "manifest.json").read_text()
    assert front_end_of(Manifest.loads(text)) is None          # a bundle written before the section
    data = json.loads(text)
    data["preprocessing"] = _doc()
    back = Manifest.loads(json.dumps(data))
    assert front_end_of(back) == spec and json.loads(back.dumps())["preprocessing"] == _doc()


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d.pop("harmonics"), "missing keys"),
    (lambda d: d.update(front_end="envelope"), "front_end"),
    (lambda d: d.update(samples_per_rev=450.0), "samples_per_rev"),
    (lambda d: d.update(samples_per_rev=True), "samples_per_rev"),
    (lambda d: d.update(rpm_min=-5.0), "rpm_min"),
    (lambda d: d.update(rpm_max="2000"), "rpm_max"),
    (lambda d: d.update(rpm_max=1500.0), "rpm_max"),
])
def test_section_parse_is_strict(mutate, field, tiny):
    d = _doc()
    mutate(d)
    data = json.loads((tiny.dir / "manifest.json").read_text())
    data["preprocessing"] = d
    with pytest.raises(ManifestError, match=field):
        Manifest.loads(json.dumps(data))


def test_rate_check_refuses_a_spec_that_cannot_cover_its_range():
    with pytest.raises(ManifestError, match="rpm_min"):
        OrderFrontEnd(samples_per_rev=450, rpm_min=1500, rpm_max=2000).check_rate(FS)
    OrderFrontEnd.for_rate(FS, 1500, 2000).check_rate(FS)


# -- the runtime --------------------------------------------------------------------------------------------
TINY_FE = OrderFrontEnd(samples_per_rev=8, rpm_min=400.0, rpm_max=600.0, harmonics=1)  # tiny bundle: 50 Hz, L = 16


def test_runtime_applies_the_front_end_with_the_given_speed(build_bundle, windows):
    tiny = build_bundle(sections={"preprocessing": TINY_FE})
    assert front_end_of(load_bundle(tiny.dir).manifest) == TINY_FE
    rt = UncertaintyRuntime(tiny.dir, seed=0)
    rpm = np.linspace(420, 590, len(windows))
    ref = tiny.features(order_track(windows, 50.0, 8, 400, 600, 1, rpm=rpm))
    got = rt.trunk_features(windows, rpm=rpm)
    assert np.max(np.abs(got - ref)) <= 1e-4
    plain = tiny.features(windows)
    assert np.max(np.abs(got - plain)) > 1e-2  # the front end changed what the trunk saw
    est = tiny.features(order_track(windows, 50.0, 8, 400, 600, 1))  # no rpm: estimated per window
    assert np.max(np.abs(rt.trunk_features(windows) - est)) <= 1e-4
    assert rt.predict(windows, rpm=500.0, samples=4).probs.shape == (len(windows), 3)


def test_rpm_without_a_front_end_is_refused(tiny, windows):
    with pytest.raises(InputError, match="no order-tracking front end"):
        UncertaintyRuntime(tiny.dir, seed=0).predict(windows, rpm=500.0)


def test_rpm_of_the_wrong_shape_is_refused(build_bundle, windows):
    fe = build_bundle(sections={"preprocessing": TINY_FE})
    with pytest.raises(InputError, match="one value per window"):
        UncertaintyRuntime(fe.dir, seed=0).predict(windows, rpm=np.ones(len(windows) + 1) * 500)


def test_envelope_order_spectrum_puts_a_modulation_at_its_order():
    """An impact train at 3.5848 orders ringing a 3 kHz resonance: the envelope spectrum of the
    order-domain window peaks at bin k = order * (2L - 2) / samples_per_rev, at any speed."""
    n, p, order = 4096, int(60 * FS // 1600), 3.5848
    peaks = []
    for rpm in (1730.0, 1797.0, 1950.0):
        fr = rpm / 60
        t = np.arange(n) / FS
        carrier = np.sin(2 * np.pi * 3000 * t)
        x = (1 + np.cos(2 * np.pi * order * fr * t)) * carrier     # AM at the fault order
        spec = OrderFrontEnd(samples_per_rev=p, rpm_min=1600, rpm_max=2000, front_end="order_envelope").apply(x, FS, rpm)
        k = int(np.argmax(spec[0, 5:])) + 5
        peaks.append(k)
        expected = order * (2 * n - 2) / p
        assert abs(k - expected) <= 1.0, (rpm, k, expected)
    assert max(peaks) - min(peaks) <= 1
