"""The status as Prometheus metrics: `status/imgtrain.prom`, for node_exporter's textfile collector.

Written after each status write, atomically (same `atomic_write`), so the
collector never reads half a file. The numbers are the status file's: queue
counts, library totals, the ETA, stalls, the last batch; plus counters of what
this daemon process did since it started (steps and seconds per phase, images
and faces), which reset on a restart as Prometheus counters may.
"""

from __future__ import annotations

import math

from daemon.status.model import Status
from daemon.status.plan import Counters
from daemon.vocab import PHASES, DaemonStatus


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{labels} {_number(v)}" for labels, v in samples]


def render(s: Status, counters: Counters) -> str:
    t = _Text()
    t.metric(
        "imgtrain_info",
        "gauge",
        "The daemon that wrote this file.",
        [(f'{{version="{_label(s.daemon.version)}",hostname="{_label(s.daemon.hostname)}"}}', 1)],
    )
    t.metric(
        "imgtrain_status",
        "gauge",
        "1 for the daemon's current status.",
        [(f'{{status="{st.value}"}}', 1 if s.status == st else 0) for st in DaemonStatus],
    )
    t.metric(
        "imgtrain_status_updated_timestamp_seconds",
        "gauge",
        "When the status was written (Unix time); old means the daemon is not writing.",
        [("", s.updated_at.timestamp())],
    )
    q = s.queue.model_dump()
    t.metric(
        "imgtrain_queue_batches",
        "gauge",
        "Batches in the queue, by state.",
        [(f'{{state="{k}"}}', v) for k, v in q.items()],
    )
    t.metric(
        "imgtrain_library",
        "gauge",
        "Library-wide counts.",
        [(f'{{kind="{k}"}}', v) for k, v in s.totals.model_dump().items()],
    )
    t.metric(
        "imgtrain_images_processed_total",
        "counter",
        "Images through every image phase since the daemon started.",
        [("", counters.images)],
    )
    t.metric(
        "imgtrain_faces_found_total",
        "counter",
        "Faces found since the daemon started.",
        [("", counters.faces)],
    )
    t.metric(
        "imgtrain_phase_steps_total",
        "counter",
        "Steps done per phase since the daemon started.",
        [(f'{{phase="{p}"}}', counters.phase_steps[p]) for p in PHASES],
    )
    t.metric(
        "imgtrain_phase_seconds_total",
        "counter",
        "Wall seconds spent per phase since the daemon started.",
        [(f'{{phase="{p}"}}', round(counters.phase_seconds[p], 3)) for p in PHASES],
    )
    o = s.overall_progress
    if o.eta_seconds is not None:
        t.metric(
            "imgtrain_eta_seconds",
            "gauge",
            "Estimated seconds until the run ends.",
            [("", o.eta_seconds)],
        )
    if o.percentage is not None:
        t.metric(
            "imgtrain_run_progress_ratio",
            "gauge",
            "Share of the run's work done (0..1).",
            [("", round(o.percentage / 100, 4))],
        )
    if s.phases is not None:
        etas = [
            (f'{{phase="{p}"}}', ph.eta_seconds)
            for p in PHASES
            if (ph := getattr(s.phases, p)).eta_seconds is not None
        ]
        if etas:
            t.metric(
                "imgtrain_phase_eta_seconds",
                "gauge",
                "Estimated seconds until each phase of the current batch is done.",
                etas,
            )
    t.metric(
        "imgtrain_stalled",
        "gauge",
        "1 while no step has finished for status.stall_seconds.",
        [("", 1 if s.stalled else 0)],
    )
    if s.throughput is not None:
        t.metric(
            "imgtrain_throughput_images_per_second",
            "gauge",
            "Images per second, smoothed.",
            [("", s.throughput)],
        )
    lb = s.last_batch
    if lb is not None:
        t.metric(
            "imgtrain_last_batch_duration_seconds",
            "gauge",
            "How long the last finished batch took.",
            [("", lb.seconds)],
        )
        t.metric(
            "imgtrain_last_batch_images",
            "gauge",
            "Images in the last finished batch.",
            [("", lb.images)],
        )
        if lb.finished_at is not None:
            t.metric(
                "imgtrain_last_batch_finished_timestamp_seconds",
                "gauge",
                "When the last batch finished (Unix time).",
                [("", lb.finished_at.timestamp())],
            )
    t.metric(
        "imgtrain_recent_errors",
        "gauge",
        "Errors listed in the status file.",
        [("", len(s.errors))],
    )
    return "\n".join(t.lines) + "\n"
