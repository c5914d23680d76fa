"""How the people commands name faces and clusters, and show a face in JSON.

A face id is `<image sha256>:<n>`; people type the short form the commands
print (the first 12 hex digits and the number), or any unique prefix.
"""

from __future__ import annotations

from typing import Any

from daemon.errors import InvalidState, NotFound
from daemon.ledger.ledger import Ledger
from daemon.people.operations import FaceRef


def short(face_id: str) -> str:
    """`<sha256>:<n>` shown as its first 12 hex digits and the face number."""
    sha, _, n = face_id.rpartition(":")
    return f"{sha[:12]}:{n}" if sha else face_id


def cluster_id(text: str) -> int:
    digits = text.strip().lstrip("#")
    if not digits.isdigit():
        raise InvalidState(
            f"{text!r} is not a cluster id",
            hint="Cluster ids are numbers, as `imgtrain people` lists them.",
        )
    return int(digits)


def face_id(ledger: Ledger, text: str) -> str:
    """A full face id, or the short form `people show` prints (unique prefix and number)."""
    sha, sep, n = text.strip().rpartition(":")
    if not sep or not sha or not n.isdigit():
        raise InvalidState(
            f"{text!r} is not a face id",
            hint="Face ids look like 3f2a9c1e4b5d:0; `imgtrain people show NAME` lists them.",
        )
    rows = ledger.faces.matching(sha, n)
    if len(rows) > 1:
        raise InvalidState(
            f"{text!r} matches {len(rows)} faces",
            hint="Give more of the id's digits.",
        )
    if not rows:
        raise NotFound(
            f"there is no face {text!r}",
            hint="Face ids are listed by `imgtrain people show NAME_OR_CLUSTER`.",
        )
    return rows[0]


def face_json(f: FaceRef) -> dict[str, Any]:
    return {
        "face_id": f.face_id,
        "image_path": f.image_path,
        "det_score": round(f.det_score, 4),
        "cluster_id": f.cluster_id,
        "person": f.person,
        "suggested_person": f.suggested_person,
        "suggestion_score": None if f.suggestion_score is None else round(f.suggestion_score, 4),
    }
