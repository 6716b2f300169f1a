#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# profile.sh           the body of `make profile`
# profile.sh --diff    the body of `make profile-diff`
#
# Boots the benchmark VM (the kernel of make bench, kmcl and kmcl_bench) in
# the deterministic mode of make bench, QEMU -icount shift=0,sleep=off with
# one vCPU, with the instruction-count plugin (insn_profile.c), and prints a
# profile of the guest instructions executed, per function (report.py).
#
#   PROFILE_PARAMS  kmcl_bench parameters, replacing or adding to the
#                   defaults "single=1 packets=10000 requests=1000 runs=1"
#   PROFILE_MODE    tb (default: instructions counted per translation
#                   block) or insn (per instruction; slower, needed for
#                   PROFILE_FUNC)
#   PROFILE_TOP     rows of the report (default 40)
#   PROFILE_FUNC    a function to annotate per instruction (implies insn)
#
# --diff boots twice, with PROFILE_A and PROFILE_B added to the parameters
# (default packets=10000 and packets=20000), and prints the difference per
# function divided by the difference in that parameter (diff.py): the cost
# per packet of the stream workloads.
#
# Outputs: build/profile/run (one run), build/profile/a and build/profile/b
# (--diff), each with report.txt, symbols.tsv, counts.txt, console.log.

set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
here="$top/tools/bench/profile"
# The kernel and modules of make bench (build/bench/modules).
. "$top/tools/bench/setup.sh"
out="$top/build/profile"
plugin="$out/insn_profile.so"
"$here/setup.sh" "$plugin"

mode=${PROFILE_MODE:-tb}
[ -z "${PROFILE_FUNC:-}" ] || mode=insn
case "$mode" in
tb|insn) ;;
*) echo "profile: PROFILE_MODE is tb or insn, not $mode" >&2; exit 1 ;;
esac
# The busybox that mkinitramfs.sh packs, for the report's user-space line.
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
	busybox=/bin/busybox

# profile_run DIR PARAMS: one boot under the plugin, and its report.
profile_run() {
	local run=$1 params
	# A parameter given twice takes its last value, in its first place
	# (kmcl_bench refuses a parameter given twice).
	params=$(xargs -n1 <<<"$2" | awk -F= '
		!($1 in v) { order[n++] = $1 }
		{ v[$1] = $0 }
		END { for (i = 0; i < n; i++) printf "%s%s", (i ? " " : ""), v[order[i]] }')
	rm -rf "$run"
	mkdir -p "$run"
	cp "$mods/kmcl.ko" "$mods/kmcl_bench.ko" "$run/"
	python3 -c 'import json, sys
print(json.dumps(dict(zip(("params", "mode", "vmlinux", "busybox"), sys.argv[1:]))))' \
		"$params" "$mode" "$KMCL_KBUILD/vmlinux" "$busybox" >"$run/run.json"
	KMCL_MODULE_PARAMS="kmcl_bench: $params" \
		"$top/tools/vm/mkinitramfs.sh" "$run/initramfs.cpio.gz" "$run/kmcl.ko" "$run/kmcl_bench.ko"
	echo "==> VM, QEMU -icount shift=0,sleep=off, counted per $mode: kmcl_bench $params" >&2
	KMCL_VM_CPUS=1 KMCL_KERNEL_ARGS=kmcl_symbols=1 \
	KMCL_QEMU_ARGS="-icount shift=0,sleep=off -plugin $plugin,out=$run/counts.txt,mode=$mode" \
		"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" "$run/initramfs.cpio.gz" \
		"$run/console.log" bench 1800 >/dev/null
	bench_check_log "$run/console.log"
	python3 "$here/report.py" "$run" --top "${PROFILE_TOP:-40}" >"$run/report.txt"
}

defaults="single=1 packets=10000 requests=1000 runs=1"
if [ "${1:-}" = --diff ]; then
	profile_run "$out/a" "$defaults ${PROFILE_PARAMS:-} ${PROFILE_A:-packets=10000}"
	profile_run "$out/b" "$defaults ${PROFILE_PARAMS:-} ${PROFILE_B:-packets=20000}"
	python3 "$here/diff.py" "$out/a" "$out/b" --top "${PROFILE_TOP:-40}" | tee "$out/diff.txt"
	if [ -n "${PROFILE_FUNC:-}" ]; then
		python3 "$here/annotate.py" "$PROFILE_FUNC" "$out/a" "$out/b" | tee "$out/annotate.txt"
	fi
else
	profile_run "$out/run" "$defaults ${PROFILE_PARAMS:-}"
	cat "$out/run/report.txt"
	if [ -n "${PROFILE_FUNC:-}" ]; then
		python3 "$here/annotate.py" "$PROFILE_FUNC" "$out/run" | tee "$out/annotate.txt"
	fi
fi
