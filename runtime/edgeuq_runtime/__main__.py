"""Command line: ``python -m edgeuq_runtime {info,predict} BUNDLE ...`` (also ``stream``,
``serve``, the OTA commands and ``agent``, the board's timing agent).

Any :class:`RuntimeUQError` (bad bundle, bad input, backend failure) and any bad
command-line argument prints one line ``error: ...`` on stderr and exits with status 2;
never a traceback (an unexpected internal error is reported the same way, named as such).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, NoReturn, Optional

import numpy as np

from . import __version__
from .bundle import MANIFEST_FILE
from .errors import InputError, RuntimeUQError
from .executors import MAX_THREADS
from .manifest import MAX_SAMPLES
from .session import UncertaintyRuntime


class _CliError(Exception):
    """A bad command line (reported like a runtime error: one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise _CliError(f"{self.prog}: {message} (see --help)")


def _int_arg(text: str) -> int:
    text = text.strip()
    if not text.lstrip("+-").isdigit() or len(text) > 30:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}")
    return int(text)


def _printable(text: str) -> str:
    """``text`` safe for any console: characters the console cannot encode are escaped."""
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(enc, "backslashreplace").decode(enc, "replace")


def _info(args: argparse.Namespace) -> int:
    # the same load-time checks as predict: hashes, graphs load, names and static shapes match the
    # manifest, one neutral row through trunk and head gives one logit per class
    rt = UncertaintyRuntime(args.bundle, threads=1)
    bundle = rt.bundle
    m = bundle.manifest
    noise = ", ".join(f"{n.name} {n.kind}{list(n.shape)}{n.params or ''}" for n in m.noise) or "(none)"
    lines = [
        f"bundle:    {bundle.root}",
        f"model:     {m.model_name} {m.model_version}",
        f"format:    {m.format} v{m.manifest_version}, backend {m.backend}",
        f"input:     {m.input.name} ({m.input.length},) {m.input.dtype} @ {m.input.sample_rate_hz:g} Hz, "
        f"normalization {m.input.normalization}",
        f"classes:   {len(m.class_names)}: {', '.join(m.class_names)}",
        f"samples:   {m.default_samples} (default)",
        f"noise:     {noise}",
        f"trunk:     {m.trunk.file} {list(m.trunk.inputs)} -> {list(m.trunk.outputs)}",
        f"head:      {m.head.file} {list(m.head.inputs)} -> {list(m.head.outputs)}",
        f"files:     {len(m.files)} verified (sha256 OK)",
        f"checks:    graphs load; inputs/outputs and static shapes match; one row -> {m.num_classes} logits OK",
        f"digest:    {bundle.digest}  (sha256 of {MANIFEST_FILE}: this bundle's identity)",
    ]
    lines += [f"  {name}  {digest[:16]}" for name, digest in m.files.items()]
    if m.sections:
        lines.append(f"sections:  {', '.join(sorted(m.sections))}")
    placed = (m.sections or {}).get("placement")
    if placed is not None:
        lines += [f"placement: {role} on {g.executor} ({g.target}): {g.chosen_by}"
                  + (f", {g.chosen.median_ms:.3f} ms median" if g.chosen.median_ms is not None else "")
                  + f" [{placed.measured}]" for role, g in placed.graphs.items()]
    if m.metadata:
        lines.append(f"metadata:  {', '.join(sorted(m.metadata))}")
    print(_printable("\n".join(lines)))
    return 0


def _read_input(name: str) -> np.ndarray:
    path = Path(name)
    try:
        if not path.is_file():
            raise InputError(f"cannot read input {name!r}: not an existing regular file")
        # memory-mapped: a header that claims more data than the file holds is refused, not allocated
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, TypeError, OverflowError, SyntaxError) as exc:
        raise InputError(f"cannot read input {name!r} as a .npy array: {exc}") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"cannot read input {name!r} as a .npy array: it is an archive, not one array")
    return x


def _predict(args: argparse.Namespace) -> int:
    x = _read_input(args.input)
    rt = UncertaintyRuntime(args.bundle, threads=args.threads)
    result = rt.predict(x, samples=args.samples, seed=args.seed)
    rows = result.to_rows()
    if args.json:
        print(json.dumps({"model": rt.manifest.model_name, "bundle_digest": rt.bundle_digest,
                          "samples": result.num_samples, "results": rows}, indent=2))
        return 0
    shown = [r["prediction"] if r["prediction"] is not None else f"({r['input_flag']} input)" for r in rows]
    width = max(10, *(len(p) for p in shown))
    print(f"{'#':>4}  {'prediction':<{width}}  {'confidence':>10}  {'total':>8}  {'aleatoric':>9}  {'epistemic':>9}")
    num = lambda v, w: f"{'-':>{w}}" if v is None else f"{v:>{w}.4f}"  # noqa: E731  (None: flagged row)
    for i, (r, p) in enumerate(zip(rows, shown)):
        print(_printable(f"{i:>4}  {p:<{width}}  {num(r['confidence'], 10)}  {num(r['total'], 8)}  "
                         f"{num(r['aleatoric'], 9)}  {num(r['epistemic'], 9)}"))
    flagged = sum(r["input_flag"] is not None for r in rows)
    note = f"; {flagged} flagged input(s) not diagnosed" if flagged else ""
    print(f"({result.num_samples} samples; entropies in nats{note}; bundle {rt.bundle_digest})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m edgeuq_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgeuq_runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="print the manifest summary and digest after the runtime's load-time "
                                       "checks (file hashes, graphs, one check run)")
    info.add_argument("bundle")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", help="predict with uncertainty for windows in a .npy file")
    pred.add_argument("bundle")
    pred.add_argument("input", help=".npy file of shape (length,) or (batch, length), floating dtype")
    pred.add_argument("--samples", type=_int_arg, default=None,
                      help=f"number of samples S, 1..{MAX_SAMPLES} (default: manifest)")
    pred.add_argument("--seed", type=_int_arg, default=None, help="seed for the noise draws")
    pred.add_argument("--threads", type=_int_arg, default=None, help=f"backend threads, 1..{MAX_THREADS}")
    pred.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pred.set_defaults(func=_predict)
    from .stream.cli import add_stream_parser  # stream: live diagnosis, JSON lines (edgeuq_runtime.stream)
    add_stream_parser(sub)
    from .serve.cli import add_serve_parser  # serve: the stream + a read-only live web page (edgeuq_runtime.serve)
    add_serve_parser(sub)
    from .ota.cli import register as _register_ota  # update | status | rollback (edgeuq_runtime.ota)
    _register_ota(sub)
    from .agent import add_agent_parser  # agent: times bundles sent by `edgeuq profile --agent`
    add_agent_parser(sub)
    return parser


def _fail(message: str) -> int:
    line = (message.splitlines() or [""])[0]
    print(f"error: {line}"[:2000], file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (RuntimeUQError, _CliError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except MemoryError:
        return _fail("out of memory (reduce the batch, --samples or max_batch)")
    except Exception as exc:  # never a traceback on the device console; name it as a bug
        return _fail(f"internal error {type(exc).__name__}: {exc} (a bug in edgeuq_runtime; please report it)")


if __name__ == "__main__":
    sys.exit(main())
