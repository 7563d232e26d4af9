r"""Physics-based synthetic rolling-bearing vibration: the embedded default dataset.

The product must train and test without any downloaded data, so this module
simulates drive-end accelerometer signals resembling the CWRU 12 kHz drive-end
recordings (same bearing, rates, loads and fault sizes). Everything is seeded
and generating the default set (4 classes x 3 severities x 4 loads, 4 s at
12 kHz) takes a fraction of a second.

Bearing kinematics
------------------
For ``n`` balls of diameter ``d`` on pitch diameter ``D`` with contact angle
``phi`` and shaft rate ``fr`` (Hz), with ``r = d/D cos(phi)``:

* ball pass frequency, outer race  ``BPFO = n/2 * fr * (1 - r)``
* ball pass frequency, inner race  ``BPFI = n/2 * fr * (1 + r)``
* ball spin frequency              ``BSF  = D/(2d) * fr * (1 - r**2)``
* fundamental train (cage) freq.   ``FTF  = fr/2 * (1 - r)``

For the default SKF 6205-2RS JEM (``n = 9``, ``d = 0.3126 in``,
``D = 1.537 in``, ``phi = 0``) these are 3.5848, 5.4152, 2.3567 and 0.3983
times ``fr``. Shaft speed follows the CWRU motor: about 1797, 1772, 1750 and
1730 rpm at 0, 1, 2 and 3 hp (:func:`shaft_rpm`, linear in between).

Signal model
------------
A record of kind ``k`` is

.. math::

    x(t) = \sum_{s \in k} \Big(\sum_j a_{s,j}\,\delta(t - t_{s,j})\Big) * h(t)
           + \sum_m A_m \sin(2\pi m f_r t + \theta_m) + \sigma\,\varepsilon(t)

* **Impacts.** Each fault source ``s`` strikes at rate ``f_s`` (a
  characteristic frequency times a multiple). Inter-impact intervals are
  ``T_j = (1 + \varsigma \xi_j) / f_s`` with ``\xi_j ~ N(0, 1)`` and slip
  jitter ``\varsigma`` (1.5 % by default): rolling elements slip, so real
  impacts are not exactly periodic, which smears the high harmonics but keeps
  the mean rate. The first impact has a uniform random phase.
* **Amplitude.** ``a_{s,j} = A_0 g_s (w / 0.007 in) m_s(t_{s,j}) (1 + 0.1 \eta_j)``
  with defect width ``w`` (severity, inches), per-source gain ``g_s`` and
  ``\eta_j ~ N(0, 1)``. The load-zone modulation is
  ``m_s(t) = 1 - \mu_s (1 - \cos(2\pi f_{m,s} t + \psi))/2`` (depth ``\mu_s``):

  - inner race: the defect turns with the shaft and passes the load zone once
    per revolution, ``f_m = f_r`` -> envelope lines at BPFI with ``\pm f_r``
    sidebands;
  - outer race: the defect is fixed (CWRU @6:00, centre of the load zone), so
    impacts are unmodulated -> clean BPFO line and harmonics;
  - ball: the defect strikes both the inner and the outer race once per spin
    revolution, so impacts come at ``2 BSF`` (CWRU's tabulated "rolling
    element" frequency 4.7135 fr is this ``2 BSF``), carried through the load
    zone by the cage, ``f_m = FTF``;
  - compound (inner + outer race together): the sum of both trains; not a
    training class, used as an unseen-fault out-of-distribution set.

  The kinds are the registry :data:`FAULT_KINDS` (name -> tuple of
  :class:`FaultSource`); add an entry to define a new fault.
* **Structural response.** Every impact rings the housing resonances:
  ``h(t) = c \sum_i g_i e^{-\zeta\omega_i t}\sin(\omega_i\sqrt{1-\zeta^2}\,t)``
  for ``t >= 0``, ``\omega_i = 2\pi f_i`` (default modes 3.0 and 4.8 kHz,
  damping ratio 0.05), scaled so ``max |h| = 1``, truncated once the slowest
  mode has decayed by 60 dB, and applied with FFT convolution.
* **Shaft harmonics** at ``1x`` and ``2x`` ``f_r`` (residual imbalance and
  misalignment) with random phases, present in every record, and white
  Gaussian background noise of standard deviation ``\sigma``.
* **Speed.** Each record's shaft speed is the nominal one times
  ``1 + 0.0025 \xi`` (small load/line fluctuations); the value used is stored
  in ``meta["rpm"]``.

Reproducibility
---------------
Each record draws from its own generator,
``SeedSequence(config.seed, spawn_key=(crc32(kind), severity in micro-inches,
load in milli-hp, replicate))``: a spawned child keyed by the record's identity
rather than its position, so adding kinds, loads or severities never changes
the other records.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.signal import fftconvolve

from ._dataset import BEARING_CLASSES, SignalRecord, Splits, WindowDataset
from ._errors import DataError
from .windowing import split_by_load, split_in_domain, window_records

__all__ = [
    "BearingGeometry",
    "FaultSource",
    "FAULT_KINDS",
    "SyntheticBearingConfig",
    "shaft_rpm",
    "simulate_bearing_signal",
    "synthetic_records",
    "make_synthetic_splits",
    "synthetic_ood_dataset",
]

#: Nominal CWRU motor speed (rpm) at 0, 1, 2, 3 hp load.
_CWRU_LOAD_HP = (0.0, 1.0, 2.0, 3.0)
_CWRU_RPM = (1797.0, 1772.0, 1750.0, 1730.0)

#: Fault width that maps to the base impulse amplitude.
_REFERENCE_SEVERITY_IN = 0.007


@dataclass(frozen=True)
class BearingGeometry:
    """Rolling-element bearing geometry (default: SKF 6205-2RS JEM, CWRU drive end).

    Parameters
    ----------
    n_balls : int
        Number of rolling elements.
    ball_diameter : float
        Ball diameter ``d`` (any length unit; only ``d/D`` matters).
    pitch_diameter : float
        Pitch diameter ``D`` (same unit as ``d``).
    contact_angle_deg : float
        Contact angle ``phi`` in degrees.
    """

    n_balls: int = 9
    ball_diameter: float = 0.3126
    pitch_diameter: float = 1.537
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if int(self.n_balls) != self.n_balls or self.n_balls < 1:
            raise DataError(f"BearingGeometry.n_balls must be a positive integer, got {self.n_balls!r}")
        if not (0 < self.ball_diameter < self.pitch_diameter):
            raise DataError(
                "BearingGeometry needs 0 < ball_diameter < pitch_diameter, got "
                f"d={self.ball_diameter!r}, D={self.pitch_diameter!r}"
            )
        if not (0 <= self.contact_angle_deg < 90):
            raise DataError(f"BearingGeometry.contact_angle_deg must be in [0, 90), got {self.contact_angle_deg!r}")

    def fault_frequencies(self, shaft_hz: float) -> dict[str, float]:
        """Characteristic defect frequencies in Hz at shaft rate ``shaft_hz``.

        Returns
        -------
        dict
            ``{"bpfo", "bpfi", "bsf", "ftf"}`` (see the module docstring).
        """
        fr = float(shaft_hz)
        if not (math.isfinite(fr) and fr > 0):
            raise DataError(f"shaft_hz must be a positive finite number, got {shaft_hz!r}")
        r = self.ball_diameter / self.pitch_diameter * math.cos(math.radians(self.contact_angle_deg))
        n = self.n_balls
        return {
            "bpfo": n / 2.0 * fr * (1.0 - r),
            "bpfi": n / 2.0 * fr * (1.0 + r),
            "bsf": self.pitch_diameter / (2.0 * self.ball_diameter) * fr * (1.0 - r * r),
            "ftf": fr / 2.0 * (1.0 - r),
        }


def shaft_rpm(load_hp: float) -> float:
    """Nominal CWRU motor speed in rpm at a motor load in hp (0 to 3, linear in between).

    Raises
    ------
    DataError
        For a load outside [0, 3] hp, where the CWRU table says nothing.
    """
    load = float(load_hp)
    if not (_CWRU_LOAD_HP[0] <= load <= _CWRU_LOAD_HP[-1]):
        raise DataError(f"load_hp must be within [0, 3] hp (the CWRU speed table), got {load_hp!r}")
    return float(np.interp(load, _CWRU_LOAD_HP, _CWRU_RPM))


@dataclass(frozen=True)
class FaultSource:
    """One train of fault impacts.

    Parameters
    ----------
    rate : str
        Key of :meth:`BearingGeometry.fault_frequencies` giving the base rate.
    multiple : float
        Impacts per period of ``rate`` (2 for a ball defect: both races per spin).
    modulation : str or None
        ``"shaft"`` (``f_r``), a key of ``fault_frequencies`` (e.g. ``"ftf"``),
        or ``None`` for unmodulated impacts.
    depth : float
        Modulation depth in [0, 1].
    gain : float
        Amplitude relative to the configuration's base impulse amplitude.
    """

    rate: str
    multiple: float = 1.0
    modulation: str | None = None
    depth: float = 0.0
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.rate not in ("bpfo", "bpfi", "bsf", "ftf"):
            raise DataError(f"FaultSource.rate must be bpfo/bpfi/bsf/ftf, got {self.rate!r}")
        if self.modulation not in (None, "shaft", "bpfo", "bpfi", "bsf", "ftf"):
            raise DataError(f"FaultSource.modulation must be None, 'shaft' or a fault frequency, got {self.modulation!r}")
        if not (0.0 <= self.depth <= 1.0):
            raise DataError(f"FaultSource.depth must be in [0, 1], got {self.depth!r}")
        if not (self.multiple > 0 and self.gain >= 0):
            raise DataError(f"FaultSource needs multiple > 0 and gain >= 0, got {self.multiple!r}, {self.gain!r}")


_INNER = FaultSource(rate="bpfi", modulation="shaft", depth=0.8, gain=0.8)
_OUTER = FaultSource(rate="bpfo", modulation=None, depth=0.0, gain=1.0)
_BALL = FaultSource(rate="bsf", multiple=2.0, modulation="ftf", depth=0.8, gain=0.6)

#: Registry of simulated kinds: name -> impact sources (empty = healthy).
FAULT_KINDS: dict[str, tuple[FaultSource, ...]] = {
    "normal": (),
    "inner_race": (_INNER,),
    "outer_race": (_OUTER,),
    "ball": (_BALL,),
    "compound": (_INNER, _OUTER),
}


@dataclass(frozen=True)
class SyntheticBearingConfig:
    """Parameters of the synthetic bearing dataset (defaults mimic CWRU 12k drive end).

    Parameters
    ----------
    fs : float
        Sampling rate in Hz.
    duration_s : float
        Length of each record in seconds.
    loads : tuple of float
        Motor loads in hp (each within [0, 3]).
    severities : tuple of float
        Fault widths in inches; the impulse amplitude is proportional to
        ``severity / 0.007``.
    kinds : tuple of str
        Kinds generated by default (keys of :data:`FAULT_KINDS`); fault kinds
        get one record per severity and load, ``"normal"`` gets
        ``normal_records_per_load`` records per load with severity 0.
    normal_records_per_load : int
        Healthy records per load; the default equals ``len(severities)`` so the
        classes are balanced.
    geometry : BearingGeometry
        Bearing geometry.
    resonance_hz : tuple of float
        Structural modes rung by each impact (each below ``fs / 2``).
    resonance_gain : tuple of float
        Relative weight of each mode.
    damping_ratio : float
        Modal damping ratio ``zeta`` in (0, 1).
    impulse_amplitude : float
        Peak response to one impact of a 0.007 in defect with gain 1.
    amplitude_jitter : float
        Relative standard deviation of impact amplitudes.
    slip_jitter : float
        Relative standard deviation of the inter-impact intervals (slip).
    speed_jitter : float
        Relative standard deviation of each record's shaft speed.
    shaft_harmonics : tuple of float
        Amplitudes of the ``1x, 2x, ...`` shaft-rate sinusoids.
    noise_std : float
        Standard deviation of the white background noise.
    seed : int
        Root seed.
    """

    fs: float = 12000.0
    duration_s: float = 4.0
    loads: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    severities: tuple[float, ...] = (0.007, 0.014, 0.021)
    kinds: tuple[str, ...] = BEARING_CLASSES
    normal_records_per_load: int = 3
    geometry: BearingGeometry = field(default_factory=BearingGeometry)
    resonance_hz: tuple[float, ...] = (3000.0, 4800.0)
    resonance_gain: tuple[float, ...] = (1.0, 0.5)
    damping_ratio: float = 0.05
    impulse_amplitude: float = 1.0
    amplitude_jitter: float = 0.1
    slip_jitter: float = 0.015
    speed_jitter: float = 0.0025
    shaft_harmonics: tuple[float, ...] = (0.1, 0.05)
    noise_std: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loads", "severities", "kinds", "resonance_hz", "resonance_gain", "shaft_harmonics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (self.fs > 0 and math.isfinite(self.fs)):
            raise DataError(f"SyntheticBearingConfig.fs must be positive, got {self.fs!r}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise DataError(f"SyntheticBearingConfig.duration_s must be positive, got {self.duration_s!r}")
        if not self.loads:
            raise DataError("SyntheticBearingConfig.loads is empty")
        for load in self.loads:
            shaft_rpm(load)  # raises for a load outside the table
        if not self.severities or any(not (s > 0) for s in self.severities):
            raise DataError(f"SyntheticBearingConfig.severities must be positive widths, got {self.severities!r}")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise DataError(f"unknown synthetic kinds {unknown}; known: {sorted(FAULT_KINDS)}")
        if int(self.normal_records_per_load) != self.normal_records_per_load or self.normal_records_per_load < 1:
            raise DataError(
                f"normal_records_per_load must be a positive integer, got {self.normal_records_per_load!r}"
            )
        if not self.resonance_hz or len(self.resonance_hz) != len(self.resonance_gain):
            raise DataError(
                f"resonance_hz {self.resonance_hz} and resonance_gain {self.resonance_gain} must be non-empty "
                "and of equal length"
            )
        if any(not (0 < f < self.fs / 2) for f in self.resonance_hz):
            raise DataError(f"resonance_hz {self.resonance_hz} must lie in (0, fs/2 = {self.fs / 2:g}) Hz")
        if not (0 < self.damping_ratio < 1):
            raise DataError(f"damping_ratio must be in (0, 1), got {self.damping_ratio!r}")
        for name in ("impulse_amplitude", "amplitude_jitter", "slip_jitter", "speed_jitter", "noise_std"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise DataError(f"SyntheticBearingConfig.{name} must be >= 0, got {value!r}")
        if self.slip_jitter >= 0.2:
            raise DataError(f"slip_jitter must be < 0.2 (a relative interval jitter), got {self.slip_jitter!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed!r}")

    def impulse_response(self) -> np.ndarray:
        """The structural impulse response ``h`` sampled at ``fs`` (peak 1)."""
        zeta = self.damping_ratio
        w = 2 * np.pi * np.asarray(self.resonance_hz, dtype=np.float64)
        t_max = math.log(1000.0) / (zeta * float(w.min()))
        t = np.arange(max(2, int(math.ceil(t_max * self.fs)))) / self.fs
        g = np.asarray(self.resonance_gain, dtype=np.float64)
        h = (g[:, None] * np.exp(-zeta * w[:, None] * t) * np.sin(w[:, None] * math.sqrt(1 - zeta**2) * t)).sum(0)
        peak = np.abs(h).max()
        return h / peak if peak > 0 else h


DEFAULT_CONFIG = SyntheticBearingConfig()


def _impact_train(
    source: FaultSource,
    freqs: Mapping[str, float],
    amplitude: float,
    n: int,
    config: SyntheticBearingConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sparse impulse train (length ``n``) of one fault source."""
    rate = source.multiple * freqs[source.rate]
    period = 1.0 / rate
    duration = n / config.fs
    count = int(math.ceil(duration * rate * 1.2)) + 4
    intervals = period * (1.0 + config.slip_jitter * rng.standard_normal(count))
    times = rng.uniform(0.0, period) + np.concatenate(([0.0], np.cumsum(intervals[:-1])))
    times = times[times < duration]
    amps = amplitude * np.clip(1.0 + config.amplitude_jitter * rng.standard_normal(times.size), 0.0, None)
    if source.modulation is not None and source.depth > 0:
        fm = freqs["shaft"] if source.modulation == "shaft" else freqs[source.modulation]
        psi = rng.uniform(0.0, 2 * np.pi)
        amps = amps * (1.0 - source.depth * 0.5 * (1.0 - np.cos(2 * np.pi * fm * times + psi)))
    train = np.zeros(n)
    idx = np.minimum(np.rint(times * config.fs).astype(np.int64), n - 1)
    np.add.at(train, idx, amps)
    return train


