"""THIRD-PARTY-LICENSES of the bundle, generated from the metadata of the distributions that go into it.

For each distribution: its name and version, its licence as declared (``License-Expression``, else
``License``, else the licence classifiers) and the text of the licence files its ``*.dist-info`` holds
(``licenses/...``, ``LICENSE*``, ``LICENCE*``, ``COPYING*``, ``NOTICE*``). Python itself comes first (the
bundle carries the interpreter and its standard library).

    python packaging/third_party_licenses.py OUTPUT [--names FILE] [--list FILE]

``--names``: the distributions to list, one name a line (the spec writes the ones whose files PyInstaller
collects, :func:`bundled_distributions`); default: every distribution of this Python environment.
``--list``: also write ``name version`` a line of what was listed (the bundle's BUNDLED-DISTRIBUTIONS.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import sys
import sysconfig
from collections.abc import Iterable
from importlib import metadata

RULE = "#" * 79
LICENCE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.IGNORECASE)


def canonical(name: str) -> str:
    """The name as pip compares names (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_licence(meta) -> str:
    """``License-Expression``, else a one-line ``License``, else the licence classifiers."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    field = (meta.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= 100 and field.upper() != "UNKNOWN":
        return field
    classifiers = [c.split(" :: ", 1)[1].replace("OSI Approved :: ", "") for c in meta.get_all("Classifier") or []
                   if c.startswith("License :: ")]
    if classifiers:
        return " / ".join(classifiers)
    return "see the licence text below" if field and field.upper() != "UNKNOWN" else "not declared in its metadata"


def licence_files(distribution: metadata.Distribution) -> list:
    """The licence files of the distribution's own metadata folder (``*.dist-info``/``*.egg-info``)."""
    found = []
    for entry in distribution.files or []:
        parts = entry.parts
        if len(parts) < 2 or not parts[0].endswith((".dist-info", ".egg-info")):
            continue
        if parts[1] == "licenses" and len(parts) > 2 or len(parts) == 2 and LICENCE_FILE.match(parts[1]):
            found.append(entry)
    return sorted(found, key=str)


def _read(distribution: metadata.Distribution, entry) -> str | None:
    try:
        with open(distribution.locate_file(entry), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _unique(distributions: Iterable[metadata.Distribution]) -> list[metadata.Distribution]:
    """One of each (name, version), sorted by name: a name found twice on the path is listed once."""
    seen = {}
    for distribution in distributions:
        key = (canonical(distribution.metadata["Name"]), distribution.version)
        seen.setdefault(key, distribution)
    return [seen[key] for key in sorted(seen)]


def write_third_party_licenses(path: str, distributions: Iterable[metadata.Distribution],
                               python: bool = True) -> list[tuple[str, str, str]]:
    """Write the licence list of ``distributions`` (and of Python itself) to ``path``; returns the
    (name, version, licence) listed, in the order written. A licence text found in several distributions is
    written once and referred to afterwards."""
    entries = []  # (name, version, licence, [(title, text)])
    if python:
        text_file = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
        texts = []
        if os.path.exists(text_file):
            with open(text_file, encoding="utf-8", errors="replace") as f:
                texts.append(("LICENSE.txt of the standard library", f.read()))
        entries.append(("Python", platform.python_version(), "PSF-2.0 (the interpreter and its standard library)",
                        texts))
    for distribution in _unique(distributions):
        meta = distribution.metadata
        texts = [(str(entry), _read(distribution, entry)) for entry in licence_files(distribution)]
        texts = [(title, text) for title, text in texts if text is not None]
        field = (meta.get("License") or "").strip()
        if not texts and ("\n" in field or len(field) > 100):  # the whole text in the License field
            texts.append(("License field of its metadata", field))
        entries.append((meta["Name"], distribution.version, declared_licence(meta), texts))

    first_seen = {}
    with open(path, "w", encoding="utf-8") as out:
        out.write("Third-party software in this bundle: every Python distribution it carries, with its version, its\n"
                  "licence as its metadata declares it, and the licence files that came with it. ilastik-desktop\n"
                  "itself is under GPL-3.0-or-later: the GNU General Public License version 3 is in LICENSE.\n\n")
        width = max(len(f"{name} {version}") for name, version, _, _ in entries)
        for name, version, licence, _ in entries:
            out.write(f"  {f'{name} {version}':<{width}}  {licence}\n")
        for name, version, licence, texts in entries:
            out.write(f"\n\n{RULE}\n# {name} {version}\n# Licence: {licence}\n{RULE}\n")
            if not texts:
                gpl3 = re.search(r"\bGPL[- v]*3", licence) and "LGPL" not in licence
                where = "; the GNU GPL v3 is in LICENSE" if gpl3 else ""
                out.write(f"\n(no licence file in its metadata{where})\n")
            for title, text in texts:
                digest = hashlib.sha256(text.strip().encode()).hexdigest()
                if digest in first_seen:
                    out.write(f"\n--- {title}: the same text as {first_seen[digest]} above\n")
                    continue
                first_seen[digest] = f"{name}'s {title}"
                out.write(f"\n--- {title}\n\n{text.rstrip()}\n")
    return [(name, version, licence) for name, version, licence, _ in entries]


def bundled_distributions(toc: Iterable[tuple], distributions: Iterable[metadata.Distribution]
                          ) -> list[metadata.Distribution]:
    """The distributions PyInstaller collects: those owning a collected file (``(name, source, kind)`` entries
    of the Analysis: modules, extensions, libraries, data, run-time hooks), or, for a module found outside
    every distribution (ours, from the source tree), whose top-level import names include it."""
    owner, top_level = {}, {}
    for distribution in distributions:
        for entry in distribution.files or []:
            owner.setdefault(os.path.realpath(distribution.locate_file(entry)), []).append(distribution)
        for name in _import_names(distribution):
            top_level.setdefault(name, []).append(distribution)
    found = {}
    for name, source, kind in toc:
        if not source or not isinstance(source, str):
            continue
        owners = owner.get(os.path.realpath(source))
        if owners is None and kind in ("PYMODULE", "PYSOURCE", "EXTENSION") and os.path.isfile(source):
            owners = top_level.get(name.split(".")[0].split("/")[0], [])
        for distribution in owners or []:
            found[(canonical(distribution.metadata["Name"]), distribution.version)] = distribution
    return [found[key] for key in sorted(found)]


def _import_names(distribution: metadata.Distribution) -> set[str]:
    """Its top-level import names: ``top_level.txt``, else the first part of its modules' paths."""
    names = set((distribution.read_text("top_level.txt") or "").split())
    for entry in distribution.files or []:
        if entry.suffix in (".py", ".so", ".pyd") and entry.parts[0] != ".." and not entry.parts[0].endswith(
                (".dist-info", ".egg-info", ".data")):
            names.add(entry.parts[0].split(".")[0])
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the THIRD-PARTY-LICENSES file to write")
    parser.add_argument("--names", help="the distributions to list, one name a line (default: all installed)")
    parser.add_argument("--list", help="also write 'name version' a line of the distributions listed")
    args = parser.parse_args(argv)
    distributions = list(metadata.distributions())
    if args.names:
        with open(args.names, encoding="utf-8") as f:
            wanted = {canonical(line.strip()) for line in f if line.strip()}
        distributions = [d for d in distributions if canonical(d.metadata["Name"]) in wanted]
        missing = wanted - {canonical(d.metadata["Name"]) for d in distributions}
        if missing:
            print(f"third_party_licenses: not installed here: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    listed = write_third_party_licenses(args.output, distributions)
    if args.list:
        with open(args.list, "w", encoding="utf-8") as f:
            f.writelines(f"{name} {version}\n" for name, version, _ in listed if name != "Python")
    print(f"wrote {args.output}: Python and {len(listed) - 1} distributions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
