"""A **simulated** PYNQ board for testing the ``pynq`` executor without hardware.

Nothing here touches an FPGA. :class:`SimulatedPynqDevice` is a ``pynq.Device``
subclass (registered through pynq's device probing and made the active device by
:func:`attach`) that

* serves ``pynq.allocate()`` from host memory, with made-up physical addresses;
* answers ``pynq.Overlay(bitfile)`` for a *simulated bitstream* (a small JSON file
  written by :func:`write_simulated_bitstream`, never a real ``.bit``) with the
  metadata of hls4ml's block design: an AXI DMA at ``hier_0/axi_dma_0``;
* emulates that AXI DMA's direct-register-mode registers (PG021: DMACR, DMASR,
  SA/DA, LENGTH) behind pynq's own register hook, so pynq's real DMA driver
  (``pynq.lib.dma.DMA``) drives it unchanged;
* serves the DMA's streams with the hls4ml **C-simulation library** of the head
  (loaded with ctypes): every complete packet of ``words_in`` float32 words on MM2S
  is one call of ``<project>_float``, exactly what hls4ml's ``predict()`` does per
  row, and its ``words_out`` results go to S2MM, with TLAST on the last word of the
  last row, as hls4ml's AXI-stream wrapper does.

Where a real board would hang (a receive channel waiting for data the IP will never
produce), the simulator raises :class:`SimulatedDmaStall` instead. Timing is not
simulated. Requires ``pynq`` (4.0) and a host that can load the C-simulation library
(x86-64 Linux).
"""
from __future__ import annotations

import ctypes
import itertools
import json
import struct
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
import pynq
from pynq.buffer import PynqBuffer

__all__ = [
    "SIMULATED_BITSTREAM_FORMAT", "SimulatedDeviceError", "SimulatedDmaStall", "CsimLibrary",
    "SimulatedAxiDma", "SimulatedPynqDevice", "write_simulated_bitstream", "attach", "detach",
]

SIMULATED_BITSTREAM_FORMAT = "edgeuq-simulated-bitstream"
DMA_BASE = 0x4040_0000
DMA_RANGE = 0x1_0000
DMA_VLNV = "xilinx.com:ip:axi_dma:7.1"
_MEM_BASE = 0x1000_0000
_PAGE = 4096


class SimulatedDeviceError(RuntimeError):
    """Misuse of the simulated device (a real board would misbehave or fault)."""


class SimulatedDmaStall(SimulatedDeviceError):
    """A DMA channel is polled while waiting for data that will never arrive (a real board hangs)."""