def simulate_bearing_signal(
    kind: str,
    severity: float,
    load_hp: float,
    duration_s: float,
    rng: np.random.Generator,
    config: SyntheticBearingConfig = DEFAULT_CONFIG,
    rpm: float | None = None,
) -> np.ndarray:
    """Simulate one drive-end vibration record (see the module docstring).

    Parameters
    ----------
    kind : str
        Key of :data:`FAULT_KINDS` (``normal``, ``inner_race``, ``outer_race``,
        ``ball``, ``compound``).
    severity : float
        Fault width in inches (ignored for ``normal``).
    load_hp : float
        Motor load in hp, sets the nominal shaft speed.
    duration_s : float
        Length in seconds.
    rng : numpy.random.Generator
        Source of all randomness.
    config : SyntheticBearingConfig
        Sampling rate, resonances, jitter, noise, ...
    rpm : float, optional
        Shaft speed; defaults to :func:`shaft_rpm` of ``load_hp``.

    Returns
    -------
    numpy.ndarray
        ``float32`` signal of ``round(duration_s * fs)`` samples.
    """
    try:
        sources = FAULT_KINDS[kind]
    except KeyError:
        raise DataError(f"unknown bearing signal kind {kind!r}; known: {sorted(FAULT_KINDS)}") from None
    if sources and not (severity > 0):
        raise DataError(f"kind {kind!r} needs a positive severity (fault width in inches), got {severity!r}")
    n = int(round(float(duration_s) * config.fs))
    if n < 1:
        raise DataError(f"duration_s={duration_s!r} gives no samples at fs={config.fs:g} Hz")
    speed = shaft_rpm(load_hp) if rpm is None else float(rpm)
    if not (speed > 0 and math.isfinite(speed)):
        raise DataError(f"rpm must be positive, got {rpm!r}")
    fr = speed / 60.0
    freqs = {**config.geometry.fault_frequencies(fr), "shaft": fr}
    t = np.arange(n) / config.fs

    x = np.zeros(n)
    if sources:
        base = config.impulse_amplitude * float(severity) / _REFERENCE_SEVERITY_IN
        impacts = np.zeros(n)
        for source in sources:
            impacts += _impact_train(source, freqs, base * source.gain, n, config, rng)
        x += fftconvolve(impacts, config.impulse_response())[:n]
    for m, amp in enumerate(config.shaft_harmonics, start=1):
        if amp:
            x += amp * np.sin(2 * np.pi * m * fr * t + rng.uniform(0.0, 2 * np.pi))
    if config.noise_std:
        x += config.noise_std * rng.standard_normal(n)
    return x.astype(np.float32)


