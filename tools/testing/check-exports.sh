#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# check-exports.sh MODDIR [MODULE.ko...]
#
# Checks, after a module build into MODDIR, kmcl's export list
# (rust/kmcl/exports.txt, see Kbuild):
#
# - every symbol a consumer (each module in MODDIR other than kmcl.ko, and
#   each MODULE.ko given) leaves undefined and that kmcl.ko defines, or that
#   is named kmcl_*, is one kmcl.ko exports;
# - in a build with CONFIG_KUNIT, where the whole API exists, every line of
#   the list names a symbol kmcl.o defines (no stale lines); not with
#   KMCL_EXPORTS_STALE_OK=1, for a kernel built for performance (make
#   bench), where rustc's opt-level 2 inlines small functions of the list
#   away;
# - kmcl.ko exports at most 150 symbols, Rust and C together, the test
#   surface of a CONFIG_KUNIT build (the list's "kunit: " lines) included.
#
# modpost reports a missing symbol too, as an error unless
# KBUILD_MODPOST_WARN is set; this check names the cause whatever the
# build's settings.

set -euo pipefail
export LC_ALL=C
moddir=$1
shift
kmcl="$moddir/kmcl.ko"
symvers="$moddir/Module.symvers"
for f in "$kmcl" "$symvers"; do
	if [ ! -f "$f" ]; then
		echo "check-exports: $f is missing" >&2
		exit 1
	fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk -F'\t' '$3 == "kmcl" { print $2 }' "$symvers" | sort -u >"$tmp/exported"
nm --defined-only -g "$kmcl" | awk '{ print $3 }' | sort -u >"$tmp/defined"

fail=0

consumers=$(find "$moddir" -name '*.ko' ! -path "$kmcl" | sort)
for ko in $consumers "$@"; do
	nm -u "$ko" | awk '{ print $2 }' | sort -u >"$tmp/undef"
	{ comm -12 "$tmp/undef" "$tmp/defined"; grep '^kmcl_' "$tmp/undef" || true; } |
		sort -u >"$tmp/needed"
	missing=$(comm -23 "$tmp/needed" "$tmp/exported")
	if [ -n "$missing" ]; then
		echo "check-exports: $ko needs symbols of kmcl that kmcl.ko does not export:" >&2
		printf '  %s\n' $missing >&2
		fail=1
	fi
done

top="$(dirname "$0")/../.."
list="$top/rust/kmcl/exports.txt"
obj="$moddir/rust/kmcl/kmcl.o"
nm -p --defined-only -C "$obj" | cut -d' ' -f3- | sed 's/\[[0-9a-f]*\]//g' |
	sort -u >"$tmp/demangled"
if [ "${KMCL_EXPORTS_STALE_OK:-0}" != 1 ] &&
	grep -qx 'kmcl::testing::host_interrupt' "$tmp/demangled"; then
	grep -v -e '^#' -e '^$' "$list" | sed 's/^kunit: //' | sort -u >"$tmp/list"
	stale=$(comm -23 "$tmp/list" "$tmp/demangled")
	if [ -n "$stale" ]; then
		echo "check-exports: rust/kmcl/exports.txt names symbols kmcl.o does not define:" >&2
		printf '  %s\n' "$stale" >&2
		fail=1
	fi
fi

# The limit is on everything kmcl.ko exports, the test surface of a
# CONFIG_KUNIT build included. The API alone is the exports of a kmcl.ko
# without CONFIG_KUNIT: the Rust lines without "kunit: " plus the C
# helpers' own exports.
limit=150
rust_api=$(sh "$top/tools/build/exports.sh" nm "$obj" "$list" | wc -l)
c_api=$(grep -vc '^_R' "$tmp/exported" || true)
count=$((rust_api + c_api))
total=$(wc -l <"$tmp/exported")
if [ "$total" -gt "$limit" ]; then
	echo "check-exports: kmcl.ko exports $total symbols, more than $limit" >&2
	fail=1
fi

if [ "$fail" != 0 ]; then
	exit 1
fi
echo "check-exports: kmcl.ko exports $total symbols (limit $limit), $count of them the API, the rest the test surface; every consumer's kmcl symbols are among them"
