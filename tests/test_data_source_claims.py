"""Data sources are resolved by what each one claims, most specific first (issue 20: a newly
registered ``.h5`` source used to resolve to ``signals``, which accepted any path)."""
import numpy as np
import pytest

from edgeuq.data import DataError
from edgeuq.data.sources import (
    DATA_SOURCES, GENERIC, NO_CLAIM, SPECIFIC, DataSource, register_data_source, resolve_data_source,
)


@pytest.fixture
def toy_h5():
    """A toy .h5 source, registered for the test only."""
    src = register_data_source(DataSource("toy_h5", "toy HDF5 file", suffixes=(".h5",), reads_folders=True))
    try:
        yield src
    finally:
        DATA_SOURCES.remove("toy_h5")


def test_a_new_h5_source_is_resolved_for_h5_files_and_only_for_them(tmp_path, toy_h5):
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n")
    np.savez(tmp_path / "r.npz", signal=np.zeros(8), fs=1.0, label="a")
    assert resolve_data_source(tmp_path / "x.h5") is toy_h5           # was: signals (accepted any path)
    assert resolve_data_source(tmp_path / "r.npz").name == "signals"    # the new source claims no .npz
    h5_dir = tmp_path / "h5s"
    h5_dir.mkdir()
    (h5_dir / "a.h5").write_bytes(b"")
    assert resolve_data_source(h5_dir) is toy_h5                        # a folder of .h5 files
    assert "toy_h5" in DATA_SOURCES and DATA_SOURCES["toy_h5"] is toy_h5


def test_specific_beats_generic_and_equal_claims_are_an_error(tmp_path, toy_h5):
    cwru = tmp_path / "cwru"
    cwru.mkdir()
    (cwru / "MANIFEST.csv").write_text("file\n")
    (cwru / "a.mat").write_bytes(b"")
    (cwru / "b.h5").write_bytes(b"")
    # the marker file is a specific claim; signals and toy_h5 only claim the folder generically
    assert DATA_SOURCES["signals"].claim(cwru) == GENERIC and toy_h5.claim(cwru) == GENERIC
    assert DATA_SOURCES["cwru"].claim(cwru) == SPECIFIC
    assert resolve_data_source(cwru).name == "cwru"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.npz").write_bytes(b"")
    (mixed / "b.h5").write_bytes(b"")
    with pytest.raises(DataError, match=r"ambiguous.*\['signals', 'toy_h5'\]"):
        resolve_data_source(mixed)


def test_an_unclaimed_path_names_the_known_sources(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    assert all(src.claim(tmp_path / "x.parquet") == NO_CLAIM for src in DATA_SOURCES.values())
    with pytest.raises(DataError, match="not a data source edgeuq knows.*signals"):
        resolve_data_source(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="claims nothing"):
        DataSource("empty", "claims nothing")


def test_callers_read_capabilities_not_names():
    cwru, signals, text = (DATA_SOURCES[n] for n in ("cwru", "signals", "text"))
    assert cwru.native_rates and cwru.held_out_split and not signals.native_rates and not signals.held_out_split
    assert text.holds_text and not cwru.holds_text and text.load is None
