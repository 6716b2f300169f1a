#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Installs what kmcl needs to build a kernel and run it under QEMU. Safe to
# run any number of times: each step checks whether its result is already in
# place. Never edits the machine's apt sources; the backports suite is read
# through a private apt configuration inside the cache.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"

say() { printf 'kmcl-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$KMCL_CACHE"

apt_pkgs=(bc bison flex libelf-dev libssl-dev cpio dwarves busybox-static
	  qemu-system-x86 xz-utils python3 gnuplot-nox kmod python3-sphinx)

install_apt() {
	local missing=()
	for p in "${apt_pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing apt packages: ${missing[*]}"
	local sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The private apt configuration: one sources file for the backports suite,
# lists kept under the cache.
apt_private() {
	local dir="$KMCL_CACHE/apt"
	mkdir -p "$dir/lists/partial" "$dir/archives/partial"
	local uri
	uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$uri" ] || uri=http://deb.debian.org/debian
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $KMCL_APT_SUITE main" \
		>"$dir/sources.list"
	APT_OPTS=(-oDir::Etc::SourceList="$dir/sources.list"
		  -oDir::Etc::SourceParts=/nonexistent
		  -oDir::State::Lists="$dir/lists"
		  -oDir::Cache::Archives="$dir/archives"
		  -oAPT::Get::List-Cleanup=0
		  -oAPT::Sandbox::User=root)
}

fetch_debs() {
	local src="$KMCL_CACHE/src"
	local ksrc="$src/linux-$KMCL_KERNEL_VERSION"
	local rsrc="$src/rust-src-$KMCL_RUSTC_VERSION"
	[ -f "$ksrc/Makefile" ] && [ -d "$rsrc/usr/lib/rustlib/src/rust/library/core" ] && return 0

	apt_private
	mkdir -p "$src"
	local debs="$KMCL_CACHE/debs"
	mkdir -p "$debs"
	if ! ls "$debs"/${KMCL_KERNEL_PKG}_*.deb >/dev/null 2>&1 ||
	   ! ls "$debs"/rust-src_*.deb >/dev/null 2>&1; then
		say "fetching $KMCL_KERNEL_PKG=$KMCL_KERNEL_DEB_VERSION and rust-src=$KMCL_RUST_SRC_DEB_VERSION ($KMCL_APT_SUITE)"
		apt-get "${APT_OPTS[@]}" -qq update
		(cd "$debs" && apt-get "${APT_OPTS[@]}" -qq download \
			"$KMCL_KERNEL_PKG=$KMCL_KERNEL_DEB_VERSION" \
			"rust-src=$KMCL_RUST_SRC_DEB_VERSION")
	fi

	if [ ! -f "$ksrc/Makefile" ]; then
		say "unpacking kernel source"
		local tmp="$src/.kdeb"
		rm -rf "$tmp" "$ksrc.partial"
		dpkg -x "$debs"/${KMCL_KERNEL_PKG}_*.deb "$tmp"
		mkdir -p "$ksrc.partial"
		tar -xJf "$tmp/usr/src/$KMCL_KERNEL_PKG.tar.xz" -C "$ksrc.partial" --strip-components=1
		rm -rf "$tmp"
		local v
		v=$(make -s -C "$ksrc.partial" kernelversion)
		[ "$v" = "$KMCL_KERNEL_VERSION" ] || die "kernel source is $v, expected $KMCL_KERNEL_VERSION"
		mv "$ksrc.partial" "$ksrc"
	fi
	if [ ! -d "$rsrc/usr/lib/rustlib/src/rust/library/core" ]; then
		say "unpacking rust-src"
		rm -rf "$rsrc"
		dpkg -x "$debs"/rust-src_*.deb "$rsrc"
	fi
}

check_rustc() {
	command -v rustc >/dev/null || die "rustc not found; install Rust $KMCL_RUSTC_VERSION with rustup"
	local have
	have=$(rustc --version | awk '{ print $2 }')
	if [ "$have" != "$KMCL_RUSTC_VERSION" ]; then
		die "rustc is $have but the pinned rust-src is $KMCL_RUST_SRC_DEB_VERSION (rustc $KMCL_RUSTC_VERSION).
The kernel and its modules must be built by the rustc whose library source is used.
Install rustc $KMCL_RUSTC_VERSION (rustup default $KMCL_RUSTC_VERSION) or change tools/setup/versions.sh."
	fi
}

install_bindgen() {
	local root="$KMCL_CACHE/bindgen-$KMCL_BINDGEN_VERSION"
	[ -x "$root/bin/bindgen" ] && return 0
	say "installing bindgen-cli $KMCL_BINDGEN_VERSION (takes a minute or two)"
	cargo install -q --locked --root "$root" bindgen-cli --version "$KMCL_BINDGEN_VERSION"
}

install_libclang() {
	local dir="$KMCL_CACHE/libclang-$KMCL_LIBCLANG_VERSION"
	[ -f "$dir/libclang.so" ] && return 0
	say "fetching libclang $KMCL_LIBCLANG_VERSION from PyPI"
	local tmp
	tmp=$(mktemp -d)
	python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "libclang==$KMCL_LIBCLANG_VERSION"
	rm -rf "$dir"
	mkdir -p "$dir"
	python3 -m zipfile -e "$tmp"/libclang-*.whl "$tmp/whl"
	local so
	so=$(find "$tmp/whl" -path '*/clang/native/libclang.so' | head -1)
	[ -n "$so" ] || die "libclang wheel has no clang/native/libclang.so"
	mv "$so" "$dir/libclang.so"
	rm -rf "$tmp"
}

install_apt
check_rustc
fetch_debs
install_bindgen
install_libclang
say "dependencies ready in $KMCL_CACHE"
