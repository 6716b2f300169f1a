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
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "hv_test.h"

struct kmcl_hv_test_ring {
	struct page *pages;
	u32 page_cnt;
};

struct kmcl_hv_test_channel {
	struct vmbus_channel chan;
	struct kmcl_hv_test_ring rings[2];
};

static int ring_init(struct hv_ring_buffer_info *rbi,
		     struct kmcl_hv_test_ring *r, u32 page_cnt, u32 max_pkt)
{
	struct page **map;
	u32 i;

	r->pages = alloc_pages(GFP_KERNEL | __GFP_ZERO, get_order(page_cnt * PAGE_SIZE));
	if (!r->pages)
		return -ENOMEM;
	r->page_cnt = page_cnt;
	map = kcalloc(page_cnt * 2 - 1, sizeof(*map), GFP_KERNEL);
	if (!map)
		return -ENOMEM;
	map[0] = r->pages;
	for (i = 0; i < 2 * (page_cnt - 1); i++)
		map[i + 1] = &r->pages[i % (page_cnt - 1) + 1];
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

static void ring_free(struct hv_ring_buffer_info *rbi, struct kmcl_hv_test_ring *r)
{
	if (rbi->ring_buffer)
		vunmap(rbi->ring_buffer);
	kfree(rbi->pkt_buffer);
	if (r->pages)
		__free_pages(r->pages, get_order(r->page_cnt * PAGE_SIZE));
}

void kmcl_hv_test_channel_free(struct vmbus_channel *c)
{
	struct kmcl_hv_test_channel *t;

	if (!c)
		return;
	t = container_of(c, struct kmcl_hv_test_channel, chan);
	ring_free(&c->outbound, &t->rings[0]);
	ring_free(&c->inbound, &t->rings[1]);
	kfree(c->requestor.req_arr);
	bitmap_free(c->requestor.req_bitmap);
	kfree(t);
}

struct vmbus_channel *kmcl_hv_test_channel_new(u32 ring_pages, u32 max_pkt,
					       u32 rqstor_size)
{
	struct kmcl_hv_test_channel *t = kzalloc(sizeof(*t), GFP_KERNEL);
	struct vmbus_channel *c;
	u32 i;

	if (!t)
		return NULL;
	c = &t->chan;
	c->is_dedicated_interrupt = true;
	c->max_pkt_size = max_pkt;
	if (ring_init(&c->outbound, &t->rings[0], ring_pages, 0) ||
	    ring_init(&c->inbound, &t->rings[1], ring_pages, max_pkt))
		goto fail;
	if (rqstor_size) {
		c->requestor.req_arr = kcalloc(rqstor_size, sizeof(u64), GFP_KERNEL);
		c->requestor.req_bitmap = bitmap_zalloc(rqstor_size, GFP_KERNEL);
		if (!c->requestor.req_arr || !c->requestor.req_bitmap)
			goto fail;
		for (i = 0; i < rqstor_size - 1; i++)
			c->requestor.req_arr[i] = i + 1;
		c->requestor.req_arr[i] = U64_MAX;
		c->requestor.size = rqstor_size;
		spin_lock_init(&c->requestor.req_lock);
		c->rqstor_size = rqstor_size;
		/* As drivers that use the requestor set them before vmbus_open(). */
		c->next_request_id_callback = vmbus_next_request_id;
		c->request_addr_callback = vmbus_request_addr;
	}
	return c;
fail:
	kmcl_hv_test_channel_free(c);
	return NULL;
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

