"""Every registered data source is resolved for its own files and only for them: example paths
are made from what each source declares it claims (suffixes, marker file, folders, no path), and
each must resolve to that source, never to another."""
from pathlib import Path
from typing import List, Optional

import pytest

from edgeuq.data.sources import DATA_SOURCES, DataSource, resolve_data_source


def own_paths(src: DataSource, root: Path) -> List[Optional[Path]]:
    """Paths ``src`` declares it reads (made under ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    out: List[Optional[Path]] = []
    if src.takes_no_path:
        out.append(None)
    for i, suffix in enumerate(src.suffixes):
        f = root / f"file{i}{suffix}"
        f.write_bytes(b"")
        out.append(f)
    if src.marker:
        d = root / "marked"
        d.mkdir()
        (d / src.marker).write_text("")
        for other in DATA_SOURCES.values_():                    # other sources' files beside the marker
            for j, suffix in enumerate(other.suffixes[:1]):
                (d / f"beside{j}{suffix}").write_bytes(b"")
        out.append(d)
    if src.reads_folders and src.suffixes:
        d = root / "folder"
        d.mkdir()
        (d / f"a{src.suffixes[0]}").write_bytes(b"")
        out.append(d)
    return out


NAMES = list(DATA_SOURCES)


@pytest.mark.parametrize("name", NAMES)
def test_a_source_is_resolved_for_its_own_files(name, tmp_path):
    src = DATA_SOURCES[name]
    paths = own_paths(src, tmp_path / name)
    if not paths:
        pytest.fail(f"data source {name!r} claims only through detect(); give it suffixes/marker/folders "
                    f"so the conformance suite can make its files, or extend own_paths")
    for p in paths:
        assert resolve_data_source(p).name == name, (name, p)


@pytest.mark.parametrize("name", NAMES)
def test_a_source_is_resolved_for_no_other_sources_files(name, tmp_path):
    for other in NAMES:
        if other == name:
            continue
        for p in own_paths(DATA_SOURCES[other], tmp_path / other):
            assert resolve_data_source(p).name != name, (name, other, p)
