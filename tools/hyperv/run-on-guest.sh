#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# run-on-guest.sh: on a Hyper-V or Azure Linux guest, builds kmcl against
# the running kernel, loads it, shows what it reports and, if the kernel has
# CONFIG_KUNIT, the results of its suites (including kmcl_hv_interop), then
# unloads it. Needs root, the kernel's build tree (KDIR, default
# /lib/modules/$(uname -r)/build) configured with CONFIG_RUST=y, and the
# rustc that built that kernel.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
kdir=${KDIR:-/lib/modules/$(uname -r)/build}
out="$top/build/guest"

[ -f "$kdir/.config" ] || { echo "no kernel build tree at $kdir (set KDIR)" >&2; exit 1; }
grep -q '^CONFIG_RUST=y' "$kdir/.config" ||
	{ echo "$kdir is not built with CONFIG_RUST=y: kmcl cannot be built for it" >&2; exit 1; }
[ -d /sys/bus/vmbus ] || echo "note: /sys/bus/vmbus is missing: this does not look like a Hyper-V guest"

mkdir -p "$out"
make -C "$kdir" M="$top" MO="$out" modules
mark="kmcl-guest-run-$(date +%s)"
echo "$mark" >/dev/kmsg
insmod "$out/kmcl.ko"
sleep 1
dmesg | sed -n "/$mark/,\$p" | grep -E 'kmcl|^\s*(ok|not ok)|# Subtest|KTAP' || true
rmmod kmcl
echo "kmcl unloaded; full log: dmesg"
