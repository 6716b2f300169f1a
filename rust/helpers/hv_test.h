/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Test-only helpers: a vmbus_channel in guest memory driven by Linux's own
 * ring code. Rust declares these in rust/kmcl/tests/hv_interop.rs.
 */
#ifndef KMCL_HELPERS_HV_TEST_H
#define KMCL_HELPERS_HV_TEST_H

#include <linux/types.h>
#include <linux/uuid.h>

struct hv_device;
struct hv_vmbus_device_id;
struct vmbus_gpadl;

struct vmbus_channel;

struct vmbus_channel *kmcl_hv_test_channel_new(u32 ring_pages, u32 max_pkt,
					       u32 rqstor_size);
void kmcl_hv_test_channel_free(struct vmbus_channel *c);
void kmcl_hv_test_ring(struct vmbus_channel *c, int inbound, void **control,
		       void **data, u32 *size);
u64 kmcl_hv_test_sig_events(struct vmbus_channel *c);
void kmcl_hv_test_pkt_buffer(struct vmbus_channel *c, void **buf, u32 *size);

struct vmbus_channel *kmcl_hv_test_channel_alloc(const guid_t *type,
						 const guid_t *instance,
						 u16 mmio_mb);
struct hv_device *kmcl_hv_test_device_new(struct vmbus_channel *c);
void kmcl_hv_test_device_put(struct hv_device *dev);
void kmcl_hv_test_set_errors(int open, int gpadl, bool reencrypt_fails);
void kmcl_hv_test_set_open_delay(unsigned int ms);
int kmcl_hv_test_open(struct vmbus_channel *c, u32 pages,
		      void (*cb)(void *), void *ctx);
void kmcl_hv_test_close(struct vmbus_channel *c);
void kmcl_hv_test_interrupt(struct vmbus_channel *c);
void kmcl_hv_test_open_params(struct vmbus_channel *c, u32 *ring_datasize,
			      u32 *max_pkt, u32 *rqstor, bool *direct);
void kmcl_hv_test_set_rescind(struct vmbus_channel *c);
bool kmcl_hv_test_has_callback(struct vmbus_channel *c);
int kmcl_hv_test_gpadl_establish(struct vmbus_channel *c, void *buf, u32 size,
				 struct vmbus_gpadl *g);
int kmcl_hv_test_gpadl_teardown(struct vmbus_channel *c, struct vmbus_gpadl *g);
int kmcl_hv_test_gpadl_establish_decrypted(struct vmbus_channel *c, void *buf,
					   u32 size, struct vmbus_gpadl *g);
u32 kmcl_hv_test_decrypted_gpadl_stats(u32 *last_size);
void kmcl_hv_test_set_teardown_error(int err);
void kmcl_hv_test_ring_block(struct vmbus_channel *c, u32 *pages, u32 *send);

/*
 * Fault injection in vmbus.c (CONFIG_KUNIT only): the next n ring or shared
 * buffer allocations fail with -ENOMEM; the shared buffers alive.
 */
void kmcl_hv_test_fail_allocs(int rings, int buffers);
int kmcl_hv_test_buffers_alive(void);

struct vmbus_channel *kmcl_hv_test_subchannel_new(struct vmbus_channel *primary,
						  u16 index);
int kmcl_hv_test_offer_subchannel(struct vmbus_channel *sc);
void kmcl_hv_test_set_target_cpu(struct vmbus_channel *c, u32 cpu);
void kmcl_hv_test_interrupt_on(struct vmbus_channel *c, u32 cpu);

/* The name and id table of kmcl's last driver registration. */
void kmcl_hv_test_note_registration(const char *name,
				    const struct hv_vmbus_device_id *ids);
u32 kmcl_hv_test_last_registration(char *name, u32 len, guid_t *ids, u32 max);

#endif /* KMCL_HELPERS_HV_TEST_H */
