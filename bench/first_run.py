"""First run of a new install against the second: the headless export and the demo, for the wheel and the bundle.

    python bench/first_run.py [--wheel dist/ilastik_desktop-*.whl] [--bundle build/ilastik-desktop-VERSION-...]
                              [--shape 96,384,384] [--workers 2] [--dir bench/out]

A "new install" of the wheel is the wheel installed by pip (``pip install --no-deps --target``) into an empty
folder (fresh files and modification times, no compiled kernels but those the wheel ships), run with the
dependencies of the running interpreter, a fresh HOME (an empty user cache) and that folder alone on
PYTHONPATH. A new install of the bundle is its unpacked folder (``packaging/build``; given as the folder or the
``.tar.gz``) run with a fresh HOME: the bundle never writes into its own folder. Each scenario runs the same
command twice on one new install: the prototype benchmark's headless export (``bench/common.py``'s project,
``--shape`` of it) and ``--headless --demo-project``; for the wheel also the window's first overlay
(``bench/first_window.py``: start to the complete 512 x 512 xy overlay of a demo-style project, no waiting for
workers), for the bundle ``--screenshot`` of that project (its whole wall time: start, every visible overlay
complete, the 0.7 s settling pause, exit). Prints JSON and a table; ratio = first / second.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import measure, prototype_project, report  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WINDOW_SHAPE = (64, 512, 512)  # the window's project: demo-style, a 512 x 512 xy view
EXPORT_OPTIONS = ["--headless", "--no-progress", "--output_format", "npy"]


def wheel_install(wheel: str, folder: str) -> list[str]:
    """Install ``wheel`` into ``folder`` as pip does; the command that runs its ``ilastik-desktop``."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", folder,
                    wheel], check=True)
    return [sys.executable, "-m", "ilastik_desktop"]


def bundle_install(bundle: str, folder: str) -> list[str]:
    """The bundle's program: ``bundle`` unpacked into ``folder`` if it is a tarball."""
    if bundle.endswith(".tar.gz"):
        subprocess.run(["tar", "-xzf", bundle, "-C", folder], check=True)
        bundle = os.path.join(folder, os.listdir(folder)[0])
    return [os.path.join(bundle, "ilastik-desktop", "ilastik-desktop")]


def fresh_environment(home: str, packages: str | None) -> dict[str, str]:
    """The environment of a user who never ran the app: ``home`` as HOME, no cache or numba settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_", "ILASTIK_DESKTOP_"))}
    env.pop("PYTHONPATH", None)
    env["HOME"] = home
    env["QT_QPA_PLATFORM"] = "offscreen"
    if packages:
        env["PYTHONPATH"] = packages
    return env


def first_and_second(install: str, scenario: str, command: list[str], env: dict, cwd: str) -> dict:
    """Run ``command`` twice on one new install: the row of the first and second run's wall seconds."""
    walls, peaks = [], []
    for run in ("1", "2"):
        os.chdir(cwd)
        result = measure([argument.replace("{run}", run) for argument in command], env)
        reported = result["stdout"].splitlines()[-1] if result["stdout"].startswith("{") else "{}"
        walls.append(json.loads(reported).get("overlay_s", result["wall_s"]))
        peaks.append(result["peak_rss_mb"])
    return {"install": install, "scenario": scenario, "first_s": walls[0], "second_s": walls[1],
            "ratio": round(walls[0] / walls[1], 2), "peak_rss_mb": max(peaks)}


def scenarios(project: str, workers: int) -> dict[str, list[str]]:
    """The runs measured: arguments after the program."""
    return {"export": ["--project", project, *EXPORT_OPTIONS, "--workers", str(workers),
                       "--output_filename_format", "{tmp}/export"],
            "demo": ["--demo-project", "{tmp}/demo-{run}", *EXPORT_OPTIONS, "--output_filename_format",
                     "{tmp}/demo-out"]}  # each run writes the demo (trains its forest) anew: the same work twice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", help="the wheel (packaging/build-wheel)")
    ap.add_argument("--bundle", help="the bundle's unpacked folder or .tar.gz (packaging/build)")
    ap.add_argument("--shape", default="96,384,384", help="z,y,x of the prototype benchmark's volume")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--only", choices=("export", "demo", "window"), help="one scenario only")
    ap.add_argument("--label", default="", help="a name for this build in the rows (e.g. before, after)")
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    project = prototype_project(os.path.join(os.path.abspath(a.dir), "first_run_" + "x".join(map(str, shape))), shape)
    viewed = os.path.join(os.path.abspath(a.dir), "first_window_" + "x".join(map(str, WINDOW_SHAPE)))
    viewed = os.path.join(viewed, "demo.ilp") if os.path.exists(os.path.join(viewed, "demo.ilp")) else \
        write_demo_project(viewed, WINDOW_SHAPE)
    installs = {"wheel": (wheel_install, a.wheel), "bundle": (bundle_install, a.bundle)}
    rows = []
    for install, (make, artefact) in installs.items():
        if not artefact:
            continue
        runs = scenarios(project, a.workers)
        if install == "wheel":  # the window's first overlay: the wheel's code, this repository's bench module
            runs["window"] = ["-m", "bench.first_window", viewed, "--workers", str(a.workers)]
        else:  # the bundle's window through its own program: until every visible overlay is complete, and exit
            runs["window"] = ["--project", viewed, "--workers", str(a.workers), "--screenshot", "{tmp}/window.png"]
        for scenario, arguments in runs.items():
            if a.only and scenario != a.only:
                continue
            with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
                os.makedirs(os.path.join(tmp, "home"))
                os.makedirs(os.path.join(tmp, "install"))
                program = make(os.path.abspath(glob.glob(artefact)[0]), os.path.join(tmp, "install"))
                packages = os.path.join(tmp, "install") if install == "wheel" else None
                if scenario == "window" and packages:
                    program, packages = [sys.executable], packages + os.pathsep + REPO
                command = program + [argument.replace("{tmp}", tmp) for argument in arguments]
                rows.append(first_and_second(f"{install} {a.label}".strip(), scenario, command,
                                             fresh_environment(os.path.join(tmp, "home"), packages), tmp))
                shutil.rmtree(os.path.join(tmp, "install"), ignore_errors=True)
            os.chdir(HERE)
    report("first_run", rows, {"shape_zyx": shape, "workers": a.workers, "load_1min": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
