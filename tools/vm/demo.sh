#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make run`: builds what is needed, boots the VM, loads kmcl and
# the samples, shows what they print and what kmcl's debugfs reports, and
# unloads everything.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
"$top/tools/testing/build-modules.sh" >/dev/null
out="$top/build"
"$top/tools/vm/mkinitramfs.sh" "$out/initramfs-run.cpio.gz" $("$top/tools/testing/module-list.sh" | grep -v -e kmcl_stress -e kmcl_leak)
echo "==> booting the VM (QEMU TCG); console follows"
"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" \
	"$out/initramfs-run.cpio.gz" "$out/console-run.log" run 600 |
	sed -n 's/^\[ *[0-9.]*\] //; /^kmcl\|^echo_\|^heartbeat_host\|^hv_heartbeat\|^nic_\|^    \|WARNING\|BUG\|Oops/p' |
	grep -v 'loading out-of-tree module taints' || true
if grep -qE 'WARNING:|BUG:|Oops|KFENCE:|unreferenced object' "$out/console-run.log"; then
	echo "==> the kernel reported a problem: see $out/console-run.log"
	exit 1
fi
grep -q 'kmcl-vm: done' "$out/console-run.log" || { echo "==> the VM did not finish"; exit 1; }
echo "==> done; full console log: $out/console-run.log"
