#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# exports.sh NM OBJECT LIST [KUNIT]
#
# Prints the export lines of kmcl.ko for kmcl_exports.c: one for each
# global symbol of OBJECT (kmcl's Rust object) whose demangled name, with
# the crate hashes taken out, is a line of LIST. LIST is the committed export list, rust/kmcl/exports.txt:
# nothing else of kmcl is exported, so a module built on kmcl can use exactly
# the API that list names. Lines that start with "kunit: " name the test
# surface (kmcl::testing and what it re-exports): they count only when KUNIT
# is "y", the value of CONFIG_KUNIT.

set -eu
nm=$1
obj=$2
list=$3
kunit=${4:-}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Symbol-table order (-p) is the same with and without demangling, so the
# two listings pair up line by line.
"$nm" -p --defined-only "$obj" | awk '{ print $2 " " $3 }' >"$tmp/mangled"
"$nm" -p --defined-only -C "$obj" | cut -d' ' -f3- |
	sed 's/\[[0-9a-f]*\]//g' >"$tmp/demangled"
[ "$(wc -l <"$tmp/mangled")" = "$(wc -l <"$tmp/demangled")" ]

if [ "$kunit" = y ]; then
	grep -v -e '^#' -e '^$' "$list" | sed 's/^kunit: //' >"$tmp/list"
else
	grep -v -e '^#' -e '^$' -e '^kunit: ' "$list" >"$tmp/list"
fi

paste -d '\t' "$tmp/mangled" "$tmp/demangled" |
	awk -F'\t' -v list="$tmp/list" '
		BEGIN { while ((getline l < list) > 0) want[l] = 1 }
		{
			split($1, f, " ")
			if (f[1] ~ /^[TRDB]$/ && f[2] ~ /^_R/ && ($2 in want))
				printf "EXPORT_SYMBOL_RUST_GPL(%s);\n", f[2]
		}' | sort -u

