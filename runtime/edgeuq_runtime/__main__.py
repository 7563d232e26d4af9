"""Command line: ``python -m edgeuq_runtime {info,predict} BUNDLE ...``.

Any :class:`RuntimeUQError` (bad bundle, bad input, backend failure) prints one line
``error: ...`` on stderr and exits with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import numpy as np

from . import __version__
from .bundle import load_bundle
from .errors import InputError, RuntimeUQError
from .session import UncertaintyRuntime


def _info(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, verify=True)
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
    ]
    lines += [f"  {name}  {digest[:16]}" for name, digest in m.files.items()]
    if m.metadata:
        lines.append(f"metadata:  {', '.join(sorted(m.metadata))}")
    print("\n".join(lines))
    return 0


def _predict(args: argparse.Namespace) -> int:
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read input {args.input!r} as a .npy array: {exc}") from None
    rt = UncertaintyRuntime(args.bundle, threads=args.threads)
    result = rt.predict(x, samples=args.samples, seed=args.seed)
    rows = result.to_rows()
    if args.json:
        print(json.dumps({"model": rt.manifest.model_name, "samples": result.num_samples, "results": rows}, indent=2))
        return 0
    width = max(10, *(len(r["prediction"]) for r in rows))
    print(f"{'#':>4}  {'prediction':<{width}}  {'confidence':>10}  {'total':>8}  {'aleatoric':>9}  {'epistemic':>9}")
    for i, r in enumerate(rows):
        print(f"{i:>4}  {r['prediction']:<{width}}  {r['confidence']:>10.4f}  {r['total']:>8.4f}  "
              f"{r['aleatoric']:>9.4f}  {r['epistemic']:>9.4f}")
    print(f"({result.num_samples} samples; entropies in nats)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgeuq_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgeuq_runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the manifest summary and verify file hashes")
    info.add_argument("bundle")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", help="predict with uncertainty for windows in a .npy file")
    pred.add_argument("bundle")
    pred.add_argument("input", help=".npy file of shape (length,) or (batch, length), floating dtype")
    pred.add_argument("--samples", type=int, default=None, help="number of samples S (default: manifest)")
    pred.add_argument("--seed", type=int, default=None, help="seed for the noise draws")
    pred.add_argument("--threads", type=int, default=None, help="backend threads")
    pred.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pred.set_defaults(func=_predict)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuntimeUQError as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
