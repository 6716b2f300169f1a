// SPDX-License-Identifier: GPL-2.0
/*
 * For the KUnit suites: a vmbus_channel built in guest memory, with its two
 * rings set up the way hv_ringbuffer_init() sets them up (a control page,
 * the data pages mapped twice in a row) and a requestor allocated the way
 * vmbus_open() allocates it. With is_dedicated_interrupt set, Linux's own
 * ring code -- vmbus_sendpacket_getid(), the hv_pkt_iter_*() functions, the
 * requestor -- runs on it without a Hyper-V host: off Hyper-V, the signal
 * hypercall fails harmlessly. The suites play the host on the other end of
 * the same rings with kmcl's ring code.
 */

#include <linux/hyperv.h>
#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/vmalloc.h>

#include "hv_test.h"
#include "vmbus.h"

struct kmcl_hv_test_channel {
	struct vmbus_channel chan;
	/* The host's interrupt runs the channel callback here, as hv_vmbus's tasklet does. */
	struct tasklet_struct tasklet;
};

static void kmcl_hv_test_tasklet(struct tasklet_struct *tl)
{
	struct kmcl_hv_test_channel *t = from_tasklet(t, tl, tasklet);
	void (*cb)(void *) = READ_ONCE(t->chan.onchannel_callback);

	if (cb)
		cb(t->chan.channel_callback_context);
}

/* As hv_vmbus prepares a channel's rings when it creates the channel. */
static void ring_pre_init(struct hv_ring_buffer_info *rbi)
{
	mutex_init(&rbi->ring_buffer_mutex);
	spin_lock_init(&rbi->ring_lock);
}

/*
 * One ring over page_cnt pages of the block vmbus_alloc_ring() allocated,
 * as hv_ringbuffer_init() maps it: the control page, then the data pages
 * twice in a row. vmbus_free_ring() undoes it.
 */
static int ring_init(struct hv_ring_buffer_info *rbi, struct page *pages,
		     u32 page_cnt, u32 max_pkt)
{
	struct page **map;
	u32 i;

	map = kcalloc(page_cnt * 2 - 1, sizeof(*map), GFP_KERNEL);
	if (!map)
		return -ENOMEM;
	map[0] = pages;
	for (i = 0; i < 2 * (page_cnt - 1); i++)
		map[i + 1] = &pages[i % (page_cnt - 1) + 1];
	rbi->ring_buffer = vmap(map, page_cnt * 2 - 1, VM_MAP, PAGE_KERNEL);
	kfree(map);
	if (!rbi->ring_buffer)
		return -ENOMEM;
	rbi->ring_buffer->feature_bits.value = 1;
	rbi->ring_size = page_cnt << PAGE_SHIFT;
	rbi->ring_size_div10_reciprocal = reciprocal_value(rbi->ring_size / 10);
	rbi->ring_datasize = rbi->ring_size - sizeof(struct hv_ring_buffer);
	rbi->priv_read_index = 0;
	if (max_pkt) {
		rbi->pkt_buffer = kzalloc(max_pkt, GFP_KERNEL);
		if (!rbi->pkt_buffer)
			return -ENOMEM;
		rbi->pkt_buffer_size = max_pkt;
	}
	return 0;
}

void kmcl_hv_test_channel_free(struct vmbus_channel *c)
{
	struct kmcl_hv_test_channel *t;

	if (!c)
		return;
	t = container_of(c, struct kmcl_hv_test_channel, chan);
	kmcl_hv_test_close(c);
	kfree(t);
}

/*
 * A channel that is open already, without a device: as kmcl_hv_test_open()
 * opens one, with the requestor callbacks a driver sets before vmbus_open().
 */
struct vmbus_channel *kmcl_hv_test_channel_new(u32 ring_pages, u32 max_pkt,
					       u32 rqstor_size)
{
	static const guid_t none;
	struct vmbus_channel *c = kmcl_hv_test_channel_alloc(&none, &none, 0);

	if (!c)
		return NULL;
	c->max_pkt_size = max_pkt;
	c->rqstor_size = rqstor_size;
	if (rqstor_size) {
		c->next_request_id_callback = vmbus_next_request_id;
		c->request_addr_callback = vmbus_request_addr;
	}
	if (kmcl_hv_test_open(c, ring_pages, NULL, NULL)) {
		kmcl_hv_test_channel_free(c);
		return NULL;
	}
	return c;
}

void kmcl_hv_test_ring(struct vmbus_channel *c, int inbound, void **control,
		       void **data, u32 *size)
{
	struct hv_ring_buffer_info *rbi = inbound ? &c->inbound : &c->outbound;

	*control = rbi->ring_buffer;
	*data = rbi->ring_buffer->buffer;
	*size = rbi->ring_datasize;
}

