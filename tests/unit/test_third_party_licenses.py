"""The bundle's THIRD-PARTY-LICENSES generator (packaging/third_party_licenses.py), on this virtualenv: every
distribution listed with its version and declared licence, the licence files' text included, and the
distributions going into a bundle found from PyInstaller's list of collected files."""

import importlib.util
import os
import re
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("third_party_licenses",
                                               os.path.join(REPO, "packaging", "third_party_licenses.py"))
third_party_licenses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(third_party_licenses)
canonical = third_party_licenses.canonical


def _entries(text: str) -> dict[tuple[str, str], str]:
    """(canonical name, version) -> declared licence, from the entries' headers."""
    found = re.findall(r"^#{79}\n# (\S+) (\S+)\n# Licence: (.*)\n#{79}$", text, re.MULTILINE)
    return {(canonical(name), version): licence for name, version, licence in found}


def test_every_distribution_of_the_virtualenv_is_listed_with_its_version_and_licence(tmp_path):
    out = tmp_path / "THIRD-PARTY-LICENSES"
    listed = third_party_licenses.write_third_party_licenses(str(out), metadata.distributions())
    text = out.read_text(encoding="utf-8")
    entries = _entries(text)
    installed = {(canonical(d.metadata["Name"]), d.version) for d in metadata.distributions()}
    assert installed <= set(entries), sorted(installed - set(entries))
    assert len(entries) == len(listed) == len(installed) + 1  # and Python itself
    assert "GPL" in entries[("pyqt5", metadata.version("PyQt5"))]
    assert entries[(canonical("python"), listed[0][1])].startswith("PSF-2.0")
    assert all(licence.strip() for licence in entries.values())
    summary = text.split("\n\n\n")[0]  # the table at the top
    for name, version, licence in listed:
        assert re.search(rf"^  {re.escape(name)} {re.escape(version)} +{re.escape(licence)}$", summary, re.MULTILINE)
    numpy = metadata.distribution("numpy")
    files = third_party_licenses.licence_files(numpy)
    assert files and all(".dist-info" in str(f) for f in files)
    first = numpy.locate_file(files[0]).read_text(encoding="utf-8").strip()
    assert first[:200] in text


def test_the_licence_comes_from_the_expression_else_the_field_else_the_classifiers():
    declared = third_party_licenses.declared_licence
    assert declared({"License-Expression": "MIT", "License": "BSD"}) == "MIT"
    assert declared({"License": "GPL v3"}) == "GPL v3"

    class Meta(dict):
        def get_all(self, key):
            return self.get(key)

    classifiers = ["License :: OSI Approved :: BSD License", "Programming Language :: Python"]
    assert declared(Meta({"License": "Copyright (c) ...\n" * 20, "Classifier": classifiers})) == "BSD License"
    assert declared(Meta({"Classifier": []})) == "not declared in its metadata"


def test_the_distributions_going_into_the_bundle_are_found_from_the_collected_files(tmp_path):
    numpy = metadata.distribution("numpy")
    module = next(f for f in numpy.files if str(f).replace("\\", "/") == "numpy/__init__.py")
    ours = os.path.join(tmp_path, "ilastik_desktop", "__init__.py")  # a source tree outside every distribution
    os.makedirs(os.path.dirname(ours))
    open(ours, "w").close()
    toc = [("numpy", str(numpy.locate_file(module)), "PYMODULE"), ("ilastik_desktop", ours, "PYMODULE"),
           ("README.md", os.path.join(REPO, "README.md"), "DATA")]
    found = third_party_licenses.bundled_distributions(toc, metadata.distributions())
    assert {canonical(d.metadata["Name"]) for d in found} == {"numpy", "ilastik-desktop"}


def test_the_command_lists_the_named_distributions_and_records_them(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("numpy\nPyQt5\n")
    out, listing = tmp_path / "THIRD-PARTY-LICENSES", tmp_path / "BUNDLED-DISTRIBUTIONS.txt"
    assert third_party_licenses.main([str(out), "--names", str(names), "--list", str(listing)]) == 0
    expected = {f"numpy {metadata.version('numpy')}", f"PyQt5 {metadata.version('PyQt5')}"}
    assert set(listing.read_text().splitlines()) == expected
    assert {name for name, _ in _entries(out.read_text(encoding="utf-8"))} == {"python", "numpy", "pyqt5"}
    names.write_text("numpy\nno-such-distribution\n")
    assert third_party_licenses.main([str(out), "--names", str(names)]) == 1
