"""`imgtrain models`: which models the config needs, where they are, and how to get them there.

    imgtrain models                 each model: present / missing / unloadable, where, size, sha256
    imgtrain models download        fetch what is missing (needs the model hubs)
    imgtrain models import PATH     install a CLIP weights file or a face pack (folder or .zip)

After an install, a daemon running with this config on this machine is sent
SIGHUP, so it loads the model now instead of at its next retry.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from daemon.commands import context, render
from daemon.config import Config
from daemon.errors import ImgtrainError

if TYPE_CHECKING:
    from daemon.models.install import Installed

STATE_STYLE = {"present": "green", "missing": "bold red", "unloadable": "bold red"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="the models the config needs: list, download, import",
        description="Without an action: list each configured model and its state.",
    )
    render.add_json_flag(p)
    p.set_defaults(func=run, action="list")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="each model: state, where it is or must go (the default)")
    dl = actions.add_parser("download", help="fetch the missing models (needs internet)")
    im = actions.add_parser(
        "import",
        help="install a CLIP weights file, or a face pack folder or .zip, copied from elsewhere",
    )
    im.add_argument("path", type=Path, metavar="PATH", help="weights file, pack folder or .zip")
    im.add_argument(
        "--replace", action="store_true", help="replace a model that is already installed"
    )
    for parser in (ls, dl, im):
        render.add_json_flag(parser, sub=True)


def run(args: argparse.Namespace) -> int:
    render.quiet_logs()
    config = context.load(args)
    action = args.action or "list"
    if action == "list":
        return _list(config, args.json, args.config)
    if action == "download":
        return _download(config, args.json, args.config)
    if action == "import":
        return _import(config, args.path, args.replace, args.json)
    raise AssertionError(f"unknown action {action}")


# -- list --------------------------------------------------------------------------
def _list(config: Config, as_json: bool, config_path: str | None) -> int:
    from daemon.models.inventory import PRESENT, fix_commands, imgtrain_command, inspect

    entries = inspect(config)
    ok = all(e.state == PRESENT for e in entries)
    if as_json:
        render.print_json({"ok": ok, "models": entries})
        return 0 if ok else 1
    out = render.console()
    table = render.table(
        "MODEL", "STATE", "NAME", "DIM", "SIZE", "SHA256", "WHERE", wrap=("WHERE",)
    )
    for e in entries:
        table.add_row(
            e.role,
            Text(e.state, style=STATE_STYLE.get(e.state, "")),
            e.name,
            str(e.dim) if e.dim else "-",
            render.size(e.size),
            e.sha256 or "-",
            e.path,
        )
    out.print(table)
    for e in entries:
        if e.reason:
            out.print(f"{e.role}: {e.reason}")
    if not entries:
        out.print("No models: the configured phases need none.")
    elif ok:
        out.print("All models are in place.")
    else:
        command = imgtrain_command(config_path)
        todo = [e for e in entries if e.state != PRESENT]
        out.print(f"To fix: {fix_commands(todo, command)}.")
        if any(e.state == "unloadable" for e in todo):
            out.print(
                f"An unloadable file is replaced with `{command} models import PATH --replace`."
            )
        for source in sorted({e.source for e in todo if e.source}):
            out.print(f"  from {source}")
    return 0 if ok else 1


# -- download and import -------------------------------------------------------------
def _download(config: Config, as_json: bool, config_path: str | None) -> int:
    from daemon.models.install import download_models
    from daemon.models.inventory import imgtrain_command

    out = render.console()
    done = download_models(config, out.print, imgtrain_command(config_path))
    nudged = _nudge_daemon(config) if done else None
    if as_json:
        render.print_json({"installed": done, "daemon_reloaded": nudged})
        return 0
    if not done:
        out.print("Nothing to download: every configured model is in place.")
    for item in done:
        out.print(_installed_line(item))
        if item.config_line:
            out.print(f"The config does not look there yet. Set this line: {item.config_line}")
    _say_nudged(out, nudged)
    return 0


def _import(config: Config, path: Path, replace: bool, as_json: bool) -> int:
    from daemon.models.install import import_model

    item = import_model(config, path, replace=replace)
    nudged = _nudge_daemon(config) if item.config_line is None else None
    if as_json:
        render.print_json({"installed": item, "daemon_reloaded": nudged})
        return 0
    out = render.console()
    out.print(_installed_line(item))
    if item.config_line:
        out.print("The config does not look there yet. Set this line in the config file:")
        out.print(f"  {item.config_line}")
        out.print("then reload the daemon (systemctl reload imgtrain, or kill -HUP its pid).")
    _say_nudged(out, nudged)
    return 0


def _installed_line(item: Installed) -> str:
    return (
        f"installed {item.what} {item.name}: {item.path} "
        f"({render.size(item.size)}, sha256 {item.sha256}, dim {item.dim})"
    )


def _say_nudged(out: Console, pid: int | None) -> None:
    if pid is not None:
        out.print(f"Told the running daemon (pid {pid}) to load it now (SIGHUP).")


def _nudge_daemon(config: Config) -> int | None:
    """SIGHUP to a live daemon of this config on this machine, so it retries its models now."""
    from daemon.commands.status import liveness, read_status

    try:
        status, _ = read_status(config)
    except ImgtrainError:
        return None
    if status.daemon.hostname != socket.gethostname() or not liveness(status, config).running:
        return None
    try:
        os.kill(status.daemon.pid, signal.SIGHUP)
    except OSError:  # another user's daemon: the hint tells the person how
        return None
    return status.daemon.pid
