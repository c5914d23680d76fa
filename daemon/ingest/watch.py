"""The inbox: notice dropped folders, wait until they have settled, claim them.

Shaped like Paperless-ngx's consumer: a pure `StabilityTracker` decides when
something has stopped changing (it is fed snapshots and times, so it is
tested without a clock or a disk), and a thin `Inbox` feeds it.

Watchdog callbacks only note which top-level inbox entry an event was under;
all stat work and claiming happens on one scanner thread, so a burst of
inotify events costs nothing. The scanner only looks at entries that had an
event (or turned up in the periodic full rescan, the safety net for missed
events and for network mounts), and only once they have been quiet for
almost `settle_seconds`. An entry is claimed when it has had no event for
`settle_seconds` and two scans in a row agree on every file's size and mtime.

A dropped link is looked at only if it leads into `inbox.link_roots`, and a
folder only while it is within the `inbox.max_*` limits (fence.py); what
is refused stays in the inbox, reported once, and is looked at again after
a reload. Claiming itself, crash-safe, lives in `claim.py`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.api import BaseObserver

from daemon.config import Config
from daemon.errors import Code, DiskFull, LinkOutsideRoots
from daemon.ingest import fence, scan
from daemon.ingest.claim import ClaimRefused, claim_entry, claim_loose, recover_claims
from daemon.ingest.events import check_layout, start_observer
from daemon.ingest.settle import Fingerprint, StabilityTracker
from daemon.ledger.ledger import Ledger

log = logging.getLogger("imgtrain.inbox")

# The key shared by image files dropped straight into the inbox; the slash
# keeps it apart from any real file name (a folder may well be called "<loose>").
LOOSE = "<loose>/"
MIN_SLEEP = 0.05  # seconds: the scanner never wakes more often than this


class Inbox:
    """Watches `config.inbox_dir` and turns settled drops into queued batches.

    `on_queued(batch_id)` and `on_notice(code, message, file)` are called on
    the scanner thread. `claim` is meant for that thread too.
    """

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        on_queued: Callable[[int], None],
        on_notice: Callable[[str, str, str], None],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.on_queued = on_queued
        self.on_notice = on_notice
        self.root = Path(os.path.abspath(config.inbox_dir))
        self.extra = list(config.inbox.ignore)
        check_layout(config, self.root)
        self.tracker = StabilityTracker(config.inbox.settle_seconds)
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}  # top-level name -> time of its latest event
        # Entries looked at and left alone (no photos yet, a download still in
        # progress, a refused claim): not scanned again until they change.
        self._parked: dict[str, Fingerprint] = {}
        self._notified: dict[str, tuple[str, object]] = {}  # key -> (code, what it was about)
        self._refused_links: dict[str, str] = {}  # name -> where it led when refused
        # Folders refused for a limit -> when a change in them is worth a (bounded) look.
        self._limited: dict[str, float] = {}
        self._new_config: Config | None = None  # from a reload, taken on the next tick
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._next_rescan = 0.0
        self._recover_pending = False

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Watch, then scan what is already there, then tick on the scanner thread."""
        self._stop.clear()
        self._observer = start_observer(self.root, self.config.inbox, self._note)
        self._rescan(time.monotonic())
        self._thread = threading.Thread(target=self._run, name="imgtrain-inbox", daemon=True)
        self._thread.start()
        log.info("watching %s (%s)", self.root, type(self._observer).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            if self._thread.is_alive():
                # A daemon thread dies with the process; its half-done claim is
                # in the ledger as 'claiming' and recover_claims finishes it.
                log.warning("inbox scanner still busy claiming; it finishes on the next start")
            self._thread = None

    def reconfigure(self, config: Config) -> None:
        """New link roots and limits (a reload): entries they refused are looked at again."""
        with self._lock:
            self._new_config = config

    def _note(self, name: str) -> None:
        at = time.monotonic()
        with self._lock:
            self._touched[name] = at

    def _run(self) -> None:
        interval = self.config.inbox.scan_interval_seconds
        while not self._stop.wait(self._sleep(interval)):
            self._tick(time.monotonic())

    def _sleep(self, interval: float) -> float:
        """A tick, or less when an entry's quiet period ends sooner: then the agreeing
        scan (the baseline was taken a tick early) lands right at settle_seconds."""
        due = self.tracker.next_due()
        if due is None:
            return interval
        return min(interval, max(MIN_SLEEP, due - time.monotonic()))

    # -- one tick -------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
            config, self._new_config = self._new_config, None
        if config is not None:
            self._reconfigured(config)
            self._next_rescan = now
        if now >= self._next_rescan:
            if self._recover_pending:
                self._recover()
            self._rescan(now)
        for name, at in sorted(touched.items()):
            self._on_event(name, at)
        lead = self.config.inbox.scan_interval_seconds
        for key in self.tracker.pending():
            if self._stop.is_set():
                return
            # Take the baseline scan one tick early, so the agreeing second
            # scan lands right when the quiet period ends.
            if self.tracker.due(key, now + lead):
                self._step(key, now)

    def _reconfigured(self, config: Config) -> None:
        self.config = config
        refusals = (Code.LINK_OUTSIDE_ROOTS, Code.LIMIT_EXCEEDED)
        for key in [k for k, (code, _) in self._notified.items() if code in refusals]:
            self._drop(key)
        for key in list(self._limited):
            self._drop(key)
        self._parked.pop(LOOSE, None)  # loose links refused before may be allowed now
        log.info("inbox: link roots and limits reloaded")

    def _recover(self) -> None:
        """Finish claims a full disk interrupted, once there is room again."""
        try:
            queued = recover_claims(self.ledger, self.config)
        except DiskFull as exc:
            log.info("still no room to finish interrupted claims: %s", exc)
            return
        self._recover_pending = False
        for batch_id in queued:
            self.on_queued(batch_id)

    def _classify(self, name: str) -> str | None:
        """The tracker key for a top-level name; raises FileNotFoundError if it is gone."""
        path = self.root / name
        st = os.lstat(path)
        if scan.is_ignored(name, self.extra) and not scan.is_partial(name):
            return None
        if stat.S_ISLNK(st.st_mode):
            # Judged before anything behind the link is walked, and again at claim time.
            if self._link_refused(name):
                return None
            try:
                st = os.stat(path)
            except OSError:
                return None  # broken since it was judged: the next event says so
        if stat.S_ISDIR(st.st_mode):
            return None if scan.is_ignored(name, self.extra) else name
        if stat.S_ISREG(st.st_mode):
            return LOOSE  # a loose download in progress holds the loose group back
        return None

    def _on_event(self, name: str, now: float) -> None:
        try:
            key = self._classify(name)
        except FileNotFoundError:
            self._drop(name)
            if LOOSE in self.tracker or LOOSE in self._parked:
                self._poke(LOOSE, now)  # it may have been a loose file
            return
        if key is not None:
            self._poke(key, now)

    def _poke(self, key: str, now: float) -> None:
        """Activity under `key`: track it again, unless it is parked and unchanged."""
        if now < self._limited.get(key, now):
            return  # a folder over a limit is walked (bounded) once a rescan at most
        if key in self._parked:
            try:
                same = self._survey(key).fingerprint() == self._parked[key]
            except FileNotFoundError:
                self._drop(key)
                return
            if same:
                return  # e.g. the events our own claim of a neighbour caused
            del self._parked[key]
        self.tracker.touch(key, now)

    def _rescan(self, now: float) -> None:
        self._next_rescan = now + self.config.inbox.rescan_seconds
        try:
            names = os.listdir(self.root)
        except OSError as exc:
            log.error("cannot list the inbox %s: %s", self.root, exc)
            return
        keys = set()
        for name in names:
            try:
                key = self._classify(name)
            except FileNotFoundError:
                continue
            if key is not None:
                keys.add(key)
        for key in sorted(keys):
            if key not in self.tracker:
                self._poke(key, now)
        present = {*names, *keys}
        for key in {*self._parked, *self._notified, *self._refused_links} - present:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self.tracker.forget(key)
        self._parked.pop(key, None)
        self._notified.pop(key, None)
        self._refused_links.pop(key, None)
        self._limited.pop(key, None)

    def _survey(self, key: str) -> scan.Survey:
        if key == LOOSE:
            return scan.survey_loose(self.root, self.extra)
        return scan.survey(self.root / key, self.extra, fence.limits(self.config))

    def _step(self, key: str, now: float) -> None:
        try:
            survey = self._survey(key)
        except FileNotFoundError:
            self._drop(key)
            return
        fingerprint = survey.fingerprint()
        if survey.over is not None:
            # Refused at once: waiting for it to settle would mean walking it again.
            self.tracker.forget(key)
            self._parked[key] = fingerprint
            self._limited[key] = now + self.config.inbox.rescan_seconds
            refusal = fence.too_big(self.root / key, survey.over)
            over = (survey.over.key, survey.over.limit)
            self._notice_once(key, self.root / key, refusal.code, refusal.message, about=over)
            return
        self._limited.pop(key, None)
        self.tracker.observe(key, fingerprint, now)
        if not self.tracker.quiet(key, now):
            return
        self.tracker.forget(key)
        self._parked[key] = fingerprint
        if survey.partial:
            log.info("%s holds a download still in progress; waiting", key)
            return
        try:
            if key == LOOSE:
                self._claim_loose(survey)
            else:
                self.claim(self.root / key)
        except ClaimRefused as exc:
            log.warning("could not claim %s: %s", key, exc)
            self.on_notice(str(exc.code), exc.message, str(self.root / key))
        except DiskFull as exc:
            # Not the folder's fault: look at it again once it has settled anew, and
            # finish any claim the full disk interrupted half-way.
            log.warning("could not claim %s: %s", key, exc)
            self._parked.pop(key, None)
            self.tracker.touch(key, now)
            self._recover_pending = True
            self.on_notice(str(exc.code), exc.message, str(self.root / key))
        except (OSError, sqlite3.Error) as exc:
            # The ledger still says 'claiming'; recover_claims finishes it on restart.
            log.exception("claiming %s failed", key)
            self.on_notice(Code.BATCH_FAILED, f"claiming failed: {exc}", str(self.root / key))
        if key == LOOSE and LOOSE in self._parked:
            try:  # what is left (non-photos, files that would not move) waits for a change
                self._parked[LOOSE] = scan.survey_loose(self.root, self.extra).fingerprint()
            except OSError:
                self._parked.pop(LOOSE, None)

    # -- claiming -------------------------------------------------------------------
    def claim(self, entry: Path) -> int | None:
        """Claim a settled folder (or link to one) now; None if there is nothing to claim.

        Raises ClaimRefused when it cannot be moved (its batch is then failed).
        """
        entry = Path(entry)
        key = entry.name
        if entry.is_symlink() and self._link_refused(key):
            return None  # checked before has_images reads behind it, and by claim_entry
        try:
            found = scan.has_images(entry, self.extra)
        except PermissionError:
            self._notice_once(
                key,
                entry,
                Code.PERMISSION_DENIED,
                f"cannot read '{scan.printable(key)}': permission denied; it is claimed once"
                " the daemon can read it",
            )
            return None
        if not found:
            self._notice_once(
                key,
                entry,
                Code.NO_IMAGES,
                f"'{scan.printable(key)}' holds no photos (yet); it stays in the inbox and is"
                " claimed once photos appear in it",
            )
            return None
        try:
            batch_id = claim_entry(self.ledger, self.config, entry)
        except LinkOutsideRoots as exc:  # swapped since the check above
            self._refused_links[key] = os.path.realpath(entry)
            self._notice_once(key, entry, exc.code, exc.message, about=self._refused_links[key])
            return None
        self._notified.pop(key, None)
        self.on_queued(batch_id)
        return batch_id

    def _claim_loose(self, survey: scan.Survey) -> int | None:
        paths = [self.root / name for name in sorted(survey.files)]
        # A link refused is not even sniffed: its first bytes are not read.
        paths = [p for p in paths if not (p.is_symlink() and self._link_refused(p.name))]
        photos = [p for p in paths if scan.is_image_candidate(p)]
        if not photos:
            if survey.files:  # only junk at the top is not worth a word
                self._notice_once(
                    LOOSE,
                    self.root,
                    Code.NO_IMAGES,
                    f"the loose files in the inbox are not photos ({len(paths)} files);"
                    " they stay where they are",
                )
            return None
        batch_id = claim_loose(self.ledger, self.config, photos)
        self._notified.pop(LOOSE, None)
        self.on_queued(batch_id)
        return batch_id

    def _notice_once(
        self, key: str, entry: Path, code: Code, message: str, about: object = None
    ) -> None:
        """Report once per `about`; by default the files under key (junk churn is no news)."""
        if about is None:
            try:
                about = self._survey(key).files
            except OSError:
                about = {}
        if self._notified.get(key) == (code, about):
            return
        self._notified[key] = (code, about)
        log.info("%s: %s", code, message)
        self.on_notice(str(code), message, str(entry))

    def _link_refused(self, name: str) -> bool:
        """Judge a top-level link now; a refusal is reported once per place it leads to."""
        path = self.root / name
        real = os.path.realpath(path)
        if self._refused_links.get(name) == real:
            return True
        problem = fence.refusal(path, self.config)
        if problem is not None:
            self._refused_links[name] = real
            self._notice_once(name, path, *problem, about=real)
        return problem is not None
