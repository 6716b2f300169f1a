// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of kmcl_bench: way (d), a driver written against Linux's own
 * VMBus API, as netvsc and hv_utils are, and the channel that ways (d) and
 * (e) run on.
 *
 * The channel is a vmbus_channel built in memory, set up the way
 * hv_ringbuffer_init() and vmbus_open() set one up (a control page and the
 * data pages mapped twice in a row per direction, a packet buffer, a
 * requestor), with is_dedicated_interrupt set so that signalling the host
 * is a hypercall that fails harmlessly off Hyper-V. kmcl's KUnit suites
 * build theirs the same way (rust/helpers/hv_test.c, which only kmcl.ko
 * links); the benchmark keeps its own copy rather than have kmcl export
 * test helpers. The host's end of both rings is played in Rust with kmcl's
 * ring code.
 *
 * The C driver sends with vmbus_sendpacket_getid(), receives in its channel
 * callback with hv_pkt_iter_first() / __hv_pkt_iter_next() /
 * hv_pkt_iter_close() (each packet copied out of the ring once: the
 * look-ahead of __hv_pkt_iter_next() is the next iteration's copy), and
 * finds the request of a completion with vmbus_request_addr_match().
 */

#include <linux/bottom_half.h>
#include <linux/hyperv.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "kmcl_bench_c.h"

/* The request a completion finishes: the driver's own bookkeeping. */
struct kmcl_bench_req {
	void *resp;
	u32 resp_len;
	u32 got;
	bool done;
};

struct kmcl_bench_chan {
	struct vmbus_channel chan;
	struct page *pages[2];
	u32 page_cnt;
	/* What the C driver's callback saw. */
	u64 received;
	u64 errors;
	struct kmcl_bench_req req;
};

static struct kmcl_bench_chan *to_bench(struct vmbus_channel *c)
{
	return container_of(c, struct kmcl_bench_chan, chan);
}

static int ring_init(struct hv_ring_buffer_info *rbi, struct page **pages,
		     u32 page_cnt, u32 max_pkt)
{
	struct page **map;
	u32 i;

	*pages = alloc_pages(GFP_KERNEL | __GFP_ZERO, get_order(page_cnt * PAGE_SIZE));
	if (!*pages)
		return -ENOMEM;
	map = kcalloc(page_cnt * 2 - 1, sizeof(*map), GFP_KERNEL);
	if (!map)
		return -ENOMEM;
	map[0] = *pages;
	for (i = 0; i < 2 * (page_cnt - 1); i++)
		map[i + 1] = &(*pages)[i % (page_cnt - 1) + 1];
	rbi->ring_buffer = vmap(map, page_cnt * 2 - 1, VM_MAP, PAGE_KERNEL);
	kfree(map);
	if (!rbi->ring_buffer)
		return -ENOMEM;
	rbi->ring_buffer->feature_bits.value = 1;
	rbi->ring_size = page_cnt << PAGE_SHIFT;
	rbi->ring_size_div10_reciprocal = reciprocal_value(rbi->ring_size / 10);
	rbi->ring_datasize = rbi->ring_size - sizeof(struct hv_ring_buffer);
	rbi->priv_read_index = 0;
	spin_lock_init(&rbi->ring_lock);
	mutex_init(&rbi->ring_buffer_mutex);
	if (max_pkt) {
		rbi->pkt_buffer = kzalloc(max_pkt, GFP_KERNEL);
		if (!rbi->pkt_buffer)
			return -ENOMEM;
		rbi->pkt_buffer_size = max_pkt;
	}
	return 0;
}

static void ring_free(struct hv_ring_buffer_info *rbi, struct page *pages,
		      u32 page_cnt)
{
	if (rbi->ring_buffer)
		vunmap(rbi->ring_buffer);
	kfree(rbi->pkt_buffer);
	if (pages)
		__free_pages(pages, get_order(page_cnt * PAGE_SIZE));
}

void kmcl_bench_chan_free(struct vmbus_channel *c)
{
	struct kmcl_bench_chan *t;

	if (!c)
		return;
	t = to_bench(c);
	ring_free(&c->outbound, t->pages[0], t->page_cnt);
	ring_free(&c->inbound, t->pages[1], t->page_cnt);
	kfree(c->requestor.req_arr);
	bitmap_free(c->requestor.req_bitmap);
	kfree(t);
}

static void kmcl_bench_c_callback(void *ctx);

/*
 * An open channel of ring_pages 4 KiB pages per direction (control page
 * included), a packet buffer of max_pkt bytes and a requestor of rqstor
 * entries. With c_driver, the C driver's callback is set, as vmbus_open()
 * sets it; kmcl, given the channel, is called by the benchmark instead.
 */
struct vmbus_channel *kmcl_bench_chan_new(u32 ring_pages, u32 max_pkt,
					  u32 rqstor, bool c_driver)
{
	struct kmcl_bench_chan *t;
	struct vmbus_channel *c;
	u32 i;

	if (ring_pages < 2 || rqstor < 2)
		return NULL;
	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		return NULL;
	c = &t->chan;
	t->page_cnt = ring_pages;
	c->is_dedicated_interrupt = true;
	c->max_pkt_size = max_pkt;
	c->rqstor_size = rqstor;
	c->next_request_id_callback = vmbus_next_request_id;
	c->request_addr_callback = vmbus_request_addr;
	if (ring_init(&c->outbound, &t->pages[0], ring_pages, 0) ||
	    ring_init(&c->inbound, &t->pages[1], ring_pages, max_pkt))
		goto fail;
	c->requestor.req_arr = kcalloc(rqstor, sizeof(u64), GFP_KERNEL);
	c->requestor.req_bitmap = bitmap_zalloc(rqstor, GFP_KERNEL);
	if (!c->requestor.req_arr || !c->requestor.req_bitmap)
		goto fail;
	for (i = 0; i < rqstor - 1; i++)
		c->requestor.req_arr[i] = i + 1;
	c->requestor.req_arr[i] = U64_MAX;
	c->requestor.size = rqstor;
	spin_lock_init(&c->requestor.req_lock);
	if (c_driver) {
		c->channel_callback_context = t;
		WRITE_ONCE(c->onchannel_callback, kmcl_bench_c_callback);
	}
	return c;
fail:
	kmcl_bench_chan_free(c);
	return NULL;
}

void kmcl_bench_chan_ring(struct vmbus_channel *c, int inbound, void **control,
			  void **data, u32 *size)
{
	struct hv_ring_buffer_info *rbi = inbound ? &c->inbound : &c->outbound;

	*control = rbi->ring_buffer;
	*data = rbi->ring_buffer->buffer;
	*size = rbi->ring_datasize;
}

/*
 * Where hv_vmbus runs channel callbacks: a tasklet, with bottom halves
 * disabled. Work that kmcl queues for the bottom half meanwhile runs in this
 * thread when they are enabled again, which keeps every way in one thread.
 */
void kmcl_bench_bh_disable(void)
{
	local_bh_disable();
}

void kmcl_bench_bh_enable(void)
{
	local_bh_enable();
}

/* ---- Way (d): the C driver. ---- */

/* The channel callback, as a driver's: drains the ring, then closes the iteration. */
static void kmcl_bench_c_callback(void *ctx)
{
	struct kmcl_bench_chan *t = ctx;
	struct vmbus_channel *c = &t->chan;
	struct vmpacket_descriptor *desc;
	struct kmcl_bench_req *req;
	u64 addr;
	u32 n;

	for (desc = hv_pkt_iter_first(c); desc; desc = __hv_pkt_iter_next(c, desc)) {
		switch (desc->type) {
		case VM_PKT_DATA_INBAND:
			t->received++;
			break;
		case VM_PKT_COMP:
			addr = vmbus_request_addr_match(c, desc->trans_id,
							VMBUS_RQST_ADDR_ANY);
			if (addr == VMBUS_RQST_ERROR) {
				t->errors++;
				break;
			}
			req = (struct kmcl_bench_req *)(uintptr_t)addr;
			n = min(hv_pkt_datalen(desc), req->resp_len);
			memcpy(req->resp, hv_pkt_data(desc), n);
			req->got = n;
			WRITE_ONCE(req->done, true);
			break;
		default:
			t->errors++;
		}
	}
	hv_pkt_iter_close(c);
}

/* The host's interrupt: the channel callback, as hv_vmbus's tasklet runs it. */
void kmcl_bench_c_interrupt(struct vmbus_channel *c)
{
	void (*cb)(void *) = READ_ONCE(c->onchannel_callback);

	if (cb)
		cb(c->channel_callback_context);
}

/* count one-way packets of len bytes; 0, or the error of the first that failed. */
int kmcl_bench_c_send(struct vmbus_channel *c, void *buf, u32 len, u32 count)
{
	int ret;

	while (count--) {
		ret = vmbus_sendpacket_getid(c, buf, len, 0, NULL,
					     VM_PKT_DATA_INBAND, 0);
		if (ret)
			return ret;
	}
	return 0;
}

/* Sends a request that wants a completion, copied into resp when it comes. */
int kmcl_bench_c_request(struct vmbus_channel *c, void *buf, u32 len,
			 void *resp, u32 resp_len)
{
	struct kmcl_bench_req *req = &to_bench(c)->req;
	u64 id;

	req->resp = resp;
	req->resp_len = resp_len;
	req->got = 0;
	req->done = false;
	return vmbus_sendpacket_getid(c, buf, len, (u64)(uintptr_t)req, &id,
				      VM_PKT_DATA_INBAND,
				      VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED);
}

/* The length of the response of the last request, or -1 while none came. */
int kmcl_bench_c_request_done(struct vmbus_channel *c)
{
	struct kmcl_bench_req *req = &to_bench(c)->req;

	return READ_ONCE(req->done) ? req->got : -1;
}

u64 kmcl_bench_c_received(struct vmbus_channel *c)
{
	return to_bench(c)->received;
}

u64 kmcl_bench_c_errors(struct vmbus_channel *c)
{
	return to_bench(c)->errors;
}

u64 kmcl_bench_c_sig_events(struct vmbus_channel *c)
{
	return c->sig_events;
}
