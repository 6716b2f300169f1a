// SPDX-License-Identifier: GPL-2.0
/*
 * Test-only helpers for the KUnit suites: a signal pending for the calling
 * kernel thread, to check that kmcl's waits give up on one instead of
 * spinning. Rust declares these in rust/kmcl/tests/contract.rs.
 */

#include <linux/sched/signal.h>
#include <linux/signal.h>

#include "test.h"

/* Makes SIGUSR1 pending for the calling (kernel) thread. */
void kmcl_test_signal_self(void)
{
	allow_signal(SIGUSR1);
	send_sig(SIGUSR1, current, 1);
}

/* Discards the caller's pending signals and stops accepting SIGUSR1. */
void kmcl_test_flush_signals(void)
{
	flush_signals(current);
	disallow_signal(SIGUSR1);
}
