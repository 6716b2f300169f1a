#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The difference between two `make profile` runs, per function.

Usage: diff.py RUN_A RUN_B [-n N] [--top K] [--min M]

Prints (B - A) / N for every function, largest first. Two runs that differ
only in the number of packets (or requests) the benchmark moves boot, set
up and tear down alike, so what differs is the cost of the extra packets:
with N the difference in packet count, each row is that function's
instructions per packet, summed over every measurement the parameter
drives. Without -n, N is the difference of the one kmcl_bench parameter
whose value differs between the runs' run.json.
"""

import argparse
import collections
import json
import os
import sys

from report import short


def load(run):
    prof, total = collections.Counter(), 0
    with open(os.path.join(run, "symbols.tsv"), encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "#total":
                total = int(p[1])
            elif len(p) == 3:
                prof[(p[0], p[1])] += int(p[2])
    return prof, total


def params(run):
    """The run's kmcl_bench parameters; the last value of a name wins, as
    for module parameters."""
    with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
        words = json.load(f)["params"].split()
    return dict(w.split("=", 1) for w in words if "=" in w)


def step(run_a, run_b):
    """(N, what) from the one parameter that differs between the runs."""
    pa, pb = params(run_a), params(run_b)
    differ = [k for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    if len(differ) != 1:
        sys.exit(f"diff: the runs differ in {differ or 'no parameter'}; give -n")
    k = differ[0]
    try:
        n = int(pb[k]) - int(pa[k])
    except (KeyError, ValueError):
        sys.exit(f"diff: {k} is not a number in both runs; give -n")
    if n == 0:
        sys.exit("diff: the runs have the same parameters; give -n")
    return n, {"packets": "packet", "requests": "request"}.get(k, f"unit of {k}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("-n", type=float, help="divide the differences by N")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--min", type=float, default=0.01,
                    help="hide rows whose |(B - A) / N| is below this")
    a = ap.parse_args()

    if a.n:
        n, what = a.n, f"N = {a.n:g}"
    else:
        n, what = step(a.a, a.b)
        what = f"per {what} ({n:+,} between the runs)"
    sa, ta = load(a.a)
    sb, tb = load(a.b)
    d = {k: sb[k] - sa[k] for k in set(sa) | set(sb) if sb[k] != sa[k]}
    by_region = collections.Counter()
    for (region, _), v in d.items():
        by_region[region] += v

    print(f"(B - A) / N, {what}")
    print(f"guest instructions: A {ta:,}, B {tb:,}, (B - A) / N {(tb - ta) / n:,.2f}")
    print("by region: " + ", ".join(
        f"{r} {v / n:,.2f}" for r, v in sorted(by_region.items(), key=lambda x: -abs(x[1]))))
    print(f"{'(B - A) / N':>12} {'A':>15} {'B':>15}  {'region':<11} function")
    rows = sorted(d.items(), key=lambda x: (-abs(x[1]), x[0]))
    for (region, name), v in rows[:a.top]:
        if abs(v / n) < a.min:
            break
        print(f"{v / n:>12,.2f} {sa[(region, name)]:>15,} {sb[(region, name)]:>15,}  "
              f"{region:<11} {short(name)}")


if __name__ == "__main__":
    main()
