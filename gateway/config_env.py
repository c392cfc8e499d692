"""`${VAR}` and `${VAR:-default}` in a loaded config, replaced from the environment."""

from __future__ import annotations

import re
from typing import Any

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(value: Any, path: str, problems: list[str], env: dict[str, str]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of the loaded YAML; an unset variable
    without a default is a problem naming the key path it was found at."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate_env(v, f"{path}[{i}]", problems, env) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate_env(v, f"{path}.{k}" if path else str(k), problems, env) for k, v in value.items()}
    return value
