#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds the rustdoc of the kmcl crate into build/rustdoc, with the flags
# kbuild used to compile it (taken from its .cmd file), warnings as errors.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../setup/env.sh"

cmdfile="$KMCL_TOP/build/modules/rust/kmcl/.kmcl.o.cmd"
[ -f "$cmdfile" ] || "$here/build-modules.sh" >/dev/null
out="$KMCL_TOP/build/rustdoc"
rm -rf "$out"

# The compiler's arguments, minus what only the compiler or clippy
# understands.
. "$here/kmcl-rustc-args.sh"
mapfile -t args < <(kmcl_rustc_args "$cmdfile")

cd "$KMCL_TOP/build/modules"
RUSTC_BOOTSTRAP=1 RUST_MODFILE=./kmcl OBJTREE="$KMCL_KBUILD" rustdoc "${args[@]}" \
	--crate-name kmcl -o "$out" "$KMCL_TOP/rust/kmcl/kmcl.rs"
echo "rustdoc: $out/kmcl/index.html"
