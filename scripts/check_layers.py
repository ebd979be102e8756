#!/usr/bin/env python3
"""Checks that no file includes a header from a folder its target does not link.

Reads BUILD/layers.txt, which cmake/layers.cmake writes: one line per target,
    name|folders|source dir|sources|linked libraries
(lists joined by ","). A target may include the headers of its own folders and of the folders of
every target it links, directly or through others. Each source file of a target, and each header
in a folder it owns, is checked; an include that names no folder of the tree (abseil, gRPC,
generated code of tests) is not. Prints every violation and exits 1 when there is one.

    python3 scripts/check_layers.py build/layers.txt
"""

import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def read_targets(path):
    targets = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            name, folders, source_dir, sources, links = line.split("|")
            targets[name] = {
                "folders": [x for x in folders.split(",") if x],
                "dir": source_dir,
                "sources": [x for x in sources.split(",") if x],
                # Names inside generator expressions count too ($<LINK_LIBRARY:...,t>).
                "links": re.findall(r"[\w:.+-]+", links),
            }
    return targets


def closure(targets, name):
    seen, stack = set(), [name]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        stack.extend(l for l in targets[t]["links"] if l in targets)
    return seen


def owner_folder(include, folders):
    """The longest registered folder that `include` lies in, or None."""
    best = None
    for f in folders:
        if include == f or include.startswith(f + "/"):
            if best is None or len(f) > len(best):
                best = f
    return best


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    targets = read_targets(sys.argv[1])
    root = os.path.commonpath([t["dir"] for t in targets.values()])
    owners = {}  # folder -> targets
    for name, t in targets.items():
        for f in t["folders"]:
            owners.setdefault(f, set()).add(name)
    allowed = {}
    for name in targets:
        allowed[name] = {f for t in closure(targets, name) for f in targets[t]["folders"]}

    files = {}  # path relative to the root -> targets whose rules apply (any may allow)
    for name, t in targets.items():
        for s in t["sources"]:
            path = s if os.path.isabs(s) else os.path.join(t["dir"], s)
            if not path.startswith(root + os.sep) or not os.path.exists(path):
                continue  # generated
            files.setdefault(os.path.relpath(path, root), set()).add(name)
    for folder, names in owners.items():
        d = os.path.join(root, folder)
        if os.path.isfile(d):  # a single header owned on its own
            files.setdefault(folder, set()).update(names)
            continue
        if not os.path.isdir(d):
            continue
        for entry in sorted(os.listdir(d)):
            if entry.endswith((".h", ".cuh")):
                rel = os.path.join(folder, entry)
                if owner_folder(rel, owners) == folder:
                    files.setdefault(rel, set()).update(names)

    problems = []
    for rel, names in sorted(files.items()):
        with open(os.path.join(root, rel), errors="replace") as f:
            text = f.read()
        for inc in INCLUDE.findall(text):
            folder = owner_folder(inc, owners)
            if folder is None or any(folder in allowed[n] for n in names):
                continue
            problems.append(f"{rel}: includes \"{inc}\" from {folder}/ ({', '.join(sorted(owners[folder]))}), "
                            f"which {' / '.join(sorted(names))} does not link")
    for p in problems:
        print(p)
    checked = len(files)
    if problems:
        print(f"{len(problems)} include(s) past the links, in {checked} files")
        return 1
    print(f"layering: {checked} files include only what their targets link")
    return 0


if __name__ == "__main__":
    sys.exit(main())
