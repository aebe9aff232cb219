"""SIPp as a test peer: run a UAC or UAS scenario on loopback, then read what it counted and saw.

``Sipp`` owns one ``sipp`` process. It starts it in its own process group (so ``stop()`` reaches
anything it spawned), with ``-nostdin`` and every trace written under one directory, and a global
``-timeout`` so no run outlives its bound even if the test forgets it. ``start()`` returns once the
process has bound its SIP port (a UAS is then ready for calls), ``wait()`` returns the exit code,
``stats()`` reads the final statistics, ``messages()`` the SIP messages SIPp sent and received,
``logs()`` the lines the scenarios' ``<log>`` actions wrote. Nothing here imports pytest;
``sipp_fixtures.py`` holds the fixture.

Why not ``-bg``: SIPp's background mode forks and the parent exits at once, which loses the exit
code and the process group; a foreground child with ``-nostdin`` and its screen sent to a file is
the same run, and stays ours to wait for and to kill.

SIPp exit codes (``SippExit``), as SIPp 3.6.1 sets them:
    0    every call succeeded; also what SIGTERM (so ``stop()``) leaves, whatever the calls did and
         with calls still in progress: after ``stop()`` read ``stats()``, not the exit code
    1    at least one call failed; also what a scenario that fails to load or a bad argument gives
    97   exit on an internal command (``<exec int_cmd="stop_now"/>``), and a UAS reaching its
         ``-timeout`` without ``-timeout_error``
    99   normal exit without any call processed (SIPp's definition; not seen in these runs)
    253  system error (-3)
    254  could not bind its socket (-2): the port was taken
    255  fatal error (-1), and reaching ``-timeout`` when ``-timeout_error`` is given (our default)
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import enum
import hashlib
import ipaddress
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HOST",
    "SCENARIO_DIR",
    "SIP_REASON_PHRASES",
    "Sipp",
    "SippError",
    "SippExit",
    "SippScenario",
    "SippStats",
    "SipMessage",
    "expect_status_scenario",
    "find_sipp",
    "free_port",
    "parse_messages",
    "parse_screen",
    "parse_stat_csv",
    "reject_scenario",
    "stop_all",
]

try:  # tests/ on sys.path (pytest), or the repository root (bench/)
    from _procs import _die_with_parent
except ImportError:  # pragma: no cover
    from tests._procs import _die_with_parent

HOST = "127.0.0.1"
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class SippScenario:
    """The scenario files of ``tests/e2e/scenarios`` (each opens with a comment saying what it does)."""

    DIR = SCENARIO_DIR
    UAC_CALL = DIR / "uac_call.xml"  # INVITE, 200, ACK, pause (-d), BYE, 200
    UAC_EXPECT_STATUS = DIR / "uac_expect_status.xml"  # INVITE, 402, ACK; others: expect_status_scenario()
    UAC_LONG_CALL_EXPECT_BYE = DIR / "uac_long_call_expect_bye.xml"  # answered, waits for the far BYE
    UAC_CANCEL = DIR / "uac_cancel.xml"  # INVITE, 180, pause (-d), CANCEL, 200, 487, ACK
    UAC_REINVITE = DIR / "uac_reinvite.xml"  # INVITE, 200, ACK, re-INVITE, 200, ACK, BYE, 200
    UAS_ANSWER = DIR / "uas_answer.xml"  # answers; BYE at any time; re-INVITEs answered
    UAS_ANSWER_THEN_BYE = DIR / "uas_answer_then_bye.xml"  # answers, pause (-d), INFO, BYE with Reason
    UAS_RING_THEN_CANCEL = DIR / "uas_ring_then_cancel.xml"  # rings until CANCEL; 200, 487
    UAS_REJECT_486 = DIR / "uas_reject_486.xml"  # others: reject_scenario(status)
    UAS_REJECT_480 = DIR / "uas_reject_480.xml"
    UAS_REJECT_603 = DIR / "uas_reject_603.xml"


class SippExit(enum.IntEnum):
    """SIPp's exit codes (see the module docstring for when each is seen)."""

    OK = 0
    FAILED = 1
    INTERNAL_COMMAND = 97
    NO_CALLS = 99
    SYSTEM_ERROR = 253
    BIND_ERROR = 254
    FATAL = 255


