"""mkdocs hooks: the reference tables are generated from the code at build time, so they cannot drift.

A line that is only a marker comment is replaced by a table:

- ``<!-- options: PROGRAM -->``: one table (option, metavar, default, help) per argument group of that
  program's argparse parser, for PROGRAM in :data:`PARSERS`;
- ``<!-- configuration -->``: every value of ``backend.config`` with its default, environment variable
  and description.

An unknown program, an unknown marker or a parser or configuration that cannot be imported fails the
build (``mkdocs build`` exits non-zero), so a broken reference never passes. Registered in mkdocs.yml
under ``hooks:``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from mkdocs.exceptions import PluginError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# marker name -> module whose build_parser() returns that program's parser
PARSERS = {
    "ilastik-desktop": "ilastik_desktop.cli.main",
    "ilastik-desktop serve": "ilastik_desktop.cli.serve",
    "ilastik-worker": "ilastik_desktop.cli.worker",
}

MARKER = re.compile(r"^[ \t]*<!--[ \t]*(options|configuration)\b[ \t]*(?::[ \t]*(.*?))?[ \t]*-->[ \t]*$",
                    re.MULTILINE)
LOOKALIKE = re.compile(r"<!--[ \t]*(?:option|config)[^>]*-->", re.IGNORECASE)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every marker line of a page with its generated table."""
    where = page.file.src_uri

    def replace(match: re.Match) -> str:
        kind, argument = match.group(1), (match.group(2) or "").strip()
        if kind == "options":
            return options_markdown(argument, where)
        if argument:
            raise PluginError(f"{where}: '<!-- configuration -->' takes no argument, got {argument!r}")
        return configuration_markdown(where)

    markdown = MARKER.sub(replace, markdown)
    stray = LOOKALIKE.search(markdown)
    if stray:  # a misspelt or misplaced marker would otherwise vanish as an HTML comment
        raise PluginError(f"{where}: unrecognised marker {stray.group(0)!r} (a marker is a line of its own: "
                          "'<!-- options: PROGRAM -->' or '<!-- configuration -->')")
    return markdown


# -- command-line options ------------------------------------------------------------------------------


def build_parser(program: str, where: str = "?") -> argparse.ArgumentParser:
    """The parser of ``program``, from its module's ``build_parser()``; PluginError if unknown."""
    if program not in PARSERS:
        raise PluginError(f"{where}: '<!-- options: {program} -->' names no known parser "
                          f"(known: {', '.join(PARSERS)}; see docs/hooks.py)")
    module = _import(PARSERS[program], where)
    parser = module.build_parser()
    if not isinstance(parser, argparse.ArgumentParser):
        raise PluginError(f"{where}: {PARSERS[program]}.build_parser() returned {type(parser).__name__}, "
                          "not an argparse.ArgumentParser")
    return parser


def options_markdown(program: str, where: str = "?") -> str:
    """One table per argument group of ``program``'s parser (groups without visible options left out)."""
    parser = build_parser(program, where)
    formatter = parser._get_formatter()
    parts = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if not actions:
            continue
        title = f"**{_text(group.title or 'options')}**"
        if group.description:
            title += f": {_text(group.description)}"
        rows = ["| option | metavar | default | help |", "|---|---|---|---|"]
        for action in actions:
            rows.append("| " + " | ".join((_code(_names(action)), _code(_metavar(formatter, action)),
                                            _default_cell(action), _text(_help(formatter, action)))) + " |")
        parts.append(title + "\n\n" + "\n".join(rows))
    if not parts:
        raise PluginError(f"{where}: the parser of {program!r} has no documented options")
    return "\n\n".join(parts)


def _names(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(action.option_strings)
    return action.metavar if isinstance(action.metavar, str) else action.dest


def _metavar(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    if action.option_strings and action.nargs == 0:  # flags: store_true, help, version...
        return ""
    default_metavar = action.dest.upper() if action.option_strings else action.dest
    return formatter._format_args(action, default_metavar)  # as --help shows it ([X] when optional)


def _default_cell(action: argparse.Action) -> str:
    """The parser's default, unless the help states the default itself: then the help's words hold on every
    machine (``--processes`` defaults to the number of cores of the machine that builds these docs)."""
    default = action.default
    if default is None or default is argparse.SUPPRESS or action.nargs == 0:
        return ""
    if "default" in (action.help or "").lower():
        return "see help"
    if isinstance(default, (list, tuple)):
        return _code(", ".join(str(v) for v in default))
    return _code(str(default))


def _help(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    if not action.help:
        return ""
    try:
        return formatter._expand_help(action)  # %(default)s and friends, as --help shows them
    except (KeyError, TypeError, ValueError):
        return action.help


# -- configuration -------------------------------------------------------------------------------------


def configuration_markdown(where: str = "?") -> str:
    """Every configuration value, one table per section of the tree."""
    config_module = _import("backend.config", where)
    config = config_module.Config()
    sections: dict[str, list] = {}
    for entry in config_module.entries(config):
        sections.setdefault(entry.key.split(".", 1)[0], []).append(entry)
    if not sections:
        raise PluginError(f"{where}: backend.config.entries(Config()) returned no values")
    parts = []
    for name, rows in sections.items():
        section = getattr(config, name, None)
        doc = (type(section).__doc__ or "").strip().split("\n\n")[0] if section is not None else ""
        title = f"**{_text(name)}**" + (f": {_text(' '.join(doc.split()))}" if doc else "")
        table = ["| setting | default | environment variable | what it does |", "|---|---|---|---|"]
        for entry in rows:
            table.append("| " + " | ".join((_code(entry.key), _code(_number(entry.default)), _code(entry.variable),
                                            _text(entry.doc))) + " |")
        parts.append(title + "\n\n" + "\n".join(table))
    return "\n\n".join(parts)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# -- helpers -------------------------------------------------------------------------------------------


def _import(name: str, where: str):
    """Import a module of this repository (the checkout first on the path); PluginError if it fails."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        return importlib.import_module(name)
    except Exception as error:  # any failure to import is a failed build, never a silently empty table
        raise PluginError(f"{where}: cannot import {name} for a generated table: "
                          f"{type(error).__name__}: {error}") from error


def _text(value: str) -> str:
    """A table cell of plain text: ``|`` and ``<`` escaped, markdown's inline syntax taken literally."""
    text = " ".join(str(value).split())
    text = text.replace("\\", "\\\\")
    for char in "`*_[]":
        text = text.replace(char, "\\" + char)
    return text.replace("|", "\\|").replace("<", "&lt;")


def _code(value: str) -> str:
    """A table cell shown as code; text that a code span cannot hold in a table falls back to plain text."""
    text = " ".join(str(value).split())
    if not text:
        return ""
    if any(char in text for char in "|<`"):  # some table parsers split a row at a pipe inside a code span,
        return _text(text)                    # and an escaped "<" would show as "&lt;" in one
    return f"`{text}`"
