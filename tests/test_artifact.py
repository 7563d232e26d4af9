"""The artifact base: round trip, verification failures each named, atomic writes, caching by digest."""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import ClassVar, Tuple

import pytest

from edgeuq.artifact import Artifact, ArtifactError, ArtifactNotFound, ArtifactWriter, cached, digest_of


@dataclass(frozen=True)
class Toy(Artifact):
    KIND: ClassVar[str] = "toy"
    FORMAT_VERSION: ClassVar[int] = 3
    META_FILE: ClassVar[str] = "toy.json"

    words: Tuple[str, ...]

    def payload_files(self):
        return ("data.bin",)

    def to_meta(self):
        return {"words": list(self.words)}

    @classmethod
    def from_meta(cls, meta, **base):
        return cls(words=tuple(meta["words"]), **base)


def save_toy(out, words=("a", "b"), payload=b"hello", inputs=""):
    with ArtifactWriter(out) as w:
        (w.path / "data.bin").write_bytes(payload)
        return w.commit(Toy(words=tuple(words), inputs=inputs))


def test_round_trip_records_independent_hashes(tmp_path):
    art = save_toy(tmp_path / "t")
    assert art.files == {"data.bin": hashlib.sha256(b"hello").hexdigest()}
    env = json.loads((tmp_path / "t" / "toy.json").read_text())
    assert env["kind"] == "toy" and env["format_version"] == 3 and env["meta"] == {"words": ["a", "b"]}
    body = {k: env[k] for k in ("kind", "format_version", "files", "inputs", "meta")}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert art.digest == env["digest"] == expected
    again = Toy.load(tmp_path / "t")
    assert again == art and again.digest == art.digest and again.directory == tmp_path / "t"
    assert Toy.load(tmp_path / "t" / "toy.json").digest == art.digest
    # the digest depends on content: other words -> other digest
    assert save_toy(tmp_path / "u", words=("a", "c")).digest != art.digest


def test_each_problem_is_named(tmp_path):
    with pytest.raises(ArtifactNotFound, match="no toy at .*toy.json missing"):
        Toy.load(tmp_path / "nowhere")
    assert issubclass(ArtifactNotFound, FileNotFoundError) and issubclass(ArtifactError, ValueError)
    d = tmp_path / "t"
    save_toy(d)
    env_path = d / "toy.json"
    good = env_path.read_text()

    def rewrite(**changes):
        env = json.loads(good)
        env.update(changes)
        env_path.write_text(json.dumps(env))

    env_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Toy.load(d)
    rewrite(kind="other")
    with pytest.raises(ArtifactError, match="kind 'other', expected 'toy'"):
        Toy.load(d)
    rewrite(format_version=2)
    with pytest.raises(ArtifactError, match="format_version 2 .*reads 3"):
        Toy.load(d)
    rewrite(format_version=3.0)
    with pytest.raises(ArtifactError, match="format_version 3.0"):
        Toy.load(d)
    rewrite(meta={"words": ["z"]})  # edited metadata, stale digest
    with pytest.raises(ArtifactError, match="edited after writing"):
        Toy.load(d)
    env_path.write_text(good)
    (d / "data.bin").write_bytes(b"HELLO")
    with pytest.raises(ArtifactError, match="data.bin changed since saving"):
        Toy.load(d)
    (d / "data.bin").unlink()
    with pytest.raises(ArtifactError, match="data.bin is missing"):
        Toy.load(d)


def test_links_and_escaping_names_are_refused(tmp_path):
    d = tmp_path / "t"
    save_toy(d)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"hello")  # same bytes, same hash: only the link check can catch it
    (d / "data.bin").unlink()
    os.symlink(outside, d / "data.bin")
    with pytest.raises(ArtifactError, match="link or resolves outside"):
        Toy.load(d)


def test_failed_write_leaves_previous_artifact_intact(tmp_path):
    d = tmp_path / "t"
    first = save_toy(d)
    (d / "notes.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="check failed"):
        with ArtifactWriter(d) as w:
            (w.path / "data.bin").write_bytes(b"new payload")
            raise RuntimeError("check failed")
    assert Toy.load(d).digest == first.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no staging folder left behind
    second = save_toy(d, payload=b"other")
    assert second.digest != first.digest and (d / "notes.txt").read_text() == "kept"


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "t") as w:
            (w.path / "data.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_a_payload_that_was_not_written(tmp_path):
    with pytest.raises(ArtifactError, match="data.bin was not written"):
        with ArtifactWriter(tmp_path / "t") as w:
            w.commit(Toy(words=("a",)))
    assert not (tmp_path / "t").exists()


def test_cached_returns_only_an_artifact_made_from_the_same_inputs(tmp_path):
    key = digest_of({"lr": 0.1}, "seed", 3)
    assert key == digest_of({"lr": 0.1}, "seed", 3) != digest_of({"lr": 0.2}, "seed", 3)
    assert cached(Toy, tmp_path / "t", key) is None
    art = save_toy(tmp_path / "t", inputs=key)
    hit = cached(Toy, tmp_path / "t", key)
    assert hit is not None and hit.digest == art.digest
    assert cached(Toy, tmp_path / "t", digest_of("other")) is None
    (tmp_path / "t" / "data.bin").write_bytes(b"tampered")
    assert cached(Toy, tmp_path / "t", key) is None
    assert digest_of(art) == digest_of(art.digest)
