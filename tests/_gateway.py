"""A real `creditgate run` process for end-to-end tests, on loopback, always stopped by the test.

``GatewayProcess`` writes a configuration file (the test's redis-server, free SIP and HTTP ports,
whatever else the test asks for), starts ``python -m gateway run`` in its own process group, waits
for "creditgate ready", and on ``stop()`` sends SIGTERM (SIGKILL to the group if it does not exit).
``cli()`` runs the real ``creditgate`` command against the same configuration.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from _procs import free_port
except ImportError:  # pragma: no cover
    from tests._procs import free_port

ROOT = Path(__file__).resolve().parents[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class GatewayProcess:
    def __init__(self, directory: Path, redis_url: str, *, settings: dict[str, dict[str, Any]] | None = None,
                 sip_port: int | None = None, log_level: str = "INFO", workers: int = 1) -> None:
        self.workers = workers
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.sip_port = sip_port or free_port()
        self.http_port = free_port()
        self.config = self.directory / "creditgate.toml"
        self.log_file = self.directory / "gateway.log"
        sections: dict[str, dict[str, Any]] = {
            "sip": {"listen": f"127.0.0.1:{self.sip_port}"},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "redis": {"url": redis_url},
        }
        for name, values in (settings or {}).items():
            sections.setdefault(name, {}).update(values)
        lines = [f"data_dir = {_toml_value(self.directory / 'data')}", f"log_level = {_toml_value(log_level)}"]
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config), "--json",
             "--workers", str(self.workers)],
            cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_file.read_bytes().count(b"creditgate ready") >= self.workers:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        text = self.log_tail()
        self.stop()
        raise RuntimeError(f"creditgate did not start:\n{text}")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the gateway drains and exits 0); SIGKILL of the group if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left behind in its group
        except ProcessLookupError:
            pass
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(self.config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            select.select([], [], [], 0.05)
        raise AssertionError(f"{text!r} not in the gateway log:\n{self.log_tail()}")

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
