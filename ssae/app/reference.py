"""The command-line reference, docs/command-line.md, written from the parsers themselves so
that it cannot drift from what ``ssae --help`` says (a test compares the two).

Regenerate after changing a flag: ``python -m ssae.app.reference > docs/command-line.md``.
"""

from __future__ import annotations

import argparse
import sys

from ssae.app.cli import build_parser

WIDTH = 100  # usage lines wrap here whatever the terminal, so the file is the same everywhere


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    value = action.metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper())
    return ", ".join(f"`{o} {value}`" for o in action.option_strings)


def _rows(group: argparse._ArgumentGroup) -> list[str]:
    rows = []
    for action in group._group_actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        meaning = (action.help or "").replace("|", "\\|")
        rows.append(f"| {_flag(action)} | {meaning} |")
    return rows


def command_reference() -> str:
    """docs/command-line.md as it should read now."""
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parsers (`python -m ssae.app.reference > docs/command-line.md`); do not edit by hand.",
        "Every command also prints this with `--help`. Errors in the input end with one line on stderr and exit",
        "code 2; an interrupted run exits with 130 and leaves nothing under a final name.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    lines += [f"| [`ssae {c.dest}`](#ssae-{c.dest}) | {c.help} |" for c in subcommands._choices_actions]
    for name, command in subcommands.choices.items():
        lines += ["", f"## ssae {name}", "", command.description or "", "", "```text", _usage(command), "```"]
        for group in command._action_groups:
            rows = _rows(group)
            if rows:
                title = {"positional arguments": "arguments", "optional arguments": "options"}.get(group.title, group.title)
                lines += ["", f"**{title}**", "", "| flag | meaning |", "| --- | --- |", *rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(command_reference())
