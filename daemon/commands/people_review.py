"""`imgtrain people suggestions`, `accept`, `reject`, `split`: review and correct who is who.

Actions of `imgtrain people` (daemon.commands.people adds them to its parser
and hands them here). The work is daemon.people.review and
daemon.people.split; this module parses, resolves short face ids, prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.commands import render, sheets
from daemon.commands.refs import cluster_id, face_id, face_json, short
from daemon.config import Config
from daemon.errors import InvalidState
from daemon.ledger.ledger import Ledger
from daemon.people import review
from daemon.people.split import split_cluster

ACTIONS = ("suggestions", "accept", "reject", "split")
SHEET_LIMIT = 48


def add_actions(actions: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    sg = actions.add_parser("suggestions", help="faces suggested for people, to accept or reject")
    sg.add_argument("name", metavar="NAME", nargs="?", help="only those suggested for NAME")
    sg.add_argument("-o", "--output", type=Path, help="also draw them as a contact sheet (PNG)")
    sg.add_argument(
        "--limit", type=int, default=SHEET_LIMIT, help=f"faces on the sheet (default {SHEET_LIMIT})"
    )
    made = [sg]
    for verb, what in (
        ("accept", "give faces to the person suggested for them"),
        ("reject", "faces are not the person suggested for (or assigned to) them, for good"),
    ):
        p = actions.add_parser(verb, help=what)
        p.add_argument("faces", metavar="FACE", nargs="*", help="face ids as listed")
        p.add_argument("--all", metavar="NAME", dest="all_for", help=f"{verb} all of NAME's")
        made.append(p)
    sp = actions.add_parser(
        "split", help="split a cluster that mixed people (the larger part keeps the id)"
    )
    sp.add_argument("cluster", metavar="CLUSTER", help="cluster id, as listed (12 or #12)")
    sp.add_argument(
        "faces", metavar="FACE", nargs="*", help="one face of each person (default: cut in two)"
    )
    made.append(sp)
    return made


def run(action: str, args: argparse.Namespace, ledger: Ledger, config: Config) -> int:
    if action == "suggestions":
        return _suggestions(ledger, config, args)
    from daemon.store.chroma import Store

    store = Store(config)
    if action == "split":
        seeds = [face_id(ledger, f) for f in args.faces]
        return _split(split_cluster(ledger, store, cluster_id(args.cluster), seeds), args.json)
    if bool(args.faces) == bool(args.all_for):
        raise InvalidState(
            f"give the faces to {action}, or --all NAME (one of them)",
            hint="`imgtrain people suggestions` lists the suggested faces.",
        )
    if args.all_for:
        do = review.accept_all if action == "accept" else review.reject_all
        decisions = do(ledger, store, args.all_for)
    else:
        do = review.accept if action == "accept" else review.reject
        decisions = do(ledger, store, [face_id(ledger, f) for f in args.faces])
    return _decided(action, decisions, args)


def _suggestions(ledger: Ledger, config: Config, args: argparse.Namespace) -> int:
    faces = review.suggestions(ledger, args.name)
    sheet = None
    if args.output is not None and faces:
        from daemon.store.chroma import Store

        tiles = sheets.face_tiles(
            Store(config),
            faces[: max(args.limit, 1)],
            lambda f, _path: f"{f.suggested_person} {f.suggestion_score or 0:.2f}",
        )
        title = f"suggested for {args.name}" if args.name else "suggestions"
        sheet = sheets.write(tiles, args.output, f"{title} - {len(faces)} faces")
    if args.json:
        render.print_json(
            {
                "person": args.name,
                "suggestions": [face_json(f) for f in faces],
                "sheet": sheets.summary(sheet) if sheet else None,
            }
        )
        return 0
    out = render.console()
    whom = f" for {args.name!r}" if args.name else ""
    if not faces:
        out.print(f"No faces are suggested{whom}.")
        return 0
    out.print(
        f"{len(faces)} face{'s' if len(faces) != 1 else ''} suggested{whom}: `imgtrain people"
        " accept FACE...` gives them to that person, `imgtrain people reject FACE...` never again"
    )
    table = render.table("FACE", "PERSON", "SCORE", "CLUSTER", "PHOTO", right=("SCORE", "CLUSTER"))
    for f in faces:
        table.add_row(
            short(f.face_id),
            f.suggested_person or "-",
            f"{f.suggestion_score or 0:.2f}",
            f"#{f.cluster_id}" if f.cluster_id is not None else "-",
            f.image_path or "-",
        )
    out.print(table)
    if sheet is not None:
        out.print(sheets.said(sheet))
    return 0


def _decided(action: str, decisions: list[review.Decision], args: argparse.Namespace) -> int:
    done = [d for d in decisions if d.done]
    skipped = [d for d in decisions if not d.done]
    key = "accepted" if action == "accept" else "rejected"
    if args.json:
        render.print_json(
            {
                key: [{"face_id": d.face_id, "person": d.person} for d in done],
                "skipped": [
                    {"face_id": d.face_id, "person": d.person, "reason": d.reason} for d in skipped
                ],
            }
        )
        return 0
    out = render.console()
    if not decisions:
        out.print(f"No faces are suggested for {args.all_for!r}: nothing to {action}.")
    for d in done:
        if action == "accept":
            out.print(f"face {short(d.face_id)} is now {d.person}'s")
        else:
            out.print(
                f"face {short(d.face_id)} is not {d.person}: never suggested for or given to"
                " them again"
            )
    for d in skipped:
        out.print(f"face {short(d.face_id)} skipped: {d.reason}")
    return 0


def _split(res: Any, as_json: bool) -> int:
    if as_json:
        render.print_json({"kind": "split", **render.plain(res)})
        return 0
    kept, *new = res.parts
    who = f" ({res.person})" if res.person else ""
    parts = ", ".join(f"#{p.cluster_id} has {p.faces}" for p in new)
    line = f"split cluster #{res.cluster_id}{who}: #{kept.cluster_id} keeps {kept.faces} faces"
    line += f"; new {parts}"
    if res.rejected:
        line += f"; {res.rejected} faces are no longer {res.person}'s"
    render.console().print(line)
    return 0
