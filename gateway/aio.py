"""Stopping background tasks reliably: honour a cancellation a library swallowed, and never wait for ever.

redis-py can lose a task's cancellation: a task cancelled while redis-py waits inside
``asyncio.timeout`` may see it come out as ``TimeoutError`` (an ``OSError``, which retry loops catch),
or not at all (CPython 3.11). A watch or poll loop would then carry on, and whoever awaits the task on
shutdown would wait for ever: SIGTERM would never end the process. The task still counts the request
(``Task.cancelling()``), so loops call ``reraise_cancel()`` after such awaits; and shutdown stops
tasks with ``stop_task``, which bounds the wait and says which task did not stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["reraise_cancel", "stop_task", "STOP_TIMEOUT_S"]

log = logging.getLogger("creditgate")

STOP_TIMEOUT_S = 5.0


def reraise_cancel() -> None:
    """Raise ``CancelledError`` if the running task has been asked to stop (even if it was swallowed)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Future[Any] | None, what: str, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Cancel ``task`` and wait at most ``timeout_s`` for it to end; True if it ended.

    A task still running after that is logged (naming ``what``) and left behind rather than
    waited for: shutting down must not hang on one component. Its failure, if it failed, is logged.
    """
    if task is None:
        return True
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("%s did not stop within %.0f s of being cancelled; not waiting for it", what, timeout_s)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with an error: %r", what, task.exception())
    return True
