"""The ``pynq`` executor: the stochastic head on a Zynq FPGA through PYNQ (Overlay + AXI DMA).

The graph file is a JSON descriptor written by edgeuq's hls4ml lowering
(``head.fpga.json``, format ``edgeuq-pynq-head``): the head's named inputs and their
widths, in stream order, the output width, the bitstream and the DMA's path in the
overlay. Each head row travels as one float32 AXI-stream packet
``[features | noise_1 | ...]``; the IP answers with the row's logits.

Loading: ``pynq.Overlay(bitfile)`` (the ``.hwh`` must sit next to the ``.bit``), then
the DMA at ``dma`` (``hier_0/axi_dma_0``). Running: rows are packed into a buffer from
``pynq.allocate``, the receive channel is armed, the send channel streams the rows,
both channels are waited on and the logits read back; large batches go in chunks
that fit the DMA's maximum transfer. ``pynq`` is imported only by the loader.

Options (from the manifest's graph entry, overriding the descriptor): ``bitfile``
(path, relative to the descriptor's folder), ``dma`` (path in the overlay, ``/``- or
``.``-separated), ``max_rows`` (rows per DMA transfer), ``download`` (bool, default
true: program the bitstream when loading).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .. import _checks as c
from ..errors import BackendError
from . import register_executor, register_executor_files

__all__ = ["PynqHead", "HeadDescriptor", "read_descriptor", "load_pynq", "DESCRIPTOR_FORMAT"]

DESCRIPTOR_FORMAT = "edgeuq-pynq-head"
_OPTIONS = {"bitfile", "dma", "max_rows", "download"}
_WORD = 4  # float32 on the stream
_MAX_DESCRIPTOR = 1 << 20


class HeadDescriptor:
    """The parsed ``edgeuq-pynq-head`` descriptor (every field type-checked by the strict-JSON
    toolkit :mod:`edgeuq_runtime._checks`, nothing coerced; failures are BackendErrors)."""

    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path = path
        where = f"pynq head descriptor {path.name!r}"
        if not isinstance(data, Mapping) or data.get("format") != DESCRIPTOR_FORMAT:
            raise BackendError(f"{where} ({path}) is not an {DESCRIPTOR_FORMAT!r} file")
        with c.translated(lambda msg: BackendError(f"{where}: {msg}")):
            self._parse(data)

    def _parse(self, data: Mapping[str, Any]) -> None:
        if c.integer("version", c.key("", data, "version"), lo=0) != 1:
            raise c.fail("version", f"unsupported version {str(data.get('version'))[:40]} (this runtime reads 1)")

        def ports(key: str) -> Tuple[Tuple[str, int], ...]:
            items = c.key("", data, key)
            if not isinstance(items, list) or not items:
                raise c.fail(key, "must be a non-empty list of {name, size} objects")
            out = []
            for i, item in enumerate(items):
                port = c.obj_keys(f"{key}[{i}]", item, {"name", "size"}, {"name", "size"})
                out.append((c.text(f"{key}[{i}].name", port["name"]),
                            c.integer(f"{key}[{i}].size", port["size"], lo=1, hi=1 << 24)))
            return tuple(out)

        self.inputs: Tuple[Tuple[str, int], ...] = ports("inputs")
        self.outputs: Tuple[Tuple[str, int], ...] = ports("outputs")
        c.names("inputs[].name", [n for n, _ in self.inputs])
        stream = c.obj("stream", c.key("", data, "stream"))
        self.bitfile = c.text("bitfile", c.key("", data, "bitfile"))
        self.dma = c.text("dma", c.key("", data, "dma"))
        if stream.get("dtype") != "float32":
            raise c.fail("stream.dtype", f"{str(stream.get('dtype'))[:40]} is not supported (float32 only)")
        if len(self.outputs) != 1:
            raise c.fail("outputs", f"exactly one output expected, got {[o[0] for o in self.outputs]}")
        self.words_in = sum(s for _, s in self.inputs)
        self.words_out = self.outputs[0][1]
        got = (c.integer("stream.words_in", c.key("stream", stream, "words_in")),
               c.integer("stream.words_out", c.key("stream", stream, "words_out")))
        if got != (self.words_in, self.words_out):
            raise c.fail("stream", f"widths {str(dict(stream))[:120]} disagree with the inputs/outputs "
                                   f"({self.words_in} in, {self.words_out} out)")
        self.raw = dict(data)


def read_descriptor(path: Path) -> HeadDescriptor:
    from ..errors import ManifestError
    from ..manifest import parse_json_strict

    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_DESCRIPTOR + 1)
        if len(raw) > _MAX_DESCRIPTOR:
            raise BackendError(f"pynq head descriptor {str(path)!r} is larger than {_MAX_DESCRIPTOR} bytes")
        data = parse_json_strict(raw.decode("utf-8"), "pynq head descriptor", max_bytes=_MAX_DESCRIPTOR)
    except (OSError, UnicodeDecodeError, ManifestError) as exc:
        raise BackendError(f"cannot read pynq head descriptor {str(path)!r}: {exc}") from None
    return HeadDescriptor(Path(path), data)


def _bitfile(path: Path, desc: HeadDescriptor, opts: Mapping[str, Any]) -> Path:
    name = opts.get("bitfile", desc.bitfile)
    with c.translated(BackendError):
        c.text("backend 'pynq' option 'bitfile'", name)
    bitfile = Path(name)
    return bitfile if bitfile.is_absolute() else desc.path.parent / bitfile


@register_executor_files("pynq")
def pynq_files(path: Path, options: Mapping[str, Any]) -> List[Path]:
    """The bitstream the overlay loads, and its ``.hwh`` hardware description where present."""
    bit = _bitfile(path, read_descriptor(Path(path)), options)
    hwh = bit.with_suffix(".hwh")
    return [bit, hwh] if hwh.exists() or hwh.is_symlink() else [bit]


def _import_pynq() -> Any:
    try:
        return importlib.import_module("pynq")
    except ImportError as exc:
        raise BackendError(
            f"backend 'pynq' needs the pynq package ({exc}); on a PYNQ board it is preinstalled, elsewhere: "
            "pip install 'edgeuq-runtime[pynq]' (numpy<2)"
        ) from None


def _walk(overlay: Any, dotted: str) -> Any:
    obj = overlay
    for part in dotted.replace(".", "/").split("/"):
        try:
            obj = getattr(obj, part)
        except (AttributeError, RuntimeError, KeyError) as exc:
            raise BackendError(f"overlay has no {dotted!r} (failed at {part!r}: {exc})") from None
    return obj


class PynqHead:
    """A head IP behind an AXI DMA: ``run(feeds)`` streams rows and returns the logits."""

    def __init__(self, desc: HeadDescriptor, overlay: Any, dma: Any, allocate: Any,
                 max_rows: Optional[int] = None) -> None:
        self.descriptor = desc
        self.overlay = overlay
        self.dma = dma
        self._allocate = allocate
        for ch in ("sendchannel", "recvchannel"):
            if getattr(dma, ch, None) is None:
                raise BackendError(f"DMA {desc.dma!r} has no {ch}: the head needs both MM2S and S2MM channels")
        limit = getattr(dma, "buffer_max_size", None)
        fit = None if limit is None else int(limit) // (_WORD * max(desc.words_in, desc.words_out))
        if max_rows is not None:
            with c.translated(BackendError):
                c.integer("option max_rows", max_rows, lo=1)
        rows = max_rows if max_rows is not None else (fit or 4096)
        if fit is not None and rows > fit:
            raise BackendError(f"max_rows {rows} exceeds what one DMA transfer carries ({fit} rows)")
        self.max_rows = max(1, int(rows))
        self._in = self._out = None
        self._capacity = 0
        self.input_shapes: Dict[str, Tuple[Optional[int], ...]] = {n: (None, s) for n, s in desc.inputs}

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(n for n, _ in self.descriptor.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return (self.descriptor.outputs[0][0],)

    def _buffers(self, rows: int):
        if rows > self._capacity:
            self._in = self._allocate(shape=(rows, self.descriptor.words_in), dtype=np.float32)
            self._out = self._allocate(shape=(rows, self.descriptor.words_out), dtype=np.float32)
            self._capacity = rows
        return self._in, self._out

    def pack(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rows in stream layout ``[input_1 | input_2 | ...]`` (float32), after checking names and shapes."""
        names = self.input_names
        if sorted(feeds) != sorted(names):
            raise BackendError(f"pynq head {self.descriptor.path.name!r} takes inputs {list(names)}, got {sorted(feeds)}")
        n = None
        parts = []
        for name, size in self.descriptor.inputs:
            arr = np.asarray(feeds[name])
            if arr.ndim < 1 or (n is not None and arr.shape[0] != n) or int(np.prod(arr.shape[1:])) != size:
                raise BackendError(f"pynq head input {name!r} must have shape (rows, {size}) with one row count for "
                                   f"every input, got {arr.shape}")
            n = arr.shape[0]
            parts.append(arr.reshape(n, size).astype(np.float32, copy=False))
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    def run_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stream packed rows ``(n, words_in)`` through the IP; returns ``(n, words_out)`` float32."""
        n = rows.shape[0]
        out = np.empty((n, self.descriptor.words_out), np.float32)
        send, recv = self.dma.sendchannel, self.dma.recvchannel
        for r0 in range(0, n, self.max_rows):
            r1 = min(r0 + self.max_rows, n)
            k = r1 - r0
            ibuf, obuf = self._buffers(k)
            ibuf[:k] = rows[r0:r1]
            try:
                recv.transfer(obuf, nbytes=k * self.descriptor.words_out * _WORD)
                send.transfer(ibuf, nbytes=k * self.descriptor.words_in * _WORD)
                send.wait()
                recv.wait()
            except Exception as exc:  # pynq raises RuntimeError/ValueError; a simulator its own errors
                raise BackendError(f"pynq head {self.descriptor.path.name!r}: DMA transfer of rows {r0}..{r1 - 1} "
                                   f"failed: {exc}") from exc
            got = getattr(recv, "transferred", None)
            if got is not None and int(got) != k * self.descriptor.words_out * _WORD:
                raise BackendError(f"pynq head {self.descriptor.path.name!r}: received {got} bytes for {k} rows, "
                                   f"expected {k * self.descriptor.words_out * _WORD}")
            out[r0:r1] = obuf[:k]
        return out

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {self.output_names[0]: self.run_rows(self.pack(feeds))}

    def __repr__(self) -> str:
        d = self.descriptor
        return f"PynqHead({str(d.path)!r}, inputs={list(self.input_names)}, dma={d.dma!r}, max_rows={self.max_rows})"


@register_executor("pynq")
def load_pynq(path: Path, threads: Optional[int] = None, options: Optional[Mapping[str, Any]] = None) -> PynqHead:
    """Load the head descriptor at ``path``, program its bitstream and bind the DMA (``threads`` is unused)."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - _OPTIONS)
    if unknown:
        raise BackendError(f"backend 'pynq': unknown options {unknown} for {Path(path).name}; known: {sorted(_OPTIONS)}")
    desc = read_descriptor(Path(path))
    pynq = _import_pynq()
    bitfile = _bitfile(Path(path), desc, opts)
    if not bitfile.is_file():
        raise BackendError(
            f"bitstream {str(bitfile)!r} for the pynq head is missing: synthesise the HLS project shipped in the "
            f"bundle (see fpga/README.md) and copy the .bit and .hwh there, or set the graph option 'bitfile'")
    try:
        overlay = pynq.Overlay(str(bitfile), download=bool(opts.get("download", True)))
    except Exception as exc:  # pynq raises RuntimeError/IOError/ValueError
        raise BackendError(f"could not load overlay {str(bitfile)!r} with pynq: {exc}") from exc
    dma = _walk(overlay, str(opts.get("dma", desc.dma)))
    return PynqHead(desc, overlay, dma, pynq.allocate, opts.get("max_rows"))
