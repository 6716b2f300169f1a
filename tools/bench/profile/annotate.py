#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""One function's disassembly with the executions of each instruction.

Usage: annotate.py FUNCTION RUN [RUN_B] [-n N]

RUN (and RUN_B) are runs of `make profile` counted per instruction
(PROFILE_MODE=insn). With one run, each instruction shows how many times it
ran; with two, (B - A) / N, where N is as in diff.py (by default the
difference of the one kmcl_bench parameter that differs). FUNCTION is a
function's name as the report prints it, or a part of it that names one
function only. The function may be in kmcl.ko, kmcl_bench.ko or the kernel.
"""

import argparse
import collections
import os
import re
import sys

from diff import step
from report import Symbols, demangle, read_counts, run_tool


def find(syms, function):
    """(region, index) of the function in a run's symbols."""
    every = [(r, i, n) for r in syms.regions for i, n in enumerate(r.names)]
    names = demangle(n for _, _, n in every)
    shown = [(r, i, names.get(n, n)) for r, i, n in every]
    hits = [x for x in shown if x[2] == function] or \
        [x for x in shown if function in x[2]]
    if len({h[2] for h in hits}) != 1:
        print(f"annotate: {len(hits)} functions match {function!r}", file=sys.stderr)
        for _, _, n in hits[:20]:
            print(f"  {n}", file=sys.stderr)
        sys.exit(1)
    r, i, name = hits[0]
    return r, i, name


def counts_in(run, function):
    """The function's ELF file, section and start in that file, its name,
    and {offset in the function: executions} for a run."""
    syms = Symbols(run)
    if syms.info["mode"] != "insn":
        sys.exit(f"annotate: {run} counted translation blocks; profile with PROFILE_MODE=insn")
    r, i, name = find(syms, function)
    start, end = r.bounds(i)
    counts = collections.Counter()
    for addr, count in read_counts(run):
        if start <= addr < end:
            counts[addr - start] += count
    return (r.path, r.section, start - r.shift, end - start), name, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("function")
    ap.add_argument("run")
    ap.add_argument("run_b", nargs="?")
    ap.add_argument("-n", type=float)
    a = ap.parse_args()

    where, name, ca = counts_in(a.run, a.function)
    path, section, file_start, size = where
    if a.run_b:
        _, _, cb = counts_in(a.run_b, name)
        n = a.n or step(a.run, a.run_b)[0]
        value = {o: (cb[o] - ca[o]) / n for o in set(ca) | set(cb)}
        what = f"(B - A) / {n:g}"
    else:
        value = dict(ca)
        what = "executions"

    args = ["objdump", "-d", "-C", "--no-show-raw-insn",
            f"--start-address={file_start:#x}", f"--stop-address={file_start + size:#x}"]
    if section:
        args += ["-r", "-j", section]
    total = 0.0
    lines = []
    for line in run_tool(*args, path).splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", line)
        if m and m.group(2).startswith("R_"):
            # A relocation (-r): the target of the call or access above.
            lines.append(f"{'':>12}  {m.group(1)}: {m.group(2)}")
        elif m:
            v = value.get(int(m.group(1), 16) - file_start, 0)
            total += v
            lines.append(f"{v:>12,.2f}  {m.group(1)}: {m.group(2)}")
    print(f"{name} ({os.path.basename(path)}{' ' + section if section else ''}), "
          f"{what} per instruction")
    print(f"instructions: {total:,.2f}; its first instruction: {value.get(0, 0):,.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
