#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# rustfmt.sh [--check]: formats every .rs file of the tree with the kernel's
# rustfmt configuration (edition 2021, as the kernel builds its Rust).

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../setup/env.sh"

cd "$KMCL_TOP"
git ls-files -co --exclude-standard -- '*.rs' | grep -v '^build/' |
	xargs -r rustfmt --edition 2021 --config-path "$KMCL_KSRC/.rustfmt.toml" "$@"
