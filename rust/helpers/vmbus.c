// SPDX-License-Identifier: GPL-2.0
/*
 * C half of kmcl's VMBus bus abstraction (rust/kmcl/vmbus.rs).
 *
 * The kernel crate has no bindings for <linux/hyperv.h>. Rather than
 * generating bindings for the whole header, kmcl keeps every access to hv
 * structures in this file and gives Rust a narrow interface of opaque
 * pointers and plain integers. The static inlines and macros of hyperv.h
 * (vmbus_driver_register, hv_get_drvdata, hv_set_drvdata, ...) have no symbol
 * to link against anyway, so they would need wrappers here in any case.
 *
 * Only kmcl_vmbus_driver_unregister() is exported: the other helpers are
 * reached only from code that stays inside kmcl.ko (see Kbuild and
 * rust/kmcl/exports.txt).
 */

#include <linux/export.h>
#include <linux/hyperv.h>
#include <linux/atomic.h>
#include <linux/kmemleak.h>
#include <linux/log2.h>
#include <linux/mod_devicetable.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/stddef.h>
#include <linux/vmalloc.h>

#include "hv_test.h"
#include "vmbus.h"

/* Rust mirrors struct hv_vmbus_device_id as { [u8; 16], usize }. */
static_assert(sizeof(struct hv_vmbus_device_id) == 16 + sizeof(kernel_ulong_t));
static_assert(offsetof(struct hv_vmbus_device_id, driver_data) == 16);
static_assert(sizeof(guid_t) == 16);

/*
 * Rust keeps a struct hv_driver in a zeroed buffer of KMCL_HV_DRIVER_SIZE
 * bytes inside the kernel crate's driver::Registration, and tells the
 * driver core where its struct device_driver lies.
 */
static_assert(sizeof(struct hv_driver) <= KMCL_HV_DRIVER_SIZE,
	      "struct hv_driver outgrew KMCL_HV_DRIVER_SIZE");
static_assert(__alignof__(struct hv_driver) <= 8);
static_assert(offsetof(struct hv_driver, driver) ==
	      KMCL_HV_DRIVER_DRIVER_OFFSET);

int kmcl_vmbus_driver_register(struct hv_driver *drv, const char *name,
			       const struct hv_vmbus_device_id *ids,
			       const struct kmcl_vmbus_driver_ops *ops,
			       struct module *owner, const char *mod_name)
{
	drv->name = name;
	drv->id_table = ids;
	drv->probe = ops->probe;
	drv->remove = ops->remove;
	drv->shutdown = ops->shutdown;
	drv->suspend = ops->suspend;
	drv->resume = ops->resume;
	if (IS_ENABLED(CONFIG_KUNIT))
		kmcl_hv_test_note_registration(name, ids);
	return __vmbus_driver_register(drv, owner, mod_name);
}

void kmcl_vmbus_driver_unregister(struct hv_driver *drv)
{
	vmbus_driver_unregister(drv);
}
/*
 * The one helper a module built on kmcl calls: the drop glue of a
 * kmcl::Bus, which rustc instantiates in that module, ends in the generic
 * Registration::drop of the VMBus binding, which calls this.
 */
EXPORT_SYMBOL_GPL(kmcl_vmbus_driver_unregister);

void *kmcl_hv_get_drvdata(struct hv_device *dev)
{
	return hv_get_drvdata(dev);
}

void kmcl_hv_set_drvdata(struct hv_device *dev, void *data)
{
	hv_set_drvdata(dev, data);
}

struct device *kmcl_hv_device_dev(struct hv_device *dev)
{
	return &dev->device;
}

struct vmbus_channel *kmcl_hv_device_channel(struct hv_device *dev)
{
	return dev->channel;
}

void kmcl_hv_device_ids(struct hv_device *dev, guid_t *type, guid_t *instance)
{
	*type = dev->dev_type;
	*instance = dev->dev_instance;
}

void kmcl_vmbus_channel_offer_ids(struct vmbus_channel *chan, guid_t *type,
				  guid_t *instance)
{
	*type = chan->offermsg.offer.if_type;
	*instance = chan->offermsg.offer.if_instance;
}

bool kmcl_vmbus_channel_rescinded(struct vmbus_channel *chan)
{
	return READ_ONCE(chan->rescind);
}

/* For the KUnit suites: the kernel's own GUID parser and constants. */
int kmcl_guid_parse(const char *s, guid_t *out)
{
	return guid_parse(s, out);
}

void kmcl_hv_heartbeat_guid(guid_t *out)
{
	static const struct hv_vmbus_device_id id = { HV_HEART_BEAT_GUID };

	*out = id.guid;
}

/*
 * The hv transport's ring access: Linux's own ring code, with the checks
 * kmcl adds (see rust/kmcl/transport/hv.rs).
 */