# SIPp's -t modes. "udp"/"tcp" share one socket between all calls and send from the -p port, so a
# trunk identified by source address and port matches them; "tcp-per-call" (tn) opens one
# connection per call from an ephemeral port (and needs -max_socket below the open-file limit).
TRANSPORTS = {"udp": "u1", "udp-per-call": "un", "tcp": "t1", "tcp-per-call": "tn"}
_TCP_MODES = {"t1", "tn"}

SIP_REASON_PHRASES = {
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}

_BUFF_SIZE = 4194304


class SippError(RuntimeError):
    """SIPp could not be started, or left nothing to read."""


def find_sipp() -> str:
    """The ``sipp`` binary: ``$CREDITGATE_SIPP`` if set, else the one on ``PATH``."""
    path = os.environ.get("CREDITGATE_SIPP") or shutil.which("sipp")
    if not path:
        raise SippError("sipp not found: install sip-tester (Debian) or set CREDITGATE_SIPP")
    return path


def _bindable(port: int, kind: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port on ``host`` free for both UDP and TCP a moment ago (``Sipp`` retries on a bind race)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if _bindable(port, socket.SOCK_DGRAM, host):
            return port
    raise SippError(f"no port free for both UDP and TCP on {host}")


def _socket_inodes(pid: int) -> set[str] | None:
    """Inodes of the sockets process ``pid`` holds open; None where /proc does not tell."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def _proc_bound(pid: int, port: int, tcp: bool, host: str) -> bool | None:
    """Whether process ``pid`` has bound ``host:port`` (TCP: is listening on it), from /proc/net
    and the process's own fds, so a socket of someone else on that port does not count; None
    where /proc is absent."""
    inodes = _socket_inodes(pid)
    try:
        lines = Path("/proc/net/tcp" if tcp else "/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    if inodes is None:  # /proc is there but not its fds: it has just exited (or is not ours)
        return False
    wanted_ip = socket.inet_aton(host)[::-1].hex().upper()  # little-endian hex, as the kernel prints it
    for line in lines:
        parts = line.split()
        if len(parts) < 10:
            continue
        ip_hex, port_hex = parts[1].split(":")
        if int(port_hex, 16) != port or ip_hex not in (wanted_ip, "00000000"):
            continue
        if (not tcp or parts[3] == "0A") and parts[9] in inodes:  # 0A: TCP_LISTEN
            return True
    return False


def _default_max_socket() -> int:
    # SIPp refuses to start when -max_socket (default 50000) is not below the open-file limit.
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft - 64))


# ---------------------------------------------------------------------------------------------
# Statistics


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake(name: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def _duration_ms(value: str) -> float:
    """SIPp's ``HH:MM:SS:uuuuuu`` (or ``HH:MM:SS``) as milliseconds."""
    parts = value.strip().split(":")
    if len(parts) < 3:
        return 0.0
    hours, minutes, seconds = (int(p) for p in parts[:3])
    micros = int(parts[3]) if len(parts) > 3 else 0
    return ((hours * 60 + minutes) * 60 + seconds) * 1000.0 + micros / 1000.0


def _epoch(value: str) -> float:
    """A -trace_stat time: ``date<TAB>time<TAB>epoch`` -> the epoch seconds."""
    try:
        return float(value.split("\t")[-1])
    except ValueError:
        return 0.0


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SippStats:
    """The cumulative counters of one SIPp run (its last -trace_stat row, or its final screen).

    ``failures`` holds only the failure reasons that happened, as snake_case names of SIPp's
    ``Failed*`` counters: ``unexpected_message``, ``call_rejected``, ``max_udp_retrans``,
    ``tcp_connect``, ``tcp_closed``, ``cannot_send_message``, ``timeout_on_recv``,
    ``timeout_on_send``, ``regexp_doesnt_match``, ``regexp_hdr_not_found``, ``outbound_congestion``,
    ``cmd_not_sent``, ... (a screen-only parse has none: the screen does not show them).
    """

    successful: int
    failed: int
    created: int = 0
    current: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    retransmissions: int = 0
    dead_call_msgs: int = 0
    out_of_call_msgs: int = 0
    elapsed_s: float = 0.0
    call_rate: float = 0.0
    response_time_ms: float = 0.0
    call_length_ms: float = 0.0
    raw: Mapping[str, str] = field(default_factory=dict)


def parse_stat_csv(path: Path | str) -> SippStats:
    """The last row of a ``-trace_stat`` file: ``;``-separated, a header row, one row per ``-fd``
    period and a final one written at exit; counters come as ``Name(P)`` (period) and ``Name(C)``
    (cumulative); times as ``date<TAB>time<TAB>epoch``; durations as ``HH:MM:SS:uuuuuu``."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [row for row in csv.reader(f, delimiter=";") if row]
    if len(rows) < 2:
        raise SippError(f"{path}: no statistics row yet")
    raw = {name: value for name, value in zip(rows[0], rows[-1]) if name}
    failures = {}
    for name, value in raw.items():
        if name.startswith("Failed") and name.endswith("(C)") and name != "FailedCall(C)":
            count = _int(value)
            if count:
                failures[_snake(name[len("Failed") : -len("(C)")])] = count
    try:
        call_rate = float(raw.get("CallRate(C)", "0") or 0)
    except ValueError:
        call_rate = 0.0
    return SippStats(
        successful=_int(raw.get("SuccessfulCall(C)")),
        failed=_int(raw.get("FailedCall(C)")),
        created=_int(raw.get("TotalCallCreated")),
        current=_int(raw.get("CurrentCall")),
        failures=failures,
        retransmissions=_int(raw.get("Retransmissions(C)")),
        dead_call_msgs=_int(raw.get("DeadCallMsgs(C)")),
        out_of_call_msgs=_int(raw.get("OutOfCallMsgs(C)")),
        elapsed_s=max(0.0, _epoch(raw.get("CurrentTime", "")) - _epoch(raw.get("StartTime", ""))),
        call_rate=call_rate,
        response_time_ms=_duration_ms(raw.get("ResponseTime1(C)", "")),
        call_length_ms=_duration_ms(raw.get("CallLength(C)", "")),
        raw=raw,
    )


_SCREEN_COUNTER = re.compile(r"^\s*(Successful call|Failed call|Total Calls created)\s*\|[^|]*\|\s*(\d+)", re.M)


def parse_screen(path: Path | str) -> SippStats:
    """Successful/failed call counts from a ``-trace_screen`` file (its last statistics screen)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    found: dict[str, int] = {}
    for name, value in _SCREEN_COUNTER.findall(text):
        found[name] = int(value)  # later screens overwrite earlier ones
    if "Successful call" not in found:
        raise SippError(f"{path}: no statistics screen")
    return SippStats(
        successful=found["Successful call"],
        failed=found.get("Failed call", 0),
        created=found.get("Total Calls created", 0),
    )


# ---------------------------------------------------------------------------------------------
# Messages

_COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "o": "event", "r": "refer-to", "u": "allow-events", "x": "session-expires",
}  # fmt: skip


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return _COMPACT.get(name, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class SipMessage:
    """One SIP message as SIPp logged it with ``-trace_msg``."""

    direction: str  # "sent" | "received"
    transport: str  # "UDP" | "TCP" | ...
    time: float  # epoch seconds, from SIPp's local-time stamp (microseconds)
    start_line: str
    fields: tuple[tuple[str, str], ...]  # (name as written, value), in order
    body: str
    text: str

    @classmethod
    def parse(cls, text: str, *, direction: str, transport: str, time: float) -> SipMessage:
        text = text.replace("\r\n", "\n").strip("\n")
        head, _, body = text.partition("\n\n")
        lines = head.split("\n")
        fields: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and fields:  # folded continuation (RFC 3261 7.3.1)
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {line.strip()}")
            elif ":" in line:
                name, _, value = line.partition(":")
                fields.append((name.strip(), value.strip()))
        return cls(
            direction=direction,
            transport=transport,
            time=time,
            start_line=lines[0].strip(),
            fields=tuple(fields),
            body=body,
            text=text,
        )

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/")

    @property
    def method(self) -> str | None:
        """The request's method; None for a response (see ``cseq_method``)."""
        return self.start_line.split(" ", 1)[0] if self.is_request else None

    @property
    def status(self) -> int | None:
        """The response's status code; None for a request."""
        if self.is_request:
            return None
        parts = self.start_line.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    @property
    def reason_phrase(self) -> str | None:
        if self.is_request:
            return None
        parts = self.start_line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    def headers(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive; compact forms match too), in order."""
        wanted = _canonical(name)
        return [value for n, value in self.fields if _canonical(n) == wanted]

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.headers(name)
        return values[0] if values else None

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID")

    @property
    def cseq_method(self) -> str | None:
        """The method in CSeq: for a response, the method of the request it answers."""
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    def __str__(self) -> str:
        return f"{self.direction} {self.transport}: {self.start_line}"


_LOG_SEPARATOR = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s*$", re.M)
_LOG_HEADER = re.compile(r"^(\w+) message (sent|received)\b[^\n]*\n", re.M)


def parse_messages(text: str) -> list[SipMessage]:
    """The messages of a ``-trace_msg`` log. Each entry is a line of dashes and a local timestamp,
    then ``UDP message sent (N bytes):`` or ``UDP message received [N] bytes :`` (TCP alike), a
    blank line, and the message. Entries of another kind (SIPp notes) are skipped."""
    out: list[SipMessage] = []
    stamps = list(_LOG_SEPARATOR.finditer(text))
    for i, stamp in enumerate(stamps):
        end = stamps[i + 1].start() if i + 1 < len(stamps) else len(text)
        chunk = text[stamp.end() : end].lstrip("\r\n")
        header = _LOG_HEADER.match(chunk)
        if not header:
            continue
        when = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(
            SipMessage.parse(
                chunk[header.end() :],
                direction=header.group(2),
                transport=header.group(1),
                time=when,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Scenario generators: SIPp takes response codes only as literals in the XML.


def _generated_dir(directory: Path | str | None) -> Path:
    path = Path(directory) if directory else Path(tempfile.gettempdir()) / f"creditgate-sipp-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomically(path: Path, text: str) -> Path:
    # Parallel test workers may write the same file: same content, so last rename wins harmlessly.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text, encoding="iso-8859-1")
    os.replace(tmp, path)
    return path


def _replace_exactly(text: str, old: str, new: str, count: int, source: Path) -> str:
    found = text.count(old)
    if found != count:
        raise SippError(f"{source}: expected {count} x {old!r} to substitute, found {found}")
    return text.replace(old, new)


def _check_status(status: int) -> None:
    if not 300 <= status <= 699:
        raise ValueError(f"a final non-2xx SIP status is 300..699, not {status}")


def expect_status_scenario(
    status: int, *, require_warning: bool = False, directory: Path | str | None = None
) -> Path:
    """``uac_expect_status.xml`` expecting ``status`` instead of 402 (written once, then reused).

    ``require_warning``: a refusal without a Warning header fails the call
    (``stats().failures == {"regexp_hdr_not_found": n}``) instead of logging an empty warning.
    """
    _check_status(status)
    source = SippScenario.UAC_EXPECT_STATUS
    text = source.read_text(encoding="iso-8859-1")
    text = _replace_exactly(text, '<recv response="402"', f'<recv response="{status}"', 1, source)
    text = _replace_exactly(text, " status=402 ", f" status={status} ", 1, source)
    suffix = ""
    if require_warning:
        text = _replace_exactly(
            text,
            'header="Warning:" check_it="false"',
            'header="Warning:" check_it="true"',
            1,
            source,
        )
        suffix = "_warning"
    return _write_atomically(_generated_dir(directory) / f"uac_expect_{status}{suffix}.xml", text)


def reject_scenario(
    status: int,
    phrase: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    directory: Path | str | None = None,
) -> Path:
    """``uas_reject_486.xml`` answering ``status`` (and ``phrase``, default the usual one) instead.

    ``headers``: extra header fields of the final response, e.g. ``{"Retry-After": "30"}`` for a
    503, or ``{"Warning": '399 carrier "no route"'}``. The file name then carries a digest of them.
    """
    _check_status(status)
    phrase = phrase if phrase is not None else SIP_REASON_PHRASES.get(status, "Rejected")
    extra = dict(headers or {})
    for text in (phrase, *extra, *extra.values()):
        if "\n" in text or "\r" in text or "]]>" in text or "[" in text:
            raise ValueError(f"{text!r} cannot go into a scenario")
    source = SippScenario.UAS_REJECT_486
    text = source.read_text(encoding="iso-8859-1")
    text = _replace_exactly(text, "uas_reject_486.xml - UAS", f"uas_reject_{status}.xml - UAS", 1, source)
    text = _replace_exactly(text, "486 Busy Here", f"{status} {phrase}", 3, source)
    name = f"uas_reject_{status}.xml"
    if extra:
        lines = "".join(f"      {k}: {v}\n" for k, v in extra.items())
        final = text.index(f"SIP/2.0 {status} {phrase}\n")
        at = text.index("      Content-Length: 0\n", final)
        text = text[:at] + lines + text[at:]
        digest = hashlib.sha1(repr(sorted(extra.items())).encode()).hexdigest()[:10]
        name = f"uas_reject_{status}_{digest}.xml"
    return _write_atomically(_generated_dir(directory) / name, text)


# ---------------------------------------------------------------------------------------------
# The runner


def _scenario_path(scenario: Path | str) -> Path:
    path = Path(scenario)
    if path.parent == Path(".") and not path.exists():  # a bare name: one of ours
        path = SCENARIO_DIR / (path.name if path.suffix == ".xml" else f"{path.name}.xml")
    if not path.is_file():
        raise SippError(f"no scenario file {path}")
    return path.resolve()


def _check_injection_value(value: str) -> str:
    if ";" in value or "\n" in value or "\r" in value:
        raise ValueError(f"injection field {value!r} cannot hold ';' or a line break")
    return value


class Sipp:
    """One SIPp process running ``scenario`` on ``host`` (127.0.0.1), traces in ``workdir``.

    UAC or UAS follows from the scenario (SIPp is a UAS when it starts by receiving). A UAC needs
    ``remote`` (``(host, port)`` or ``"host:port"``: the gateway, or a SIPp UAS).

    ``local_port``: SIPp's ``-p``; None picks a free one (and another after a bind race). The
    gateway sees a UAC's calls come from ``host:local_port`` (with transport ``udp`` or ``tcp``).
    ``transport``: ``"udp"`` (``-t u1``), ``"tcp"`` (``t1``: one connection, from ``local_port``),
    ``"tcp-per-call"`` (``tn``: one connection per call, from an ephemeral port), or a raw mode.
    ``calls`` (``-m``): stop after that many calls (a UAS: incoming calls); None runs until
    ``stop()`` or ``timeout_s``. ``rate``/``rate_period_ms`` (``-r``/``-rp``): ``rate`` calls every
    period (SIPp's default: 10 calls per 1000 ms). ``concurrent`` (``-l``): at most that many calls
    at once. ``duration_ms`` (``-d``): the length of each bare ``<pause/>`` (how long uac_call
    stays up, how long uac_cancel rings).
    ``injection``: per-call fields, one row per call (``[field0]``, ``[field1]``, ... in the
    scenario; rows are used in order and wrap around), or an existing ``-inf`` CSV file. Our UAC
    scenarios take ``(caller, dialed)``: ``injection=[("+441000000001", "+442079460000")]``.
    ``variables`` (``-set name value``): global variables (the scenario must declare them);
    ``keys`` (``-key name value``): ``[name]`` in messages. ``service`` (``-s``): ``[service]``.
    ``timeout_s`` (``-timeout``): the run's hard bound; reaching it is exit 255 while
    ``timeout_is_error`` (``-timeout_error``). ``recv_timeout_ms`` (``-recv_timeout``): a call
    waiting longer than that for an expected message fails (``timeout_on_recv``).
    ``trace_messages``: ``-trace_msg`` (what ``messages()`` reads); turn it off under load.
    ``workdir``: where the traces go (pass the test's ``tmp_path``); None makes a temporary
    directory, kept after the run so that failures can be read.
    """

    def __init__(
        self,
        scenario: Path | str,
        *,
        remote: tuple[str, int] | str | None = None,
        local_port: int | None = None,
        transport: str = "udp",
        calls: int | None = None,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        concurrent: int | None = None,
        duration_ms: int | None = None,
        injection: Sequence[Sequence[str]] | Path | str | None = None,
        injection_order: str = "SEQUENTIAL",
        variables: Mapping[str, object] | None = None,
        keys: Mapping[str, object] | None = None,
        service: str | None = None,
        timeout_s: float = 30.0,
        timeout_is_error: bool = True,
        recv_timeout_ms: int | None = None,
        max_socket: int | None = None,
        trace_messages: bool = True,
        workdir: Path | str | None = None,
        name: str | None = None,
        host: str = HOST,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.scenario = _scenario_path(scenario)
        if injection is None and "[field" in self.scenario.read_text(encoding="iso-8859-1"):
            raise ValueError(f"{self.scenario.name} uses [fieldN]: pass injection=[(caller, dialed), ...]")
        self.mode = TRANSPORTS.get(transport, transport)
        if self.mode not in set(TRANSPORTS.values()):
            raise ValueError(f"transport {transport!r}: one of {sorted(TRANSPORTS)} or a -t mode")
        if isinstance(remote, tuple):
            remote = f"{remote[0]}:{remote[1]}"
        self.remote = remote
        if timeout_s <= 0:
            raise ValueError("timeout_s bounds the run: it must be positive")
        if not ipaddress.ip_address(host).is_loopback or ":" in host:
            raise ValueError(f"{host}: the harness runs SIPp on IPv4 loopback only (127.0.0.1)")
        self.host = host
        self._fixed_port = local_port is not None
        self.port = local_port if local_port is not None else free_port(host)
        self.calls = calls
        self.rate = rate
        self.rate_period_ms = rate_period_ms
        self.concurrent = concurrent
        self.duration_ms = duration_ms
        self.injection = injection
        self.injection_order = injection_order
        self.variables = dict(variables or {})
        self.keys = dict(keys or {})
        self.service = service
        self.timeout_s = timeout_s
        self.timeout_is_error = timeout_is_error
        self.recv_timeout_ms = recv_timeout_ms
        self.max_socket = max_socket or _default_max_socket()
        self.trace_messages = trace_messages
        self.name = name or self.scenario.stem
        self.extra_args = list(extra_args)
        self.binary = binary or find_sipp()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sipp-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    # -- files ---------------------------------------------------------------------------------

    def _file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}_{suffix}"

    @property
    def stat_file(self) -> Path:
        return self._file("stat.csv")

    @property
    def screen_file(self) -> Path:
        return self._file("screen.log")

    @property
    def error_file(self) -> Path:
        return self._file("errors.log")

    @property
    def message_file(self) -> Path:
        return self._file("messages.log")

    @property
    def log_file(self) -> Path:
        return self._file("logs.log")

    @property
    def output_file(self) -> Path:
        """SIPp's stdout and stderr: the screen it redraws every second, and its error lines."""
        return self._file("stdout.log")

    @property
    def injection_file(self) -> Path | None:
        if self.injection is None:
            return None
        if isinstance(self.injection, (str, Path)):
            return Path(self.injection)
        return self._file("injection.csv")

    # -- process -------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        """The full ``sipp`` command line this runner uses."""
        cmd = [self.binary, "-sf", str(self.scenario)]
        if self.remote:
            cmd.append(self.remote)
        cmd += [
            "-t", self.mode,
            "-i", self.host, "-bind_local", "-p", str(self.port),
            "-ci", self.host, "-mi", self.host,  # control and media sockets on loopback too
            "-nostdin",
            "-buff_size", str(_BUFF_SIZE),
            "-max_socket", str(self.max_socket),
            "-timeout", f"{self.timeout_s:g}s",
            "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
            "-trace_screen", "-screen_file", str(self.screen_file),
            "-trace_err", "-error_file", str(self.error_file),
            "-trace_logs", "-log_file", str(self.log_file),
        ]  # fmt: skip
        if self.timeout_is_error:
            cmd.append("-timeout_error")
        if self.trace_messages:
            cmd += ["-trace_msg", "-message_file", str(self.message_file)]
        for flag, value in (
            ("-m", self.calls),
            ("-r", self.rate),
            ("-rp", self.rate_period_ms),
            ("-l", self.concurrent),
            ("-d", self.duration_ms),
            ("-s", self.service),
            ("-recv_timeout", self.recv_timeout_ms),
        ):
            if value is not None:
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                cmd += [flag, str(value)]
        if self.injection_file is not None:
            cmd += ["-inf", str(self.injection_file)]
        for name, value in self.variables.items():
            cmd += ["-set", name, str(value)]
        for name, value in self.keys.items():
            cmd += ["-key", name, str(value)]
        return cmd + self.extra_args

    def _write_injection(self) -> None:
        if self.injection is None or isinstance(self.injection, (str, Path)):
            return
        rows = [";".join(_check_injection_value(str(v)) for v in row) for row in self.injection]
        if not rows:
            raise ValueError("injection has no rows")
        path = self.injection_file
        assert path is not None
        path.write_text(f"{self.injection_order}\n" + "\n".join(rows) + "\n", encoding="utf-8")

    def start(self, ready_timeout: float = 5.0) -> Sipp:
        """Start SIPp; return once it has bound its SIP port (or has already finished)."""
        if self.is_running():
            return self
        self._write_injection()
        for _attempt in range(8):
            self._spawn()
            if self._wait_bound(ready_timeout):
                return self
            rc = self.returncode
            if rc is None:
                self.stop()
                raise SippError(f"SIPp {self.name} did not bind {self.host}:{self.port} within "
                                f"{ready_timeout} s\n{self.diagnostics()}")  # fmt: skip
            if rc != SippExit.BIND_ERROR:
                return self  # finished already (a short run): wait() reports how
            # The port was taken between free_port() and SIPp's bind (or our own probe raced it).
            if self._fixed_port:
                time.sleep(0.1)
            else:
                self.port = free_port(self.host)
        raise SippError(f"SIPp {self.name} could not bind {self.host}:{self.port}\n{self.diagnostics()}")

    def _spawn(self) -> None:
        with open(self.output_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the group
                preexec_fn=_die_with_parent(),
            )
        self.started_at = time.monotonic()

    def _wait_bound(self, timeout: float) -> bool:
        tcp = self.mode in _TCP_MODES
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            bound = _proc_bound(self.proc.pid, self.port, tcp, self.host)
            if bound is None:  # no /proc: probe by binding (a tiny window SIPp could lose; retried)
                bound = not _bindable(self.port, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM, self.host)
            if bound:
                return True
            time.sleep(0.01)
        return False

    def wait(self, timeout: float) -> int:
        """Wait for SIPp to exit; its exit code (``SippExit``). Still running after ``timeout``
        seconds: stop it and raise ``TimeoutError`` with the diagnostics."""
        if self.proc is None:
            raise SippError(f"SIPp {self.name} was not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(
                f"SIPp {self.name} still running after {timeout} s; stopped it\n{self.diagnostics()}"
            ) from None

    def run(self, timeout: float | None = None) -> int:
        """``start()`` then ``wait()`` (default: ``timeout_s`` plus a margin); always stopped."""
        try:
            self.start()
            return self.wait(timeout if timeout is not None else self.timeout_s + 10.0)
        finally:
            self.stop()

    def stop(self, grace: float = 5.0) -> int | None:
        """End the run: SIGTERM to the process group (SIPp then writes its final statistics and
        screen), SIGKILL after ``grace`` seconds; reap it. Returns the exit code (None if never
        started). Safe to call any number of times."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results -------------------------------------------------------------------------------

    def stats(self) -> SippStats:
        """The run's cumulative statistics: the last ``-trace_stat`` row (written every second
        and at exit), else the counts of the ``-trace_screen`` file."""
        if self.stat_file.exists():
            with contextlib.suppress(SippError):
                return parse_stat_csv(self.stat_file)
        if self.screen_file.exists():
            return parse_screen(self.screen_file)
        raise SippError(f"SIPp {self.name} left no statistics in {self.workdir}")

    def messages(
        self, *, method: str | None = None, status: int | None = None, direction: str | None = None
    ) -> list[SipMessage]:
        """The SIP messages SIPp sent and received, in order, optionally only those of a request
        ``method`` (requests only; responses to it have ``cseq_method``), a response ``status``,
        or a ``direction`` ("sent" / "received")."""
        if not self.trace_messages:
            raise SippError(f"SIPp {self.name} runs without trace_messages")
        try:
            text = self.message_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [
            m
            for m in parse_messages(text)
            if (method is None or m.method == method)
            and (status is None or m.status == status)
            and (direction is None or m.direction == direction)
        ]

    def logs(self) -> list[str]:
        """The lines the scenario's ``<log message=...>`` actions wrote (``-trace_logs``)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def log_records(self, kind: str | None = None) -> list[dict[str, str]]:
        """``logs()`` lines of the form ``kind key=value ...`` as dicts (``{"kind": ..., key: value}``),
        only those of ``kind`` if given. A value runs to the next `` name=`` (lowercase name), so a
        header value with spaces stays whole unless it holds such a word itself."""
        records = []
        for line in self.logs():
            head, _, rest = line.partition(" ")
            if kind is not None and head != kind:
                continue
            record = {"kind": head}
            pairs = re.split(r" (?=[a-z_]+=)", rest)
            for pair in pairs:
                key, sep, value = pair.partition("=")
                if sep:
                    record[key] = value
            records.append(record)
        return records

    def errors(self) -> str:
        """SIPp's ``-trace_err`` log: the unexpected messages and aborted calls, as it wrote them."""
        try:
            return self.error_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 30) -> str:
        """What a failing assertion should show: command, exit code, statistics, error lines."""
        parts = [f"SIPp {self.name}: {' '.join(self.command())}", f"exit code: {self.returncode}"]
        with contextlib.suppress(SippError, OSError):
            s = self.stats()
            parts.append(f"stats: successful={s.successful} failed={s.failed} failures={dict(s.failures)}")
        errors = self.errors().strip().splitlines()
        if errors:
            parts.append("errors log (tail):\n" + "\n".join(errors[-lines:]))
        with contextlib.suppress(OSError):
            out = self.output_file.read_text(encoding="utf-8", errors="replace").splitlines()
            # SIPp's own error lines start with a date; the rest is its redrawn screen.
            notes = [line for line in out if re.match(r"^\d{4}-\d\d-\d\d\t", line)]
            if notes:
                parts.append("sipp output (errors):\n" + "\n".join(dict.fromkeys(notes[-lines:])))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<Sipp {self.name} {self.mode} {self.host}:{self.port} -> {self.remote} pid={self.pid}>"


def stop_all(runners: Iterable[Sipp]) -> None:
    """Stop every runner, even when one of them raises; then re-raise the first error."""
    errors: list[BaseException] = []
    for runner in runners:
        try:
            runner.stop()
        except BaseException as exc:  # keep going: every process must be reaped
            errors.append(exc)
    if errors:
        raise errors[0]
