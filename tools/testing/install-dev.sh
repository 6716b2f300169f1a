#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# install-dev.sh DEST: installs what a module in another tree needs to build
# against kmcl: kmcl.ko, its Module.symvers and its crate metadata.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out="$top/build/modules"
dest=$1
mkdir -p "$dest"
install -m 0644 "$out/kmcl.ko" "$out/rust/kmcl/libkmcl.rmeta" "$dest/"
# Only kmcl's own exports: the samples are not part of the installed API.
awk -F'\t' '$3 == "kmcl"' "$out/Module.symvers" >"$dest/Module.symvers"