u64 kmcl_hv_test_sig_events(struct vmbus_channel *c)
{
	return c->sig_events;
}

/* The packet buffer hv_pkt_iter_first() copies each incoming packet into. */
void kmcl_hv_test_pkt_buffer(struct vmbus_channel *c, void **buf, u32 *size)
{
	*buf = c->inbound.pkt_buffer;
	*size = c->inbound.pkt_buffer_size;
}


/*
 * Stand-ins for vmbus_open() and friends on a device the suites build: a
 * bare channel as hv_vmbus has it for an offer, opened with rings in memory.
 * kmcl's hv bus calls these through the same table it uses for Linux's
 * functions, so binding, open, close, rescind and suspend run kmcl's real
 * code; only the host's side of the open is not there.
 */

static int kmcl_hv_test_open_error;
static unsigned int kmcl_hv_test_open_delay_ms;
static int kmcl_hv_test_gpadl_error;
static bool kmcl_hv_test_reencrypt_fails;
static int kmcl_hv_test_teardown_error;
static u32 kmcl_hv_test_next_gpadl;
static u32 kmcl_hv_test_decrypted_gpadls;
static u32 kmcl_hv_test_decrypted_size;

struct kmcl_hv_test_device {
	struct hv_device dev;
};

static void kmcl_hv_test_device_release(struct device *d)
{
	kfree(container_of(d, struct kmcl_hv_test_device, dev.device));
}

struct vmbus_channel *kmcl_hv_test_channel_alloc(const guid_t *type,
						 const guid_t *instance,
						 u16 mmio_mb)
{
	struct kmcl_hv_test_channel *t = kzalloc(sizeof(*t), GFP_KERNEL);

	if (!t)
		return NULL;
	tasklet_setup(&t->tasklet, kmcl_hv_test_tasklet);
	ring_pre_init(&t->chan.outbound);
	ring_pre_init(&t->chan.inbound);
	t->chan.is_dedicated_interrupt = true;
	t->chan.offermsg.offer.if_type = *type;
	t->chan.offermsg.offer.if_instance = *instance;
	t->chan.offermsg.offer.mmio_megabytes = mmio_mb;
	return &t->chan;
}

struct hv_device *kmcl_hv_test_device_new(struct vmbus_channel *c)
{
	struct kmcl_hv_test_device *t = kzalloc(sizeof(*t), GFP_KERNEL);

	if (!t)
		return NULL;
	device_initialize(&t->dev.device);
	t->dev.device.release = kmcl_hv_test_device_release;
	t->dev.channel = c;
	t->dev.dev_type = c->offermsg.offer.if_type;
	t->dev.dev_instance = c->offermsg.offer.if_instance;
	if (dev_set_name(&t->dev.device, "kmcl-test-%pUl", &t->dev.dev_instance)) {
		put_device(&t->dev.device);
		return NULL;
	}
	return &t->dev;
}

void kmcl_hv_test_device_put(struct hv_device *dev)
{
	put_device(&dev->device);
}

/* An open that takes this long, as one waiting for the host's answer. */
void kmcl_hv_test_set_open_delay(unsigned int ms)
{
	kmcl_hv_test_open_delay_ms = ms;
}

void kmcl_hv_test_set_errors(int open, int gpadl, bool reencrypt_fails)
{
	kmcl_hv_test_open_error = open;
	kmcl_hv_test_gpadl_error = gpadl;
	kmcl_hv_test_reencrypt_fails = reencrypt_fails;
}

