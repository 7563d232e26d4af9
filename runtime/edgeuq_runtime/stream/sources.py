"""Sample sources for the streaming loop: a file (real time or as fast as possible), raw
float32/int16 on stdin or a localhost TCP socket, or the simulated sensor.

Every source returns :class:`Chunk` objects from :meth:`read`: the samples (float32,
possibly empty), the time they became available (``time.monotonic`` clock), and a
status: ``ok``, ``stalled`` (nothing arrived within the stall timeout), ``closed``
(the producer went away; a TCP source then waits for the next connection) or
``eof`` (no more data will come). Raw byte streams keep a partial sample across
reads; a stream that ends on a partial sample reports it in ``note``.
"""
from __future__ import annotations

import os
import select
import socket
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from .sim import SimulatedSensor

__all__ = ["Chunk", "Source", "Pacer", "ArraySource", "FileSource", "RawStreamSource", "TcpSource", "SimSource",
           "open_source", "RAW_FORMATS", "INT16_SCALE"]

RAW_FORMATS = {"f32": np.dtype("<f4"), "i16": np.dtype("<i2")}
INT16_SCALE = 1.0 / 32768.0  # int16 full scale -> [-1, 1)


@dataclass
class Chunk:
    samples: np.ndarray
    t_available: float
    status: str = "ok"
    note: str = ""
    clipped: int = 0   # samples at the int16 rails (raw int16 sources)


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


class Source:
    rate: float
    description: str = ""
    simulated: bool = False

    def read(self, n: int) -> Chunk:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class Pacer:
    """Real-time pacing, one copy for every paced source: the samples released so far are due at
    ``t0 + released / rate`` (``t0``: the first paced release); :meth:`release` sleeps until a
    chunk is due and stamps it with that time. Not real time: stamped now, no wait.
    :meth:`restart` starts a new clock (e.g. after a pause)."""

    def __init__(self, rate: float, realtime: bool, clock=time.monotonic, sleep=time.sleep) -> None:
        self.rate, self.realtime = float(rate), bool(realtime)
        self._clock, self._sleep = clock, sleep
        self.restart()

    def restart(self) -> None:
        self._t0: Optional[float] = None
        self._released = 0

    def release(self, x: np.ndarray) -> Chunk:
        if not self.realtime:
            return Chunk(x, self._clock())
        if self._t0 is None:
            self._t0 = self._clock()
        self._released += x.size
        due = self._t0 + self._released / self.rate
        wait = due - self._clock()
        if wait > 0:
            self._sleep(wait)
        return Chunk(x, due)


class ArraySource(Source):
    """An in-memory signal, in real time (paced at ``rate``) or as fast as possible."""

    def __init__(self, signal: np.ndarray, rate: float, realtime: bool = False, description: str = "array",
                 clock=time.monotonic, sleep=time.sleep) -> None:
        self._x = np.asarray(signal, dtype=np.float32).reshape(-1)
        self.rate, self.realtime, self.description = float(rate), bool(realtime), description
        self._pos, self._clock = 0, clock
        self._pacer = Pacer(self.rate, self.realtime, clock, sleep)

    def read(self, n: int) -> Chunk:
        if self._pos >= self._x.size:
            return Chunk(_empty(), self._clock(), "eof")
        x = self._x[self._pos:self._pos + n]
        self._pos += x.size
        return self._pacer.release(x)


def _load_file(path: Path, rate: Optional[float], key: Optional[str]):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), rate
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            k = key or ("signal" if "signal" in z.files else z.files[0])
            if k not in z.files:
                raise InputError(f"{path}: no array {k!r}; arrays: {z.files}")
            fs = float(z["fs"]) if rate is None and "fs" in z.files else rate
            return z[k], fs
    if suffix == ".wav":
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise InputError(f"{path}: only 16-bit PCM .wav is supported, got {8 * w.getsampwidth()}-bit")
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
            return raw[:, 0].astype(np.float32) * INT16_SCALE, float(w.getframerate())
    if suffix in (".f32", ".i16"):
        dt = RAW_FORMATS[suffix[1:]]
        data = np.fromfile(path, dtype=dt)
        return (data.astype(np.float32) * INT16_SCALE if suffix == ".i16" else data), rate
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz, .wav, .f32 or .i16)")


