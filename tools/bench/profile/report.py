#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns the instruction counts of a `make profile` run into a profile of
guest instructions per function.

Usage: report.py RUN [--top N]

RUN is a run directory of tools/bench/profile/profile.sh: run.json (the
kmcl_bench parameters, the plugin's mode, the kernel and busybox used),
counts.txt (the plugin's "ADDRESS COUNT" lines), console.log (where the guest
printed its kernel's _text and its modules' sections), kmcl.ko and
kmcl_bench.ko. Writes RUN/symbols.tsv (every function's count, the input of
diff.py) and prints the N functions with the most instructions.

An address belongs to the nearest function symbol at or below it in its
region: the kernel (symbols of vmlinux, moved by the difference between the
guest's _text and vmlinux's), a module's code section (symbols of the .ko,
placed at the addresses the guest printed), user space ("[user busybox]",
"[user other]"), or "[boot]": the firmware and the kernel's decompressor,
which run at low addresses before the kernel is up. diff.py and
annotate.py use this module's functions.
"""

import argparse
import bisect
import collections
import json
import os
import re
import subprocess
import sys

USER_TOP = 0x0000800000000000


def run_tool(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def demangle(names):
    """Rust and C++ names as c++filt prints them, without crate hashes."""
    todo = sorted({n for n in names if n.startswith(("_R", "_ZN"))})
    if not todo:
        return {}
    try:
        res = subprocess.run(["c++filt"], input="\n".join(todo) + "\n",
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    out = res.stdout.split("\n")
    return {a: re.sub(r"\[[0-9a-f]{1,16}\]", "", b) for a, b in zip(todo, out)}


class Region:
    """A range of guest addresses and the symbols in it, by start address."""

    def __init__(self, name, start, end, path, section, link_start, syms):
        self.name = name            # "kernel" or the module's name
        self.start, self.end = start, end
        self.path = path            # the ELF file the code comes from
        self.section = section      # its section (None for vmlinux)
        self.shift = start - link_start  # guest address - address in the file
        syms = sorted(syms)
        self.addrs = [a + self.shift for a, _ in syms]
        self.names = [n for _, n in syms]

    def lookup(self, addr):
        """(index, symbol) of the symbol holding addr."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return -1, f"[{self.name} {self.section}]"
        return i, self.names[i]

    def bounds(self, i):
        """Guest start and end of symbol i (the next symbol or the end)."""
        end = self.addrs[i + 1] if i + 1 < len(self.addrs) else self.end
        return self.addrs[i], end


def kernel_region(vmlinux, guest_text):
    syms, text, end = [], None, None
    for line in run_tool("nm", "-n", "--defined-only", vmlinux).splitlines():
        p = line.split()
        if len(p) != 3:
            continue
        addr = int(p[0], 16)
        if p[2] == "_text":
            text = addr
        elif p[2] == "_end":
            end = addr
        if p[1] in "tTwW":
            syms.append((addr, p[2]))
    if text is None or end is None:
        sys.exit(f"report: no _text or _end in {vmlinux}")
    start = guest_text if guest_text else text
    return Region("kernel", start, start + end - text, vmlinux, None, text, syms)


def module_regions(ko, sections):
    """One Region per code section of ko that the guest placed."""
    mod = os.path.basename(ko)[:-3].replace("-", "_")
    sizes = {}
    hdr = run_tool("objdump", "-h", ko).splitlines()
    for i, line in enumerate(hdr):
        m = re.match(r"\s*\d+\s+(\S+)\s+([0-9a-f]+)\s", line)
        if m and i + 1 < len(hdr) and "CODE" in hdr[i + 1]:
            sizes[m.group(1)] = int(m.group(2), 16)
    syms = collections.defaultdict(list)
    for line in run_tool("objdump", "-t", ko).splitlines():
        m = re.match(r"^([0-9a-f]+) (.{7}) (\S+)\t[0-9a-f]+ (.*)$", line)
        if not m or m.group(3) not in sizes:
            continue
        flags, name = m.group(2), m.group(4).strip()
        # Functions and other labels; not section, file or debug symbols.
        if name and "d" not in flags and "f" not in flags:
            syms[m.group(3)].append((int(m.group(1), 16), name))
    regions = []
    for sec, size in sizes.items():
        base = sections.get(mod, {}).get(sec)
        if base and size:
            regions.append(Region(mod, base, base + size, ko, sec, 0, syms[sec]))
    if mod not in sections:
        print(f"report: the guest printed no sections for {mod}", file=sys.stderr)
    return regions


