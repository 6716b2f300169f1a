#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds kmcl.ko (and the other modules of this tree) against the cached
# test kernel, or against KMCL_KDIR, with clippy and with every Rust and C
# warning treated as an error. Output goes to build/modules.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../setup/env.sh"

out="$KMCL_TOP/build/modules"
mkdir -p "$out"
make -C "$KMCL_KBUILD" M="$KMCL_TOP" MO="$out" BINDGEN="$KMCL_BINDGEN" \
	CLIPPY=1 KRUSTFLAGS=-Dwarnings KCFLAGS=-Werror -j"$(nproc)" "$@" modules
