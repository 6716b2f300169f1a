#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make stress`: one VM boot that pushes STRESS_PACKETS
# (default 1 000 000) packets through a loopback pair, both directions, from
# both CPUs, and prints the counts; fails unless lost, duplicated, reordered
# and corrupt are all 0.
#
# STRESS_MODE=teardown pauses, restarts, disables and re-enables the pair at
# random while the packets flow (STRESS_SEED picks the choices; a random seed
# by default, printed to replay the run); it fails unless lost, duplicated,
# reordered, corrupt, late_calls, misreported and hangs are all 0.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
n=${STRESS_PACKETS:-1000000}
mode=${STRESS_MODE:-default}
case "$mode" in
default)
	params="run_at_load=1 packets=$n"
	pass=" lost=0 duplicated=0 reordered=0 corrupt=0 "
	;;
teardown)
	seed=${STRESS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
	params="run_at_load=1 packets=$n teardown=1 seed=$seed"
	pass=" lost=0 duplicated=0 reordered=0 corrupt=0 *late_calls=0 misreported=0 hangs=0"
	;;
*)
	echo "STRESS_MODE must be default or teardown, not '$mode'" >&2
	exit 2
	;;
esac
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
"$top/tools/testing/build-modules.sh" >/dev/null
out="$top/build/stress"
mkdir -p "$out"
mods="$top/build/modules"
KMCL_MODULE_PARAMS="kmcl_stress: $params" \
	"$top/tools/vm/mkinitramfs.sh" "$out/initramfs.cpio.gz" "$mods/kmcl.ko" "$mods/tools/stress/kmcl_stress.ko"
if [ "$mode" = default ]; then
	echo "==> VM: $n packets through the loopback API"
else
	echo "==> VM: $n packets through the loopback API, mode $mode, seed $seed"
fi
start=$(date +%s)
"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" "$out/initramfs.cpio.gz" \
	"$out/console.log" stress 1800 >/dev/null
line=$(grep -o 'kmcl-stress: .*' "$out/console.log" || true)
echo "$line"
# What the teardown mode saw go wrong, in detail.
grep -o 'kmcl-stress teardown: .*' "$out/console.log" >&2 || true
echo "took $(( $(date +%s) - start )) s; console: $out/console.log"
if grep -qE 'WARNING:|BUG:|Oops|KFENCE:|blocked for more than' "$out/console.log"; then
	echo "the kernel reported a problem" >&2
	exit 1
fi
# shellcheck disable=SC2254 # $pass is a pattern
case "$line" in
*$pass*) ;;
*) echo "stress failed" >&2; exit 1 ;;
esac
