#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Summarises a `make bench` run.

Usage: report.py OUTDIR

Reads OUTDIR/console.log (plain TCG, every way), OUTDIR/console-icount-*.log
(the deterministic mode, one file per boot; lines starting "kmcl-bench:")
and OUTDIR/host.txt. Takes the median of the runs of every measurement (and,
in the deterministic mode, the median of the boots' medians and their
spread), prints the tables with the ratios (b)/(a), (c)/(a) and (e)/(d) of
nanoseconds per packet, one line "ratio NAME VALUE" per goal of
Documentation/performance.rst, and writes OUTDIR/results.json,
OUTDIR/results.csv and OUTDIR/throughput.png (gnuplot).
"""

import glob
import json
import os
import re
import statistics
import subprocess
import sys

WAYS = ["raw", "api", "passive", "cpath", "hv"]
LABEL = {"raw": "(a) raw ring", "api": "(b) API, softirq", "passive": "(c) API, passive",
         "cpath": "(d) C path, hv", "hv": "(e) API on hv", "lock": "spinlock pair"}
SIZES = [64, 512, 4096]


def parse(path):
    runs = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"kmcl-bench: (way=.*)$", line)
            if not m:
                continue
            kv = dict(x.split("=", 1) for x in m.group(1).split())
            key = (kv["way"], kv["workload"], int(kv["size"]))
            runs.setdefault(key, []).append({k: int(v) for k, v in kv.items()
                                             if k not in ("way", "workload")})
    return runs


def summarise(runs, mode):
    rows = []
    for (way, workload, size), rs in sorted(runs.items()):
        med = lambda f: statistics.median(f(r) for r in rs)
        ns_pp = med(lambda r: r["ns"] / r["packets"])
        # A request/response round trip moves two packets.
        per = 2 if workload == "reqresp" else 1
        rows.append({
            "mode": mode, "way": way, "workload": workload, "size": size, "runs": len(rs),
            "ns_per_packet": ns_pp / per,
            "packets_per_s": 1e9 / (ns_pp / per),
            "bytes_per_s": 1e9 / (ns_pp / per) * size,
            "signals_per_packet": med(lambda r: r["signals"] / (r["packets"] * per)),
            "p50_ns": med(lambda r: r["p50"]), "p99_ns": med(lambda r: r["p99"]),
            "boots": 1, "boot_spread": 0.0,
        })
    by = {(r["way"], r["workload"], r["size"]): r for r in rows}
    for r in rows:
        base = None
        if r["way"] in ("api", "passive"):
            base = by.get(("raw", r["workload"], r["size"]))
        elif r["way"] == "hv":
            base = by.get(("cpath", r["workload"], r["size"]))
        r["ratio"] = r["ns_per_packet"] / base["ns_per_packet"] if base else None
    return rows


def combine_boots(boot_rows):
    """The median over boots of each measurement's median, and the spread
    (max - min) / median of the boots' values."""
    keyed = {}
    for rows in boot_rows:
        for r in rows:
            keyed.setdefault((r["way"], r["workload"], r["size"]), []).append(r)
    out = []
    for key, rs in sorted(keyed.items()):
        r = dict(rs[0])
        vals = [x["ns_per_packet"] for x in rs]
        m = statistics.median(vals)
        r.update({"ns_per_packet": m, "packets_per_s": 1e9 / m, "bytes_per_s": 1e9 / m * r["size"],
                  "boots": len(rs), "boot_spread": (max(vals) - min(vals)) / m if m else 0.0})
        for k in ("signals_per_packet", "p50_ns", "p99_ns"):
            r[k] = statistics.median(x[k] for x in rs)
        ratios = [x["ratio"] for x in rs if x["ratio"] is not None]
        r["ratio"] = statistics.median(ratios) if ratios else None
        r["ratio_spread"] = ((max(ratios) - min(ratios)) / statistics.median(ratios)
                             if ratios else None)
        out.append(r)
    return out


def print_table(rows, title):
    print(f"\n{title}")
    print(f"{'workload':8} {'size':>5} {'way':18} {'ns/pkt':>9} {'pkt/s':>10} {'MB/s':>8} "
          f"{'sig/pkt':>8} {'p50 us':>8} {'p99 us':>8} {'ratio':>7} {'spread':>7}")
    order = {w: i for i, w in enumerate(WAYS)}
    for r in sorted(rows, key=lambda r: (r["workload"], r["size"], order.get(r["way"], 9))):
        if r["way"] == "lock":
            continue
        lat = r["workload"] == "reqresp"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        spread = f"{100 * r['boot_spread']:.1f}%" if r["boots"] > 1 else "-"
        print(f"{r['workload']:8} {r['size']:>5} {LABEL[r['way']]:18} {r['ns_per_packet']:>9.0f} "
              f"{r['packets_per_s']:>10.0f} {r['bytes_per_s'] / 1e6:>8.1f} "
              f"{r['signals_per_packet']:>8.3f} "
              f"{(r['p50_ns'] / 1e3 if lat else 0):>8.1f} {(r['p99_ns'] / 1e3 if lat else 0):>8.1f} "
              f"{ratio:>7} {spread:>7}")
    print("ratio: (b) and (c) against (a), (e) against (d), of ns per packet")


