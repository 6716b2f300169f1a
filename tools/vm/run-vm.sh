#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# run-vm.sh BZIMAGE INITRAMFS LOG MODE [TIMEOUT]
#
# Boots the test VM under QEMU (TCG: the machines kmcl is developed on have
# no KVM that boots a standard kernel), tees the serial console to LOG, and
# fails when the guest does not power off within TIMEOUT seconds.

set -euo pipefail
kernel=$1 initrd=$2 log=$3 mode=$4 limit=${5:-600}
extra=
# The demo shows kmcl at work; the KUnit suites run under make check.
[ "$mode" != check ] && extra="kunit.enable=0"

accel=tcg
if [ "${KMCL_KVM:-0}" = 1 ] && [ -w /dev/kvm ]; then
	accel=kvm
fi
set +e
timeout --foreground "$limit" qemu-system-x86_64 \
	-accel "$accel" -cpu max -smp 2 -m 1024 \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 panic=-1 oops=panic kmcl_mode=$mode $extra" \
	-nographic -no-reboot -monitor none -serial stdio </dev/null | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 124 ]; then
	echo "run-vm: the VM did not power off within $limit s" >&2
	exit 1
fi
exit "$rc"
