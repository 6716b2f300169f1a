#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The body of `make fuzz`: runs each libFuzzer target of
# tools/kmcl-wire/fuzz for FUZZ_SECONDS (default 600) and fails on a crash.
# cargo-fuzz needs a nightly rustc for -Zsanitizer; the machine's stable
# rustc is used with RUSTC_BOOTSTRAP=1. The growing corpus lives in
# build/fuzz/corpus, seeded from tools/kmcl-wire/fuzz/seeds.

set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tools/setup/versions.sh"
secs=${FUZZ_SECONDS:-600}
targets=${FUZZ_TARGETS:-"packet_parse ring_read save_parse"}
root="$KMCL_CACHE/cargo-fuzz-0.12.0"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
	echo "==> installing cargo-fuzz 0.12.0"
	cargo install -q --locked --root "$root" cargo-fuzz --version 0.12.0
fi
export PATH="$root/bin:$PATH" RUSTC_BOOTSTRAP=1
fuzz="$top/tools/kmcl-wire/fuzz"
out="$top/build/fuzz"
mkdir -p "$out"
(cd "$fuzz" && cargo fuzz build -O)
fail=0
for t in $targets; do
	mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
	echo "==> fuzzing $t for $secs s"
	if (cd "$fuzz" && cargo fuzz run -O "$t" "$out/corpus/$t" "seeds/$t" -- \
		-max_total_time="$secs" -artifact_prefix="$out/artifacts/$t/" \
		-print_final_stats=1) >"$out/$t.log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
		echo "    $t: no crash in ${runs:-?} runs; corpus $(ls "$out/corpus/$t" | wc -l) inputs"
	else
		echo "    $t: CRASH, see $out/$t.log and $out/artifacts/$t/" >&2
		fail=1
	fi
done
exit $fail
