"""Streaming diagnosis on the device: a source feeds a ring buffer, every hop a window is
decided (trunk once, density score, fixed or adaptive S, conformal set, abstention), and
JSON-lines records, hysteresis alarms and a summary come out. numpy + the executors only."""
from .alarm import Hysteresis
from .decide import Decision, Diagnoser, bundle_digest
from .loop import LatencyHistogram, StreamStats, run_stream
from .quality import window_flags
from .ring import RingBuffer, Windower
from .sim import SIM_KINDS, SimulatedSensor
from .sources import ArraySource, Chunk, FileSource, RawStreamSource, SimSource, Source, TcpSource, open_source

__all__ = ["Hysteresis", "Decision", "Diagnoser", "bundle_digest", "LatencyHistogram", "StreamStats", "run_stream",
           "window_flags", "RingBuffer", "Windower", "SIM_KINDS", "SimulatedSensor", "ArraySource", "Chunk",
           "FileSource", "RawStreamSource", "SimSource", "Source", "TcpSource", "open_source"]
