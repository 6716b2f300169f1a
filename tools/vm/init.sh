#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# /init of kmcl's test VM. Loads the modules listed in /kmcl/modules in order
# (their KUnit suites run at load), shows what kmcl reports, scans for leaks,
# unloads everything in reverse order and powers off. The host reads the
# serial console; the markers "kmcl-vm:" delimit the phases.
#
# With kmcl_symbols=1 on the kernel command line (make profile), it also
# prints where the kernel's code and each loaded module's sections are
# ("kmcl-vm: symbol _text ADDR", "kmcl-vm: section MODULE SECTION ADDR"),
# so that guest addresses can be mapped back to functions.

/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug

mode=${kmcl_mode:-check}
echo "kmcl-vm: boot ok, mode $mode"
if [ "${kmcl_symbols:-0}" = 1 ]; then
	echo "kmcl-vm: symbol _text $(awk '$3 == "_text" { print $1; exit }' /proc/kallsyms)"
fi

loaded=""
for m in $(cat /kmcl/modules); do
	# Parameters for a module: a line "module: params" in /kmcl/params.
	params=$(sed -n "s/^$m: //p" /kmcl/params 2>/dev/null)
	echo "kmcl-vm: insmod $m $params"
	if insmod "/kmcl/$m.ko" $params; then
		loaded="$m $loaded"
		if [ "${kmcl_symbols:-0}" = 1 ]; then
			for s in /sys/module/$m/sections/.* /sys/module/$m/sections/*; do
				[ -f "$s" ] && echo "kmcl-vm: section $m ${s##*/} $(cat "$s")"
			done
		fi
	else
		echo "kmcl-vm: insmod $m failed"
	fi
done

if [ "$mode" = run ]; then
	# Let the heartbeat exchange finish.
	sleep 1
	echo "kmcl-vm: modules loaded:"
	grep -E '^(kmcl)' /proc/modules
	if [ -d /sys/kernel/debug/kmcl ]; then
		for f in $(find /sys/kernel/debug/kmcl -type f); do
			echo "kmcl-vm: debugfs $f"
			sed 's/^/    /' "$f"
		done
	fi
fi

if [ -f /sys/kernel/debug/kmemleak ]; then
	# Objects younger than five seconds are never reported: let the ones the
	# tests freed or leaked age, then scan twice as kmemleak's docs advise.
	sleep 6
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	echo "kmcl-vm: kmemleak report begin"
	cat /sys/kernel/debug/kmemleak
	echo "kmcl-vm: kmemleak report end"
else
	echo "kmcl-vm: kmemleak unavailable"
fi

for m in $loaded; do
	echo "kmcl-vm: rmmod $m"
	rmmod "$m" || echo "kmcl-vm: rmmod $m failed"
done

echo "kmcl-vm: done"
poweroff -f
