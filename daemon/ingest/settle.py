"""When has a dropped folder stopped changing? A pure stability tracker.

Shaped like Paperless-ngx's consumer: fed snapshots and times, never touching
a disk or a clock, so every rule is unit-tested with synthetic times. An entry
is settled when it has had no file event for `settle_seconds` and two scans
in a row agree on every file's size and mtime.
"""

from __future__ import annotations

from dataclasses import dataclass

Fingerprint = dict[str, tuple[int, int]]


@dataclass
class _Track:
    since: float  # time of the last event, or of the last change between two scans
    seen: Fingerprint | None = None  # the previous scan
    agreed: bool = False  # the last two scans were equal


class StabilityTracker:
    """Decides when an inbox entry has stopped changing. No I/O, no clock."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._tracks: dict[str, _Track] = {}

    def touch(self, key: str, now: float) -> None:
        """A file event happened under `key` at `now` (reports may arrive out of order)."""
        track = self._tracks.get(key)
        if track is None:
            self._tracks[key] = _Track(since=now)
        else:
            track.since = max(track.since, now)

    def observe(self, key: str, snapshot: Fingerprint, now: float) -> bool:
        """Record a scan; True once `key` has settled and holds something."""
        track = self._tracks.setdefault(key, _Track(since=now))
        if track.seen is None:
            # The first scan is a baseline: it cannot agree with anything yet,
            # but it does not restart the quiet period either.
            track.seen, track.agreed = dict(snapshot), False
        elif snapshot != track.seen:
            track.seen, track.agreed, track.since = dict(snapshot), False, now
        else:
            track.agreed = True
        return bool(snapshot) and self.quiet(key, now)

    def quiet(self, key: str, now: float) -> bool:
        """Two scans agreed and nothing happened for settle_seconds (empty or not)."""
        track = self._tracks.get(key)
        return track is not None and track.agreed and now - track.since >= self.settle_seconds

    def due(self, key: str, now: float) -> bool:
        """Worth scanning: no event for settle_seconds as of `now`."""
        track = self._tracks.get(key)
        return track is not None and now - track.since >= self.settle_seconds

    def next_due(self) -> float | None:
        """The earliest time at which some entry's quiet period ends (None: nothing tracked).

        The scanner sleeps until then rather than a whole tick, so a settled
        folder is claimed at settle_seconds and not up to a tick later."""
        return min((t.since + self.settle_seconds for t in self._tracks.values()), default=None)

    def forget(self, key: str) -> None:
        self._tracks.pop(key, None)

    def pending(self) -> list[str]:
        return sorted(self._tracks)

    def __contains__(self, key: str) -> bool:
        return key in self._tracks