def guest_addresses(console):
    """The guest's _text and {module: {section: address}} from its console."""
    text, sections = None, collections.defaultdict(dict)
    with open(console, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"kmcl-vm: symbol _text ([0-9a-f]+)", line)
            if m:
                text = int(m.group(1), 16)
            m = re.search(r"kmcl-vm: section (\S+) (\S+) 0x([0-9a-f]+)", line)
            if m:
                sections[m.group(1)][m.group(2)] = int(m.group(3), 16)
    if not text:
        print("report: the guest printed no _text; assuming the kernel was not moved",
              file=sys.stderr)
    return text, sections


class Symbols:
    """Maps guest addresses of a run to (region, symbol)."""

    def __init__(self, run):
        with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
            self.info = json.load(f)
        text, sections = guest_addresses(os.path.join(run, "console.log"))
        self.regions = [kernel_region(self.info["vmlinux"], text)]
        for ko in ("kmcl.ko", "kmcl_bench.ko"):
            self.regions += module_regions(os.path.join(run, ko), sections)
        self.regions.sort(key=lambda r: r.start)
        self.starts = [r.start for r in self.regions]
        self.user = []
        busybox = self.info.get("busybox")
        if busybox:
            for line in run_tool("readelf", "-lW", busybox).splitlines():
                p = line.split()
                if p and p[0] == "LOAD" and "E" in p[6:-1]:
                    lo = int(p[2], 16)
                    self.user.append((lo, lo + int(p[5], 16)))

    def region_of(self, addr):
        """The Region holding addr, or None. Modules lie outside the
        kernel's range, so the nearest start below is the only candidate
        besides the kernel."""
        i = bisect.bisect_right(self.starts, addr) - 1
        for r in ([self.regions[i]] if i >= 0 else []) + self.regions:
            if r.start <= addr < r.end:
                return r
        return None

    def lookup(self, addr):
        r = self.region_of(addr)
        if r:
            return r.name, r.lookup(addr)[1]
        if addr >= USER_TOP:
            return "kernel", "[kernel, no symbol]"
        if any(lo <= addr < hi for lo, hi in self.user):
            return "user", "[user busybox]"
        if addr >= 0x7f0000000000:
            return "user", "[user other]"
        return "boot", "[boot: firmware, decompressor]"


def read_counts(run):
    with open(os.path.join(run, "counts.txt"), encoding="utf-8") as f:
        for line in f:
            p = line.split()
            if len(p) == 2:
                yield int(p[0], 16), int(p[1])


def profile(run):
    """({(region, function): instructions}, total) of a run."""
    syms = Symbols(run)
    raw = collections.Counter()
    for addr, count in read_counts(run):
        raw[syms.lookup(addr)] += count
    names = demangle(n for _, n in raw)
    prof = collections.Counter()
    for (region, name), count in raw.items():
        prof[(region, names.get(name, name))] += count
    return prof, sum(prof.values())


def write_tsv(path, prof, total):
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"#total\t{total}\n")
        for (region, name), count in sorted(prof.items(), key=lambda x: (-x[1], x[0])):
            f.write(f"{region}\t{name}\t{count}\n")


def short(name, width=100):
    return name if len(name) <= width else name[:width - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description="Per-function guest instruction profile of a run.")
    ap.add_argument("run")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()

    prof, total = profile(a.run)
    write_tsv(os.path.join(a.run, "symbols.tsv"), prof, total)
    by_region = collections.Counter()
    for (region, _), count in prof.items():
        by_region[region] += count
    with open(os.path.join(a.run, "run.json"), encoding="utf-8") as f:
        info = json.load(f)
    print(f"kmcl_bench {info['params']}; counted per {'instruction' if info['mode'] == 'insn' else 'translation block'}")
    print(f"guest instructions: {total:,}")
    print("by region: " + ", ".join(f"{r} {c:,} ({100 * c / total:.1f} %)"
                                     for r, c in by_region.most_common()))
    print(f"{'instructions':>15} {'%':>6} {'cum %':>6}  {'region':<11} function")
    cum = 0
    for (region, name), count in prof.most_common(a.top):
        cum += count
        print(f"{count:>15,} {100 * count / total:6.2f} {100 * cum / total:6.2f}  "
              f"{region:<11} {short(name)}")


if __name__ == "__main__":
    main()