def goal_ratios(rows, host, suffix):
    by = {(r["way"], r["workload"], r["size"]): r for r in rows}

    def e_over_d(workload, size):
        r = by.get(("hv", workload, size))
        return r["ratio"] if r else None

    out = {}
    for size in (64, 4096):
        v = [x for x in (e_over_d("send", size), e_over_d("recv", size)) if x is not None]
        if v:
            out[f"e_over_d_stream_{size}"] = max(v)
    if e_over_d("reqresp", 64) is not None:
        out["e_over_d_reqresp_64"] = e_over_d("reqresp", 64)
    if ("api", "stream", 64) in by:
        out["b_over_a_stream_64"] = by[("api", "stream", 64)]["ratio"]
    for h in host:
        if h["size"] in (64, 4096):
            out[f"host_ring_over_copy_{h['size']}"] = h["ring_over_copy"]
    return {k + suffix: v for k, v in out.items()}


def main():
    out = sys.argv[1]
    plain = summarise(parse(os.path.join(out, "console.log")), "tcg")
    boots = [summarise(parse(p), "icount")
             for p in sorted(glob.glob(os.path.join(out, "console-icount-*.log")))]
    icount = combine_boots(boots) if boots else []

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

    print_table(plain, "plain TCG (2 vCPUs), ns per packet, median of the runs of one boot:")
    lock = [r for r in plain if r["way"] == "lock"]
    if lock:
        print(f"one SpinLockIrq lock+unlock on this kernel: {lock[0]['ns_per_packet']:.0f} ns")
    if icount:
        print_table(icount, f"QEMU -icount shift=0,sleep=off (1 vCPU; 1 ns = 1 guest instruction), "
                    f"median of {len(boots)} boots' medians; spread = (max - min) / median over the boots:")
        spreads = [r["ratio_spread"] for r in icount if r.get("ratio_spread") is not None]
        if spreads:
            print(f"largest spread of an (e)/(d) ratio over the boots: {100 * max(spreads):.2f}%")
    if host:
        print("\nhost ring core against the copy limit:")
        for h in host:
            print(f"  {h['size']:>5} B: ring {h['ring_MBps']:.0f} MB/s, copy {h['copy_MBps']:.0f} MB/s, "
                  f"ratio {h['ring_over_copy']:.2f}")

    ratios = goal_ratios(plain, host, "")
    ratios.update(goal_ratios([r for r in icount], [], "_icount"))
    print()
    for k, v in ratios.items():
        print(f"ratio {k} {v:.3f}")

    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"vm": plain, "icount": icount, "host": host, "ratios": ratios}, f, indent=2)
    with open(os.path.join(out, "results.csv"), "w", encoding="utf-8") as f:
        keys = ["mode", "way", "workload", "size", "runs", "boots", "ns_per_packet", "packets_per_s",
                "bytes_per_s", "signals_per_packet", "p50_ns", "p99_ns", "ratio", "boot_spread"]
        f.write(",".join(keys) + "\n")
        for r in plain + icount:
            f.write(",".join(str(r.get(k)) for k in keys) + "\n")

    by = {(r["way"], r["workload"], r["size"]): r for r in plain}
    series = [("raw", "stream"), ("api", "stream"), ("passive", "stream"),
              ("cpath", "send"), ("hv", "send"), ("cpath", "recv"), ("hv", "recv")]
    series = [s for s in series if all((s[0], s[1], z) in by for z in SIZES)]
    dat = os.path.join(out, "throughput.dat")
    with open(dat, "w", encoding="utf-8") as f:
        for size in SIZES:
            f.write(f"{size} " + " ".join(f"{by[(w, wl, size)]['bytes_per_s'] / 1e6:.2f}"
                                          for w, wl in series) + "\n")
    png = os.path.join(out, "throughput.png")
    direction = {"stream": "", "send": ", guest sends", "recv": ", guest receives"}
    title = lambda w, wl: LABEL[w] + direction[wl]
    plots = ", \\\n     ".join(f"'{dat}' using 1:{i + 2} with linespoints title '{title(w, wl)}'"
                               for i, (w, wl) in enumerate(series))
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
plot {plots}
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"\nresults: {out}/results.json, {out}/results.csv, plot: {png}")


if __name__ == "__main__":
    main()
