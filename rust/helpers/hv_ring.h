/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The hv transport's receive from a vmbus_channel's inbound ring
 * (rust/helpers/hv_ring.c); Rust declares it in rust/kmcl/transport/hv/mod.rs.
 */
#ifndef KMCL_HELPERS_HV_RING_H
#define KMCL_HELPERS_HV_RING_H

#include <linux/types.h>

struct vmbus_channel;

int kmcl_hv_recv(struct vmbus_channel *c, void *buf, u32 len);

#endif /* KMCL_HELPERS_HV_RING_H */
