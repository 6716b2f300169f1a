/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Test-only helpers of the KUnit suites; see test.c.
 */
#ifndef KMCL_HELPERS_TEST_H
#define KMCL_HELPERS_TEST_H

void kmcl_test_signal_self(void);
void kmcl_test_flush_signals(void);

#endif /* KMCL_HELPERS_TEST_H */
