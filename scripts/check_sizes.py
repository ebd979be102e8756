#!/usr/bin/env python3
"""Checks that the code stays in pieces a reader can hold: no source file over 600 lines, and no
function over 120 lines in client/ and node/, where the long state machines live.

    python3 scripts/check_sizes.py BUILD_DIR

BUILD_DIR holds a compile_commands.json from a clang build (scripts/test.sh uses the
thread-safety build); function sizes are measured by clang-tidy's readability-function-size
(lines from the opening to the closing brace, comments and blank lines included). Files that
configuration does not compile (the CUDA-only sources) are not measured. Exits 1 on a violation.
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 120
FUNCTION_FOLDERS = ("client/", "node/")
SOURCES = ("*.h", "*.cc", "*.cu", "*.cuh", "*.py", "*.js", "*.sh")
NOT_CODE = ("tests/fixtures/",)  # data, not code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def long_files():
    files = subprocess.check_output(["git", "-C", ROOT, "ls-files", *SOURCES], text=True).split()
    out = []
    for f in files:
        if f.startswith(NOT_CODE):
            continue
        with open(os.path.join(ROOT, f), "rb") as fh:
            n = fh.read().count(b"\n")
        if n > MAX_FILE_LINES:
            out.append(f"{f}: {n} lines (at most {MAX_FILE_LINES})")
    return out


def tidy(build, path):
    config = ("{CheckOptions: [{key: readability-function-size.LineThreshold, value: %d}]}"
              % MAX_FUNCTION_LINES)
    out = subprocess.run(["clang-tidy", "-p", build, "--quiet", "-checks=-*,readability-function-size",
                          f"-config={config}", path], capture_output=True, text=True)
    found = []
    name = None
    for line in out.stdout.splitlines():
        m = re.search(r"^(.*?):(\d+):\d+: warning: function '([^']+)' exceeds", line)
        if m:
            name = f"{os.path.relpath(m.group(1), ROOT)}:{m.group(2)} {m.group(3)}"
            continue
        m = re.search(r"note: (\d+) lines including", line)
        if m and name:
            found.append(f"{name}: {m.group(1)} lines (at most {MAX_FUNCTION_LINES})")
            name = None
    return found


def long_functions(build):
    with open(os.path.join(build, "compile_commands.json")) as f:
        compiled = {os.path.realpath(e["file"]) for e in json.load(f)}
    paths = [os.path.realpath(os.path.join(ROOT, f)) for f in subprocess.check_output(
        ["git", "-C", ROOT, "ls-files", *[d + "*.cc" for d in FUNCTION_FOLDERS]], text=True).split()]
    paths = [p for p in paths if p in compiled]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda p: tidy(build, p), paths)
    return [v for r in results for v in r], len(paths)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    problems = long_files()
    functions, measured = long_functions(sys.argv[1])
    problems += functions
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"sizes: no file over {MAX_FILE_LINES} lines; no function over {MAX_FUNCTION_LINES} "
          f"lines in the {measured} sources of {', '.join(FUNCTION_FOLDERS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
