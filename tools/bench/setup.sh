# SPDX-License-Identifier: GPL-2.0
#
# Sourced by tools/bench/run.sh (make bench) and tools/bench/profile/
# profile.sh (make profile): the benchmark kernel, the modules built for it
# in build/bench/modules, and the check of a benchmark boot's console.
# Expects $top, the repository's top directory; sets $mods.

# The benchmark kernel: the test VM without the debug checkers.
export KMCL_KCONFIG=kmcl-bench.config
"$top/tools/setup/install-deps.sh"
. "$top/tools/setup/env.sh"
"$top/tools/setup/build-kernel.sh"
mods="$top/build/bench/modules"
mkdir -p "$mods"
# Modules for that kernel, in a tree of their own.
make -C "$KMCL_KBUILD" M="$top" MO="$mods" BINDGEN="$KMCL_BINDGEN" KBUILD_MODPOST_WARN= \
	-j"$(nproc)" modules >/dev/null
# The export list's stale-line check is make check's: at -O2 small functions
# of the list are inlined away.
KMCL_EXPORTS_STALE_OK=1 "$top/tools/testing/check-exports.sh" "$mods" >/dev/null

# bench_check_log LOG: fails unless the benchmark finished in LOG and the
# kernel reported no problem meanwhile.
bench_check_log() {
	grep -q 'kmcl-bench: done' "$1" || { echo "the benchmark did not finish: $1" >&2; exit 1; }
	if grep -qE 'WARNING:|BUG:|Oops|KFENCE:' "$1"; then
		echo "the kernel reported a problem during the benchmark: $1" >&2
		exit 1
	fi
}