int kmcl_hv_test_open(struct vmbus_channel *c, u32 pages,
		      void (*cb)(void *), void *ctx)
{
	u32 max_pkt = c->max_pkt_size, rqstor = c->rqstor_size;
	u32 send, i;
	int ret;

	/* As vmbus_open(): the callback is set before anything can fail. */
	c->channel_callback_context = ctx;
	WRITE_ONCE(c->onchannel_callback, cb);
	if (kmcl_hv_test_open_delay_ms)
		msleep(kmcl_hv_test_open_delay_ms);
	if (kmcl_hv_test_open_error)
		return kmcl_hv_test_open_error;
	if (c->outbound.ring_buffer || c->ringbuffer_page)
		return -EINVAL;
	/*
	 * kmcl's own sizing and Linux's vmbus_alloc_ring(), as kmcl_hv_open()
	 * calls them; only the host's part (vmbus_connect_ring()) is replaced.
	 */
	ret = kmcl_hv_alloc_ring(c, pages);
	if (ret)
		return ret;
	send = c->ringbuffer_send_offset;
	/* As vmbus_open(): sizes and requestor from what the driver set. */
	if (ring_init(&c->outbound, c->ringbuffer_page, send, 0) ||
	    ring_init(&c->inbound, &c->ringbuffer_page[send],
		      c->ringbuffer_pagecount - send, max_pkt))
		goto fail;
	if (rqstor) {
		c->requestor.req_arr = kcalloc(rqstor, sizeof(u64), GFP_KERNEL);
		c->requestor.req_bitmap = bitmap_zalloc(rqstor, GFP_KERNEL);
		if (!c->requestor.req_arr || !c->requestor.req_bitmap)
			goto fail;
		for (i = 0; i < rqstor - 1; i++)
			c->requestor.req_arr[i] = i + 1;
		c->requestor.req_arr[i] = U64_MAX;
		c->requestor.size = rqstor;
		spin_lock_init(&c->requestor.req_lock);
	}
	return 0;
fail:
	kmcl_hv_test_close(c);
	return -ENOMEM;
}

void kmcl_hv_test_close(struct vmbus_channel *c)
{
	struct kmcl_hv_test_channel *t =
		container_of(c, struct kmcl_hv_test_channel, chan);

	/* As vmbus_close(): no callback runs once this returns. */
	WRITE_ONCE(c->onchannel_callback, NULL);
	tasklet_kill(&t->tasklet);
	/* Linux's own: unmaps both rings and frees the block. */
	if (c->ringbuffer_page)
		vmbus_free_ring(c);
	kfree(c->requestor.req_arr);
	bitmap_free(c->requestor.req_bitmap);
	memset(&c->outbound, 0, sizeof(c->outbound));
	memset(&c->inbound, 0, sizeof(c->inbound));
	ring_pre_init(&c->outbound);
	ring_pre_init(&c->inbound);
	memset(&c->requestor, 0, sizeof(c->requestor));
	c->ringbuffer_pagecount = 0;
	c->ringbuffer_send_offset = 0;
	c->channel_callback_context = NULL;
}

/* The block vmbus_alloc_ring() recorded: its pages, and where receive starts. */
void kmcl_hv_test_ring_block(struct vmbus_channel *c, u32 *pages, u32 *send)
{
	*pages = c->ringbuffer_page ? c->ringbuffer_pagecount : 0;
	*send = c->ringbuffer_send_offset;
}

/* The host's interrupt: the channel callback runs in a tasklet. */
void kmcl_hv_test_interrupt(struct vmbus_channel *c)
{
	tasklet_schedule(&container_of(c, struct kmcl_hv_test_channel, chan)->tasklet);
}

void kmcl_hv_test_open_params(struct vmbus_channel *c, u32 *ring_datasize,
			      u32 *max_pkt, u32 *rqstor, bool *direct)
{
	*ring_datasize = c->outbound.ring_datasize;
	*max_pkt = c->max_pkt_size;
	*rqstor = c->rqstor_size;
	*direct = c->callback_mode == HV_CALL_DIRECT;
}

bool kmcl_hv_test_has_callback(struct vmbus_channel *c)
{
	return READ_ONCE(c->onchannel_callback);
}

void kmcl_hv_test_set_rescind(struct vmbus_channel *c)
{
	WRITE_ONCE(c->rescind, true);
}

/* GPADLs: the host's part is a counter; the decrypted state is tracked as Linux does. */
int kmcl_hv_test_gpadl_establish(struct vmbus_channel *c, void *buf, u32 size,
				 struct vmbus_gpadl *g)
{
	if (kmcl_hv_test_gpadl_error)
		return kmcl_hv_test_gpadl_error;
	if (!PAGE_ALIGNED(buf) || !PAGE_ALIGNED(size) || !size)
		return -EINVAL;
	g->gpadl_handle = ++kmcl_hv_test_next_gpadl;
	g->buffer = buf;
	g->size = size;
	/* As in a confidential VM: the pages are shared with the host now. */
	g->decrypted = true;
	return 0;
}

/*
 * vmbus_establish_gpadl_caller_decrypted(): the caller made the buffer
 * host-visible; Linux records nothing to re-encrypt (decrypted stays false).
 */
