"""A simulated accelerometer (numpy only): a continuous bearing-like vibration stream.

Named *simulated* in every output. Each fault kind strikes impacts at its
characteristic rate (SKF 6205 geometry, multiples of the shaft rate ``fr``):
inner race 5.4152 fr (modulated once per revolution), outer race 3.5848 fr,
ball 4.7135 fr (= 2 BSF, modulated at the cage rate 0.3983 fr); each impact rings a
3 kHz housing resonance; plus shaft harmonics and white noise. A much-reduced
cousin of the host's ``edgeuq.data.synthetic`` generator (the runtime cannot import
the host package), meant for demos and tests of the streaming loop.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

__all__ = ["SIM_KINDS", "SimulatedSensor"]

# kind -> (impact rate in multiples of fr, modulation rate in multiples of fr, modulation depth)
SIM_KINDS = {
    "normal": None,
    "inner_race": (5.4152, 1.0, 0.6),
    "outer_race": (3.5848, 0.0, 0.0),
    "ball": (4.7135, 0.3983, 0.5),
}


class SimulatedSensor:
    """Stateful generator: :meth:`read` returns the next ``n`` samples of one endless record."""

    def __init__(self, kind: str = "normal", rate: float = 12000.0, rpm: float = 1772.0, seed: int = 0,
                 amplitude: float = 1.5, noise: float = 0.05, resonance_hz: float = 3000.0) -> None:
        if kind not in SIM_KINDS:
            raise InputError(f"unknown simulated fault {kind!r}; known: {sorted(SIM_KINDS)}")
        self.kind, self.rate = kind, float(rate)
        self.fr = rpm / 60.0
        self._rng = np.random.default_rng(seed)
        self.amplitude, self.noise = float(amplitude), float(noise)
        t = np.arange(int(0.01 * rate)) / rate
        w = 2 * math.pi * min(resonance_hz, 0.45 * rate)
        self._h = (np.exp(-0.05 * w * t) * np.sin(w * t)).astype(np.float64)
        self._tail = np.zeros(self._h.size - 1)
        self._pos = 0
        self._next_impact = self._rng.uniform(0, 1.0 / (self.fr * SIM_KINDS[kind][0])) if SIM_KINDS[kind] else math.inf
        self._phase = self._rng.uniform(0, 2 * math.pi, size=3)

    def read(self, n: int) -> np.ndarray:
        n = int(n)
        t = (self._pos + np.arange(n)) / self.rate
        x = sum(a * np.sin(2 * math.pi * (m + 1) * self.fr * t + self._phase[m]) for m, a in enumerate((0.1, 0.05, 0.02)))
        x = x + self.noise * self._rng.standard_normal(n)
        spec = SIM_KINDS[self.kind]
        impacts = np.zeros(n)
        if spec is not None:
            rate, mod, depth = spec
            period = 1.0 / (rate * self.fr)
            end = (self._pos + n) / self.rate
            while self._next_impact < end:
                ti = self._next_impact
                amp = self.amplitude * (1 + 0.1 * self._rng.standard_normal())
                if depth:
                    amp *= 1 - depth * 0.5 * (1 - math.cos(2 * math.pi * mod * self.fr * ti))
                impacts[min(int(round(ti * self.rate)) - self._pos, n - 1)] += amp
                self._next_impact += period * (1 + 0.015 * self._rng.standard_normal())
        ring = np.convolve(impacts, self._h)
        ring[: self._tail.size] += self._tail
        if ring.size > n:
            self._tail = ring[n:].copy()
        x = x + ring[:n]
        self._pos += n
        return x.astype(np.float32)
