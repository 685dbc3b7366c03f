"""Running from the bundle: the worker role through the one executable, and programs outside the bundle
started with the user's own library path (PyInstaller's bootloader puts the bundle's libraries first)."""

import os
import sys

from ilastik_desktop.runtime.frozen import external_environment, open_externally, resource_path, worker_command
from tests.helpers import wait_for


def test_outside_the_bundle_workers_run_as_a_module(monkeypatch):
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert worker_command() == [sys.executable, "-m", "ilastik_desktop.cli.worker"]


def test_in_the_bundle_the_executable_serves_the_worker_role(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert worker_command() == [sys.executable, "worker"]


def test_programs_outside_the_bundle_get_the_users_library_path_back(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/bundle/_internal")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/home/me/lib")
    assert external_environment()["LD_LIBRARY_PATH"] == "/home/me/lib"
    opener = tmp_path / "xdg-open"  # stands in for the desktop's opener: records what it was given
    opener.write_text(f'#!/bin/sh\necho "$1 ${{LD_LIBRARY_PATH-unset}}" > {tmp_path}/opened\n')
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    open_externally("/some/folder")
    opened = tmp_path / "opened"
    wait_for(lambda: opened.exists() and opened.read_text().endswith("\n"), 10, interval=0.05,
             message="the opener did not record what it was given")
    assert (tmp_path / "opened").read_text().split() == ["/some/folder", "/home/me/lib"]
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG")
    assert "LD_LIBRARY_PATH" not in external_environment()  # the user had none


def test_resources_are_found_in_a_source_checkout_an_installed_wheel_and_the_bundle(monkeypatch, tmp_path):
    assert resource_path("icon.svg").endswith(os.path.join("resources", "icon.svg"))
    assert resource_path("nothing.svg") is None
    installed = tmp_path / "share" / "ilastik-desktop"  # a wheel's data files, under the environment's prefix
    installed.mkdir(parents=True)
    (installed / "wheel.svg").write_text("<svg/>")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert resource_path("wheel.svg") == str(installed / "wheel.svg")
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "icon.svg").write_text("<svg/>")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)  # where the bundle unpacks its data
    assert resource_path("icon.svg") == str(tmp_path / "resources" / "icon.svg")
