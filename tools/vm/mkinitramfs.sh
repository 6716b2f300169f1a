#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# mkinitramfs.sh OUT.cpio.gz MODULE.ko...
#
# Packs busybox, tools/vm/init.sh and the given modules (loaded in the order
# given) into a gzipped initramfs. KMCL_MODULE_PARAMS, if set, holds lines
# "module: parameters" for the modules' insmod.

set -euo pipefail
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
	busybox=/bin/busybox
[ -x "$busybox" ] || { echo "mkinitramfs: busybox-static is not installed" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,kmcl}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/init.sh" "$root/init"
: >"$root/kmcl/modules"
printf '%s\n' "${KMCL_MODULE_PARAMS:-}" >"$root/kmcl/params"
for ko in "$@"; do
	cp "$ko" "$root/kmcl/"
	basename "$ko" .ko >>"$root/kmcl/modules"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
