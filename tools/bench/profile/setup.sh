#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# setup.sh OUT.so
#
# The set-up of `make profile`: builds the instruction-count plugin
# (insn_profile.c) into OUT.so for the QEMU that runs the VM, Debian 12's
# qemu-system-x86 7.2. The plugin API's header is not part of kmcl: it comes
# from the source of that QEMU, Debian's qemu_7.2+dfsg.orig.tar.xz, checked
# against its SHA-256, and only the header is kept, in
# $KMCL_CACHE/qemu-plugin-7.2; a second run downloads nothing. No patch of
# Debian's qemu 7.2 package (up to 1:7.2+dfsg-7+deb12u18, QEMU 7.2.22)
# touches the header, and its plugin API version is 1, as in the binary.

set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../setup/versions.sh"

say() { printf 'kmcl-profile: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

orig=qemu_7.2+dfsg.orig.tar.xz
orig_sha256=91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f
header_sha256=19f277b037d05a8bcb5069f2f81a465d177208e5903048a915c56627d4c3748e
# The archive keeps the file while Debian 12 ships qemu 7.2; the snapshot
# archive keeps it for good.
urls=("http://deb.debian.org/debian/pool/main/q/qemu/$orig"
      "http://snapshot.debian.org/archive/debian/20250520T000000Z/pool/main/q/qemu/$orig")

# The header matches the QEMU that runs, or the plugin would not load.
qemu=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
case "$qemu" in
1:7.2+dfsg-*) ;;
*) die "the plugin's header is pinned for Debian's qemu-system-x86 1:7.2+dfsg;" \
      "installed: ${qemu:-none} (tools/bench/profile/setup.sh)" ;;
esac

dir="$KMCL_CACHE/qemu-plugin-7.2"
header="$dir/qemu-plugin.h"
if ! echo "$header_sha256  $header" | sha256sum -c --status 2>/dev/null; then
	say "fetching the QEMU plugin API header from $orig"
	mkdir -p "$dir"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	got=
	for url in "${urls[@]}"; do
		curl -fsSL --retry 2 -o "$tmp/$orig" "$url" && { got=1; break; }
	done
	[ -n "$got" ] || die "could not download $orig"
	echo "$orig_sha256  $tmp/$orig" | sha256sum -c --status ||
		die "$orig does not have the pinned SHA-256"
	tar --no-same-owner -xJf "$tmp/$orig" -C "$tmp" qemu-7.2.0/include/qemu/qemu-plugin.h
	echo "$header_sha256  $tmp/qemu-7.2.0/include/qemu/qemu-plugin.h" | sha256sum -c --status ||
		die "qemu-plugin.h in $orig does not have the pinned SHA-256"
	mv "$tmp/qemu-7.2.0/include/qemu/qemu-plugin.h" "$header"
fi

if [ ! -f "$out" ] || [ "$here/insn_profile.c" -nt "$out" ] || [ "$header" -nt "$out" ]; then
	mkdir -p "$(dirname "$out")"
	gcc -O2 -Wall -Wextra -Werror -Wno-unused-parameter -fPIC -shared \
		-fvisibility=hidden -I"$dir" -o "$out" "$here/insn_profile.c" -lpthread
fi
