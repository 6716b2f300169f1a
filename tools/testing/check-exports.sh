#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# check-exports.sh MODDIR [MODULE.ko...]
#
# Checks, after a module build into MODDIR, that modules built on kmcl can
# always link against it:
#
# - every function defined by kmcl's C helpers (rust/helpers/*.o, except
#   the KUnit suites' hv_test.o and test.o) is exported by kmcl.ko, since kmcl's Rust
#   code inlined into a consumer calls them from there (see Kbuild);
# - every symbol a consumer (each module in MODDIR other than kmcl.ko, and
#   each MODULE.ko given) leaves undefined and that kmcl.ko defines, or that
#   is named kmcl_*, is one kmcl.ko exports.
#
# modpost reports such a symbol too, as an error unless KBUILD_MODPOST_WARN
# is set; this check names the cause whatever the build's settings.

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

for o in "$moddir"/rust/helpers/*.o; do
	case "$(basename "$o")" in hv_test.o | test.o) continue ;; esac
	nm --defined-only -g "$o" | awk '$2 == "T" && $3 ~ /^kmcl_/ { print $3 }' |
		sort -u >"$tmp/helper"
	missing=$(comm -23 "$tmp/helper" "$tmp/exported")
	if [ -n "$missing" ]; then
		echo "check-exports: kmcl.ko does not export these functions of $o:" >&2
		printf '  %s\n' $missing >&2
		fail=1
	fi
done

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

if [ "$fail" != 0 ]; then
	exit 1
fi
echo "check-exports: every helper of kmcl is exported; every consumer's kmcl symbols are"
