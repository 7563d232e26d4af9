"""Run a bundle's FPGA head through the runtime's ``pynq`` executor on a **simulated** PYNQ device
(``edgeuq_runtime.pynq_sim``: pynq's own DMA driver on emulated AXI DMA registers, the IP served by
the head's hls4ml C-simulation library), on the canary rows the lowering wrote. Prints one JSON
line: rows, whether the executor's logits equal the C simulation's exactly, max |error| and argmax
agreement against the float head. No timing: nothing here is an FPGA.

    .venv-pynq/bin/python bench/pynq_head_check.py BUNDLE      (PYTHONPATH=runtime; pynq needs numpy<2)

Called by bench/text_student_boards.py for every bundle whose head is an ``edgeuq-pynq-head``
descriptor. The bundle is copied: the simulated bitstream is written into the copy only.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from edgeuq_runtime import load_bundle, pynq_sim
    from edgeuq_runtime.executors import load_graph

    src = Path((argv or sys.argv[1:])[0])
    with tempfile.TemporaryDirectory(prefix="edgeuq-pynq-check-") as tmp:
        b = Path(tmp) / "bundle"
        shutil.copytree(src, b)
        m = load_bundle(b).manifest
        desc = json.loads((b / m.head.file).read_text())
        pynq_sim.write_simulated_bitstream(b / m.head.options["bitfile"], b / m.head.file)
        dev = pynq_sim.attach()
        try:
            head = load_graph("pynq", b / m.head.file, options=m.head.options)
            c = np.load(b / desc["canary"])
            out = head.run_rows(c["stream"])
        finally:
            pynq_sim.detach(dev)
    print(json.dumps({"rows": int(len(out)), "equals_csim": bool(np.array_equal(out, c["csim_logits"])),
                      "max_err_vs_float": float(np.max(np.abs(out - c["float_logits"]))),
                      "argmax_agreement": float(np.mean(out.argmax(1) == c["float_logits"].argmax(1)))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
