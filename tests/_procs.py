"""Real redis-server processes for the tests: one server, or a three-master cluster, on loopback.

Everything here is synchronous and owns the processes it starts: ``stop()`` always reaps them. Where
the platform allows, a server started from the main thread also dies with the test process
(``PR_SET_PDEATHSIG``), so a test run killed with SIGKILL leaves no redis-server behind.
"""

from __future__ import annotations

import contextlib
import random
import ctypes
import ctypes.util
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.ledger.embedded import find_redis_cli, find_redis_server

__all__ = ["free_port", "free_cluster_port", "RedisProcess", "RedisClusterProcs", "rss_kb", "wait_until"]

HOST = "127.0.0.1"
# A cluster node also listens on its port + 10000 (the cluster bus), so its port must be at most
# 55535; picking both below the kernel's ephemeral range (32768+) keeps clients' source ports away.
CLUSTER_PORTS = range(12000, 22000)
CLUSTER_BUS_OFFSET = 10000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a bind race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A port for a cluster node: it and its cluster-bus port (+10000) were free a moment ago."""
    for _ in range(200):
        port = random.choice(CLUSTER_PORTS)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node on 127.0.0.1")


def rss_kb(pid: int) -> int:
    """A process's resident memory (kB, VmRSS), from the kernel: the memory bound of load and attack tests."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> Callable[[], None] | None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only arm it from the main
    # thread; a server restarted from a worker thread would otherwise die with that thread.
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return arm


def _sync_client(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


class RedisProcess:
    """One ``redis-server`` on 127.0.0.1 with its files in ``directory``.

    Defaults to no persistence (``--save '' --appendonly no``); pass ``appendonly=True`` for a server
    that must come back with its data after ``kill()`` + ``restart()``. ``args`` are extra
    ``redis-server`` options (``["--cluster-enabled", "yes"]``); ``{port}`` in them becomes the port.
    ``pick_port`` chooses the port (and a new one after a bind race) unless ``port`` fixes it.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        appendonly: bool = False,
        args: Sequence[str] = (),
        server: str | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self._fixed_port = port is not None
        self._pick_port = pick_port
        self.port = port if port is not None else pick_port()
        self.appendonly = appendonly
        self.args = list(args)
        self.server = server or find_redis_server()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new synchronous client (caller closes it)."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)  # type: ignore[arg-type]

    def ping(self) -> bool:
        try:
            with contextlib.closing(_sync_client(self.port, timeout=0.5)) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 10.0) -> RedisProcess:
        if self.is_running():
            return self
        for _attempt in range(8):
            log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
            self._spawn()
            if self._wait_ping(timeout):
                return self
            tail = self._log_tail(log_start)
            self._reap()
            if "Address already in use" in tail:
                # Another process took the port between free_port() and bind. A fixed port (restart)
                # may be held a moment longer; otherwise pick another.
                if self._fixed_port:
                    time.sleep(0.1)
                else:
                    self.port = self._pick_port()
                continue
            raise RuntimeError(f"redis-server on {self.address} did not answer PING; log:\n{tail}")
        raise RuntimeError(f"redis-server could not bind {self.address}; log:\n{self._log_tail(0)}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM: clean exit, append-only file flushed) and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing flushed beyond what appendfsync already wrote."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self, timeout: float = 10.0) -> RedisProcess:
        """Start again on the same port and directory (reloads the append-only file if enabled)."""
        self.stop()
        self._fixed_port = True
        return self.start(timeout)

    def _command(self) -> list[str]:
        return [
            self.server,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", "",
            *(arg.replace("{port}", str(self.port)) for arg in self.args),
        ]  # fmt: skip

    def _spawn(self) -> None:
        with open(self.log_file, "ab") as log_out:
            self.proc = subprocess.Popen(
                self._command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )

    def _wait_ping(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.01)
        return False

    def _reap(self) -> None:
        if self.proc is not None:
            self.kill()

    def _log_tail(self, start: int, lines: int = 20) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<RedisProcess {self.address} pid={self.pid} dir={self.dir}>"


class RedisClusterProcs:
    """Three cluster-enabled masters on 127.0.0.1 (no replicas), joined with ``redis-cli --cluster``."""

    def __init__(self, directory: Path | str, masters: int = 3) -> None:
        self.dir = Path(directory)
        self.nodes: list[RedisProcess] = []
        self.masters = masters

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].host}:{self.nodes[0].port}"

    def start(self, timeout: float = 15.0) -> RedisClusterProcs:
        try:
            for i in range(self.masters):
                node = RedisProcess(
                    self.dir / f"node{i}",
                    pick_port=free_cluster_port,
                    args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes-{port}.conf",
                        "--cluster-node-timeout", "2000",
                    ],  # fmt: skip
                )
                self.nodes.append(node)
                node.start(timeout)
            result = subprocess.run(
                [find_redis_cli(), "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}"
                )
            wait_until(self.healthy, timeout, "cluster_state:ok on every node")
            return self
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        for node in self.nodes:
            with contextlib.closing(_sync_client(node.port)) as r:
                info = r.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
            if isinstance(info, (bytes, str)):
                info = dict(
                    line.split(":", 1)
                    for line in (info.decode() if isinstance(info, bytes) else info).splitlines()
                    if ":" in line
                )
            state = info.get("cluster_state", info.get(b"cluster_state"))
            if state not in ("ok", b"ok"):
                return False
        return True

    def flushall(self) -> None:
        """Empty every master (every node is a master here): data and script cache."""
        for node in self.nodes:
            with contextlib.closing(_sync_client(node.port)) as r:
                r.flushall()
                r.script_flush()

    def stop(self) -> None:
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.kill()  # no persistence to flush: SIGKILL is the fast and certain way
            except BaseException as exc:  # keep going: every node must be reaped
                errors.append(exc)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<RedisClusterProcs {', '.join(n.address for n in self.nodes)}>"