int kmcl_hv_sendpacket(struct vmbus_channel *c, void *buf, u32 len,
		       u64 requestid, u64 *trans_id, u16 type, u32 flags)
{
	return vmbus_sendpacket_getid(c, buf, len, requestid, trans_id, type, flags);
}

int kmcl_hv_sendpacket_mpb(struct vmbus_channel *c, void *desc, u32 desc_size,
			   void *buf, u32 len, u64 requestid)
{
	return vmbus_sendpacket_mpb_desc(c, desc, desc_size, buf, len, requestid);
}

int kmcl_hv_recvpacket(struct vmbus_channel *c, void *buf, u32 len)
{
	struct hv_ring_buffer_info *rbi = &c->inbound;
	const struct vmpacket_descriptor *desc;
	const struct vmpacket_descriptor *raw;
	u32 n, w;

	/*
	 * The host owns the write index. Linux trusts it to lie inside the
	 * ring; one beyond it, or not on a packet boundary, makes every
	 * following read garbage. kmcl refuses the ring instead.
	 */
	w = READ_ONCE(rbi->ring_buffer->write_index);
	if (w >= rbi->ring_datasize || w % 8)
		return -EBADMSG;
	desc = hv_pkt_iter_first(c);
	if (!desc)
		return 0;
	n = desc->len8 << 3;
	/*
	 * hv_pkt_iter_first() clamps a length beyond the data in the ring (or
	 * the packet buffer), replaces an offset outside the packet, and hands
	 * the packet on. kmcl refuses such a packet instead: a truncated or
	 * reinterpreted packet is never delivered.
	 */
	raw = (const struct vmpacket_descriptor *)
		(rbi->ring_buffer->buffer + rbi->priv_read_index);
	if ((u32)READ_ONCE(raw->len8) << 3 != n ||
	    READ_ONCE(raw->offset8) != desc->offset8)
		return -EBADMSG;
	if (n > len)
		return -EMSGSIZE;
	memcpy(buf, desc, n);
	__hv_pkt_iter_next(c, desc);
	return n;
}

void kmcl_hv_recv_close(struct vmbus_channel *c)
{
	hv_pkt_iter_close(c);
}

void kmcl_hv_begin_read(struct vmbus_channel *c)
{
	hv_begin_read(&c->inbound);
}

u32 kmcl_hv_end_read(struct vmbus_channel *c)
{
	return hv_end_read(&c->inbound);
}

u32 kmcl_hv_bytes_to_write(struct vmbus_channel *c)
{
	return hv_get_bytes_to_write(&c->outbound);
}

u32 kmcl_hv_bytes_to_read(struct vmbus_channel *c)
{
	return hv_get_bytes_to_read(&c->inbound);
}

u32 kmcl_hv_ring_datasize(struct vmbus_channel *c)
{
	return c->outbound.ring_datasize;
}

void kmcl_hv_set_pending_send_size(struct vmbus_channel *c, u32 size)
{
	set_channel_pending_send_size(c, size);
}

u64 kmcl_hv_request_addr(struct vmbus_channel *c, u64 trans_id, u64 rqst_addr)
{
	return vmbus_request_addr_match(c, trans_id, rqst_addr);
}

/* ---- Opening and closing a bound device's channel. ---- */

/*
 * What vmbus_open() reads from the channel, set before it runs: the packet
 * buffer size, the requestor, and the read mode.
 */
void kmcl_hv_prepare_open(struct vmbus_channel *c, u32 max_pkt, u32 rqstor)
{
	c->max_pkt_size = max_pkt;
	c->rqstor_size = rqstor;
	c->next_request_id_callback = vmbus_next_request_id;
	c->request_addr_callback = vmbus_request_addr;
	/*
	 * kmcl masks and unmasks the host's interrupts itself around each
	 * drain, and may leave packets in the ring when the driver's quota is
	 * used up. In batched mode hv_vmbus would reschedule the tasklet for as
	 * long as such packets stay there.
	 */
	set_channel_read_mode(c, HV_CALL_DIRECT);
}

/*
 * Fault injection for the KUnit suites only: the next n ring (or shared
 * buffer) allocations fail as if the page allocator had no memory, and the
 * shared buffers alive are counted. A kernel without KUnit has none of it.
 */
#if IS_ENABLED(CONFIG_KUNIT)
static atomic_t kmcl_hv_ring_alloc_failures = ATOMIC_INIT(0);
static atomic_t kmcl_hv_buffer_alloc_failures = ATOMIC_INIT(0);
static atomic_t kmcl_hv_buffers_alive = ATOMIC_INIT(0);

