#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make stress`: one VM boot that pushes STRESS_PACKETS
# (default 1 000 000) packets through a loopback pair, both directions, from
# both CPUs, and prints the counts; fails unless lost, duplicated, reordered
# and corrupt are all 0.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
n=${STRESS_PACKETS:-1000000}
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
"$top/tools/testing/build-modules.sh" >/dev/null
out="$top/build/stress"
mkdir -p "$out"
mods="$top/build/modules"
KMCL_MODULE_PARAMS="kmcl_stress: run_at_load=1 packets=$n" \
	"$top/tools/vm/mkinitramfs.sh" "$out/initramfs.cpio.gz" "$mods/kmcl.ko" "$mods/tools/stress/kmcl_stress.ko"
echo "==> VM: $n packets through the loopback API"
start=$(date +%s)
"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" "$out/initramfs.cpio.gz" \
	"$out/console.log" stress 1800 >/dev/null
line=$(grep -o 'kmcl-stress: .*' "$out/console.log" || true)
echo "$line"
echo "took $(( $(date +%s) - start )) s; console: $out/console.log"
if grep -qE 'WARNING:|BUG:|Oops|KFENCE:|blocked for more than' "$out/console.log"; then
	echo "the kernel reported a problem" >&2
	exit 1
fi
case "$line" in
*" lost=0 duplicated=0 reordered=0 corrupt=0 "*) ;;
*) echo "stress failed" >&2; exit 1 ;;
esac
