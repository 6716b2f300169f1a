# SPDX-License-Identifier: GPL-2.0
#
# Pinned versions of everything kmcl builds against. Sourced by the other
# scripts in tools/; changing a value here changes the cache key, so the
# next build starts from a fresh kernel.

KMCL_KERNEL_PKG=linux-source-7.3
KMCL_KERNEL_DEB_VERSION=7.3.4-1~bpo13+1
KMCL_KERNEL_VERSION=7.3.4
KMCL_RUSTC_VERSION=1.95.0
KMCL_RUST_SRC_DEB_VERSION=1.95.0+dfsg1-2~bpo13+1
KMCL_BINDGEN_VERSION=0.72.1
KMCL_LIBCLANG_VERSION=18.1.1
KMCL_APT_SUITE=trixie-backports

KMCL_CACHE=${KMCL_CACHE:-$HOME/.cache/kmcl}
