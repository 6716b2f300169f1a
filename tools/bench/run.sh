#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make bench`: boots the VM once with kmcl and kmcl_bench,
# which measures the raw ring, the API in softirq and the API at passive
# level; then the host benchmark of the ring core against memcpy. Writes
# build/bench/results.{json,csv} and build/bench/throughput.png, and prints
# the table.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
# The benchmark kernel: the test VM without the debug checkers.
export KMCL_KCONFIG=kmcl-bench.config
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
out="$top/build/bench"
mods="$out/modules"
mkdir -p "$mods"
# Modules for that kernel, in a tree of their own.
make -C "$KMCL_KBUILD" M="$top" MO="$mods" BINDGEN="$KMCL_BINDGEN" KBUILD_MODPOST_WARN= \
	-j"$(nproc)" modules >/dev/null
"$top/tools/testing/check-exports.sh" "$mods" >/dev/null

echo "==> host: ring core against memcpy (cargo, release)"
(cd "$top/tools/kmcl-wire" && cargo run -q --release --example ring_bench) | tee "$out/host.txt"

echo "==> VM: raw ring, API (softirq), API (passive); 5 runs each"
"$top/tools/vm/mkinitramfs.sh" "$out/initramfs-bench.cpio.gz" "$mods/kmcl.ko" "$mods/tools/bench/kmcl_bench.ko"
"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" "$out/initramfs-bench.cpio.gz" \
	"$out/console.log" bench 900 >/dev/null
grep -q 'kmcl-bench: done' "$out/console.log" || { echo "the benchmark did not finish: $out/console.log" >&2; exit 1; }
if grep -qE 'WARNING:|BUG:|Oops|KFENCE:' "$out/console.log"; then
	echo "the kernel reported a problem during the benchmark: $out/console.log" >&2
	exit 1
fi
python3 "$top/tools/bench/report.py" "$out"
