"""The status file's shape: one pydantic model, published as a JSON Schema.

Fields keep their meaning across versions; new ones may be added and
`schema_version` says which. The states come from `daemon.vocab`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from daemon.vocab import DaemonStatus, PhaseState

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseProgress(_Model):
    status: PhaseState = Field(description="pending, running, completed, failed or skipped")
    step: int = Field(description="steps of this phase done in the current batch")
    total_steps: int = Field(description="steps this phase has in the current batch")
    percentage: float = Field(description="step / total_steps * 100; 100 only when done")
    eta_seconds: float | None = Field(
        None, description="estimated seconds until this phase is done in the current batch"
    )


class Phases(_Model):
    embedding: PhaseProgress
    faces: PhaseProgress
    clustering: PhaseProgress


class OverallProgress(_Model):
    percentage: float | None = Field(
        None, description="share of the run's work done, weighted by measured cost per step"
    )
    eta_seconds: float | None = Field(None, description="estimated seconds until the run ends")
    eta_at: datetime | None = Field(None, description="estimated UTC time the run ends")


class RunInfo(_Model):
    started_at: datetime = Field(description="UTC time the run began (work arrived while idle)")
    batches_done: int = Field(description="batches of the run finished (any outcome)")
    batches_total: int = Field(description="batches in the run: finished, current and waiting")
    images_done: int = Field(description="images of the run through every image phase")
    images_total: int = Field(description="images of the run to process (duplicates excluded)")


class DaemonInfo(_Model):
    pid: int
    version: str
    started_at: datetime
    hostname: str


class QueueCounts(_Model):
    waiting: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    paused: int = Field(0, description="batches held by `imgtrain queue pause`")
    cancelled: int = 0


class LastBatch(_Model):
    batch_id: int
    name: str
    state: str = Field(description="completed, failed or cancelled")
    images: int = Field(description="images in the batch")
    processed: int = Field(description="images processed by every phase")
    duplicates: int = Field(description="images already in the library, not recomputed")
    failed_images: int = Field(description="images skipped with a per-file error")
    faces: int
    seconds: float
    images_per_second: float | None
    finished_at: datetime | None
    error: str | None = None


class ErrorEntry(_Model):
    at: datetime
    code: str
    message: str
    file: str | None = None
    batch_id: int | None = None


class ErrorInfo(_Model):
    code: str
    message: str
    hint: str


class Totals(_Model):
    batches: int = 0
    images: int = 0
    faces: int = 0
    clusters: int = 0
    people: int = 0


class SystemInfo(_Model):
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    disk_free_bytes: int | None = Field(None, description="free bytes on the data directory's disk")
    device: str | None = Field(
        None, description="where CLIP runs (cpu, cuda:0), once the models are loaded"
    )
    onnx_providers: list[str] | None = Field(
        None,
        description="onnxruntime execution providers the face models run on, once loaded",
    )


class WorkerInfo(_Model):
    name: str
    host: str | None = None
    state: str = Field(description="idle, busy, or dead (its heartbeats stopped)")
    current_job: str | None = Field(None, description="the chunk job it is running")
    images_per_second: float | None = Field(None, description="over its last job")
    images: int = Field(0, description="images it processed since it started")
    last_heartbeat: datetime | None = None


class WorkersInfo(_Model):
    """Set when workers.backend is rq: the queue and the workers, as Redis last told."""

    backend: str = "rq"
    redis: str = Field(description="workers.redis_url without its password")
    queue: str
    reachable: bool = Field(description="false while Redis does not answer (the daemon retries)")
    error: str | None = None
    queue_depth: int | None = Field(None, description="chunk jobs waiting for a worker")
    workers: list[WorkerInfo] = Field(default_factory=list)
    queue_wait_seconds: float | None = Field(
        None, description="median of recent jobs: queued until a worker started it"
    )
    dispatch_seconds: float | None = Field(
        None, description="median of recent jobs: a worker was free until it started the job"
    )
    result_delay_seconds: float | None = Field(
        None, description="median of recent jobs: result ready until it was in the ledger"
    )
    checked_at: datetime | None = None


class ReindexProgress(_Model):
    model: str = Field(description="the CLIP model the library is being (or was) indexed with")
    from_model: str | None = Field(None, description="the model search uses until it completes")
    state: str = Field(description="running, completed, cancelled or failed")
    done: int = Field(description="library images in the new model's collection")
    total: int = Field(description="images in the library")
    percentage: float = Field(description="done / total * 100; 100 only when completed")
    eta_seconds: float | None = Field(None, description="estimated seconds of re-index work left")
    eta_at: datetime | None = Field(None, description="estimated UTC time it completes")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = Field(None, description="why it failed, or what it left out")


class Status(_Model):
    """The whole status file. Fields keep their meaning; new ones may be added."""

    schema_version: int = SCHEMA_VERSION
    status: DaemonStatus
    message: str = Field(description="one human line saying what is happening now")
    updated_at: datetime
    daemon: DaemonInfo
    error: ErrorInfo | None = Field(None, description="set when status is error")
    current_file: str | None = Field(None, description="the dropped folder's name")
    batch_id: int | None = None
    batch_number: int | None = Field(None, description="position of this batch in the run, 1-based")
    batch_queue_size: int | None = Field(
        None, description="batches in the run: done+current+waiting"
    )
    batch_step: int | None = Field(None, description="steps of the current batch done")
    batch_total_steps: int | None = Field(None, description="steps of the current batch")
    phase: str | None = Field(None, description="the phase running now")
    phases: Phases | None = Field(None, description="per-phase progress of the current batch")
    current_step: int | None = Field(None, description="steps done in the run, all batches")
    total_steps: int | None = Field(None, description="steps in the run; grows when folders arrive")
    overall_progress: OverallProgress = Field(default_factory=OverallProgress)
    throughput: float | None = Field(None, description="images per second, smoothed")
    run: RunInfo | None = Field(None, description="the run in progress; null when idle")
    stalled: bool = Field(False, description="no step finished for status.stall_seconds")
    stalled_since: datetime | None = Field(None, description="when the last step finished")
    stall_reason: str | None = Field(
        None, description="the batch, phase and file being worked on when stalled"
    )
    queue: QueueCounts = Field(default_factory=QueueCounts)
    last_batch: LastBatch | None = None
    errors: list[ErrorEntry] = Field(default_factory=list, description="most recent first")
    totals: Totals = Field(default_factory=Totals)
    system: SystemInfo = Field(default_factory=SystemInfo)
    workers: WorkersInfo | None = Field(None, description="the RQ workers (workers.backend rq)")
    reindex: ReindexProgress | None = Field(
        None, description="the latest `imgtrain reindex`; runs between batches"
    )


def honest_percentage(done: float, total: float, steps_left: bool) -> float:
    """done/total as a percentage that never reads 100 while steps are left: rounding up a
    99.96% to 100 is how a status file comes to say "done" with work outstanding."""
    pct = 100.0 * done / total if total else 0.0
    return min(pct, 99.9) if steps_left else pct


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_schema() -> str:
    return json.dumps(Status.model_json_schema(), indent=2, sort_keys=True) + "\n"