def _record_rng(config: SyntheticBearingConfig, kind: str, severity: float, load: float, replicate: int):
    key = (zlib.crc32(kind.encode()), int(round(severity * 1e6)), int(round(load * 1e3)), int(replicate))
    return np.random.default_rng(np.random.SeedSequence(int(config.seed), spawn_key=key))


def synthetic_records(
    config: SyntheticBearingConfig = DEFAULT_CONFIG, kinds: Sequence[str] | None = None
) -> list[SignalRecord]:
    """Generate every kind x severity x load record of a configuration.

    Parameters
    ----------
    config : SyntheticBearingConfig
    kinds : sequence of str, optional
        Kinds to generate (default ``config.kinds``). Fault kinds get one record
        per (severity, load); ``normal`` gets ``config.normal_records_per_load``
        records per load with severity 0.

    Returns
    -------
    list of SignalRecord
        ``label`` is the kind; meta has ``record_id``, ``kind``, ``load_hp``,
        ``severity``, ``rpm``, ``shaft_hz``, ``fault_hz`` (dict), ``replicate``
        and ``source="synthetic"``. Deterministic for a given ``config.seed``.
    """
    kinds = tuple(config.kinds if kinds is None else kinds)
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise DataError(f"unknown synthetic kinds {unknown}; known: {sorted(FAULT_KINDS)}")
    records: list[SignalRecord] = []
    for kind in kinds:
        if FAULT_KINDS[kind]:
            cases = [(sev, 0) for sev in config.severities]
        else:
            cases = [(0.0, r) for r in range(int(config.normal_records_per_load))]
        for load in config.loads:
            for severity, rep in cases:
                rng = _record_rng(config, kind, severity, load, rep)
                rpm = shaft_rpm(load) * (1.0 + config.speed_jitter * rng.standard_normal())
                signal = simulate_bearing_signal(kind, severity, load, config.duration_s, rng, config, rpm=rpm)
                tag = f"r{rep}" if severity == 0 else f"{int(round(severity * 1000)):03d}"
                records.append(
                    SignalRecord(
                        signal=signal,
                        fs=config.fs,
                        label=kind,
                        meta={
                            "record_id": f"syn_{kind}_{tag}_{load:g}hp",
                            "kind": kind,
                            "load_hp": float(load),
                            "severity": float(severity),
                            "rpm": float(rpm),
                            "shaft_hz": float(rpm) / 60.0,
                            "fault_hz": config.geometry.fault_frequencies(rpm / 60.0),
                            "replicate": rep,
                            "source": "synthetic",
                        },
                    )
                )
    return records


