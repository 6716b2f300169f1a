# SPDX-License-Identifier: GPL-2.0
#
# Sourced by rustdoc.sh and doctests.sh: kmcl_rustc_args CMDFILE [PATTERN...]
# prints, one a line, the arguments kbuild gave the compiler for kmcl (from
# the compiler's name to --out-dir in its .cmd file), minus what only the
# compiler or clippy understands and minus the lines matching each extra
# PATTERN (grep -e syntax).

kmcl_rustc_args() {
	local cmdfile=$1
	shift
	local extra=()
	local p
	for p in "$@"; do
		extra+=(-e "$p")
	done
	sed -n '1p' "$cmdfile" | tr ' ' '\n' |
		sed -n '/^\(clippy-driver\|rustc\)$/,/^--out-dir$/p' | sed '1d;$d' |
		grep -v -e '^$' -e '^-[WADF]clippy::' -e '^--emit=' -e '^-Zbinary_dep_depinfo' \
			-e '^--remap-path' -e '^--macro$' "${extra[@]}" |
		sed "s/^-Zcrate-attr='\(.*\)'$/-Zcrate-attr=\1/"
}
