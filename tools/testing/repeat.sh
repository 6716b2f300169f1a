#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# repeat.sh [N]: the VM part of `make check`, N times in a row (default 20),
# to catch a flaky case. Builds the modules once (as make check does, with
# clippy and warnings as errors), then boots the test VM N times, judging
# each console with check-log.py exactly as make check does. Prints one line
# per run and stops at the first failing run; its console log stays in
# build/repeat/. Exits 0 only if all N runs passed.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
n=${1:-20}
case "$n" in
'' | *[!0-9]* | 0)
	echo "repeat: N must be a positive number, not '$n'" >&2
	exit 2
	;;
esac

"$top/tools/setup/install-deps.sh" >/dev/null
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
"$here/build-modules.sh" >/dev/null

out="$top/build/repeat"
rm -rf "$out"
mkdir -p "$out"
mods=$("$here/module-list.sh")
"$top/tools/vm/mkinitramfs.sh" "$out/initramfs.cpio.gz" $mods

t0=$(date +%s)
for i in $(seq 1 "$n"); do
	log="$out/console-$i.log"
	start=$(date +%s)
	set +e
	"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" \
		"$out/initramfs.cpio.gz" "$log" check 600 >/dev/null 2>"$out/run-vm-$i.err"
	vm_rc=$?
	python3 "$here/check-log.py" "$KMCL_KSRC" "$log" \
		--suites "$here/kunit-suites" >"$out/result-$i.txt" 2>&1
	rc=$?
	set -e
	result=$(tail -n 1 "$out/result-$i.txt")
	secs=$(( $(date +%s) - start ))
	if [ "$rc" != 0 ] || [ "$vm_rc" != 0 ]; then
		echo "run $i/$n: FAIL ($result; qemu exit $vm_rc; ${secs} s)"
		sed 's/^/    /' "$out/result-$i.txt" | tail -n 40
		echo "repeat: stopped at run $i; console log: $log"
		exit 1
	fi
	echo "run $i/$n: pass ($result; ${secs} s)"
done
echo "repeat: $n of $n runs passed in $(( $(date +%s) - t0 )) s"