void kmcl_hv_test_fail_allocs(int rings, int buffers)
{
	atomic_set(&kmcl_hv_ring_alloc_failures, rings);
	atomic_set(&kmcl_hv_buffer_alloc_failures, buffers);
}

int kmcl_hv_test_buffers_alive(void)
{
	return atomic_read(&kmcl_hv_buffers_alive);
}

static bool kmcl_hv_inject(atomic_t *failures)
{
	return atomic_add_unless(failures, -1, 0);
}

static void kmcl_hv_count_buffer(int n)
{
	atomic_add(n, &kmcl_hv_buffers_alive);
}
#else
#define kmcl_hv_inject(failures) false
#define kmcl_hv_count_buffer(n) do { } while (0)
#endif

/*
 * The bytes of each ring for RingBufferPageCount 4 KiB pages per direction,
 * control page included, as Hyper-V counts them (kernel pages may be
 * larger: VMBUS_RING_SIZE() rounds up to whole ones).
 *
 * vmbus_alloc_ring() takes send and receive ring as one block of physically
 * contiguous pages, a power of two of them (get_order()). kmcl makes each
 * ring half such a block, so that nothing of it lies unused: a count that
 * is not a power of two is rounded up to the next one. A block beyond the
 * page allocator's largest (MAX_PAGE_ORDER) can never be had, and asking for
 * one warns: such a count is refused with -EINVAL.
 */
int kmcl_hv_ring_bytes(u32 ring_pages, u32 *bytes)
{
	unsigned long b;

	if (ring_pages < 2 || ring_pages > KMCL_HV_RING_PAGES_MAX)
		return -EINVAL;
	b = VMBUS_RING_SIZE((unsigned long)(ring_pages - 1) * HV_HYP_PAGE_SIZE);
	b = roundup_pow_of_two(b);
	if (get_order(2 * b) > MAX_PAGE_ORDER)
		return -EINVAL;
	*bytes = b;
	return 0;
}

/*
 * vmbus_alloc_ring() for RingBufferPageCount: both rings in one block,
 * recorded in the channel (ringbuffer_page and its counts) for
 * vmbus_connect_ring() and vmbus_free_ring().
 */
int kmcl_hv_alloc_ring(struct vmbus_channel *c, u32 ring_pages)
{
	u32 bytes;
	int ret;

	ret = kmcl_hv_ring_bytes(ring_pages, &bytes);
	if (ret)
		return ret;
	if (kmcl_hv_inject(&kmcl_hv_ring_alloc_failures))
		return -ENOMEM;
	return vmbus_alloc_ring(c, bytes, bytes);
}

/*
 * vmbus_open(), in its two steps: the rings' allocation (where an order-7
 * or order-8 block is often not to be had, and where the KUnit suites
 * inject that failure), then vmbus_connect_ring(), which shares them with
 * the host and opens the channel. On failure nothing is left allocated.
 */
int kmcl_hv_open(struct vmbus_channel *c, u32 ring_pages, void (*cb)(void *),
		 void *ctx)
{
	int ret;

	ret = kmcl_hv_alloc_ring(c, ring_pages);
	if (ret)
		return ret;
	ret = vmbus_connect_ring(c, cb, ctx);
	if (ret)
		vmbus_free_ring(c);
	return ret;
}

void kmcl_hv_close(struct vmbus_channel *c)
{
	/*
	 * Also after a failed vmbus_open(), which leaves the callback and its
	 * context set: closing resets them (and finds nothing else to do).
	 */
	vmbus_close(c);
}

/*
 * Hands the channel back as hv_vmbus offered it, for the next driver: the
 * defaults kmcl_hv_prepare_open() overrode.
 */
void kmcl_hv_forget_settings(struct vmbus_channel *c)
{
	c->max_pkt_size = 0;
	c->rqstor_size = 0;
	c->next_request_id_callback = NULL;
	c->request_addr_callback = NULL;
	set_channel_read_mode(c, HV_CALL_BATCHED);
}

u32 kmcl_hv_device_offer_mmio_mb(struct hv_device *dev)
{
	return dev->channel ? dev->channel->offermsg.offer.mmio_megabytes : 0;
}

int kmcl_hv_allocate_mmio(struct hv_device *dev, u64 size, u64 *start)
{
	struct resource *res = NULL;
	int ret;

	ret = vmbus_allocate_mmio(&res, dev, 0, -1, size, PAGE_SIZE, false);
	if (!ret)
		*start = res->start;
	return ret;
}

void kmcl_hv_free_mmio(u64 start, u64 size)
{
	vmbus_free_mmio(start, size);
}

/* ---- GPADLs. ---- */

struct vmbus_gpadl *kmcl_hv_gpadl_alloc(void)
{
	return kzalloc(sizeof(struct vmbus_gpadl), GFP_KERNEL);
}