def make_synthetic_splits(
    config: SyntheticBearingConfig = DEFAULT_CONFIG,
    window: int = 2048,
    hop: int = 512,
    split: str = "in_domain",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    test_loads: Sequence[float] = (3.0,),
    val_fraction: float = 0.15,
    class_names: Sequence[str] = BEARING_CLASSES,
    normalize: bool = True,
) -> Splits:
    """Generate the synthetic records and split them into windows.

    Parameters
    ----------
    config : SyntheticBearingConfig
        Its ``kinds`` must all be in ``class_names``.
    window, hop : int
        Window length and step in samples.
    split : {"in_domain", "by_load"}
        :func:`~edgeuq.data.split_in_domain` (uses ``fractions``) or
        :func:`~edgeuq.data.split_by_load` (uses ``test_loads``,
        ``val_fraction``).
    class_names : sequence of str
    normalize : bool
        Z-score each window.

    Returns
    -------
    Splits
    """
    records = synthetic_records(config)
    if split == "in_domain":
        return split_in_domain(records, window, hop, fractions=fractions, class_names=class_names,
                               normalize=normalize)
    if split == "by_load":
        return split_by_load(records, test_loads, window, hop, val_fraction=val_fraction,
                             class_names=class_names, normalize=normalize)
    raise DataError(f"unknown split {split!r}; use 'in_domain' or 'by_load'")


def synthetic_ood_dataset(
    config: SyntheticBearingConfig = DEFAULT_CONFIG,
    window: int = 2048,
    hop: int = 512,
    kinds: Sequence[str] = ("compound",),
    class_names: Sequence[str] = BEARING_CLASSES,
    normalize: bool = True,
) -> WindowDataset:
    """Windows of fault kinds unseen in training (default: compound IR + OR).

    Kinds not in ``class_names`` get label ``-1``; ``meta["label"]`` keeps the
    kind name.
    """
    records = synthetic_records(config, kinds=kinds)
    return window_records(records, window, hop, class_names=class_names, normalize=normalize,
                          allow_unknown=True)