int kmcl_hv_test_gpadl_establish_decrypted(struct vmbus_channel *c, void *buf,
					   u32 size, struct vmbus_gpadl *g)
{
	if (kmcl_hv_test_gpadl_error)
		return kmcl_hv_test_gpadl_error;
	if (!PAGE_ALIGNED(buf) || !PAGE_ALIGNED(size) || !size)
		return -EINVAL;
	g->gpadl_handle = ++kmcl_hv_test_next_gpadl;
	g->buffer = buf;
	g->size = size;
	g->decrypted = false;
	kmcl_hv_test_decrypted_gpadls++;
	kmcl_hv_test_decrypted_size = size;
	return 0;
}

/* How many caller-decrypted GPADLs were established, and the last one's size. */
u32 kmcl_hv_test_decrypted_gpadl_stats(u32 *last_size)
{
	*last_size = kmcl_hv_test_decrypted_size;
	return kmcl_hv_test_decrypted_gpadls;
}

void kmcl_hv_test_set_teardown_error(int err)
{
	kmcl_hv_test_teardown_error = err;
}

int kmcl_hv_test_gpadl_teardown(struct vmbus_channel *c, struct vmbus_gpadl *g)
{
	if (kmcl_hv_test_teardown_error)
		return kmcl_hv_test_teardown_error;
	g->gpadl_handle = 0;
	/* As Linux: only pages it decrypted itself are encrypted again. */
	g->decrypted = g->decrypted && kmcl_hv_test_reencrypt_fails;
	return 0;
}

/* ---- What kmcl's last driver registration handed to hv_vmbus. ---- */

static char kmcl_hv_test_reg_name[64];
static guid_t kmcl_hv_test_reg_ids[4];
static u32 kmcl_hv_test_reg_count;

/*
 * Called by kmcl_vmbus_driver_register() before __vmbus_driver_register(),
 * which fails at once in the test VM: it has no VMBus.
 */
void kmcl_hv_test_note_registration(const char *name,
				    const struct hv_vmbus_device_id *ids)
{
	u32 n;

	strscpy(kmcl_hv_test_reg_name, name, sizeof(kmcl_hv_test_reg_name));
	for (n = 0; !guid_is_null(&ids[n].guid); n++)
		if (n < ARRAY_SIZE(kmcl_hv_test_reg_ids))
			kmcl_hv_test_reg_ids[n] = ids[n].guid;
	kmcl_hv_test_reg_count = n;
}

u32 kmcl_hv_test_last_registration(char *name, u32 len, guid_t *ids, u32 max)
{
	u32 i;

	strscpy(name, kmcl_hv_test_reg_name, len);
	for (i = 0; i < max && i < kmcl_hv_test_reg_count &&
		    i < ARRAY_SIZE(kmcl_hv_test_reg_ids); i++)
		ids[i] = kmcl_hv_test_reg_ids[i];
	return kmcl_hv_test_reg_count;
}

/* ---- Sub-channels, as hv_vmbus creates and offers them. ---- */

/*
 * A sub-channel offer of primary: the primary's type and instance, a
 * non-zero index, its primary set, as vmbus_process_offer() leaves it.
 */
struct vmbus_channel *kmcl_hv_test_subchannel_new(struct vmbus_channel *primary,
						  u16 index)
{
	struct vmbus_channel *sc =
		kmcl_hv_test_channel_alloc(&primary->offermsg.offer.if_type,
					   &primary->offermsg.offer.if_instance, 0);

	if (!sc)
		return NULL;
	sc->offermsg.offer.sub_channel_index = index;
	sc->primary_channel = primary;
	return sc;
}

/*
 * Offers sc to its primary's driver as vmbus_add_channel_work() does: the
 * sc-create callback runs in process context. -ENOENT when none is set.
 */
int kmcl_hv_test_offer_subchannel(struct vmbus_channel *sc)
{
	void (*cb)(struct vmbus_channel *) =
		READ_ONCE(sc->primary_channel->sc_creation_callback);

	if (!cb)
		return -ENOENT;
	cb(sc);
	return 0;
}

/* What hv_vmbus does when the channel's sysfs "cpu" attribute is written. */
void kmcl_hv_test_set_target_cpu(struct vmbus_channel *c, u32 cpu)
{
	WRITE_ONCE(c->target_cpu, cpu);
}

static void kmcl_hv_test_interrupt_ipi(void *c)
{
	kmcl_hv_test_interrupt(c);
}

/*
 * The host's interrupt arriving on cpu, where the channel's tasklet then
 * runs; on the calling CPU if cpu is offline.
 */
void kmcl_hv_test_interrupt_on(struct vmbus_channel *c, u32 cpu)
{
	if (cpu >= nr_cpu_ids || !cpu_online(cpu) ||
	    smp_call_function_single(cpu, kmcl_hv_test_interrupt_ipi, c, 1))
		kmcl_hv_test_interrupt(c);
}
