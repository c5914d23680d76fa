"""Between-step checks: shutdown, pause and cancel requests.

The pipeline calls `checkpoint` between chunks, after the chunk's outcomes
are in the ledger, so nothing is ever left half-recorded. Pause and cancel
come from the CLI through the ledger's control table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from daemon.errors import Cancelled, Interrupted
from daemon.ledger.ledger import Ledger
from daemon.status.progress import Progress
from daemon.vocab import DaemonStatus

log = logging.getLogger(__name__)


class Control:
    """Between-step checks: shutdown, pause and cancel requests from the CLI."""

    def __init__(
        self,
        ledger: Ledger,
        stop: threading.Event,
        progress: Progress,
        poke: Callable[[], None],
        poll_seconds: float = 0.5,
    ) -> None:
        self.ledger, self.stop, self.progress, self.poke = ledger, stop, progress, poke
        self.poll_seconds = poll_seconds

    def checkpoint(self, batch_id: int, where: str) -> None:
        if self.stop.is_set():
            raise Interrupted(where)
        if self.ledger.cancel_requested(batch_id):
            raise Cancelled(f"batch {batch_id} cancelled {where}")
        if not self.ledger.is_paused():
            return
        status, message = self.progress.status, self.progress.message
        self.progress.set_state(
            DaemonStatus.PAUSED, f"Paused {where}; `imgtrain queue resume` continues"
        )
        self.poke()
        log.info("paused %s", where)
        while self.ledger.is_paused():
            if self.stop.wait(self.poll_seconds):
                raise Interrupted(where)
            if self.ledger.cancel_requested(batch_id):
                raise Cancelled(f"batch {batch_id} cancelled while paused")
        log.info("resumed")
        self.progress.set_state(status, message)
        self.poke()
