"""Every `mtedet` command shown in README.md and docs/ is one the CLI accepts.

The shell blocks are what users paste. Each command line must parse with the CLI's own parser,
and each `mtedet train` line (not a --resume) must also build its whole experiment config —
recipe, flags and every ``--set`` key and value validated — through ``--print-config``, which
stops before any data is read or anything is written.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from multitask_edet.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_commands(path: Path) -> list[str]:
    """The `mtedet ...` lines of a Markdown file's bash/sh/console blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("mtedet "):
                commands.append(line)
    return commands


COMMANDS = [(p.relative_to(REPO).as_posix(), c) for p in DOCS for c in shell_commands(p)]


def test_the_docs_show_commands():
    assert len([c for f, c in COMMANDS if f == "README.md"]) >= 20
    assert any(c.startswith("mtedet train") for _, c in COMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{f}:{i}" for i, (f, _) in enumerate(COMMANDS)])
def test_documented_command_is_accepted(doc, command):
    argv = shlex.split(command, comments=True)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: the CLI rejects `{command}`")
    if argv[0] != "train" or "--resume" in argv:
        return
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*argv, "--print-config"])
    assert rc == 0, f"{doc}: `{command}` does not build its config"
    assert "model:" in out.getvalue()
