"""What the documentation shows is what the parser takes.

Every `imgtrain ...` command line in README.md's code blocks, in the
Makefile's recipes and in the systemd unit's Exec lines is parsed by the real
argument parser: no usage error, and every command and flag it names exists
exactly (argparse would accept an abbreviation; a README must not rely on one).
The `imgtrain ...` spans in README's prose are checked the same way for their
commands and flags, without requiring a complete command line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex

import pytest

from daemon.cli import build_parser
from tests.conftest import REPO

CONTROL = {"|", "||", "&&", ";", "&", "(", ")"}
REDIRECT = re.compile(r"^\d*[<>]")


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M)


def _command_lines(markdown: str) -> list[str]:
    """Shell lines of the code blocks: in a `console` block only the `$ ` lines (the rest is
    the commands' output); in any other block every line."""
    lines = []
    for lang, body in re.findall(r"^```([^\n]*)\n(.*?)^```", markdown, re.S | re.M):
        for line in body.replace("\\\n", " ").splitlines():
            if lang.strip() != "console" or line.startswith("$ "):
                lines.append(line)
    return lines


def _imgtrain_commands(line: str) -> list[list[str]]:
    """The argument lists of every `imgtrain` (or `.../bin/imgtrain`) invocation in a shell line."""
    line = line.strip()
    if not re.search(r"(^|[\s/])imgtrain(\s|$)", line):
        return []  # also keeps other commands' multi-line quoting away from shlex
    if line.startswith("$ "):
        line = line[2:]
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in CONTROL:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for words in commands:
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
            words = words[1:]
        if words and words[0].rsplit("/", 1)[-1] == "imgtrain":
            args = []
            for word in words[1:]:
                if REDIRECT.match(word) or word in {"<", ">", ">>"}:
                    break
                args.append(word)
            found.append(args)
    return found


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [args for line in _command_lines(text) for args in _imgtrain_commands(line)]


def _makefile_commands() -> list[list[str]]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    found = []
    for line in text.splitlines():
        if line.startswith("\t") and "$(BIN)/imgtrain" in line:
            line = line.replace("$(BIN)", ".venv/bin").replace("$(CONFIG)", "config.yaml")
            found.extend(_imgtrain_commands(line.lstrip("\t@")))
    return found


def _unit_commands() -> list[list[str]]:
    text = (REPO / "systemd" / "imgtrain.service").read_text(encoding="utf-8")
    found = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("Exec") and "imgtrain" in value.split()[0]:
            found.extend(_imgtrain_commands(value.lstrip("-@:+!")))
    return found


def _parse(args: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(args)
        except SystemExit as exc:
            if exc.code == 0:  # --help / --version
                return argparse.Namespace()
            raise AssertionError(f"`imgtrain {shlex.join(args)}`: {err.getvalue()}") from None


def _check_names(args: list[str], *, complete: bool) -> None:
    """Each command word is a real (sub)command and each flag an exact option of its parser."""
    parser = build_parser()
    words = iter(args)
    for word in words:
        if word.startswith("-") and len(word) > 1:
            flag = word.split("=", 1)[0]
            options = parser._option_string_actions
            assert flag in options, f"`imgtrain {shlex.join(args)}`: no option {flag}"
            action = options[flag]
            if action.nargs != 0 and "=" not in word:
                next(words, None)  # the option's value
            continue
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            continue  # a positional argument of the command
        if word in subs[0].choices:
            parser = subs[0].choices[word]
            continue
        if word in ("...", "…"):
            break  # prose: "`imgtrain ...`" means any command
        if complete or not (word.isupper() or word.startswith("<")):
            raise AssertionError(f"`imgtrain {shlex.join(args)}`: no command {word!r}")


DOCUMENTED = {
    "README.md": _readme_commands,
    "Makefile": _makefile_commands,
    "systemd/imgtrain.service": _unit_commands,
}


@pytest.mark.parametrize("source", sorted(DOCUMENTED))
def test_every_documented_command_line_parses(source: str) -> None:
    commands = DOCUMENTED[source]()
    assert commands, f"found no imgtrain command line in {source}"
    for args in commands:
        namespace = _parse(args)
        _check_names(args, complete=True)
        assert vars(namespace) == {} or callable(namespace.func)


def test_the_readme_shows_the_commands_a_newcomer_needs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = _code_blocks(text)[0]
    assert "make run" in first_block.split("\n")[0], "the first command shown is `make run`"
    shown = {tuple(a[:2]) for a in _readme_commands()} | {(a[0],) for a in _readme_commands()}
    for needed in (("status",), ("doctor",), ("models",), ("models", "import")):
        assert needed in shown, f"README.md shows no `imgtrain {' '.join(needed)}` command line"
    quick_start = text[: text.index("<!-- toc -->")]
    assert "imgtrain models import" in quick_start, "the offline path belongs next to `make run`"


def test_imgtrain_spans_in_the_readme_prose_name_real_commands_and_flags() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`((?:\S*/)?imgtrain [^`]+)`", prose)
    assert spans
    for span in spans:
        for args in _imgtrain_commands(span):
            _check_names(args, complete=False)


def test_the_checker_catches_a_wrong_command_line() -> None:
    """The checks above can fail: the Makefile's old mistake, made-up and abbreviated names."""
    for wrong in (["queue", "retyr", "3"], ["search", "--imagine", "x.jpg"], ["models", "fetch"]):
        with pytest.raises(AssertionError):
            _parse(wrong)
    for abbreviated in (["status", "--js"], ["doctor", "--no-model"]):
        _parse(abbreviated)  # argparse takes a prefix of a flag...
        with pytest.raises(AssertionError, match="no option"):
            _check_names(abbreviated, complete=True)  # ...a README must spell it out
    assert _imgtrain_commands("$ FOO=1 .venv/bin/imgtrain run -c x.yaml | tee log  # note") == [
        ["run", "-c", "x.yaml"]
    ]
    assert _imgtrain_commands("useradd --shell /usr/sbin/nologin imgtrain") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "X", "run"],
        ["run", "--config", "X"],
        ["run", "-c", "X"],
        ["-c", "X", "status", "--json"],
        ["status", "-c", "X", "--json"],
        ["queue", "retry", "3", "--config", "X"],
        ["people", "name", "3", "Grandma", "-c", "X"],
        ["doctor", "--config=X", "--no-models"],
    ],
)
def test_config_is_taken_before_or_after_any_command(argv: list[str]) -> None:
    assert _parse(argv).config == "X"


def test_config_after_the_command_wins_and_defaults_stay() -> None:
    assert _parse(["-c", "A", "run", "-c", "B"]).config == "B"
    assert _parse(["-c", "A", "queue", "stats"]).config == "A"
    assert _parse(["run"]).config is None
    assert _parse(["queue", "--json", "stats"]).json is True
