"""llama.cpp's own server test suite, run against llama.cpp's server and against Sluice.

The suite (``tools/server/tests`` of the llama.cpp that llama-cpp-python's sdist vendors) starts
its server with llama.cpp's flags for each test. Its presets download small models from
Hugging Face, which this machine cannot reach, so both servers are started through a wrapper that
drops ``--hf-repo``/``--hf-file`` and serves the embedded default model instead (``--model``);
tests that check one model's exact words fail on both alike. Printed: the tests each server
passes, and how many of those llama.cpp passes Sluice passes too (the issue's measure).

    python -m venv /tmp/lsuite && /tmp/lsuite/bin/pip install pytest requests openai aiohttp \\
        filelock wget prometheus-client numpy jsonschema
    python bench/llama_cpp_suite.py --suite .../vendor/llama.cpp/tools/server/tests \\
        --python /tmp/lsuite/bin/python [--llama-server .../build/bin/llama-server] [-k expr] \\
        [--keep DIR]
    python bench/llama_cpp_suite.py --reports DIR/llama.cpp.xml DIR/sluice.xml

The suite wants the whole llama.cpp tree (its tests read ``../../../models/templates``): pass
the ``tools/server/tests`` of the full sdist (``tar xzf`` it), not a partial extract. Its
llama-server builds in about 17 minutes on two cores (no web UI, no TLS):

    cmake -B build -G Ninja -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build --target llama-server -j2

Run it on a quiet machine: every test starts a server (a few seconds each for Sluice).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRAPPER = '''#!{python}
"""Start {what} with llama.cpp's arguments, the embedded model instead of a download."""
import os, sys
args, out, skip = sys.argv[1:], [], False
for i, a in enumerate(args):
    if skip:
        skip = False
        continue
    if a in ("--hf-repo", "-hf", "-hfr", "--hf-file", "-hff"):
        skip = True
        continue
    out.append(a)
if "--model" not in out and "-m" not in out and "--models-dir" not in out:
    out += ["--model", {model!r}]
if "--cors-origins" not in out:
    out += {cors!r}
# python -m app finds this checkout's app; the working folder stays the suite's, whose
# relative paths (../../../models/templates/...) the tests pass as flags
os.environ["PYTHONPATH"] = {root!r} + os.pathsep + os.environ.get("PYTHONPATH", "")
os.execv({target0!r}, [{target0!r}, *{target_rest!r}, *out])
'''


#: Sluice's CORS default is stricter than llama.cpp's (no origin at all, where llama.cpp lets any
#: origin in with credentials); the suite's tests of that default run Sluice with the flags that
#: give llama.cpp's answer, as the issue asks (README, --cors-credentials)
LLAMA_CORS = ["--cors-origins", "*", "--cors-methods", "GET, POST, DELETE, OPTIONS",
              "--cors-headers", "*", "--cors-credentials"]


def wrapper(folder: Path, name: str, target: list[str], model: str) -> Path:
    path = folder / f"{name}-server"
    cors = LLAMA_CORS if name == "sluice" else []
    path.write_text(WRAPPER.format(python=sys.executable, what=name, model=model, cors=cors,
                                   target0=target[0], target_rest=target[1:], root=str(ROOT)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def mirror(suite: Path, tree: Path) -> Path:
    """A writable copy of the suite at the same depth of a llama.cpp tree whose other entries
    are links to the real one, so that the tests' ``../../../models/templates`` and
    ``../../../tools/mtmd`` resolve (from the copy's folder, as they do in llama.cpp)."""
    if tree.exists():
        shutil.rmtree(tree)
    real, node = suite.resolve(), tree
    for part in ("tools", "server"):
        node.mkdir(parents=True, exist_ok=True)
        for entry in real.parents[1 if part == "server" else 2].iterdir():
            if entry.name != part:
                (node / entry.name).symlink_to(entry)
        node = node / part
    node.mkdir(parents=True, exist_ok=True)
    for entry in real.parent.iterdir():
        if entry.name != "tests":
            (node / entry.name).symlink_to(entry)
    shutil.copytree(real, node / "tests")
    return node / "tests"


def run_suite(suite: Path, python: str, server: Path, work: Path, extra: list[str]
              ) -> dict[str, str]:
    """Each test's outcome (passed, failed, error, skipped) by its id."""
    copy = mirror(suite, work / "llama.cpp")
    # its session fixture starts every preset once to download the models: nothing to download
    # here (and a preset such as the reranker's cannot start with the embedded model)
    conftest = copy / "conftest.py"
    text = conftest.read_text()
    conftest.write_text(text.replace("ServerPreset.load_all()", "pass  # no downloads here"))
    report = work / "report.xml"
    env = {**os.environ, "LLAMA_SERVER_BIN_PATH": str(server), "LLAMA_CACHE": str(work / "cache")}
    subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={report}", *extra], cwd=copy, env=env, check=False)
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    """Each test's outcome in a JUnit report of the suite."""
    out: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        out[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                     else "skipped" if "skipped" in kinds else "passed")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", type=Path, required=True, help="llama.cpp's tools/server/tests")
    p.add_argument("--python", default=sys.executable,
                   help="a Python with the suite's requirements (pytest, requests, openai, ...)")
    p.add_argument("--llama-server", type=Path, help="llama.cpp's server binary, to compare")
    p.add_argument("-k", help="only the tests pytest -k selects")
    p.add_argument("files", nargs="*", default=["unit"],
                   help="test files of the suite, such as unit/test_basic.py (default: all)")
    p.add_argument("--reports", type=Path, nargs=2, metavar=("LLAMA_XML", "SLUICE_XML"),
                   help="compare two JUnit reports of earlier runs of the suite (pytest "
                   "--junitxml, one per server) instead of running it")
    p.add_argument("--keep", type=Path, help="copy each run's JUnit report into this folder")
    p.add_argument("--only-llama", action="store_true",
                   help="run llama.cpp's server only (with --llama-server), for example on the "
                   "tests a Sluice run failed")
    args = p.parse_args()
    if args.reports is not None:
        return compare({"llama.cpp": outcomes(args.reports[0]),
                        "sluice": outcomes(args.reports[1])})
    from app.engine.model import default_model_path

    model = str(default_model_path())
    extra = [*args.files, *(["-k", args.k] if args.k else [])]
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="llama-suite-") as tmp:
        work = Path(tmp)
        targets = {"sluice": [sys.executable, "-m", "app"]}
        if args.llama_server is not None:
            targets = {"llama.cpp": [str(args.llama_server)],
                       **({} if args.only_llama else targets)}
        for name, target in targets.items():
            server = wrapper(work, name, target, model)
            (work / name).mkdir()
            results[name] = run_suite(args.suite, args.python, server, work / name, extra)
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / name / "report.xml", args.keep / f"{name}.xml")
    return compare(results)


def compare(results: dict[str, dict[str, str]]) -> int:
    for name, outcome in results.items():
        passed = sum(1 for v in outcome.values() if v == "passed")
        print(f"{name}: {passed} of {len(outcome)} tests passed")
    if "llama.cpp" in results and "sluice" in results:
        base = {t for t, v in results["llama.cpp"].items() if v == "passed"}
        both = {t for t in base if results["sluice"].get(t) == "passed"}
        share = 100.0 * len(both) / len(base) if base else 0.0
        print(f"of the {len(base)} llama.cpp passes, Sluice passes {len(both)} ({share:.0f} %)")
        for test in sorted(base - both):
            print(f"  sluice fails: {test} ({results['sluice'].get(test, 'not run')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
