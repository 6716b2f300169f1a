#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# run-vm.sh BZIMAGE INITRAMFS LOG MODE [TIMEOUT]
#
# Boots the test VM under QEMU (TCG: the machines kmcl is developed on have
# no KVM that boots a standard kernel), tees the serial console to LOG, and
# fails when the guest does not power off within TIMEOUT seconds.
#
# KMCL_VM_CPUS sets the vCPU count (default 2); KMCL_QEMU_ARGS adds QEMU
# arguments, e.g. "-icount shift=0,sleep=off" for the deterministic mode of
# make bench (TCG only); KMCL_KERNEL_ARGS adds kernel command-line
# arguments, e.g. "kmcl_symbols=1" (see init.sh).

set -euo pipefail
kernel=$1 initrd=$2 log=$3 mode=$4 limit=${5:-600}
extra=
# The demo shows kmcl at work; the KUnit suites run under make check.
[ "$mode" != check ] && extra="kunit.enable=0"

accel=tcg
if [ "${KMCL_KVM:-0}" = 1 ] && [ -w /dev/kvm ]; then
	accel=kvm
fi
# shellcheck disable=SC2206 # word splitting is wanted
qemu_args=(${KMCL_QEMU_ARGS:-})
[ ${#qemu_args[@]} -eq 0 ] || accel=tcg
set +e
timeout --foreground "$limit" qemu-system-x86_64 \
	-accel "$accel" -cpu max -smp "${KMCL_VM_CPUS:-2}" -m 1024 "${qemu_args[@]}" \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 panic=-1 oops=panic kmcl_mode=$mode $extra ${KMCL_KERNEL_ARGS:-}" \
	-nographic -no-reboot -monitor none -serial stdio </dev/null | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 124 ]; then
	echo "run-vm: the VM did not power off within $limit s" >&2
	exit 1
fi
exit "$rc"
