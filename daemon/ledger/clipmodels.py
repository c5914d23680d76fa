"""The clip_models table: which CLIP models the library has image vectors of, and which is active.

Reached as `ledger.clip_models`. Each model's vectors live in their own
collection (named by `daemon.store.library`); exactly one row is `active`:
search and new batches use it. A re-index (`ledger.reindexes`) fills a
`building` one and, once it is complete, makes it active in one transaction
(`switch`), the old one becoming `kept` or `dropped`. Every write joins the
caller's transaction when there is one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from daemon.ledger.db import Database
from daemon.vocab import ClipModelState


@dataclass(frozen=True)
class ClipModelRow:
    model: str  # ClipModel.model_name, e.g. ViT-B-32/laion2b_s34b_b79k
    collection: str
    settings: dict[str, Any] | None  # the clip.* keys that load it; None when unknown
    state: ClipModelState
    created_at: float
    updated_at: float


def _row(r: Any) -> ClipModelRow:
    return ClipModelRow(
        r["model"],
        r["collection"],
        json.loads(r["settings"]) if r["settings"] else None,
        ClipModelState(r["state"]),
        r["created_at"],
        r["updated_at"],
    )


class ClipModels:
    """Register CLIP models, find the active one, switch."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------
    def all(self) -> list[ClipModelRow]:
        return [_row(r) for r in self.db.query("SELECT * FROM clip_models ORDER BY created_at")]

    def get(self, model: str) -> ClipModelRow | None:
        rows = self.db.query("SELECT * FROM clip_models WHERE model=?", (model,))
        return _row(rows[0]) if rows else None

    def active(self) -> ClipModelRow | None:
        rows = self.db.query("SELECT * FROM clip_models WHERE state=?", (ClipModelState.ACTIVE,))
        return _row(rows[0]) if rows else None

    # -- writing ---------------------------------------------------------------
    def add(
        self,
        model: str,
        collection: str,
        settings: dict[str, Any] | None,
        state: ClipModelState,
    ) -> ClipModelRow:
        """Register a model (a row already there is left as it is) and return its row."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO clip_models(model, collection, settings, state,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?)",
                (model, collection, _json(settings), state, now, now),
            )
            row = self.get(model)
        assert row is not None
        return row

    def update(
        self,
        model: str,
        *,
        settings: dict[str, Any] | None = None,
        state: ClipModelState | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE clip_models SET settings=COALESCE(?, settings), state=COALESCE(?, state),"
                " updated_at=? WHERE model=?",
                (_json(settings), state, time.time(), model),
            )

    def switch(self, model: str, *, old: ClipModelState) -> ClipModelRow | None:
        """Make `model` the active one; the previous active one becomes `old`. Returns it."""
        with self.db.transaction() as conn:
            previous = self.active()
            now = time.time()
            if previous is not None and previous.model != model:
                conn.execute(
                    "UPDATE clip_models SET state=?, updated_at=? WHERE model=?",
                    (old, now, previous.model),
                )
            conn.execute(
                "UPDATE clip_models SET state=?, updated_at=? WHERE model=?",
                (ClipModelState.ACTIVE, now, model),
            )
        return previous if previous is not None and previous.model != model else None


def _json(settings: dict[str, Any] | None) -> str | None:
    return None if settings is None else json.dumps(settings, sort_keys=True)
