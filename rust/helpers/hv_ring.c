// SPDX-License-Identifier: GPL-2.0
/*
 * The hv transport's receive: the next packet of a vmbus_channel's inbound
 * ring, copied once, straight into kmcl's buffer.
 *
 * Linux's iterator copies each packet into the channel's packet buffer
 * (hv_pkt_iter_first()), from which kmcl would copy it again, and
 * __hv_pkt_iter_next() then copies the following packet there too, only for
 * the next call to copy it once more. This reader keeps Linux's ring state
 * -- the private read index that hv_pkt_iter_close() publishes, and the
 * packet buffer's size as the largest packet -- and Linux's hardening (the
 * host's values are read once, the copy is what gets parsed), and refuses
 * what Linux would repair: a write index outside the ring, a length or an
 * offset that Linux would clamp or replace. The data pages are mapped twice
 * in a row, so a packet that wraps is one copy as well.
 */

#include <linux/hyperv.h>

#include "hv_ring.h"

/* The trailer after every packet: the offset it was written at, shifted. */
#define KMCL_HV_PKT_TRAILER sizeof(u64)

/*
 * Returns the packet's length, 0 on an empty ring, -EMSGSIZE if it is
 * larger than len, and -EBADMSG if the host broke the ring or the packet.
 * On error nothing moves.
 */
int kmcl_hv_recv(struct vmbus_channel *c, void *buf, u32 len)
{
	struct hv_ring_buffer_info *rbi = &c->inbound;
	const struct vmpacket_descriptor *ring;
	struct vmpacket_descriptor *copy = buf;
	u32 dsize = rbi->ring_datasize;
	u32 r = rbi->priv_read_index;
	u32 w, avail, n, off;

	/*
	 * The host owns the write index. One beyond the ring, or not on a
	 * packet boundary, makes every following read garbage. The acquire
	 * orders the reads of the packet after it, as Linux's reader does.
	 */
	w = virt_load_acquire(&rbi->ring_buffer->write_index);
	if (w >= dsize || w % 8)
		return -EBADMSG;
	avail = w >= r ? w - r : dsize - r + w;
	if (avail < sizeof(*ring))
		return 0;
	ring = (const struct vmpacket_descriptor *)(hv_get_ring_buffer(rbi) + r);
	n = (u32)READ_ONCE(ring->len8) << 3;
	off = (u32)READ_ONCE(ring->offset8) << 3;
	/*
	 * Linux would clamp a length beyond the data in the ring or the packet
	 * buffer, and replace an offset outside the packet; kmcl refuses such
	 * a packet: a truncated or reinterpreted packet is never delivered.
	 * The trailer must be there too.
	 */
	if (n < sizeof(*ring) || n > rbi->pkt_buffer_size ||
	    n + KMCL_HV_PKT_TRAILER > avail)
		return -EBADMSG;
	if (off < sizeof(*ring) || off > n)
		return -EBADMSG;
	if (n > len)
		return -EMSGSIZE;
	memcpy(buf, ring, n);
	/* The host may have changed the descriptor meanwhile: the copy rules. */
	if (copy->len8 != n >> 3 || copy->offset8 != off >> 3)
		return -EBADMSG;
	r += n + KMCL_HV_PKT_TRAILER;
	if (r >= dsize)
		r -= dsize;
	rbi->priv_read_index = r;
	return n;
}
