"""The SDK as a user outside the tree gets it: `cmake --install` into a temporary prefix, a
program built against that prefix (with CMake's find_package(strata), and with pkg-config),
and the program generating through a local swarm.

    python3 package_test.py --build BUILD_DIR --strata BUILD/strata --model MODEL.gguf --out DIR

Checks that the install holds only the SDK's files (one header, one library, the package
files), that the library exports only the public API, and that both programs' greedy tokens
through a two-node swarm agree with llama.cpp's (tests/fixtures/llama_cpp_greedy.json: equal up
to the first difference, which may only fall where llama.cpp's top-2 margin is a near-tie, as
tests/model/reference_test.cc allows).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ui"))
import uitest  # noqa: E402
from uitest import check, fail, log  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "fixtures", "llama_cpp_greedy.json")
TIE_MARGIN = 0.5  # as kTieMargin in tests/model/reference_test.cc
CASES = ("prose", "numbers")
STEPS = 12


def run(cmd, what, env=None, timeout=600):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        fail(f"{what} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def install(build, prefix):
    run(["cmake", "--install", build, "--prefix", prefix, "--component", "client"],
        "cmake --install --component client")
    got = sorted(os.path.relpath(os.path.join(d, f), prefix)
                 for d, _, files in os.walk(prefix) for f in files)
    log("installed: " + ", ".join(got))
    headers = [g for g in got if g.startswith("include/")]
    check(headers == ["include/strata/client.h"], f"the SDK installs one header, got {headers}")
    libs = [g for g in got if "libstrata" in g]
    check(libs and all("libstrata_client.so" in g for g in libs),
          f"the SDK installs libstrata_client.so only, got {libs}")
    for want in ("strataConfig.cmake", "strataConfigVersion.cmake", "strataTargets.cmake",
                 "strata-client.pc"):
        check(any(g.endswith(want) for g in got), f"{want} is not installed")
    check(not any(g.startswith("bin/") for g in got), "the client component installs no programs")
    lib = os.path.join(prefix, next(g for g in libs if g.endswith(".so")))
    symbols = run(["nm", "-DC", "--defined-only", lib], "nm")
    exported = sorted({line.split(" ", 2)[2] for line in symbols.splitlines()
                       if line.split(" ")[1] in "TWVBDR" and " " in line})
    log("exported: " + "; ".join(exported))
    check(any("strata::Client::Connect" in s for s in exported), "Client::Connect is not exported")
    stray = [s for s in exported if not s.startswith(("strata::", "typeinfo", "vtable"))
             or s.startswith("strata::client::")]
    check(not stray, f"the library exports more than the public API: {stray[:10]}")


def build_with_cmake(prefix, out):
    src = os.path.join(HERE, "consumer")
    binary = os.path.join(out, "cmake-build")
    shutil.rmtree(binary, ignore_errors=True)
    run(["cmake", "-S", src, "-B", binary, "-G", "Ninja", f"-DCMAKE_PREFIX_PATH={prefix}"],
        "configuring the consumer with find_package(strata)")
    run(["cmake", "--build", binary], "building the consumer with CMake")
    return os.path.join(binary, "consumer")


def build_with_pkg_config(prefix, out):
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"))
    for libdir in ("lib", os.path.join("lib", "x86_64-linux-gnu")):
        pc = os.path.join(prefix, libdir, "pkgconfig")
        if os.path.isdir(pc):
            env["PKG_CONFIG_PATH"] = pc
    flags = run(["pkg-config", "--cflags", "--libs", "strata-client"], "pkg-config", env=env)
    libdir = run(["pkg-config", "--variable=libdir", "strata-client"], "pkg-config", env=env)
    check(os.path.realpath(libdir.strip()).startswith(os.path.realpath(prefix)),
          f"pkg-config's libdir {libdir.strip()} is not under the prefix {prefix}")
    binary = os.path.join(out, "consumer-pkg-config")
    run(["c++", "-O1", os.path.join(HERE, "consumer", "main.cc"), "-o", binary, *flags.split(),
         f"-Wl,-rpath,{libdir.strip()}"], "building the consumer with pkg-config")
    return binary


def agrees_with_llama_cpp(name, case, got):
    want, margin = case["greedy_ids"], case["top2_margin"]
    for step, token in enumerate(got):
        if token != want[step]:
            check(margin[step] < TIE_MARGIN,
                  f"{name}: token {step} is {token}, llama.cpp's is {want[step]}, and its top-2 "
                  f"margin {margin[step]:.3f} is no near-tie")
            log(f"{name}: tokens equal to llama.cpp's up to a near-tie at step {step}")
            return
    log(f"{name}: all {len(got)} tokens equal to llama.cpp's")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build", required=True, help="the build directory to install from")
    p.add_argument("--strata", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, "prefix")
    shutil.rmtree(prefix, ignore_errors=True)

    install(args.build, prefix)
    programs = {"find_package": build_with_cmake(prefix, args.out),
                "pkg-config": build_with_pkg_config(prefix, args.out)}

    swarm = uitest.Swarm(args)
    swarm.add_node(max_layers=15)
    swarm.add_node(max_layers=15)
    swarm.wait_serving(2)
    with open(FIXTURE) as f:
        cases = {c["name"]: c for c in json.load(f)["cases"]}
    for how, program in programs.items():
        for name in CASES:
            case = cases[name]
            out = run([program, swarm.grpc, args.model, case["text"], str(STEPS)],
                      f"the consumer built with {how}", timeout=300)
            got = json.loads(out)
            check(got["prompt_ids"] == case["prompt_ids"],
                  f"{how}, {name}: prompt tokens {got['prompt_ids']}, llama.cpp's "
                  f"{case['prompt_ids']}")
            check(len(got["token_ids"]) == STEPS, f"{how}, {name}: {len(got['token_ids'])} tokens")
            check(got["hops"] == 2, f"{how}, {name}: a route of {got['hops']} hops, not 2")
            agrees_with_llama_cpp(f"{how}, {name}", case, got["token_ids"])
    log("PASS")


if __name__ == "__main__":
    main()