class FileSource(ArraySource):
    """A signal file (.npy, .npz with ``signal``[+``fs``], 16-bit .wav, raw .f32/.i16), one channel."""

    def __init__(self, path, rate: Optional[float] = None, realtime: bool = False, key: Optional[str] = None,
                 default_rate: Optional[float] = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"source file {str(path)!r} does not exist")
        try:
            x, fs = _load_file(path, rate, key)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read source file {str(path)!r}: {exc}") from None
        x = np.asarray(x)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.number):
            raise InputError(f"{path}: the signal must be a 1-D numeric array, got shape {x.shape} {x.dtype}")
        fs = fs if fs is not None else default_rate
        if fs is None:
            raise InputError(f"{path}: sample rate unknown; pass --rate")
        super().__init__(x, fs, realtime, f"file {path} ({'real time' if realtime else 'as fast as possible'})")


class RawStreamSource(Source):
    """Raw little-endian float32 or int16 samples from a binary file object (stdin, a socket)."""

    def __init__(self, fileobj, fmt: str, rate: float, stall_timeout: float = 2.0, description: str = "",
                 fd: Optional[int] = None) -> None:
        if fmt not in RAW_FORMATS:
            raise InputError(f"raw sample format must be one of {sorted(RAW_FORMATS)}, got {fmt!r}")
        self._f, self.fmt, self._dt = fileobj, fmt, RAW_FORMATS[fmt]
        self.rate, self.stall_timeout = float(rate), float(stall_timeout)
        self._fd = fd if fd is not None else fileobj.fileno()
        self._carry = b""
        self.description = description or f"raw {fmt} stream"
        self._eof = False

    def _read_bytes(self, nbytes: int) -> Optional[bytes]:
        ready, _, _ = select.select([self._fd], [], [], self.stall_timeout)
        if not ready:
            return None
        return os.read(self._fd, nbytes)

    def _convert(self, data: bytes) -> Chunk:
        buf = self._carry + data
        size = self._dt.itemsize
        usable = len(buf) - len(buf) % size
        self._carry = buf[usable:]
        arr = np.frombuffer(buf[:usable], dtype=self._dt)
        clipped = 0
        if self.fmt == "i16":
            clipped = int(np.count_nonzero((arr == 32767) | (arr == -32768)))
            x = arr.astype(np.float32) * np.float32(INT16_SCALE)
        else:
            x = arr.astype(np.float32)
        return Chunk(x, time.monotonic(), clipped=clipped)

    def read(self, n: int) -> Chunk:
        if self._eof:
            return Chunk(_empty(), time.monotonic(), "eof")
        data = self._read_bytes(n * self._dt.itemsize)
        if data is None:
            return Chunk(_empty(), time.monotonic(), "stalled",
                         f"no data for {self.stall_timeout:g} s")
        if not data:
            self._eof = True
            note = (f"stream ended inside a sample ({len(self._carry)} stray bytes of a {self._dt.itemsize}-byte "
                    f"{self.fmt} sample): wrong sample format?") if self._carry else ""
            return Chunk(_empty(), time.monotonic(), "eof", note)
        return self._convert(data)


def stdin_source(fmt: str, rate: float, stall_timeout: float = 2.0) -> RawStreamSource:
    return RawStreamSource(sys.stdin.buffer, fmt, rate, stall_timeout, f"stdin raw {fmt}")


