"""The pynq head descriptor parser (strict JSON through edgeuq_runtime._checks): every malformed
field is refused with a BackendError naming it. Pure parsing, no pynq needed, so it runs both on
the host and in .venv-pynq (tests/test_pynq_env.py runs every test_rt_pynq*.py there)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from edgeuq_runtime.errors import BackendError, ManifestError
from edgeuq_runtime.executors.pynq import DESCRIPTOR_FORMAT, HeadDescriptor

GOOD = {"format": DESCRIPTOR_FORMAT, "version": 1, "bitfile": "head.bit", "dma": "axi_dma_0",
        "inputs": [{"name": "features", "size": 4}, {"name": "mask", "size": 4}],
        "outputs": [{"name": "logits", "size": 3}],
        "stream": {"dtype": "float32", "words_in": 8, "words_out": 3}}


def _parse(doc):
    return HeadDescriptor(Path("head.fpga.json"), doc)


def test_good_descriptor_parses():
    d = _parse(copy.deepcopy(GOOD))
    assert d.inputs == (("features", 4), ("mask", 4)) and d.outputs == (("logits", 3),)
    assert (d.words_in, d.words_out, d.bitfile, d.dma) == (8, 3, "head.bit", "axi_dma_0")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d.pop("dma"), "dma"),
    (lambda d: d.update(bitfile=""), "bitfile"),
    (lambda d: d.update(inputs=[]), "inputs"),
    (lambda d: d["inputs"][1].update(size=0), r"inputs\[1\]\.size"),
    (lambda d: d["inputs"][0].update(size=4.0), r"inputs\[0\]\.size"),
    (lambda d: d["outputs"][0].update(extra=1), r"outputs\[0\]"),
    (lambda d: d["inputs"][1].update(name="features"), "unique"),
    (lambda d: d.update(stream=[]), "stream"),
    (lambda d: d["stream"].update(dtype="int8"), "stream.dtype"),
    (lambda d: d["stream"].update(words_in=7), "disagree"),
    (lambda d: d["stream"].update(words_out="3"), "stream.words_out"),
    (lambda d: d.update(outputs=[{"name": "a", "size": 3}, {"name": "b", "size": 1}]), "exactly one output"),
])
def test_malformed_descriptor_names_the_field(mutate, field):
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(BackendError, match=field) as ei:
        _parse(doc)
    assert "pynq head descriptor 'head.fpga.json'" in str(ei.value)
    assert not isinstance(ei.value, ManifestError)
