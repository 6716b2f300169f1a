/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Interface between kmcl's Rust code and its C helper for hv_vmbus. Rust
 * declares the same functions in rust/kmcl/vmbus.rs (module `ffi`); keep the
 * two in step.
 */
#ifndef KMCL_HELPERS_VMBUS_H
#define KMCL_HELPERS_VMBUS_H

#include <linux/types.h>
#include <linux/uuid.h>

struct device;
struct hv_device;
struct hv_driver;
struct hv_vmbus_device_id;
struct module;
struct page;
struct vmbus_gpadl;
struct vmbus_channel;

/*
 * The layout of struct hv_driver that Rust relies on (ffi::HV_DRIVER_SIZE
 * and ffi::HV_DRIVER_DRIVER_OFFSET in rust/kmcl/vmbus.rs); vmbus.c checks
 * both against the kernel's structure.
 */
#define KMCL_HV_DRIVER_SIZE 512
#define KMCL_HV_DRIVER_DRIVER_OFFSET 40

/*
 * Callbacks of one Rust driver type, static in Rust; registration copies
 * them into the struct hv_driver.
 */
struct kmcl_vmbus_driver_ops {
	int (*probe)(struct hv_device *dev, const struct hv_vmbus_device_id *id);
	void (*remove)(struct hv_device *dev);
	void (*shutdown)(struct hv_device *dev);
	int (*suspend)(struct hv_device *dev);
	int (*resume)(struct hv_device *dev);
};

int kmcl_vmbus_driver_register(struct hv_driver *drv, const char *name,
			       const struct hv_vmbus_device_id *ids,
			       const struct kmcl_vmbus_driver_ops *ops,
			       struct module *owner, const char *mod_name);
void kmcl_vmbus_driver_unregister(struct hv_driver *drv);

void *kmcl_hv_get_drvdata(struct hv_device *dev);
void kmcl_hv_set_drvdata(struct hv_device *dev, void *data);
struct device *kmcl_hv_device_dev(struct hv_device *dev);
struct vmbus_channel *kmcl_hv_device_channel(struct hv_device *dev);
void kmcl_hv_device_ids(struct hv_device *dev, guid_t *type, guid_t *instance);

void kmcl_vmbus_channel_offer_ids(struct vmbus_channel *chan, guid_t *type,
				  guid_t *instance);
bool kmcl_vmbus_channel_rescinded(struct vmbus_channel *chan);

/* The hv transport. */
int kmcl_hv_sendpacket(struct vmbus_channel *c, void *buf, u32 len,
		       u64 requestid, u64 *trans_id, u16 type, u32 flags);
int kmcl_hv_sendpacket_mpb(struct vmbus_channel *c, void *desc, u32 desc_size,
			   void *buf, u32 len, u64 requestid);
int kmcl_hv_recvpacket(struct vmbus_channel *c, void *buf, u32 len);
void kmcl_hv_recv_close(struct vmbus_channel *c);
void kmcl_hv_begin_read(struct vmbus_channel *c);
u32 kmcl_hv_end_read(struct vmbus_channel *c);
u32 kmcl_hv_bytes_to_write(struct vmbus_channel *c);
u32 kmcl_hv_bytes_to_read(struct vmbus_channel *c);
u32 kmcl_hv_ring_datasize(struct vmbus_channel *c);
void kmcl_hv_set_pending_send_size(struct vmbus_channel *c, u32 size);
u64 kmcl_hv_request_addr(struct vmbus_channel *c, u64 trans_id, u64 rqst_addr);

/*
 * The largest RingBufferPageCount (4 KiB pages per direction) that
 * kmcl_hv_ring_bytes() considers; init_set_ring_buffer_page_count() allows
 * no more.
 */
#define KMCL_HV_RING_PAGES_MAX 1024

/* Bound devices: open and close, MMIO, GPADLs. */
int kmcl_hv_ring_bytes(u32 ring_pages, u32 *bytes);
int kmcl_hv_alloc_ring(struct vmbus_channel *c, u32 ring_pages);
void kmcl_hv_prepare_open(struct vmbus_channel *c, u32 max_pkt, u32 rqstor);
int kmcl_hv_open(struct vmbus_channel *c, u32 ring_pages, void (*cb)(void *),
		 void *ctx);
void kmcl_hv_close(struct vmbus_channel *c);
void kmcl_hv_forget_settings(struct vmbus_channel *c);
u32 kmcl_hv_device_offer_mmio_mb(struct hv_device *dev);
int kmcl_hv_allocate_mmio(struct hv_device *dev, u64 size, u64 *start);
void kmcl_hv_free_mmio(u64 start, u64 size);
struct vmbus_gpadl *kmcl_hv_gpadl_alloc(void);
void kmcl_hv_gpadl_free(struct vmbus_gpadl *g);
int kmcl_hv_gpadl_establish(struct vmbus_channel *c, void *buf, u32 size,
			    struct vmbus_gpadl *g);
int kmcl_hv_gpadl_establish_decrypted(struct vmbus_channel *c, void *buf,
				      u32 size, struct vmbus_gpadl *g);
int kmcl_hv_gpadl_teardown(struct vmbus_channel *c, struct vmbus_gpadl *g);
void kmcl_hv_gpadl_mark_shared(struct vmbus_gpadl *g);
void *kmcl_hv_alloc_buffer(struct vmbus_channel *c, u32 size,
			   struct page ***chunks, u32 *chunk_cnt);
void kmcl_hv_free_buffer(void *addr, struct page **chunks, u32 chunk_cnt);
void kmcl_hv_leak_buffer(void *addr, struct page **chunks);
u32 kmcl_hv_gpadl_handle(const struct vmbus_gpadl *g);
bool kmcl_hv_gpadl_decrypted(const struct vmbus_gpadl *g);
void *kmcl_hv_vmap_pages(struct page **pages, u32 count);
void kmcl_hv_vunmap(void *addr);
void kmcl_mark_not_leak(const void *ptr);

/* Sub-channels and target CPUs. */
void kmcl_hv_set_sc_callback(struct vmbus_channel *c,
			     void (*cb)(struct vmbus_channel *sc));
struct vmbus_channel *kmcl_hv_sc_primary(struct vmbus_channel *sc);
u16 kmcl_hv_sc_index(struct vmbus_channel *sc);
u32 kmcl_hv_channel_target_cpu(struct vmbus_channel *c);

/* Used by the KUnit suites. */
int kmcl_guid_parse(const char *s, guid_t *out);
void kmcl_hv_heartbeat_guid(guid_t *out);

#endif /* KMCL_HELPERS_VMBUS_H */
