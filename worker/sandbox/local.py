"""Local processes for the demo, the integration tests and the benchmarks: a private Redis and
real Celery worker (and beat) processes, started as the README tells people to start them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


class PrivateRedis:
    """A throwaway ``redis-server`` on a free loopback port, keeping nothing on disk, or, with
    ``appendonly``, its data in an append-only file as the compose file runs it (so it can be
    killed and restarted with its data, as a production Redis restarts). ``options`` are added
    to its command line."""

    def __init__(
        self, port: int | None = None, appendonly: bool = False, options: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.options = list(options)  # more redis-server options, after ours
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="chat-archiver-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                self._dir.name,
                # Never evict: an evicted _kombu.binding.* key silently drops messages.
                "--maxmemory-policy",
                "noeviction",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, timeout=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Stop the server the hard way (SIGKILL) or its own way (SIGTERM), keeping its data
        directory for a restart."""
        if self._process and self._process.poll() is None:
            self._process.send_signal(signum)
            self._process.wait(10)

    def restart(self, down_for: float = 0.3, signum: int = signal.SIGKILL) -> None:
        self.kill(signum)
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._dir.cleanup()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class SentinelGroup:
    """A Redis master, its replicas and three ``redis-server --sentinel`` processes watching it,
    all on free loopback ports, each data node with its append-only file: Redis high availability
    as an operator runs it, for the failover test. Clients reach it through ``url`` (kombu's
    ``sentinel://`` form, one part per Sentinel) and the master name ``name``."""

    def __init__(
        self,
        name: str = "archiver",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        min_replicas_to_write: int | None = None,
    ) -> None:
        self.name = name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        # As README advises, every replica (unless told otherwise): a master that lost one
        # (Sentinel promoted it) refuses writes instead of taking writes the failover discards.
        self.min_replicas_to_write = (
            replicas if min_replicas_to_write is None else min_replicas_to_write
        )
        self.nodes = [PrivateRedis(appendonly=True) for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.url = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"
        self._dir = tempfile.TemporaryDirectory(prefix="chat-archiver-sentinel-")
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        first, *replicas = self.nodes
        first.options = self._options(None)
        first.start()
        for node in replicas:
            node.options = self._options(first.port)
            node.start()
        for port in self.sentinel_ports:
            self._sentinels.append(self._start_sentinel(port, first.port))
        self.wait_settled(first.port, timeout)
        return self

    def _options(self, replica_of: int | None) -> list[str]:
        options = [
            "--min-replicas-to-write",
            str(self.min_replicas_to_write),
            "--min-replicas-max-lag",
            "10",
        ]
        if replica_of is not None:
            options += ["--replicaof", "127.0.0.1", str(replica_of)]
        return options

    def _start_sentinel(self, port: int, master_port: int) -> subprocess.Popen[bytes]:
        # Sentinel rewrites its configuration file as the group changes: one file each.
        config = Path(self._dir.name) / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {self._dir.name}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.name} 1\n"
        )
        process = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(f"redis://127.0.0.1:{port}", timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-sentinel did not start on port {port}")
            time.sleep(0.05)
        return process

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(
            "127.0.0.1", self.sentinel_ports[index], socket_timeout=2, decode_responses=True
        )

    def master_port(self, index: int = 0) -> int | None:
        """The master's port as one Sentinel sees it (None if it does not answer)."""
        try:
            address = self.sentinel(index).execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
            )
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def master(self) -> PrivateRedis:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def wait_settled(self, master_port: int | None = None, timeout: float = 30.0) -> int:
        """Wait until every Sentinel names the same master (``master_port`` if given), that
        master says it is one, and every other node is its replica with the link up and in sync;
        return the master's port."""
        deadline = time.monotonic() + timeout
        while True:
            ports = {self.master_port(i) for i in range(len(self.sentinel_ports))}
            port = next(iter(ports)) if len(ports) == 1 else None
            if port is not None and master_port in (None, port) and self._in_sync(port):
                return port
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the Sentinel group did not settle (masters named: {ports}, "
                    f"replication: {self._replication()})"
                )
            time.sleep(0.1)

    def _in_sync(self, master_port: int) -> bool:
        try:
            master = redis.Redis("127.0.0.1", master_port, socket_timeout=1)
            info = master.info("replication")
            if info.get("role") != "master":
                return False
            offset = int(info.get("master_repl_offset", 0))
            replicas = [info[key] for key in info if str(key).startswith("slave")]
            others = [node.port for node in self.nodes if node.port != master_port]
            ready = {
                int(r["port"])
                for r in replicas
                if isinstance(r, dict)
                and r.get("state") == "online"
                and int(r.get("offset", -1)) >= offset - 1024 * 1024
            }
            return set(others) <= ready
        except (redis.RedisError, OSError):
            return False

    def _replication(self) -> dict[int, str]:
        found = {}
        for node in self.nodes:
            try:
                info = redis.Redis("127.0.0.1", node.port, socket_timeout=1).info("replication")
                found[node.port] = f"{info.get('role')} {info.get('master_link_status', '')}"
            except (redis.RedisError, OSError) as error:
                found[node.port] = type(error).__name__
        return found

    def known_replicas_ready(self) -> bool:
        """Every Sentinel sees each replica up (a forced failover needs one to promote)."""
        try:
            for index in range(len(self.sentinel_ports)):
                replicas = self.sentinel(index).sentinel_slaves(self.name)
                up = [r for r in replicas if "s_down" not in r.get("flags", "")]
                if len(up) < len(self.nodes) - 1:
                    return False
            return True
        except redis.RedisError:
            return False

    def failover(self, timeout: float = 30.0, settle: bool = True) -> int:
        """``SENTINEL FAILOVER``: a replica is promoted while the master still runs; returns the
        new master's port once the group has settled around it (the old master a replica in
        sync, some ten seconds later), or, without ``settle``, once the Sentinels name it."""
        before = self.wait_settled(timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self.known_replicas_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("no replica the Sentinels would promote")
            time.sleep(0.1)
        self.sentinel().execute_command("SENTINEL", "FAILOVER", self.name)
        if not settle:
            return self._promoted(before, deadline)
        return self._moved_from(before, deadline)

    def kill_master(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGKILL the master; once the Sentinels have promoted a replica, start the killed node
        again as its replica (as an operator, or a supervisor, brings a crashed node back).
        Returns the new master's port and when it was killed (monotonic)."""
        before = self.wait_settled(timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self.known_replicas_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("no replica the Sentinels would promote")
            time.sleep(0.1)
        victim = next(node for node in self.nodes if node.port == before)
        victim.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        port = self._promoted(before, deadline)
        victim.options = self._options(port)
        victim.start()
        return port, killed_at

    def _promoted(self, before: int, deadline: float) -> int:
        while True:
            port = self.master_port()
            if port is not None and port != before:
                return port
            if time.monotonic() > deadline:
                raise TimeoutError("the Sentinels promoted no replica")
            time.sleep(0.05)

    def _moved_from(self, before: int, deadline: float) -> int:
        port = self._promoted(before, deadline)
        return self.wait_settled(port, max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
        for node in self.nodes:
            node.stop()
        self._dir.cleanup()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class CeleryProcess:
    """``celery -A worker <command>`` in a subprocess, its log in a file we can read."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "celery", "-A", "worker", *command]
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._asked_to_stop: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryProcess:
        log = self.log_path.open("ab")
        # A new session, so a signal meant for the worker never reaches us, and we can signal
        # the worker's whole process group (its pool children) at once.
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str | re.Pattern[str], timeout: float = 30.0) -> None:
        """Until the log holds ``text`` (a string, or a pattern searched for)."""
        deadline = time.monotonic() + timeout

        def found(log: str) -> bool:
            return bool(text.search(log)) if isinstance(text, re.Pattern) else text in log

        while not found(self.log()):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.command[3:])} exited with {self.process.returncode}:\n"
                    + self.log()[-3000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {text!r} in the log after {timeout}s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)

    def signal(self, signum: int, group: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def begin_stop(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting for it; once per process."""
        if self.process is not None and self._asked_to_stop is not self.process:
            self.signal(signal.SIGTERM)
            self._asked_to_stop = self.process

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group if it does not end."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.begin_stop()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL, group=True)
                self.process.wait(5)
        return self.process.returncode


def worker_process(
    env: Mapping[str, str],
    log_path: Path,
    *,
    name: str,
    concurrency: int = 2,
    pool: str = "prefork",
    queues: str | None = None,
    extra: Sequence[str] = (),
) -> CeleryProcess:
    command = [
        "worker",
        "-l",
        "INFO",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]
    if queues:
        command += ["-Q", queues]
    return CeleryProcess(command, env, log_path)


# What Celery logs when a node is ready ("<node> ready."), in text or JSON lines: at the end of
# the line, since the banner before it names the node's ready queue ("archive.ready.<node>").
WORKER_READY = re.compile(r' ready\.("\})?$', re.MULTILINE)
