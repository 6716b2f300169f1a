#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make check`: set-up, kernel (cached), modules with clippy and
# -Dwarnings, rustfmt, host tests, then the VM run judged by check-log.py.
# Ends with the line 'N passed, N failed'.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
t0=$(date +%s)
step() { printf '\n==> [%4ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

step "set-up (apt packages, kernel source, rust-src, bindgen, libclang)"
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"

step "kernel (cached by key in $KMCL_KBUILD)"
"$top/tools/setup/build-kernel.sh"

step "modules (CLIPPY=1, warnings are errors)"
"$here/build-modules.sh"

step "modules against a kernel without KUnit (CONFIG_KUNIT off, as in many distributions)"
# Code gated on CONFIG_KUNIT must not hide a build failure from users: build
# everything against such a kernel too (it is built and cached once, never
# booted). The tree is copied to a directory of its own so that these
# modules do not replace the ones the VM loads; the copy keeps file times,
# so a later run rebuilds only what changed.
KMCL_KCONFIG=kmcl-nokunit.config "$top/tools/setup/build-kernel.sh"
nokunit_kdir=$(unset KMCL_KDIR; export KMCL_KCONFIG=kmcl-nokunit.config
	       . "$top/tools/setup/env.sh"; echo "$KMCL_KBUILD")
nokunit_tree="$top/build/nokunit-tree"
mkdir -p "$nokunit_tree"
tar -C "$top" --exclude=./build --exclude=./.git --exclude='*/target' -cf - . |
	tar -C "$nokunit_tree" -xf -
if ! KMCL_KDIR="$nokunit_kdir" "$nokunit_tree/tools/testing/build-modules.sh" \
	>"$top/build/nokunit-build.log" 2>&1; then
	tail -40 "$top/build/nokunit-build.log"
	echo "the modules do not build against a kernel without KUnit" >&2
	exit 1
fi
echo "  built: $nokunit_tree/build/modules (log: build/nokunit-build.log)"

step "module dependencies (modinfo)"
dep_fail=0
for ko in $("$here/module-list.sh"); do
	case "$ko" in */kmcl.ko) continue ;; esac
	deps=$(modinfo -F depends "$ko")
	printf '  %s: depends: %s\n' "$(basename "$ko")" "$deps"
	case ",$deps," in *,kmcl,*) ;; *) dep_fail=1 ;; esac
done
if [ "$dep_fail" != 0 ]; then
	echo "a module built on kmcl does not depend on kmcl.ko" >&2
	exit 1
fi

step "drivers need no unsafe (samples/, the out-of-tree consumer included)"
# A sample is what a driver author copies: it must show that a driver on
# kmcl needs no unsafe. Comments and strings count too, so that the word
# itself never has to be explained away.
if grep -rnw --include='*.rs' unsafe "$top/samples"; then
	echo "a sample uses unsafe" >&2
	exit 1
fi
echo "  none"

step "documentation (Sphinx and rustdoc, warnings are errors; every example compiles)"
sphinx-build -q -W -b html "$top/Documentation" "$top/build/docs"
"$here/rustdoc.sh"
doclog=$(mktemp)
if ! "$here/doctests.sh" >"$doclog" 2>&1; then
	cat "$doclog"
	echo "a rustdoc example does not compile" >&2
	exit 1
fi
grep 'test result' "$doclog"
rm -f "$doclog"

step "rustfmt --check"
"$here/rustfmt.sh" --check

host_passed=0 host_failed=0
step "host tests (cargo test)"
for crate in "$top"/tools/*/Cargo.toml; do
	[ -f "$crate" ] || continue
	dir=$(dirname "$crate")
	log=$(mktemp)
	if (cd "$dir" && cargo test --quiet 2>&1) | tee "$log"; then :; fi
	p=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
	f=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
	if ! grep -q '^test result:' "$log" || grep -qE '^error(\[|:)' "$log"; then
		f=$((f + 1))
	fi
	host_passed=$((host_passed + p))
	host_failed=$((host_failed + f))
	rm -f "$log"
done
echo "host: $host_passed passed, $host_failed failed"

step "VM: boot, load, KUnit, kmemleak, unload"
out="$top/build"
mods=$("$here/module-list.sh")
"$top/tools/vm/mkinitramfs.sh" "$out/initramfs-check.cpio.gz" $mods
set +e
"$top/tools/vm/run-vm.sh" "$KMCL_KBUILD/arch/x86/boot/bzImage" \
	"$out/initramfs-check.cpio.gz" "$out/console-check.log" check 600 >/dev/null
vm_rc=$?
set -e
echo "console log: $out/console-check.log (qemu exit $vm_rc)"

step "results"
set +e
python3 "$here/check-log.py" "$KMCL_KSRC" "$out/console-check.log" \
	--suites "$here/kunit-suites" --host-passed "$host_passed" --host-failed "$host_failed"
rc=$?
set -e
echo "make check took $(( $(date +%s) - t0 )) s"
exit $rc
