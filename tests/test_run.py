"""`creditgate run` on its embedded defaults: starts its own redis-server, shares it with the CLI
while it runs, and stops everything on SIGTERM."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(proc: subprocess.Popen[str], text: str, timeout: float = 20.0) -> str:
    """Read the process's stderr until ``text`` appears. Reads the raw descriptor: a buffered
    readline() may pull several lines at once and leave select() waiting for data already read."""
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536).decode(errors="replace")
            seen += chunk
            if text in seen:
                return seen
            if not chunk:
                break
        if proc.poll() is not None and not ready:
            break
    raise AssertionError(f"{text!r} not seen; output so far:\n{seen}")


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_run_starts_embedded_redis_shares_it_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "creditgate.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config), "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = _wait_for(proc, "creditgate ready")
        assert json.loads(ready.strip().splitlines()[-1])["level"] == "INFO"  # --json: JSON log lines
        state = json.loads((tmp_path / "data" / "redis.json").read_text())
        redis_pid = state["pid"]
        assert psutil.pid_exists(redis_pid)

        created = _cli(config, "org", "create", "Acme", "--country", "GB", "--currency", "GBP", "--json")
        assert created.returncode == 0, created.stderr
        funded = _cli(config, "fund", "acme", "75", "--json")
        assert json.loads(funded.stdout)["balance"] == "75.00"
        # the CLI reused the gateway's server: still the same one, still running
        assert json.loads((tmp_path / "data" / "redis.json").read_text())["pid"] == redis_pid

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the data outlived the processes (AOF): a later command starts a server and finds it
    again = _cli(config, "balance", "acme", "--json")
    assert json.loads(again.stdout) == {"balance": "75.00", "reserved": "0.00", "available": "75.00",
                                        "currency": "GBP"}


def test_rates_import_shows_a_progress_bar_on_a_terminal(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "creditgate.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{redis_url}"\n')
    deck = tmp_path / "deck.csv"
    deck.write_text("prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,"
                    "connection_fee,effective_from\n"
                    + "".join(f"{100000 + i},D{i},0.01,GBP,60,60,0,\n" for i in range(30_000)))
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "rates", "import", str(deck), "--config", str(config)],
                            cwd=ROOT, stdin=secondary, stdout=secondary, stderr=secondary,
                            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    os.close(secondary)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace")
    assert "importing" in text  # the bar, drawn on the terminal
    assert "imported 30000 rates" in text
