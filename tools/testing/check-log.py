#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Judges a console log of kmcl's test VM.

Usage: check-log.py KSRC LOG [--suites FILE] [--host-passed N --host-failed N]

Parses the KTAP in LOG with the kernel tree's kunit.py, then fails when a
case failed or crashed, an expected suite is missing, the VM did not reach its
end marker, or the kernel printed a splat. Ends with the line
'N passed, N failed', counting KUnit cases plus the host tests given.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# Every kernel report that means a bug, whatever subsystem printed it.
SPLATS = [
    (r"WARNING:", "warning"),
    (r"BUG:", "BUG"),
    (r"\bOops\b", "oops"),
    (r"Kernel panic", "panic"),
    (r"general protection fault", "general protection fault"),
    (r"possible circular locking dependency", "lockdep"),
    (r"possible recursive locking detected", "lockdep"),
    (r"inconsistent lock state", "lockdep"),
    (r"suspicious RCU usage", "lockdep (RCU)"),
    (r"INFO: lockdep is turned off", "lockdep turned off"),
    (r"sleeping function called from invalid context", "sleep in atomic context"),
    (r"scheduling while atomic", "sleep in atomic context"),
    (r"KFENCE:", "KFENCE"),
    (r"unreferenced object 0x", "kmemleak"),
    (r"ODEBUG:", "debugobjects"),
    (r"rust_panic|panicked at", "Rust panic"),
    (r"INFO: task .* blocked for more than", "hung task"),
    (r"stack-protector:|stack guard page", "stack corruption"),
]


def kunit_results(ksrc, text):
    """Returns {suite: {case: status}} for kmcl's suites (names kmcl_*).

    Each module load prints a KTAP document of its own, and kunit.py parses
    one document at a time. Kernel messages reach the console later than the
    VM's own lines, so the log is cut at each top-level "KTAP version" line of
    the kernel's messages rather than at the VM's markers, and lines that are
    not kernel messages are left out.
    """
    kernel = [l for l in text.splitlines() if re.match(r"^\[\s*\d+\.\d+\]", l)]
    docs, cur = [], None
    for line in kernel:
        if re.match(r"^\[\s*\d+\.\d+\] KTAP version", line):
            cur = []
            docs.append(cur)
        if cur is not None:
            cur.append(line)
    suites = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, doc in enumerate(docs):
            src = os.path.join(tmp, f"doc{n}.log")
            out = os.path.join(tmp, f"doc{n}.json")
            with open(src, "w", encoding="utf-8") as f:
                f.write("\n".join(doc) + "\n")
            subprocess.run(
                [sys.executable, os.path.join(ksrc, "tools/testing/kunit/kunit.py"),
                 "parse", f"--json={out}", src],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if os.path.exists(out):
                with open(out, encoding="utf-8") as f:
                    collect(json.load(f), suites)
    return {k: v for k, v in suites.items() if k.startswith("kmcl")}


def collect(tree, suites):
    """Adds the suites of one kunit.py JSON tree to SUITES."""

    def walk(group):
        if group.get("test_cases"):
            suites[group["name"]] = {c["name"]: c["status"] for c in group["test_cases"]}
        for sub in group.get("sub_groups", []):
            walk(sub)

    walk(tree)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ksrc")
    ap.add_argument("log")
    ap.add_argument("--suites", help="file naming the suites that must run, one per line")
    ap.add_argument("--host-passed", type=int, default=0)
    ap.add_argument("--host-failed", type=int, default=0)
    args = ap.parse_args()

    with open(args.log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    problems = []

    if "kmcl-vm: done" not in text:
        problems.append("the VM did not reach its end marker (hang, crash or timeout)")
    for line in text.splitlines():
        if re.search(r"kmcl-vm: (insmod|rmmod) \S+ failed", line):
            problems.append(line.strip())

    # A module that unloads without dropping its channel: kmcl disables the
    # channel when the module goes, and says so.
    if "kmcl-vm: insmod kmcl_leak" in text and not re.search(
        r"channel \d+: its module went away without dropping it; disabling it", text
    ):
        problems.append("kmcl did not disable the channel kmcl_leak left behind")
    after = text.split("kmcl-vm: rmmod kmcl_leak", 1)[-1].split("kmcl-vm: rmmod echo_vsp", 1)
    if len(after) == 2 and "kmcl_leak: channel" in after[1]:
        problems.append("kmcl called into kmcl_leak after the module was gone")

    for pat, what in SPLATS:
        for line in text.splitlines():
            if re.search(pat, line):
                problems.append(f"splat ({what}): {line.strip()}")
                break

    suites = kunit_results(args.ksrc, text)
    passed = failed = skipped = 0
    for suite, cases in sorted(suites.items()):
        sp = sum(1 for s in cases.values() if s == "PASS")
        sk = sum(1 for s in cases.values() if s == "SKIP")
        sf = len(cases) - sp - sk
        passed += sp
        skipped += sk
        failed += sf
        print(f"  suite {suite}: {sp} passed, {sf} failed, {sk} skipped")
        for case, status in cases.items():
            if status not in ("PASS", "SKIP"):
                problems.append(f"{suite}.{case}: {status}")

    if args.suites:
        with open(args.suites, encoding="utf-8") as f:
            wanted = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        for s in wanted:
            if s not in suites:
                problems.append(f"expected suite {s} did not run")

    for p in problems:
        print(f"FAIL: {p}")
    if problems and failed == 0:
        failed = len(problems)
    print(f"kunit: {passed} passed, {failed} failed, {skipped} skipped")
    total_p = passed + args.host_passed
    total_f = failed + args.host_failed
    print(f"{total_p} passed, {total_f} failed")
    return 1 if problems or total_f else 0


if __name__ == "__main__":
    sys.exit(main())
