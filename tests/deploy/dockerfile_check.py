"""A small Dockerfile reader and the checks tests/deploy runs on the repository's Dockerfile.

No container engine is needed: the file is parsed line by line (continuations joined, comments
dropped, exec forms read as JSON), which is all these checks need. Each check returns problems as
strings, so a test can assert that the real file has none and that a broken copy has some.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

_ARG_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Instruction:
    """One instruction: its keyword (upper case), the rest of its text, and the line it starts on."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage: its base image (build args resolved), its `AS` name, and its instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, with `\\` continuations joined and comment lines dropped
    (Docker drops a comment line inside a continuation too)."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(pending).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        keyword, _, args = " ".join(pending).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    return result


def substitute(value: str, args: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced by build-arg defaults (unknown names become empty, as in Docker)."""
    return _ARG_REF.sub(lambda m: args.get(m.group(1) or m.group(2), ""), value)


def _arg_default(args: str) -> tuple[str, str]:
    name, _, default = args.partition("=")
    return name.strip(), default.strip().strip('"')


def stages(text: str) -> list[Stage]:
    """The build stages in order. ARGs before the first FROM are global and resolve base images."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for inst in instructions(text):
        if inst.keyword == "ARG" and not result:
            arg, default = _arg_default(inst.args)
            global_args[arg] = default
        elif inst.keyword == "FROM":
            words = [w for w in inst.args.split() if not w.startswith("--")]
            stage_name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=substitute(words[0], global_args), name=stage_name))
        elif result:
            result[-1].instructions.append(inst)
    return result


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for the shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a JSON array of strings: {args}")
    return value


def env_of(stage: Stage) -> dict[str, str]:
    """The stage's ENV settings (the `KEY=value ...` form)."""
    env: dict[str, str] = {}
    for inst in stage.all("ENV"):
        for item in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', inst.args):
            env[item[0]] = item[1].strip('"')
    return env


def healthcheck_command(stage: Stage) -> list[str] | None:
    """The HEALTHCHECK's command (exec form), without its options."""
    inst = stage.last("HEALTHCHECK")
    if inst is None:
        return None
    _, _, command = inst.args.partition("CMD ")
    return exec_form(command.strip())


def copy_sources(stage: Stage) -> list[str]:
    """What the stage COPYs from the build context (not `--from` another stage or image)."""
    sources: list[str] = []
    for inst in stage.all("COPY") + stage.all("ADD"):
        words = inst.args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore `patterns` keep `path` (or a folder above it) out of the build context.
    The last matching pattern decides; `!pattern` lets a path back in."""
    parts = [p for p in PurePosixPath(path).parts if p not in (".", "/")]
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def user_id(user: str) -> int | None:
    """The numeric uid of a USER value (`10001` or `10001:10001`); None when it is a name."""
    uid = user.split(":", 1)[0]
    return int(uid) if uid.isdigit() else None


def dockerfile_problems(text: str, dockerignore: str) -> list[str]:
    """What is wrong with the Dockerfile for this project: one problem per string."""
    problems: list[str] = []
    all_stages = stages(text)
    if len(all_stages) < 2:
        return [f"not multi-stage: {len(all_stages)} FROM"]
    final = all_stages[-1]
    earlier = {s.name for s in all_stages[:-1] if s.name}
    if not any(w.startswith("--from=") and w.split("=", 1)[1] in earlier
               for inst in final.all("COPY") for w in inst.args.split()):
        problems.append("the final stage copies nothing from an earlier stage")
    if final.all("RUN") and any("pip install" in i.args for i in final.all("RUN")):
        problems.append("the final stage installs packages itself (build them in the build stage)")
    user = final.last("USER")
    if user is None:
        problems.append("the final stage has no USER: it would run as root")
    else:
        uid = user_id(user.args)
        if uid is None:
            problems.append(f"USER {user.args} is not numeric: Kubernetes cannot check runAsNonRoot against a name")
        elif uid == 0:
            problems.append("USER is root")
    exposed = [int(p.split("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()]
    if not exposed:
        problems.append("no EXPOSE in the final stage")
    health = healthcheck_command(final)
    if health is None:
        problems.append("no HEALTHCHECK (exec form) in the final stage")
    elif not any(f"127.0.0.1:{port}/health" in " ".join(health) for port in exposed):
        problems.append(f"the HEALTHCHECK does not ask /health on an exposed port ({exposed}): {health}")
    entrypoint, default_cmd = final.last("ENTRYPOINT"), final.last("CMD")
    entry = exec_form(entrypoint.args) if entrypoint else []
    cmd = exec_form(default_cmd.args) if default_cmd else []
    if entry is None or cmd is None:
        problems.append("ENTRYPOINT and CMD must be exec form, so the gateway is PID 1 and gets SIGTERM")
    elif (entry + cmd)[:2] != ["gateway", "serve"]:
        problems.append(f"the container does not run `gateway serve`: {entry + cmd}")
    env = env_of(final)
    if env.get("GATEWAY_HOST") != "0.0.0.0":
        problems.append("GATEWAY_HOST is not 0.0.0.0: the configs' default 127.0.0.1 is unreachable from outside")
    if not env.get("GATEWAY_CONFIG"):
        problems.append("no default GATEWAY_CONFIG")
    ignore = dockerignore_patterns(dockerignore)
    for stage in all_stages:
        for source in copy_sources(stage):
            if dockerignore_excludes(ignore, source):
                problems.append(f"COPY {source}: excluded from the build context by .dockerignore")
    return problems