class CsimLibrary:
    """An hls4ml C-simulation shared library: ``<project>_float(float *in, float *out)``."""

    def __init__(self, path: Path, function: str, words_in: int, words_out: int) -> None:
        self.path = Path(path)
        try:
            self._lib = ctypes.CDLL(str(self.path))
            self._fn = getattr(self._lib, function)
        except (OSError, AttributeError) as exc:
            raise SimulatedDeviceError(f"cannot load C-simulation function {function!r} from {self.path}: {exc}") from None
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
        self._fn.restype = None
        self.function, self.words_in, self.words_out = function, int(words_in), int(words_out)

    def run_row(self, row: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(row, dtype=np.float32)
        if x.size != self.words_in:
            raise SimulatedDeviceError(f"C simulation takes {self.words_in} words per row, got {x.size}")
        y = np.zeros(self.words_out, np.float32)
        self._fn(x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return y

    def run(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float32).reshape(-1, self.words_in)
        return np.stack([self.run_row(r) for r in rows]) if len(rows) else np.zeros((0, self.words_out), np.float32)


class _Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rs = False
        self.busy = False
        self.err = 0
        self.ioc = False
        self.addr = 0
        self.length = 0
        self.written = 0

    def status(self) -> int:
        v = 0x1 if not self.rs else 0x0
        if self.rs and not self.busy:
            v |= 0x2
        v |= self.err
        if self.ioc:
            v |= 0x1000
        if self.err:
            v |= 0x4000
        return v


class SimulatedAxiDma:
    """AXI DMA (simple mode) registers + the head IP between its two streams."""

    def __init__(self, device: "SimulatedPynqDevice", ip: CsimLibrary, fullpath: str) -> None:
        self.device, self.ip, self.fullpath = device, ip, fullpath
        self.mm2s, self.s2mm = _Channel("MM2S"), _Channel("S2MM")
        self._in: Deque[Tuple[float, bool]] = deque()
        self._out: Deque[Tuple[bytes, bool]] = deque()
        self.rows_processed = 0

    # -- registers -----------------------------------------------------------------------
    def _channel(self, offset: int) -> Tuple[_Channel, int]:
        return (self.s2mm, offset - 0x30) if offset >= 0x30 else (self.mm2s, offset)

    def read(self, offset: int) -> int:
        ch, reg = self._channel(offset)
        if reg == 0x00:
            return 0x1 if ch.rs else 0x0
        if reg == 0x04:
            if ch.busy and ch is self.s2mm:
                raise SimulatedDmaStall(
                    f"simulated DMA {self.fullpath}: S2MM is waiting for {ch.length - ch.written} more bytes that the "
                    f"IP will never produce ({len(self._in)} words of an incomplete {self.ip.words_in}-word row are "
                    "stuck in its input); a real board would hang here")
            return ch.status()
        if reg == 0x18:
            return ch.addr & 0xFFFFFFFF
        if reg == 0x1C:
            return ch.addr >> 32
        if reg == 0x28:
            return ch.written if ch is self.s2mm else ch.length
        return 0

    def write(self, offset: int, value: int) -> None:
        ch, reg = self._channel(offset)
        if reg == 0x00:
            if value & 0x4:  # soft reset: both channels and the streams
                self.__init__(self.device, self.ip, self.fullpath)
                return
            ch.rs = bool(value & 0x1)
            if not ch.rs:
                ch.busy = False
        elif reg == 0x04:
            if value & 0x1000:
                ch.ioc = False
            if value & 0x4000:
                ch.err = 0
        elif reg == 0x18:
            ch.addr = (ch.addr & ~0xFFFFFFFF) | value
        elif reg == 0x1C:
            ch.addr = (ch.addr & 0xFFFFFFFF) | (value << 32)
        elif reg == 0x28:
            self._start(ch, value)

    # -- transfers -------------------------------------------------------------------------
    def _fault(self, ch: _Channel, bit: int) -> None:
        ch.err |= bit
        ch.busy = False
        ch.rs = False

    def _start(self, ch: _Channel, nbytes: int) -> None:
        if not ch.rs:
            raise SimulatedDeviceError(f"simulated DMA {self.fullpath}: {ch.name} LENGTH written while halted")
        if ch.busy:
            raise SimulatedDeviceError(f"simulated DMA {self.fullpath}: {ch.name} LENGTH written while busy")
        if nbytes == 0:
            return self._fault(ch, 0x10)
        mem = self.device.memory_at(ch.addr, nbytes)
        if mem is None:
            return self._fault(ch, 0x40)  # decode error: no buffer at that address
        ch.length, ch.written, ch.busy, ch.ioc = nbytes, 0, True, False
        if ch is self.mm2s:
            if nbytes % 4:
                return self._fault(ch, 0x10)
            words = np.frombuffer(mem.tobytes(), np.float32)
            for i, w in enumerate(words):
                self._in.append((float(w), i == len(words) - 1))  # the DMA asserts TLAST on the last beat
            ch.busy, ch.ioc = False, True
            self._run_ip()
        self._pump()

    def _run_ip(self) -> None:
        n = self.ip.words_in
        while len(self._in) >= n:
            beats = [self._in.popleft() for _ in range(n)]
            y = self.ip.run_row(np.array([b[0] for b in beats], np.float32))
            last = any(b[1] for b in beats)  # hls4ml's wrapper: TLAST on the last output if any input had it
            for j, v in enumerate(y):
                self._out.append((struct.pack("<f", float(v)), last and j == len(y) - 1))
            self.rows_processed += 1

    def _pump(self) -> None:
        ch = self.s2mm
        if not ch.busy:
            return
        mem = self.device.memory_at(ch.addr, ch.length)
        while self._out and ch.busy:
            if ch.written + 4 > ch.length:
                return self._fault(ch, 0x10)  # packet longer than the buffer: DMAIntErr
            word, last = self._out.popleft()
            mem[ch.written:ch.written + 4] = np.frombuffer(word, np.uint8)
            ch.written += 4
            if last:
                ch.busy, ch.ioc = False, True


class _SimMetadata:
    """What pynq's Overlay reads from a parsed .hwh, for hls4ml's AXI-stream block design."""

    def __init__(self, dma_path: str) -> None:
        hier, _, name = dma_path.rpartition("/")
        params = {"c_include_sg": "0", "c_sg_length_width": "26", "c_micro_dma": "0",
                  "c_include_mm2s": "1", "c_include_s2mm": "1", "c_include_mm2s_dre": "0",
                  "c_include_s2mm_dre": "0", "c_m_axi_mm2s_data_width": "32", "c_m_axi_s2mm_data_width": "32",
                  "c_mm2s_burst_size": "256", "c_s2mm_burst_size": "256"}
        dma = {"fullpath": dma_path, "type": DMA_VLNV, "phys_addr": DMA_BASE, "addr_range": DMA_RANGE,
               "parameters": params, "interrupts": {}, "gpio": {}, "state": None, "mem_id": "S_AXI_LITE"}
        self.ip_dict = {dma_path: dma}
        self.hierarchy_dict: Dict[str, Any] = {}
        if hier:
            self.hierarchy_dict[hier] = {"ip": {name: dma}, "hierarchies": {}, "interrupts": {}, "gpio": {},
                                         "memories": {}, "fullpath": hier}
        self.gpio_dict: Dict[str, Any] = {}
        self.interrupt_controllers: Dict[str, Any] = {}
        self.interrupt_pins: Dict[str, Any] = {}
        self.mem_dict: Dict[str, Any] = {}
        self.clock_dict: Dict[str, Any] = {}
        self.systemgraph = None


def _read_simulated_bitstream(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != SIMULATED_BITSTREAM_FORMAT:
        raise SimulatedDeviceError(f"{path} is not a simulated bitstream ({SIMULATED_BITSTREAM_FORMAT}); the simulated "
                                   "device cannot program real FPGA bitstreams")
    return data


class SimulatedPynqDevice(pynq.Device):
    """A simulated PYNQ device (no FPGA): host memory for buffers, an emulated AXI DMA,
    and the hls4ml C-simulation library as the programmable logic."""

    _probe_priority_ = 9137
    _attached: List["SimulatedPynqDevice"] = []

    @classmethod
    def _probe_(cls):
        return list(cls._attached)

    def __init__(self, tag: str = "edgeuq-simulated-pynq") -> None:
        super().__init__(tag)
        self.name = tag
        self.capabilities = {"MEMORY_MAPPED": False, "REGISTER_RW": True}
        self.timestamp = ""
        self.bitfile_name = None
        self.dma: Optional[SimulatedAxiDma] = None
        self._mem: Dict[int, np.ndarray] = {}
        self._next = _MEM_BASE
        self.clear_dict()

    # -- memory ------------------------------------------------------------------------------
    def allocate(self, shape, dtype, **kwargs) -> PynqBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        mem = np.zeros(max(nbytes, 1), np.uint8)
        addr = self._next
        self._next += (max(nbytes, 1) + _PAGE - 1) // _PAGE * _PAGE + _PAGE
        buf = PynqBuffer(shape, dtype, buffer=mem, device=self, device_address=addr, coherent=True)
        self._mem[addr] = mem
        weakref.finalize(buf, self._mem.pop, addr, None)
        return buf

    def memory_at(self, addr: int, nbytes: int) -> Optional[np.ndarray]:
        """A writable byte view of simulated physical memory, or None when unmapped."""
        for base, mem in self._mem.items():
            if base <= addr and addr + nbytes <= base + mem.size:
                return mem[addr - base: addr - base + nbytes]
        return None

    def flush(self, *args) -> None:  # coherent buffers: nothing to do
        pass

    def invalidate(self, *args) -> None:
        pass

    # -- registers (pynq.MMIO with the REGISTER_RW capability) --------------------------------
    def _dma_for(self, address: int) -> Tuple[SimulatedAxiDma, int]:
        if self.dma is None:
            raise SimulatedDeviceError("no simulated bitstream is loaded (call pynq.Overlay first)")
        off = address - DMA_BASE
        if not 0 <= off < DMA_RANGE:
            raise SimulatedDeviceError(f"register access at {address:#x}: nothing mapped there in the simulation")
        return self.dma, off

    def read_registers(self, address: int, length: int) -> bytes:
        dma, off = self._dma_for(address)
        return b"".join(struct.pack("<I", dma.read(off + 4 * i) & 0xFFFFFFFF) for i in range(max(1, length // 4)))[:length]

    def write_registers(self, address: int, data: bytes) -> None:
        dma, off = self._dma_for(address)
        for i in range(0, len(data), 4):
            dma.write(off + i, struct.unpack("<I", bytes(data[i:i + 4]).ljust(4, b"\0"))[0])

    # -- bitstreams ----------------------------------------------------------------------------
    def get_bitfile_metadata(self, bitfile_name: str) -> _SimMetadata:
        return _SimMetadata(_read_simulated_bitstream(bitfile_name)["dma"])

    def download(self, bitstream, parser=None) -> None:
        data = _read_simulated_bitstream(bitstream.bitfile_name)
        ip = data["ip"]
        lib = CsimLibrary(Path(ip["csim_library"]), ip["function"], ip["words_in"], ip["words_out"])
        self.dma = SimulatedAxiDma(self, lib, data["dma"])
        self.bitfile_name = bitstream.bitfile_name
        self.post_download(bitstream, parser)

    def __repr__(self) -> str:
        return f"SimulatedPynqDevice({self.tag!r}, bitstream={self.bitfile_name!r})"


def write_simulated_bitstream(bit_path: Path, descriptor_path: Path, csim_library: Optional[Path] = None) -> Path:
    """Write a simulated bitstream at ``bit_path`` for the head described by ``descriptor_path``
    (an ``edgeuq-pynq-head`` file), whose IP is its C-simulation library."""
    desc = json.loads(Path(descriptor_path).read_text(encoding="utf-8"))
    csim = desc.get("csim") or {}
    lib = Path(csim_library) if csim_library is not None else Path(descriptor_path).parent / csim.get("library", "")
    if not lib.is_file():
        raise SimulatedDeviceError(f"no C-simulation library for {descriptor_path} (looked for {lib})")
    data = {
        "format": SIMULATED_BITSTREAM_FORMAT, "version": 1,
        "note": "SIMULATION ONLY: not an FPGA bitstream; served by edgeuq_runtime.pynq_sim",
        "dma": desc["dma"],
        "ip": {"csim_library": str(lib.resolve()), "function": csim.get("function", "myproject_float"),
               "words_in": int(desc["stream"]["words_in"]), "words_out": int(desc["stream"]["words_out"])},
    }
    Path(bit_path).parent.mkdir(parents=True, exist_ok=True)
    Path(bit_path).write_text(json.dumps(data, indent=2))
    return Path(bit_path)


def attach() -> SimulatedPynqDevice:
    """Create a simulated device and make it pynq's active device (``pynq.allocate``,
    ``pynq.Overlay`` and ``pynq.MMIO`` then use it)."""
    dev = SimulatedPynqDevice(f"edgeuq-simulated-pynq-{next(_ids)}")
    SimulatedPynqDevice._attached.append(dev)
    devices = pynq.Device.__dict__.get("_devices")
    if devices is not None and dev not in devices:
        devices.append(dev)
    pynq.Device.active_device = dev
    return dev


def detach(dev: SimulatedPynqDevice) -> None:
    """Undo :func:`attach`; pynq has no active device afterwards unless another was attached."""
    if dev in SimulatedPynqDevice._attached:
        SimulatedPynqDevice._attached.remove(dev)
    devices = pynq.Device.__dict__.get("_devices")
    if devices is not None and dev in devices:
        devices.remove(dev)
    if pynq.Device.__dict__.get("_active_device") is dev:
        if SimulatedPynqDevice._attached:
            pynq.Device.active_device = SimulatedPynqDevice._attached[-1]
        else:
            del pynq.Device._active_device


_ids = itertools.count()
