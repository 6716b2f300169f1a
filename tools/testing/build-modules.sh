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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# KBUILD_MODPOST_WARN is emptied: an undefined symbol is a modpost error
# here even where the caller's environment sets it.
kmake() {
	make -C "$KMCL_KBUILD" BINDGEN="$KMCL_BINDGEN" CLIPPY=1 KRUSTFLAGS=-Dwarnings \
		KCFLAGS=-Werror KBUILD_MODPOST_WARN= -j"$(nproc)" "$@" 2>&1 | tee -a "$log"
	return "${PIPESTATUS[0]}"
}

# kmcl.ko and the samples.
kmake M="$KMCL_TOP" MO="$out" modules

# A consumer in another tree, against kmcl as installed for developers.
"$KMCL_TOP/tools/testing/install-dev.sh" "$KMCL_TOP/build/kmcl-dev"
mkdir -p "$KMCL_TOP/build/out-of-tree"
kmake M="$KMCL_TOP/samples/out-of-tree" MO="$KMCL_TOP/build/out-of-tree" \
	KMCL_DEV="$KMCL_TOP/build/kmcl-dev" modules

# objtool and modpost only warn; here a warning fails the build.
if grep -E '(^|: )warning:|WARNING:' "$log"; then
	echo "build-modules: the build printed warnings" >&2
	exit 1
fi

# Every consumer links against kmcl.ko alone: whatever kmcl symbol it
# needs, kmcl exports.
"$KMCL_TOP/tools/testing/check-exports.sh" "$out" "$KMCL_TOP/build/out-of-tree/kmcl_hello.ko"
