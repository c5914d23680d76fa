"""`imgtrain people`: named people and unnamed clusters; name, merge, correct, look at faces.

The ledger holds who is who (daemon.people); this module only parses,
resolves short face ids, and prints. `people sheet` draws the face crops
so a person can see whom a cluster holds before naming it. Reviewing
suggestions and splitting a cluster are `daemon.commands.people_review`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from daemon.commands import context, people_review, render, sheets
from daemon.commands.refs import cluster_id, face_id, face_json, short
from daemon.config import Config
from daemon.ledger.ledger import Ledger
from daemon.people import operations as people
from daemon.people.recluster import recluster_all

SHEET_LIMIT = 48


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "people",
        help="people and face clusters: list, name, merge, unassign, show, sheet, suggestions,"
        " accept, reject, split",
        description="Without an action: list named people and unnamed clusters.",
    )
    render.add_json_flag(p)
    p.set_defaults(func=run, action="list")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="named people and unnamed clusters (the default)")
    n = actions.add_parser("name", help="name a cluster (an existing name takes its faces)")
    n.add_argument("cluster", metavar="CLUSTER", help="cluster id, as listed (12 or #12)")
    n.add_argument("name", metavar="NAME")
    m = actions.add_parser("merge", help="merge B into A (people or clusters)")
    m.add_argument("a", metavar="A", help="a name or a cluster id; it stays")
    m.add_argument("b", metavar="B", help="a name or a cluster id; it joins A")
    u = actions.add_parser("unassign", help="take a wrongly placed face away from its person")
    u.add_argument("face", metavar="FACE", help="face id as `people show` lists it")
    s = actions.add_parser("show", help="a person or cluster with all their faces")
    s.add_argument("ref", metavar="NAME_OR_CLUSTER")
    sh = actions.add_parser("sheet", help="a contact sheet (PNG) of a person's or cluster's faces")
    sh.add_argument("ref", metavar="NAME_OR_CLUSTER")
    sh.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
    sh.add_argument(
        "--limit", type=int, default=SHEET_LIMIT, help=f"best N faces (default {SHEET_LIMIT})"
    )
    sh.add_argument("--tile", type=int, default=160, help="pixels per face (default 160)")
    sh.add_argument("--columns", type=int, default=None, help="faces per row (default: square)")
    rc = actions.add_parser(
        "recluster", help="cluster all unnamed faces afresh (ids kept where groups overlap)"
    )
    for parser in (ls, n, m, u, s, sh, rc, *people_review.add_actions(actions)):
        render.add_json_flag(parser, sub=True)


def run(args: argparse.Namespace) -> int:
    config = context.load(args)
    ledger = context.open_ledger(config)
    try:
        action = args.action or "list"
        if action == "list":
            return _list(ledger, args.json)
        if action == "show":
            return _show(people.show(ledger, args.ref), args.json)
        if action == "sheet":
            return _sheet(ledger, config, args)
        if action in people_review.ACTIONS:
            return people_review.run(action, args, ledger, config)
        store = _store(config)
        if action == "name":
            person = people.name_cluster(ledger, store, config, cluster_id(args.cluster), args.name)
            return _changed(f"cluster {args.cluster} is now {person.name!r}", person, args.json)
        if action == "merge":
            kept = people.merge(ledger, store, args.a, args.b, config)
            return _changed(f"merged {args.b!r} into {args.a!r}", kept, args.json)
        if action == "unassign":
            face = people.unassign_face(ledger, store, face_id(ledger, args.face))
            return _changed(
                f"face {short(face.face_id)} went back to the unknown faces;"
                " it will not be given to that person again by itself",
                face,
                args.json,
            )
        if action == "recluster":
            res = recluster_all(ledger, store, config)
            return _changed(
                f"reclustered {res.faces} unnamed faces in {res.seconds:.1f} s: clusters"
                f" {res.clusters_before} -> {res.clusters_after} ({res.kept} kept,"
                f" {res.created} new, {res.removed} gone), {res.noise} faces unclustered",
                res,
                args.json,
            )
        raise AssertionError(f"unknown action {action}")
    finally:
        ledger.close()


def _store(config: Config) -> Any:
    from daemon.store.chroma import Store

    return Store(config)


# -- output ---------------------------------------------------------------------------
def _person_json(p: people.Person) -> dict[str, Any]:
    return {
        "kind": "person",
        "person_id": p.person_id,
        "name": p.name,
        "faces": p.faces,
        "clusters": p.clusters,
        "representative": p.representative,
        "image_path": p.image_path,
        "created_at": render.iso(p.created_at),
    }


def _cluster_json(c: people.ClusterInfo) -> dict[str, Any]:
    return {
        "kind": "cluster",
        "cluster_id": c.cluster_id,
        "faces": c.faces,
        "person": c.person,
        "representative": c.representative,
        "image_path": c.image_path,
        "created_at": render.iso(c.created_at),
        "updated_at": render.iso(c.updated_at),
    }


def _as_json(obj: Any) -> dict[str, Any]:
    if isinstance(obj, people.Person):
        return _person_json(obj)
    if isinstance(obj, people.ClusterInfo):
        return _cluster_json(obj)
    if isinstance(obj, people.FaceRef):
        return {"kind": "face", **face_json(obj)}
    return {"kind": "recluster", **dataclasses.asdict(obj)}


def _changed(message: str, obj: Any, as_json: bool) -> int:
    if as_json:
        render.print_json(_as_json(obj))
    else:
        render.console().print(message)
    return 0


def _list(ledger: Ledger, as_json: bool) -> int:
    named = people.list_people(ledger)
    clusters = people.list_clusters(ledger, unnamed_only=True)
    loose = ledger.faces.count_unplaced()
    if as_json:
        render.print_json(
            {
                "people": [_person_json(p) for p in named],
                "clusters": [_cluster_json(c) for c in clusters],
                "unclustered_faces": loose,
            }
        )
        return 0
    out = render.console()
    if named:
        out.print(f"[bold]People ({len(named)})[/]")
        table = render.table("NAME", "FACES", "CLUSTERS", "SAMPLE PHOTO", right=("FACES",))
        for p in named:
            table.add_row(
                p.name,
                str(p.faces),
                ", ".join(f"#{c}" for c in p.clusters) or "-",
                p.image_path or "-",
            )
        out.print(table)
    else:
        out.print("No one is named yet.")
    if clusters:
        out.print(
            f"[bold]Unnamed clusters ({len(clusters)})[/]: look with `imgtrain people sheet"
            " CLUSTER -o faces.png`, then `imgtrain people name CLUSTER NAME`"
        )
        table = render.table("CLUSTER", "FACES", "SAMPLE PHOTO", right=("CLUSTER", "FACES"))
        for c in clusters:
            table.add_row(f"#{c.cluster_id}", str(c.faces), c.image_path or "-")
        out.print(table)
    else:
        out.print("No unnamed clusters.")
    if loose:
        out.print(f"{loose} faces are in no cluster yet (too few others look like them).")
    return 0


def _show(detail: people.Detail, as_json: bool) -> int:
    if as_json:
        head = _person_json(detail.person) if detail.person else _cluster_json(detail.cluster)
        render.print_json({**head, "face_list": [face_json(f) for f in detail.faces]})
        return 0
    out = render.console()
    if detail.person is not None:
        p = detail.person
        clusters = ", ".join(f"#{c}" for c in p.clusters) or "none"
        out.print(f"[bold]{p.name}[/] (person {p.person_id}): {p.faces} faces; clusters {clusters}")
    else:
        c = detail.cluster
        assert c is not None
        who = f"named {c.person!r}" if c.person else "unnamed"
        out.print(f"[bold]cluster #{c.cluster_id}[/] ({who}): {c.faces} faces")
    table = render.table(
        "FACE", "SCORE", "CLUSTER", "SUGGESTED", "PHOTO", right=("SCORE", "CLUSTER")
    )
    for f in detail.faces:
        suggested = (
            f"{f.suggested_person} ({f.suggestion_score:.2f})"
            if f.suggested_person and f.suggestion_score is not None
            else "-"
        )
        table.add_row(
            short(f.face_id),
            f"{f.det_score:.2f}",
            f"#{f.cluster_id}" if f.cluster_id is not None else "-",
            suggested,
            f.image_path or "-",
        )
    out.print(table)
    return 0


def _sheet(ledger: Ledger, config: Config, args: argparse.Namespace) -> int:
    detail = people.show(ledger, args.ref)
    faces = detail.faces[: max(args.limit, 1)]
    tiles = sheets.face_tiles(
        _store(config), faces, lambda f, path: f"score {f.det_score:.2f}  {path.name}"
    )
    if detail.person is not None:
        title = f"{detail.person.name} - {detail.person.faces} faces"
    else:
        c = detail.cluster
        assert c is not None
        title = f"cluster #{c.cluster_id}" + (f" ({c.person})" if c.person else "")
        title += f" - {c.faces} faces"
    if len(faces) < len(detail.faces):
        title += f" (best {len(faces)} shown)"
    result = sheets.write(tiles, args.output, title, tile=args.tile, columns=args.columns)
    if args.json:
        data = sheets.summary(result)
        render.print_json({"faces": data.pop("tiles"), **data})
        return 0
    render.console().print(sheets.said(result))
    return 0
