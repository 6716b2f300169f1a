#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# run-on-guest.sh: on a Hyper-V or Azure Linux guest, builds kmcl against
# the running kernel, loads it, shows what it reports and, if the kernel has
# CONFIG_KUNIT, the results of its suites (kmcl_hv_interop*), then unloads
# it. Needs root, the kernel's build tree (KDIR, default
# /lib/modules/$(uname -r)/build) configured with CONFIG_RUST=y, and the
# rustc that built that kernel.
#
# With HEARTBEAT=1 it then moves the host's heartbeat device from hv_utils
# to kmcl, loads the hv_heartbeat sample with vmbus=1 for HEARTBEAT_SECONDS
# (default 30), prints what the sample logged, and gives the device back to
# hv_utils: kmcl's binding, open, traffic with the real host and close.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
kdir=${KDIR:-/lib/modules/$(uname -r)/build}
out="$top/build/guest"
heartbeat_type=57164f39-9115-4e78-ab55-382f3bd5422d

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

if [ "${HEARTBEAT:-0}" = 1 ]; then
	dev=""
	for d in /sys/bus/vmbus/devices/*; do
		[ "$(cat "$d/class_id" 2>/dev/null)" = "{$heartbeat_type}" ] && dev=$(basename "$d")
	done
	if [ -z "$dev" ]; then
		echo "no heartbeat offer on this guest" >&2
	else
		if [ -e "/sys/bus/vmbus/drivers/hv_utils/$dev" ]; then
			echo "$dev" >/sys/bus/vmbus/drivers/hv_utils/unbind
		fi
		insmod "$out/samples/heartbeat/hv_heartbeat.ko" vmbus=1
		sleep "${HEARTBEAT_SECONDS:-30}"
		ls -d /sys/bus/vmbus/drivers/kmcl-* 2>/dev/null || true
		rmmod hv_heartbeat
		# Unloading the sample makes kmcl unregister its heartbeat driver
		# (from its workqueue); then give the device back.
		for _ in $(seq 50); do
			[ -e "/sys/bus/vmbus/drivers/kmcl-$heartbeat_type" ] || break
			sleep 0.2
		done
		echo "$dev" >/sys/bus/vmbus/drivers/hv_utils/bind 2>/dev/null ||
			echo "note: could not rebind $dev to hv_utils" >&2
	fi
fi

dmesg | sed -n "/$mark/,\$p" | grep -E 'kmcl|hv_heartbeat|^\s*(ok|not ok)|# Subtest|KTAP' || true
rmmod kmcl
echo "kmcl unloaded; full log: dmesg"