class TcpSource(RawStreamSource):
    """Listen on 127.0.0.1:PORT and read raw samples from one producer at a time; when the
    producer disconnects, report ``closed`` and wait for the next one."""

    def __init__(self, port: int, fmt: str, rate: float, stall_timeout: float = 2.0, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise InputError(f"the TCP source only listens on localhost, got {host!r}")
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._srv.bind(("127.0.0.1", int(port)))
        except OSError as exc:
            raise InputError(f"cannot listen on 127.0.0.1:{port}: {exc}") from None
        self._srv.listen(1)
        self.port = self._srv.getsockname()[1]
        self._conn: Optional[socket.socket] = None
        super().__init__(None, fmt, rate, stall_timeout, f"tcp 127.0.0.1:{self.port} raw {fmt}", fd=-1)

    def read(self, n: int) -> Chunk:
        if self._conn is None:
            ready, _, _ = select.select([self._srv], [], [], self.stall_timeout)
            if not ready:
                return Chunk(_empty(), time.monotonic(), "stalled", "waiting for a producer to connect")
            self._conn, _ = self._srv.accept()
            self._fd = self._conn.fileno()
            self._carry = b""
        data = self._read_bytes(n * self._dt.itemsize)
        if data is None:
            return Chunk(_empty(), time.monotonic(), "stalled", f"no data for {self.stall_timeout:g} s")
        if not data:
            note = "producer disconnected" + (f" inside a sample ({len(self._carry)} stray bytes)" if self._carry
                                              else "")
            self._conn.close()
            self._conn = None
            return Chunk(_empty(), time.monotonic(), "closed", note)
        return self._convert(data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._srv.close()


class SimSource(Source):
    """The simulated sensor, in real time or as fast as possible (``max_seconds`` of signal, or endless)."""

    simulated = True

    def __init__(self, kind: str, rate: float, realtime: bool = True, seed: int = 0,
                 max_seconds: Optional[float] = None) -> None:
        self._sensor = SimulatedSensor(kind, rate, seed=seed)
        self.rate, self.realtime = float(rate), bool(realtime)
        self._limit = None if max_seconds is None else int(max_seconds * rate)
        self._pos = 0
        self._pacer = Pacer(self.rate, self.realtime)
        self.description = f"simulated sensor ({kind}, {'real time' if realtime else 'as fast as possible'})"

    def read(self, n: int) -> Chunk:
        if self._limit is not None:
            n = min(n, self._limit - self._pos)
            if n <= 0:
                return Chunk(_empty(), time.monotonic(), "eof")
        x = self._sensor.read(n)
        self._pos += n
        return self._pacer.release(x)


def open_source(spec: str, rate: float, realtime: bool = False, stall_timeout: float = 2.0,
                max_seconds: Optional[float] = None, seed: int = 0) -> Source:
    """Parse ``file:PATH``, ``stdin:f32|i16``, ``tcp:127.0.0.1:PORT[:f32|i16]``, ``sim[:KIND]``.

    ``rate`` is the bundle's sample rate: raw streams and the simulator run at it;
    a file with its own rate (.npz ``fs``, .wav) must match it."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        if not rest:
            raise InputError("file source needs a path: file:PATH")
        src = FileSource(rest, realtime=realtime, default_rate=rate)
        if abs(src.rate - rate) > 1e-6 * rate:
            raise InputError(f"{rest}: sample rate {src.rate:g} Hz differs from the bundle's {rate:g} Hz; "
                             "resample it first")
        return src
    if kind == "stdin":
        return stdin_source(rest or "f32", rate, stall_timeout)
    if kind == "tcp":
        parts = rest.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise InputError(f"tcp source must be tcp:127.0.0.1:PORT[:f32|i16], got {spec!r}")
        return TcpSource(int(parts[1]), parts[2] if len(parts) == 3 else "f32", rate, stall_timeout, parts[0])
    if kind == "sim":
        return SimSource(rest or "normal", rate, realtime=realtime, seed=seed, max_seconds=max_seconds)
    raise InputError(f"unknown source {spec!r}; use file:PATH, stdin:f32|i16, tcp:127.0.0.1:PORT, or sim[:KIND]")
