#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make bench`: the host benchmark of the ring core against
# memcpy; then boots the VM with kmcl and kmcl_bench once under plain TCG,
# where it measures the raw ring, the API in softirq and at passive level,
# the C path on an hv channel and the API on the same kind of channel; then
# BENCH_BOOTS times (default 3) under QEMU's -icount, the deterministic mode,
# for the single-thread ways. Writes build/bench/results.{json,csv} and
# build/bench/throughput.png, and prints the tables and the 'ratio' lines.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tools/bench/setup.sh"
out="$top/build/bench"

echo "==> host: ring core against memcpy (cargo, release)"
(cd "$top/tools/kmcl-wire" && cargo run -q --release --example ring_bench) | tee "$out/host.txt"

# Plain TCG: every way, in one boot.
bzimage="$KMCL_KBUILD/arch/x86/boot/bzImage"
rm -f "$out"/console*.log
echo "==> VM, plain TCG: (a) raw ring, (b) API softirq, (c) API passive, (d) C path, (e) API on hv; 5 runs each"
KMCL_MODULE_PARAMS="kmcl_bench: runs=5" \
	"$top/tools/vm/mkinitramfs.sh" "$out/initramfs-bench.cpio.gz" "$mods/kmcl.ko" "$mods/kmcl_bench.ko"
"$top/tools/vm/run-vm.sh" "$bzimage" "$out/initramfs-bench.cpio.gz" "$out/console.log" bench 900 >/dev/null
bench_check_log "$out/console.log"

# Deterministic mode: the single-thread ways (a), (d), (e) counted in guest
# instructions (one virtual nanosecond each), on one vCPU, BENCH_BOOTS boots.
boots=${BENCH_BOOTS:-3}
KMCL_MODULE_PARAMS="kmcl_bench: runs=5 single=1 packets=10000 requests=1000" \
	"$top/tools/vm/mkinitramfs.sh" "$out/initramfs-icount.cpio.gz" "$mods/kmcl.ko" "$mods/kmcl_bench.ko"
for i in $(seq 1 "$boots"); do
	echo "==> VM, QEMU -icount shift=0,sleep=off: (a), (d), (e); boot $i of $boots"
	KMCL_VM_CPUS=1 KMCL_QEMU_ARGS="-icount shift=0,sleep=off" \
		"$top/tools/vm/run-vm.sh" "$bzimage" "$out/initramfs-icount.cpio.gz" \
		"$out/console-icount-$i.log" bench 900 >/dev/null
	bench_check_log "$out/console-icount-$i.log"
done
python3 "$top/tools/bench/report.py" "$out"
