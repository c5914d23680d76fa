"""The daemon's state as the status file shows it: the run's plan, its end, each write.

Every change that a reader could see half of (a batch finishing, the run
ending, a folder joining) happens under the progress channel's lock, and each
status write reads the ledger's queue under that same lock. That is what
keeps every write consistent with itself: `training` only with a batch,
`idle` only with nothing queued, and a run's last write going straight from
its last batch to `idle` (daemon/status/outlook.py has the showing rules).
"""

from __future__ import annotations

import time
from pathlib import Path

from daemon.config import Config
from daemon.errors import DiskFull
from daemon.ledger import history, workload
from daemon.ledger.ledger import Ledger
from daemon.phases.registry import declared_steps
from daemon.phases.workload import Workload
from daemon.service.runplan import plan_run, upcoming_counts
from daemon.status import metrics
from daemon.status.model import Status
from daemon.status.progress import PhaseCount, Progress
from daemon.status.writer import atomic_write
from daemon.vocab import DaemonStatus

TOTALS_EVERY = 10.0  # seconds between refreshes of library-wide totals in the status file


class RunState:
    def __init__(self, config: Config, ledger: Ledger, progress: Progress) -> None:
        self.config = config
        self.ledger = ledger
        self.progress = progress
        self.workload = Workload(config.decode)
        self._totals_at = 0.0

    # -- the run -----------------------------------------------------------------
    def refresh(self) -> None:
        """Plan the run again from the ledger (header reads are cached per image)."""
        with self.progress.lock:
            plan = plan_run(self.ledger, self.workload, declared_steps(self.config))
            self.progress.set_run(plan)

    def queued(self, batch_id: int) -> None:
        """A batch was claimed: the run starts (or grows). Headers are read before the lock."""
        files = workload.pending_files(self.ledger, [batch_id]).get(batch_id, [])
        self.workload.phase_work(Path(self.ledger.batch(batch_id).path or ""), files)  # cache
        with self.progress.lock:
            self.ledger.open_run()
            self.refresh()

    def end_run(self) -> bool:
        """Nothing is queued (the caller holds the lock): the run is over, and it says idle.
        Returns whether anything changed."""
        run_id = self.ledger.current_run()
        if run_id is not None:
            self.ledger.end_run(run_id)
            self.refresh()
        message = self.idle_message()
        if self.progress.status != DaemonStatus.IDLE or self.progress.message != message:
            self.progress.set_state(DaemonStatus.IDLE, message)
            return True
        return run_id is not None

    def after_batch(self, batch_id: int | None) -> None:
        last = batch_id or history.last_finished_batch(self.ledger)
        if last is not None:
            self.progress.set_last_batch(history.batch_summary(self.ledger, last))
        self.progress.set_totals(history.totals(self.ledger))

    def save_costs(self) -> None:
        workload.save_cost_memory(self.ledger, self.progress.memory())

    def idle_message(self) -> str:
        done = self.progress.totals.batches
        return f"Idle: watching {self.config.inbox_dir} ({done} batches in the library)"

    # -- each write ----------------------------------------------------------------
    def build(self) -> Status:
        with self.progress.lock:
            counts, paused = self.ledger.queue_counts(), self.ledger.is_paused()
            self.progress.set_queue(counts, paused)
            # Totals change between batches too (`imgtrain people name`); refreshed
            # every few seconds, not every write, because they count whole tables.
            if time.monotonic() - self._totals_at > TOTALS_EVERY:
                self._totals_at = time.monotonic()
                self.progress.set_totals(history.totals(self.ledger))
            self.progress.set_errors(
                history.recent_errors(self.ledger, self.config.status.max_errors)
            )
            self.progress.idle_message = self.idle_message()
            queued = counts.get("waiting", 0) + counts.get("running", 0) > 0
            upcoming = None
            if queued and not paused and self.progress.batch_id is None:
                upcoming = self._upcoming()
                if upcoming is None:  # another process took it meanwhile (a cancel): read again
                    counts = self.ledger.queue_counts()
                    self.progress.set_queue(counts, paused)
                    queued = counts.get("waiting", 0) + counts.get("running", 0) > 0
            return self.progress.snapshot(queued=queued, paused=paused, upcoming=upcoming)

    def _upcoming(self) -> tuple[int, str, dict[str, PhaseCount]] | None:
        """The batch the daemon takes next, in the run (joined to it if claimed just now)."""
        batch = self.ledger.next_batch()
        if batch is None:
            return None
        if batch.batch_id not in self.progress.run.batch_ids:
            try:
                self.ledger.open_run()
                self.refresh()
            except DiskFull:
                pass  # shown all the same; the main loop joins it to the run when it can
        counts = upcoming_counts(self.ledger, batch, declared_steps(self.config))
        return batch.batch_id, batch.name, counts

    def write_metrics(self, status: Status) -> None:
        text = metrics.render(status, self.progress.counters)
        atomic_write(self.config.metrics_path, text.encode())
