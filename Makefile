# SPDX-License-Identifier: GPL-2.0
#
# kmcl: VMBus Kernel Mode Client Library for Rust drivers.
#
#   make run     build what is needed, boot the test VM, show kmcl at work
#   make check   the full test run: build with clippy, rustfmt, host tests,
#                KUnit in the VM on a debug kernel; ends 'N passed, N failed'
#
# Everything downloaded or built outside this tree lives in $(KMCL_CACHE).
# KDIR=/path/to/built/kernel builds the modules against your own kernel tree
# instead of the cached test kernel (it must be built with CONFIG_RUST=y by
# the same rustc).

KMCL_CACHE ?= $(HOME)/.cache/kmcl
export KMCL_CACHE
ifneq ($(KDIR),)
export KMCL_KDIR := $(KDIR)
endif

.PHONY: all setup kernel modules fmt fmt-check host-test check check-repeat \
	run clean docs rustdoc install-dev bench stress fuzz profile profile-diff

all: modules

setup:
	tools/setup/install-deps.sh

kernel: setup
	tools/setup/build-kernel.sh

modules: kernel
	tools/testing/build-modules.sh

fmt:
	tools/testing/rustfmt.sh

fmt-check:
	tools/testing/rustfmt.sh --check

host-test:
	cd tools/kmcl-wire && cargo test

check:
	tools/testing/check.sh

# The VM part of make check N times in a row (modules built once), stopping
# at the first failing run: for cases that fail only now and then.
N ?= 20
check-repeat:
	tools/testing/repeat.sh $(N)

# Raw ring against the API, in one VM boot; see Documentation/performance.rst.
bench:
	tools/bench/run.sh

# Guest instructions per function in the deterministic mode of make bench
# (PROFILE_PARAMS for kmcl_bench's parameters); profile-diff: per packet, from
# two runs (PROFILE_A, PROFILE_B); see Documentation/profiling.rst.
profile:
	tools/bench/profile/profile.sh

profile-diff:
	tools/bench/profile/profile.sh --diff

# 1 000 000 packets, both directions, both CPUs (STRESS_PACKETS to change);
# STRESS_MODE=teardown pauses, closes and reopens the pair at random while
# they flow (STRESS_SEED to replay a run's choices).
stress:
	tools/stress/run.sh

# libFuzzer on the ring, packet and saved-state decoders, FUZZ_SECONDS per
# target (default 600).
fuzz:
	tools/fuzz/run.sh

# The guide (Documentation/, Sphinx) and the API reference (rustdoc), both
# with warnings as errors.
docs:
	sphinx-build -q -W -b html Documentation build/docs

rustdoc: modules
	tools/testing/rustdoc.sh

# What a module in another tree needs to build against kmcl.
DESTDIR ?= /usr/local/share/kmcl
install-dev: modules
	tools/testing/install-dev.sh $(DESTDIR)

run:
	tools/vm/demo.sh

clean:
	rm -rf build
	cd tools/kmcl-wire && cargo clean
