"""The ledger's SQLite schema, one place for every table.

The faces, clusters and people tables belong to the clustering phase and
`daemon.people`; the rest to `daemon.queue`. The ledger is authoritative for
assignments; ChromaDB metadata mirrors it.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,                 -- folder | symlink | loose
    sources TEXT NOT NULL,              -- JSON list of inbox paths being claimed
    path TEXT,                          -- permanent home under data/batches
    state TEXT NOT NULL,
    run_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    seconds REAL NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_state ON batches(state, batch_id);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id INTEGER NOT NULL REFERENCES batches(batch_id),
    rel_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT,
    duplicate_of INTEGER,               -- image_id of the first copy in the library
    UNIQUE (batch_id, rel_path)
);
CREATE INDEX IF NOT EXISTS images_sha ON images(sha256);
CREATE TABLE IF NOT EXISTS image_phases (
    image_id INTEGER NOT NULL REFERENCES images(image_id),
    phase TEXT NOT NULL,
    state TEXT NOT NULL,
    error_code TEXT,
    message TEXT,
    detail TEXT,
    updated_at REAL,
    PRIMARY KEY (image_id, phase)
);
CREATE INDEX IF NOT EXISTS image_phases_state ON image_phases(phase, state);
CREATE TABLE IF NOT EXISTS batch_phases (
    batch_id INTEGER NOT NULL REFERENCES batches(batch_id),
    phase TEXT NOT NULL,
    state TEXT NOT NULL,                -- pending | running | completed | failed | skipped
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, phase)
);
CREATE TABLE IF NOT EXISTS errors (
    error_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    batch_id INTEGER,
    image_id INTEGER,
    file TEXT,
    code TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS phase_costs (
    phase TEXT PRIMARY KEY,
    seconds_per_step REAL NOT NULL,
    samples INTEGER NOT NULL
);
-- The ETA's regressions (daemon/status/estimate.py), one JSON text per model; phase_costs
-- above is what older versions remembered, read only to seed a ledger that has no model yet.
CREATE TABLE IF NOT EXISTS cost_models (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    person_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    prototype BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    cluster_id INTEGER PRIMARY KEY AUTOINCREMENT,
    centroid BLOB NOT NULL,
    size INTEGER NOT NULL,
    representative TEXT,
    person_id INTEGER REFERENCES people(person_id),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    face_id TEXT PRIMARY KEY,           -- "<image sha256>:<n>"
    sha256 TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    det_score REAL NOT NULL,
    area REAL NOT NULL,
    cluster_id INTEGER,
    person_id INTEGER,
    suggested_person_id INTEGER,
    suggestion_score REAL,
    clustered INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_batch ON faces(batch_id);
CREATE INDEX IF NOT EXISTS faces_cluster ON faces(cluster_id);
CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id);
CREATE INDEX IF NOT EXISTS faces_pool ON faces(clustered, cluster_id, person_id, created_at);
-- A face the user took away from a person is never given back to them automatically.
CREATE TABLE IF NOT EXISTS face_rejections (
    face_id TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (face_id, person_id)
);
-- The CLIP models the library has image vectors of, each in its own collection
-- (`imgtrain reindex`). `settings` holds the clip.* keys that load the model, so
-- search can embed a query with the active model while the config names another.
CREATE TABLE IF NOT EXISTS clip_models (
    model TEXT PRIMARY KEY,             -- e.g. ViT-B-32/laion2b_s34b_b79k
    collection TEXT NOT NULL UNIQUE,
    settings TEXT,                      -- JSON; NULL when only the store knew the model
    state TEXT NOT NULL,                -- active | building | kept | dropped
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reindexes (
    reindex_id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,                -- the model the library is being indexed with
    from_model TEXT,                    -- the active model when it was asked for
    state TEXT NOT NULL,                -- running | completed | cancelled | failed
    drop_old INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0,  -- images.image_id up to which the library is scanned
    done INTEGER NOT NULL DEFAULT 0,    -- library images in the new collection (last count)
    total INTEGER NOT NULL DEFAULT 0,   -- images in the library (last count)
    embedded INTEGER NOT NULL DEFAULT 0,
    unreadable INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    requested_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    message TEXT
);
-- Batches taken back out (`imgtrain queue remove`): what went with them.
CREATE TABLE IF NOT EXISTS removals (
    batch_id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    images INTEGER NOT NULL,
    faces INTEGER NOT NULL,
    image_vectors INTEGER NOT NULL,     -- deleted from every image collection
    face_vectors INTEGER NOT NULL,
    shared INTEGER NOT NULL,            -- photos another batch holds a copy of: kept for it
    clusters_changed INTEGER NOT NULL,
    clusters_removed INTEGER NOT NULL,
    people_changed INTEGER NOT NULL,
    photos_deleted INTEGER NOT NULL DEFAULT 0,
    path TEXT
);
"""
