"""Child-process helpers for the overhead benchmark: start pinned, stop, CPU time.

Kept apart from ``overhead.py`` so the orchestration there reads as the
benchmark's logic, not as subprocess plumbing.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child to ``cpu`` *before* it execs.

    Pinning in the child before exec (rather than ``sched_setaffinity(pid)``
    from the parent afterwards) matters: Linux affinity is per thread, and
    threads or worker processes the server starts inherit the mask they are
    born with, so every thread and worker ends up on the same core.
    """
    if cpu is None:
        return None
    cpus = {cpu}

    def _pin() -> None:
        os.sched_setaffinity(0, cpus)

    return _pin


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (tiny race, fine for a local benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn(
    argv: Sequence[str],
    *,
    cpu: int | None,
    log_dir: Path,
    name: str,
    cwd: Path | None = None,
    stdout_pipe: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, pinned, logging to ``log_dir/name.*``.

    Output goes to files, not pipes: a server that logs every request would
    block on a full pipe nobody reads. Its own session lets :func:`stop`
    signal the whole process group (e.g. granian's worker processes).
    """
    err = open(log_dir / f"{name}.stderr", "wb")  # handed to the child; closed with it
    out = subprocess.PIPE if stdout_pipe else open(log_dir / f"{name}.stdout", "wb")
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdout=out,
        stderr=err,
        stdin=subprocess.DEVNULL,
        preexec_fn=pin_to(cpu),  # parent has no threads yet, so safe
        start_new_session=True,
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """First stdout line of ``proc`` (spawned with ``stdout_pipe=True``) or ``""``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().decode(errors="replace").strip()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    # Reap any worker left in the group after the leader exited.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.stdout is not None:
        proc.stdout.close()


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # comm (field 2) may contain spaces or ')': split after the last ')'.
    return raw.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (scans /proc once).

    Call it before a measurement, not at its edges: scanning /proc takes a
    few ms, which would stall the load generator's event loop.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (all threads of each), from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the comm: fields[11] = utime, fields[12] = stime (in ticks).
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def self_cpu_seconds() -> float:
    """CPU time of this process (the load generator), microsecond resolution."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``check`` until it returns true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False
