"""What a reload (SIGHUP) changes now, and what waits for a restart.

Model, phase, clustering, store, decode, queue and device settings apply
before the next batch; `inbox.link_roots` and the `inbox.max_*` limits at
once; directories, the other inbox and status timings and `workers` only
after a restart, which the log says.
"""

from __future__ import annotations

import logging

from daemon.config import Config, InboxConfig

log = logging.getLogger("imgtrain")

NOW = ("clip", "faces", "clustering", "store", "phases", "decode", "queue", "device")
AFTER_RESTART = ("inbox_dir", "data_dir", "status_dir", "status", "workers")


def apply_reload(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The running config with what a reload may change taken from `new`; the keys changed."""
    changed = [k for k in NOW if getattr(new, k) != getattr(old, k)]
    needs_restart = [k for k in AFTER_RESTART if getattr(new, k) != getattr(old, k)]
    # Link roots and limits apply now (a refused folder is claimed after raising one).
    inbox = old.inbox.model_copy(update={k: getattr(new.inbox, k) for k in InboxConfig.RELOADABLE})
    if new.inbox != inbox:
        needs_restart.append("inbox keys other than link_roots and max_*")
    if needs_restart:
        log.warning("reload: %s change only after a restart", ", ".join(needs_restart))
    config = old.model_copy(
        update={k: getattr(new, k) for k in (*changed, "log_level")} | {"inbox": inbox}
    )
    return config, changed
