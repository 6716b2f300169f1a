#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Compiles every rustdoc example of the kmcl crate against kmcl's metadata
# and the test kernel's crates, with the flags kbuild used for kmcl (taken
# from its .cmd file). An example is type- and borrow-checked, not linked
# or run: a module's examples cannot run outside the kernel, and KUnit
# covers the behaviour. Fails on the first example that does not compile.

set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../setup/env.sh"

cmdfile="$KMCL_TOP/build/modules/rust/kmcl/.kmcl.o.cmd"
meta="$KMCL_TOP/build/modules/rust/kmcl/libkmcl.rmeta"
[ -f "$cmdfile" ] && [ -f "$meta" ] || "$here/build-modules.sh" >/dev/null

# kbuild's arguments, minus what only the compiler or clippy understands,
# the crate type, and the lints that hold for the crate but not for an
# example (docs and visibility of a snippet's own items).
. "$here/kmcl-rustc-args.sh"
mapfile -t args < <(kmcl_rustc_args "$cmdfile" '^--crate-type$' '^rlib$' \
	'^-Wmissing_docs$' '^-Wunreachable_pub$')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# rustdoc hands each example to this builder, which checks it and emits
# metadata only, instead of linking an executable.
cat >"$tmp/builder" <<'EOS'
#!/usr/bin/env bash
args=()
skip=0
for a in "$@"; do
	if [ "$skip" = 1 ]; then skip=0; continue; fi
	case "$a" in
	-o) skip=1 ;;
	--emit=*) ;;
	*) args+=("$a") ;;
	esac
done
exec rustc "${args[@]}" --emit=metadata -o "$(mktemp -p "$DOCTEST_TMP")"
EOS
chmod +x "$tmp/builder"

cd "$KMCL_TOP/build/modules"
DOCTEST_TMP="$tmp" RUSTC_BOOTSTRAP=1 RUST_MODFILE=./kmcl OBJTREE="$KMCL_KBUILD" \
	rustdoc --test "${args[@]}" --extern kmcl="$meta" --no-run \
	-Zunstable-options --test-builder "$tmp/builder" \
	--crate-name kmcl "$KMCL_TOP/rust/kmcl/kmcl.rs" --test-args -q
