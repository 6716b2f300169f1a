/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C half of kmcl_bench (tools/bench/kmcl_bench_c.c); Rust declares the
 * same functions in tools/bench/kmcl_bench.rs.
 */
#ifndef KMCL_BENCH_C_H
#define KMCL_BENCH_C_H

#include <linux/types.h>

struct vmbus_channel;

struct vmbus_channel *kmcl_bench_chan_new(u32 ring_pages, u32 max_pkt,
					  u32 rqstor, bool c_driver);
void kmcl_bench_chan_free(struct vmbus_channel *c);
void kmcl_bench_chan_ring(struct vmbus_channel *c, int inbound, void **control,
			  void **data, u32 *size);
void kmcl_bench_bh_disable(void);
void kmcl_bench_bh_enable(void);
void kmcl_bench_c_interrupt(struct vmbus_channel *c);
int kmcl_bench_c_send(struct vmbus_channel *c, void *buf, u32 len, u32 count);
int kmcl_bench_c_request(struct vmbus_channel *c, void *buf, u32 len,
			 void *resp, u32 resp_len);
int kmcl_bench_c_request_done(struct vmbus_channel *c);
u64 kmcl_bench_c_received(struct vmbus_channel *c);
u64 kmcl_bench_c_errors(struct vmbus_channel *c);
u64 kmcl_bench_c_sig_events(struct vmbus_channel *c);

#endif /* KMCL_BENCH_C_H */