void kmcl_hv_gpadl_free(struct vmbus_gpadl *g)
{
	kfree(g);
}

int kmcl_hv_gpadl_establish(struct vmbus_channel *c, void *buf, u32 size,
			    struct vmbus_gpadl *g)
{
	return vmbus_establish_gpadl(c, buf, size, g);
}

/*
 * For a buffer from kmcl_hv_alloc_buffer(): it is host-visible already (in
 * a confidential VM, decrypted by the allocation); Linux leaves its
 * re-encryption to vmbus_free_buffer().
 */
int kmcl_hv_gpadl_establish_decrypted(struct vmbus_channel *c, void *buf,
				      u32 size, struct vmbus_gpadl *g)
{
	return vmbus_establish_gpadl_caller_decrypted(c, buf, size, g);
}

int kmcl_hv_gpadl_teardown(struct vmbus_channel *c, struct vmbus_gpadl *g)
{
	return vmbus_teardown_gpadl(c, g);
}

/*
 * A teardown failed: the host may still map the GPADL's pages. kmcl then
 * treats them as still shared, as Linux treats pages whose re-encryption
 * failed: never freed.
 */
void kmcl_hv_gpadl_mark_shared(struct vmbus_gpadl *g)
{
	g->decrypted = true;
}

/*
 * A buffer to share with the host: vmbus_alloc_buffer() allocates it in
 * physically contiguous chunks, as large as the allocator gives, and in a
 * confidential VM decrypts each chunk; outside one it is plain vzalloc()
 * memory (chunks NULL).
 */
void *kmcl_hv_alloc_buffer(struct vmbus_channel *c, u32 size,
			   struct page ***chunks, u32 *chunk_cnt)
{
	void *addr;

	*chunks = NULL;
	*chunk_cnt = 0;
	if (kmcl_hv_inject(&kmcl_hv_buffer_alloc_failures))
		return NULL;
	addr = vmbus_alloc_buffer(c, size, chunks, chunk_cnt);
	if (addr)
		kmcl_hv_count_buffer(1);
	return addr;
}

/*
 * vmbus_free_buffer(): re-encrypts each chunk and frees it, and leaks a
 * chunk whose re-encryption failed.
 */
void kmcl_hv_free_buffer(void *addr, struct page **chunks, u32 chunk_cnt)
{
	vmbus_free_buffer(addr, chunks, chunk_cnt);
	kmcl_hv_count_buffer(-1);
}

/*
 * A buffer the host may still see is never freed. What kmemleak tracks of
 * it (the vzalloc() area, or the chunk array) is kept for good.
 */
void kmcl_hv_leak_buffer(void *addr, struct page **chunks)
{
	kmemleak_not_leak(chunks ? (const void *)chunks : addr);
}

u32 kmcl_hv_gpadl_handle(const struct vmbus_gpadl *g)
{
	return g->gpadl_handle;
}

bool kmcl_hv_gpadl_decrypted(const struct vmbus_gpadl *g)
{
	return g->decrypted;
}

void *kmcl_hv_vmap_pages(struct page **pages, u32 count)
{
	return vmap(pages, count, VM_MAP, PAGE_KERNEL);
}

void kmcl_hv_vunmap(void *addr)
{
	vunmap(addr);
}

/*
 * Memory the host may still see (its re-encryption failed) must never go
 * back to the allocator. kmcl keeps it forever; tell kmemleak so.
 */
void kmcl_mark_not_leak(const void *ptr)
{
	kmemleak_not_leak(ptr);
}

/* ---- Sub-channels and target CPUs. ---- */

/*
 * Sets (or, with NULL, clears) the callback hv_vmbus runs, from its offer
 * work, for each sub-channel the host offers of the primary channel c.
 */
void kmcl_hv_set_sc_callback(struct vmbus_channel *c,
			     void (*cb)(struct vmbus_channel *sc))
{
	vmbus_set_sc_create_callback(c, cb);
}

/* The primary channel of a sub-channel offer, NULL for a primary. */
struct vmbus_channel *kmcl_hv_sc_primary(struct vmbus_channel *sc)
{
	return sc->primary_channel;
}

/* The offer's sub-channel index: 0 for a primary channel. */
u16 kmcl_hv_sc_index(struct vmbus_channel *sc)
{
	return sc->offermsg.offer.sub_channel_index;
}

/*
 * The CPU the host interrupts for this channel. hv_vmbus chooses it at the
 * offer and moves it when an administrator writes the channel's sysfs
 * "cpu" attribute; 7.3 exports no way for a driver to move it.
 */
u32 kmcl_hv_channel_target_cpu(struct vmbus_channel *c)
{
	return READ_ONCE(c->target_cpu);
}
