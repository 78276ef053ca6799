"""Local processes for the demo, the integration tests and the benchmarks: a private Redis and
real Celery worker (and beat) processes, started as the README tells people to start them.
"""

from __future__ import annotations

import os
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
    killed and restarted with its data, as a production Redis restarts)."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
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

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
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

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group if it does not end."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
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


WORKER_READY = "ready."
