#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prints the built modules in load order: kmcl first, then the servers, then
# the clients that connect to them.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out="$top/build/modules"
for m in kmcl samples/echo/echo_vsp tools/testing/leak/kmcl_leak samples/heartbeat/heartbeat_host \
	 samples/nic/nic_vsp samples/echo/echo_vsc samples/heartbeat/hv_heartbeat samples/nic/nic_vsc tools/stress/kmcl_stress; do
	echo "$out/$m.ko"
done
echo "$top/build/out-of-tree/kmcl_hello.ko"
