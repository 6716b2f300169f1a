# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the build scripts: derives every path from the pinned versions
# and the cache. Prints nothing.
#
# KMCL_KDIR, when set, names a kernel build tree of the user's own (built with
# CONFIG_RUST=y by the same rustc); then no kernel is built here.

_kmcl_setup_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$_kmcl_setup_dir/versions.sh"

KMCL_TOP=$(cd "$_kmcl_setup_dir/../.." && pwd)
KMCL_KSRC="$KMCL_CACHE/src/linux-$KMCL_KERNEL_VERSION"
# KMCL_KCONFIG selects the fragment: kmcl.config (the debug kernel of make
# check) by default, kmcl-bench.config for make bench.
KMCL_FRAGMENT="$KMCL_TOP/tools/kconfig/${KMCL_KCONFIG:-kmcl.config}"

# The kernel build is keyed by everything that changes its output.
KMCL_KEY=$( { cat "$_kmcl_setup_dir/versions.sh" "$KMCL_FRAGMENT"
	      rustc --version 2>/dev/null; gcc --version 2>/dev/null | head -1; } |
	    sha256sum | cut -c1-12)
KMCL_KBUILD="$KMCL_CACHE/build/linux-$KMCL_KERNEL_VERSION-$KMCL_KEY"

export LIBCLANG_PATH="$KMCL_CACHE/libclang-$KMCL_LIBCLANG_VERSION"
export RUST_LIB_SRC="$KMCL_CACHE/src/rust-src-$KMCL_RUSTC_VERSION/usr/lib/rustlib/src/rust/library"
KMCL_BINDGEN="$KMCL_CACHE/bindgen-$KMCL_BINDGEN_VERSION/bin/bindgen"

if [ -n "${KMCL_KDIR:-}" ]; then
	KMCL_KBUILD=$KMCL_KDIR
fi
