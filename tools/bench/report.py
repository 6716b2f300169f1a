#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Summarises a `make bench` run.

Usage: report.py OUTDIR

Reads OUTDIR/console.log (lines starting "kmcl-bench:") and OUTDIR/host.txt,
takes the median of the runs of every measurement, prints the table with the
ratios (b)/(a) and (c)/(a) of nanoseconds per packet, and writes
OUTDIR/results.json, OUTDIR/results.csv and OUTDIR/throughput.png (gnuplot).
"""

import json
import os
import re
import statistics
import subprocess
import sys

WAYS = ["raw", "api", "passive"]
LABEL = {"raw": "(a) raw ring", "api": "(b) API, softirq", "passive": "(c) API, passive",
         "lock": "spinlock pair"}


def main():
    out = sys.argv[1]
    runs = {}
    with open(os.path.join(out, "console.log"), encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"kmcl-bench: (way=.*)$", line)
            if not m:
                continue
            kv = dict(x.split("=", 1) for x in m.group(1).split())
            key = (kv["way"], kv["workload"], int(kv["size"]))
            runs.setdefault(key, []).append({k: int(v) for k, v in kv.items()
                                             if k not in ("way", "workload")})
    rows = []
    for (way, workload, size), rs in sorted(runs.items()):
        med = lambda f: statistics.median(f(r) for r in rs)
        ns_pp = med(lambda r: r["ns"] / r["packets"])
        # A request/response round trip moves two packets.
        per = 2 if workload == "reqresp" else 1
        rows.append({
            "way": way, "workload": workload, "size": size, "runs": len(rs),
            "ns_per_packet": ns_pp / per,
            "packets_per_s": 1e9 / (ns_pp / per),
            "bytes_per_s": 1e9 / (ns_pp / per) * size,
            "signals_per_packet": med(lambda r: r["signals"] / (r["packets"] * per)),
            "p50_ns": med(lambda r: r["p50"]), "p99_ns": med(lambda r: r["p99"]),
        })
    by = {(r["way"], r["workload"], r["size"]): r for r in rows}
    for r in rows:
        if r["way"] == "lock":
            r["ratio_to_raw"] = None
            continue
        base = by.get(("raw", r["workload"], r["size"]))
        r["ratio_to_raw"] = r["ns_per_packet"] / base["ns_per_packet"] if base else None

    print(f"{'workload':8} {'size':>5} {'way':18} {'ns/pkt':>9} {'pkt/s':>10} {'MB/s':>8} "
          f"{'sig/pkt':>8} {'p50 us':>8} {'p99 us':>8} {'x raw':>7}")
    for r in rows:
        if r["way"] == "lock":
            continue
        lat = r["workload"] == "reqresp"
        print(f"{r['workload']:8} {r['size']:>5} {LABEL[r['way']]:18} {r['ns_per_packet']:>9.0f} "
              f"{r['packets_per_s']:>10.0f} {r['bytes_per_s'] / 1e6:>8.1f} "
              f"{r['signals_per_packet']:>8.3f} "
              f"{(r['p50_ns'] / 1e3 if lat else 0):>8.1f} {(r['p99_ns'] / 1e3 if lat else 0):>8.1f} "
              f"{r['ratio_to_raw']:>7.2f}")

    lock = by.get(("lock", "lockpair", 0))
    if lock:
        print(f"\none SpinLockIrq lock+unlock on this kernel: {lock['ns_per_packet']:.0f} ns")
    host = []
    try:
        with open(os.path.join(out, "host.txt"), encoding="utf-8") as f:
            for line in f:
                p = line.split()
                if len(p) == 4 and p[0].isdigit():
                    host.append({"size": int(p[0]), "ring_MBps": float(p[1]),
                                 "copy_MBps": float(p[2]), "ring_over_copy": float(p[3])})
    except FileNotFoundError:
        pass

    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"vm": rows, "host": host}, f, indent=2)
    with open(os.path.join(out, "results.csv"), "w", encoding="utf-8") as f:
        keys = list(rows[0].keys())
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")

    dat = os.path.join(out, "throughput.dat")
    with open(dat, "w", encoding="utf-8") as f:
        for size in sorted({r["size"] for r in rows if r["way"] != "lock"}):
            vals = [by[(w, "stream", size)]["bytes_per_s"] / 1e6 for w in WAYS]
            f.write(f"{size} " + " ".join(f"{v:.2f}" for v in vals) + "\n")
    png = os.path.join(out, "throughput.png")
    script = f"""
set terminal pngcairo size 800,500
set output '{png}'
set title 'kmcl one-way streaming throughput (QEMU TCG; compare within a run)'
set xlabel 'payload (bytes)'
set ylabel 'MB/s'
set logscale x 2
set logscale y 10
set key left top
set grid
plot '{dat}' using 1:2 with linespoints title '{LABEL["raw"]}', \\
     '{dat}' using 1:3 with linespoints title '{LABEL["api"]}', \\
     '{dat}' using 1:4 with linespoints title '{LABEL["passive"]}'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"\nresults: {out}/results.json, {out}/results.csv, plot: {png}")
    if host:
        print("\nhost ring core against the copy limit:")
        for h in host:
            print(f"  {h['size']:>5} B: ring {h['ring_MBps']:.0f} MB/s, copy {h['copy_MBps']:.0f} MB/s, "
                  f"ratio {h['ring_over_copy']:.2f}")


if __name__ == "__main__":
    main()
