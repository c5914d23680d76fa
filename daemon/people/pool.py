"""The pool of unknown faces, kept in memory between batches.

Each batch clusters its unknown faces together with the pool's neighbours of
them; keeping the pool's vectors here means a batch fetches only the faces
that joined it since the last one, whatever the library's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from daemon.people.engine import FaceSet, normalise


class PoolCache:
    """The pool's vectors, kept between batches so a batch fetches only the new ones.

    The pool is the `pool_max` most recent noise faces. Older noise stays noise
    until a full recluster (`recluster`), the only step whose cost grows with
    the library.
    """

    def __init__(self, pool_max: int) -> None:
        self.pool_max = pool_max
        self._known: dict[str, tuple[str, float, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def sync(
        self,
        rows: list[tuple[str, str, float]],
        fetch: Callable[[list[str]], dict[str, np.ndarray]],
        dim: int,
    ) -> FaceSet:
        """The pool for `rows` ((face_id, photo, quality), most recent first).

        `fetch(ids)` returns the vectors it finds; a face without one is left out.
        """
        rows = rows[: self.pool_max]
        missing = [fid for fid, _, _ in rows if fid not in self._known]
        got = fetch(missing) if missing else {}
        known: dict[str, tuple[str, float, np.ndarray]] = {}
        for fid, photo, q in rows:
            if fid in self._known:
                known[fid] = self._known[fid]
            elif fid in got:
                known[fid] = (photo, q, normalise(got[fid]))
        self._known = known
        if not known:
            return FaceSet.empty(dim)
        return FaceSet(
            list(known),
            [v[0] for v in known.values()],
            np.asarray([v[1] for v in known.values()]),
            np.stack([v[2] for v in known.values()]),
        )
