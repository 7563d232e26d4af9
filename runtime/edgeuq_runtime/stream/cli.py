"""``python -m edgeuq_runtime stream BUNDLE --source ...``: JSON lines on stdout, one per window."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

__all__ = ["add_stream_parser", "add_diagnosis_arguments", "diagnosis_setup", "run_stream_command"]


def add_stream_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stream", help="diagnose a live signal window by window (JSON lines)")
    p.add_argument("bundle")
    p.add_argument("--source", required=True,
                   help="file:PATH (.npy/.npz/.wav/.f32/.i16), stdin:f32|i16, tcp:127.0.0.1:PORT[:f32|i16], "
                        "sim[:normal|inner_race|outer_race|ball] (simulated sensor)")
    p.add_argument("--realtime", action="store_true",
                   help="play file/sim sources at their sample rate (default: as fast as possible)")
    add_diagnosis_arguments(p)
    p.add_argument("--max-windows", type=int)
    p.add_argument("--max-seconds", type=float, help="stop the simulated sensor after this much signal")
    p.add_argument("--stall-timeout", type=float, default=2.0, help="seconds without data before a 'stalled' record")
    p.add_argument("--max-stalls", type=int, help="stop after this many stalls/closes in a row (default: never)")
    p.add_argument("--no-calibration", action="store_true", help="ignore the bundle's calibration section")
    p.add_argument("--alarms-only", action="store_true", help="emit alarms, status and the summary only")
    p.add_argument("--deadline-ms", type=float,
                   help="a window's decision is due this long after its last sample (default: one hop); a longer "
                        "deadline lets consecutive windows be decided together (fewer model calls, same decisions)")
    p.add_argument("--max-batch", type=int, default=32, help="most windows decided together (with --deadline-ms)")
    p.set_defaults(func=run_stream_command)
    return p


def _emit(rec: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(rec, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def add_diagnosis_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the window loop that :func:`diagnosis_setup` and ``run_stream`` read, declared
    once for every streaming command (``stream``, ``serve``, ``edgeuq diagnose``)."""
    p.add_argument("--hop", type=int, help="samples between windows (default: the window length)")
    p.add_argument("--adaptive", action="store_true", help="adaptive S (stop sampling once the decision is settled)")
    p.add_argument("--samples", type=int, help="fixed S (default: calibration's, else the manifest's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="backend threads (default 1: one core)")
    p.add_argument("--alarm", default="3/5", help="hysteresis K/N: declare/clear after K of N windows agree")
    p.add_argument("--normal-class", help="class that clears an alarm (default: 'normal' if present, else class 0)")


def diagnosis_setup(bundle: str, args: argparse.Namespace, command: str) -> tuple:
    """The runtime, its Diagnoser and the alarm rule ``(k, n, normal class)`` from the options the
    streaming commands share (:func:`add_diagnosis_arguments`: ``--threads --adaptive --samples --seed
    --no-calibration --alarm --normal-class``); errors name the option."""
    from ..errors import InputError
    from ..session import UncertaintyRuntime
    from .decide import Diagnoser

    rt = UncertaintyRuntime(bundle, threads=args.threads)
    if rt.manifest.input.is_tokens:
        raise InputError(f"{command} needs a signal bundle (float32 input), not a token model")
    diag = Diagnoser(rt, adaptive=args.adaptive, samples=args.samples, seed=args.seed,
                     use_calibration=not args.no_calibration)
    try:
        k, n = (int(v) for v in args.alarm.split("/"))
    except ValueError:
        raise InputError(f"--alarm must be K/N (e.g. 3/5), got {args.alarm!r}") from None
    normal = args.normal_class or ("normal" if "normal" in rt.class_names else rt.class_names[0])
    if normal not in rt.class_names:
        raise InputError(f"--normal-class {normal!r} is not a class of the bundle: {list(rt.class_names)}")
    return rt, diag, (k, n, normal)


def run_stream_command(args: argparse.Namespace) -> int:
    from .alarm import Hysteresis
    from .loop import run_stream
    from .sources import open_source

    rt, diag, (k, n, normal) = diagnosis_setup(args.bundle, args, "stream")
    alarm = Hysteresis(k, n, normal)
    src = open_source(args.source, rt.manifest.input.sample_rate_hz, realtime=args.realtime,
                      stall_timeout=args.stall_timeout, max_seconds=args.max_seconds, seed=args.seed)
    if getattr(src, "port", None) is not None:
        print(f"listening on 127.0.0.1:{src.port}", file=sys.stderr, flush=True)
    try:
        run_stream(diag, src, _emit, hop=args.hop, alarm=alarm, max_windows=args.max_windows,
                   max_stalls=args.max_stalls, per_window=not args.alarms_only,
                   deadline=None if args.deadline_ms is None else args.deadline_ms / 1e3, max_batch=args.max_batch)
    except KeyboardInterrupt:
        pass
    finally:
        src.close()
    return 0
