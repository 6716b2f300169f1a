/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Test-only helpers: a vmbus_channel in guest memory driven by Linux's own
 * ring code. Rust declares these in rust/kmcl/tests/hv_interop.rs.
 */
#ifndef KMCL_HELPERS_HV_TEST_H
#define KMCL_HELPERS_HV_TEST_H

#include <linux/types.h>

struct vmbus_channel;

struct vmbus_channel *kmcl_hv_test_channel_new(u32 ring_pages, u32 max_pkt,
					       u32 rqstor_size);
void kmcl_hv_test_channel_free(struct vmbus_channel *c);
void kmcl_hv_test_ring(struct vmbus_channel *c, int inbound, void **control,
		       void **data, u32 *size);
u64 kmcl_hv_test_sig_events(struct vmbus_channel *c);

#endif /* KMCL_HELPERS_HV_TEST_H */
