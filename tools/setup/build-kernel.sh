#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds the test kernel (tinyconfig + tools/kconfig/kmcl.config) into the
# cache. Does nothing when a kernel with the same key is already built.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

say() { printf 'kmcl-kernel: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -n "${KMCL_KDIR:-}" ]; then
	[ -f "$KMCL_KDIR/Module.symvers" ] || die "KDIR=$KMCL_KDIR has no Module.symvers: build it first"
	grep -q '^CONFIG_RUST=y' "$KMCL_KDIR/.config" || die "KDIR=$KMCL_KDIR is not built with CONFIG_RUST=y"
	exit 0
fi

stamp="$KMCL_KBUILD/.kmcl-built"
if [ -f "$stamp" ]; then
	say "cached: $KMCL_KBUILD"
	exit 0
fi

[ -f "$KMCL_KSRC/Makefile" ] || die "no kernel source in $KMCL_KSRC: run tools/setup/install-deps.sh"
kmake=(make -C "$KMCL_KSRC" O="$KMCL_KBUILD" ARCH=x86_64 BINDGEN="$KMCL_BINDGEN" -j"$(nproc)")

mkdir -p "$KMCL_KBUILD"
start=$(date +%s)
say "configuring $KMCL_KBUILD"
"${kmake[@]}" -s tinyconfig
(cd "$KMCL_KBUILD" && "$KMCL_KSRC/scripts/kconfig/merge_config.sh" -m -O . .config "$KMCL_FRAGMENT" >/dev/null)
"${kmake[@]}" -s olddefconfig

# Every line of the fragment must have survived the merge.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qxF "$line" "$KMCL_KBUILD/.config" || { say "not applied: $line"; bad=1; } ;;
	"# CONFIG_"*" is not set")
		sym=${line#\# }; sym=${sym%% *}
		! grep -q "^$sym=" "$KMCL_KBUILD/.config" || { say "not applied: $line"; bad=1; } ;;
	esac
done <"$KMCL_FRAGMENT"
[ $bad -eq 0 ] || die "the config fragment did not apply (is Rust available? try: make -C $KMCL_KSRC O=$KMCL_KBUILD rustavailable)"

"${kmake[@]}" -s rustavailable >/dev/null || die "Rust is not available to the kernel build"
say "building the kernel (about 10 minutes on 2 cores)"
"${kmake[@]}" -s all
touch "$stamp"
say "built in $(( $(date +%s) - start )) s: $KMCL_KBUILD"
