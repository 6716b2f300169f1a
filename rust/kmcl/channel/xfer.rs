// SPDX-License-Identifier: GPL-2.0

//! Transfer pages: receive buffers a client registered under a page-set id,
//! the type-7 packets that point into them, and the server's send of such
//! packets.
//!
//! A client shares a receive buffer with a GPADL, announces it to the peer
//! in its device's own protocol, and registers the GPADL with the channel
//! under the page-set id the peer will name ([`Channel::register_receive_buffer`]).
//! From then on the channel owns the GPADL. A type-7 packet is delivered
//! only if its id names a registered buffer and every range lies inside it;
//! anything else is refused as malformed. A delivered packet holds the
//! buffer: [`Channel::unregister_receive_buffer`] waits until every packet
//! that points into it is finished before it hands the GPADL back, so the
//! memory a packet reads is never deleted under it.

use core::sync::atomic::{
    AtomicU32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::{
    gpadl::{
        Gpadl,
        GpadlMapping, //
    },
    incoming::IncomingPacket,
    outgoing::{
        Packet,
        SendError,
        SendFlags, //
    },
    Channel,
    Endpoint,
    State, //
};
pub(crate) use crate::wire::xfer::XferRange as TransferRange;
use crate::{
    sys,
    wire::{
        packet::{
            self,
            Kind, //
        },
        xfer::{
            self,
            XferError, //
        },
    },
};

/// A registered receive buffer as the receive path reads it: the page
/// frame numbers of its memory.
///
/// # Invariants
///
/// The `len` bytes from `offset` in the pages `pfns` stay allocated while
/// the buffer is in a channel's [`Registry`] or `holders` is not zero: the
/// registry entry owns the [`Gpadl`] that owns the memory, and it is removed
/// (and the GPADL handed back or deleted) only once `holders` is zero.
/// `holders` changes only under the channel lock.
pub(crate) struct BufferView {
    pfns: KVec<u64>,
    offset: usize,
    len: usize,
    holders: AtomicU32,
}

impl BufferView {
    /// Copies `dst.len()` bytes of the buffer at `pos` into `dst`.
    fn copy_out(&self, pos: usize, dst: &mut [u8]) -> Result {
        let n = dst.len();
        if pos.checked_add(n).is_none_or(|e| e > self.len) {
            return Err(EINVAL);
        }
        let mut done = 0;
        while done < n {
            let abs = self.offset + pos + done;
            let (page, off) = (abs / 4096, abs % 4096);
            let chunk = (4096 - off).min(n - done);
            let pfn = *self.pfns.get(page).ok_or(EINVAL)?;
            let va = sys::pfn_to_virt(pfn).ok_or(EFAULT)?;
            // SAFETY: `va` is the direct-map address of a page of the buffer,
            // which by the invariant stays allocated while the caller's
            // packet holds it; `off + chunk <= 4096`; `dst` has room for
            // `chunk` bytes from `done`. The peer may write the buffer at the
            // same time: the bytes are copied, never referenced.
            unsafe {
                core::ptr::copy_nonoverlapping(va.add(off), dst.as_mut_ptr().add(done), chunk)
            };
            done += chunk;
        }
        Ok(())
    }
}

/// What a delivered type-7 packet holds of its receive buffer. Dropped
/// only under the receive lock (the packet's finish, or a teardown), so
/// that a waiting unregister sees the count fall.
pub(crate) struct XferHold {
    view: Arc<BufferView>,
}

impl Drop for XferHold {
    fn drop(&mut self) {
        self.view.holders.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    id: u16,
    view: Arc<BufferView>,
    gpadl: Gpadl,
    /// Being unregistered: packets naming it are refused.
    retiring: bool,
}

/// A channel's receive buffers by page-set id, under the receive lock.
pub(crate) struct Registry {
    entries: KVec<Entry>,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self {
            entries: KVec::new(),
        }
    }

    /// Admits the ranges of a type-7 packet: its id must name a registered
    /// buffer and every range must lie inside it. The returned hold keeps
    /// the buffer until the packet is finished.
    pub(crate) fn admit(&self, x: &xfer::TransferPages<'_>) -> Result<XferHold, XferError> {
        let e = self
            .entries
            .iter()
            .find(|e| e.id == x.pageset_id && !e.retiring)
            .ok_or(XferError::UnknownPageSet(x.pageset_id))?;
        x.check_within(e.view.len as u64)?;
        e.view.holders.fetch_add(1, Ordering::Relaxed);
        Ok(XferHold {
            view: e.view.clone(),
        })
    }

    /// Number of registered buffers.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn holders(&self, id: u16) -> u32 {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map_or(0, |e| e.view.holders.load(Ordering::Relaxed))
    }
}

/// The ranges of a delivered transfer-page packet, inside the receive
/// buffer its page-set id names. Every range was checked against the
/// buffer when the packet arrived; the bytes are read by copy, as the peer
/// may write the buffer at any time.
pub struct TransferPages<'a> {
    hdr: xfer::TransferPages<'a>,
    view: &'a BufferView,
}

impl TransferPages<'_> {
    /// The page-set id the packet names.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn pageset_id(&self) -> u16 {
        self.hdr.pageset_id
    }

    /// The sender's `sender_owns_set` byte.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn sender_owns_set(&self) -> u8 {
        self.hdr.sender_owns_set
    }

    /// Number of ranges.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn len(&self) -> usize {
        self.hdr.len()
    }

    /// Whether the packet names no range.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    // Inlined in the caller: calls only exported functions, so it needs
    // no export of its own.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Range `i`, as offset and length in the receive buffer.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn range(&self, i: usize) -> Option<TransferRange> {
        if i >= self.len() {
            return None;
        }
        self.hdr.range(i)
    }

    /// The ranges in packet order.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn ranges(&self) -> impl Iterator<Item = TransferRange> + '_ {
        // Built on `range()`, so that what a caller's module instantiates
        // calls only exported functions.
        (0..self.len()).filter_map(|i| self.range(i))
    }

    /// Copies `dst.len()` bytes of range `i`, from `pos` within the range,
    /// into `dst`. `EINVAL` for a range the packet does not have or bytes
    /// beyond its end.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn read(&self, i: usize, pos: usize, dst: &mut [u8]) -> Result {
        let r = self.range(i).ok_or(EINVAL)?;
        if pos
            .checked_add(dst.len())
            .is_none_or(|e| e > r.byte_count as usize)
        {
            return Err(EINVAL);
        }
        self.view.copy_out(r.byte_offset as usize + pos, dst)
    }

    /// Copies all of range `i` into the start of `dst` and returns its
    /// length; `EOVERFLOW` if `dst` is shorter than the range.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    // Inlined in the caller: calls only exported functions, so it needs
    // no export of its own.
    #[inline]
    pub fn copy_range(&self, i: usize, dst: &mut [u8]) -> Result<usize> {
        let n = self.range(i).ok_or(EINVAL)?.byte_count as usize;
        let dst = dst.get_mut(..n).ok_or(EOVERFLOW)?;
        self.read(i, 0, dst)?;
        Ok(n)
    }
}

impl IncomingPacket {
    /// The ranges of a transfer-page packet (type 7) inside the receive
    /// buffer registered under its page-set id; `None` for any other
    /// packet. A kmcl addition: KMCL has no transfer pages.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn transfer_pages(&self) -> Option<TransferPages<'_>> {
        let hold = self.xfer.as_ref()?;
        let b = self.buf.as_ref()?;
        match packet::parse(b.get(..self.len)?, &self.limits).ok()?.kind {
            Kind::XferPages(hdr) => Some(TransferPages {
                hdr,
                view: &hold.view,
            }),
            _ => None,
        }
    }
}

impl Channel {
    /// Registers `gpadl` as the receive buffer that the peer's transfer-page
    /// packets name by `pageset_id`. Client only, while the channel is open
    /// (Opened, Started or Paused); the channel owns the GPADL until
    /// [`Channel::unregister_receive_buffer`] hands it back, or, if it is
    /// still registered when the channel closes, deletes it after Closed.
    ///
    /// `EEXIST` if the id is taken, `EINVAL` on a server or a channel not
    /// open, `ENODEV` once the peer is gone; the GPADL comes back with the
    /// error.
    ///
    /// Context: process context only (`might_sleep()` is checked); in
    /// atomic context the GPADL comes back with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK), nothing registered.
    pub fn register_receive_buffer(
        &self,
        pageset_id: u16,
        gpadl: Gpadl,
    ) -> core::result::Result<(), (Error, Gpadl)> {
        if let Err(e) = self.check_may_sleep("register_receive_buffer") {
            return Err((e, gpadl));
        }
        kernel::task::might_sleep();
        if self.endpoint() != Endpoint::Client {
            return Err((EINVAL, gpadl));
        }
        let view = {
            let Some(mem) = gpadl.memory_ref() else {
                return Err((EINVAL, gpadl));
            };
            let offset = mem.offset();
            match mem.pfns() {
                Ok((pfns, len)) => Arc::new(
                    BufferView {
                        pfns,
                        offset,
                        len,
                        holders: AtomicU32::new(0),
                    },
                    GFP_KERNEL,
                ),
                Err(e) => return Err((e, gpadl)),
            }
        };
        let view = match view {
            Ok(v) => v,
            Err(e) => return Err((e.into(), gpadl)),
        };
        let c = self.inner.lock();
        if c.peer_gone || c.lost {
            return Err((ENODEV, gpadl));
        }
        if !matches!(c.state, State::Opened | State::Started | State::Paused) {
            return Err((EINVAL, gpadl));
        }
        // The receive lock nests inside the control lock.
        let mut g = self.rx.lock();
        if g.xfer.entries.iter().any(|e| e.id == pageset_id) {
            return Err((EEXIST, gpadl));
        }
        if g.xfer.entries.reserve(1, GFP_ATOMIC).is_err() {
            return Err((ENOMEM, gpadl));
        }
        // Cannot fail: room for one entry was reserved above.
        let _ = g.xfer.entries.push_within_capacity(Entry {
            id: pageset_id,
            view,
            gpadl,
            retiring: false,
        });
        Ok(())
    }

    /// Unregisters the receive buffer of `pageset_id` and hands its GPADL
    /// back, for the driver to delete. From the call on, packets naming the
    /// id are refused as malformed; the call then waits, up to `timeout`,
    /// until every delivered packet that points into the buffer is finished.
    ///
    /// `ENOENT` for an id not registered; `ETIMEDOUT` (or `ERESTARTSYS` on a
    /// signal) if packets still hold the buffer, which then stays
    /// unregistering and may be asked for again.
    ///
    /// Context: process context only (`might_sleep()` is checked), not from
    /// a thread that itself holds such a packet; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context, the buffer
    /// left registered.
    pub fn unregister_receive_buffer(&self, pageset_id: u16, timeout: Delta) -> Result<Gpadl> {
        self.check_may_sleep("unregister_receive_buffer")?;
        kernel::task::might_sleep();
        {
            let mut g = self.rx.lock();
            let e = g
                .xfer
                .entries
                .iter_mut()
                .find(|e| e.id == pageset_id)
                .ok_or(ENOENT)?;
            e.retiring = true;
        }
        self.wait_until_interruptible(&self.rx, timeout, |g| g.xfer.holders(pageset_id) == 0)?;
        let entry = {
            let mut g = self.rx.lock();
            let pos = g
                .xfer
                .entries
                .iter()
                .position(|e| e.id == pageset_id && e.view.holders.load(Ordering::Relaxed) == 0)
                .ok_or(ENOENT)?;
            g.xfer.entries.remove(pos).map_err(|_| ENOENT)?
        };
        Ok(entry.gpadl)
    }

    /// Teardown, before Closed: packets deferred to process context will
    /// not be delivered again; they let go of their receive buffers, so that
    /// Closed can unregister them.
    pub(super) fn xfer_release_deferred(&self) {
        {
            let mut g = self.rx.lock();
            for p in g.deferred.iter_mut() {
                *p.xfer = None;
            }
        }
        self.wake_waiters();
    }

    /// Teardown, after Closed: takes the buffers still registered, to be
    /// dropped once the connection is closed (see [`LeftBuffers`]).
    pub(super) fn xfer_take_left(&self) -> LeftBuffers {
        LeftBuffers {
            chan: self.id(),
            entries: core::mem::take(&mut self.rx.lock().xfer.entries),
        }
    }
}

/// Receive buffers still registered when their channel closed. Dropping
/// this, in process context and after the connection closed, unregisters
/// them and deletes their GPADLs: after the close, so that a server that
/// unmaps the GPADL in its own Closed, which the close triggers, does not
/// hold the deletion forever.
pub(super) struct LeftBuffers {
    chan: u32,
    entries: KVec<Entry>,
}

impl Drop for LeftBuffers {
    fn drop(&mut self) {
        for e in core::mem::take(&mut self.entries).into_iter() {
            if e.view.holders.load(Ordering::Relaxed) != 0 {
                // Cannot happen: every packet was finished or let go before
                // Closed. Were one still to read the buffer, its memory is
                // leaked rather than freed under it.
                pr_err!(
                    "channel {}: receive buffer {:#x} still held at close; leaked\n",
                    self.chan,
                    e.id
                );
                core::mem::forget(e);
                continue;
            }
            pr_warn!(
                "channel {}: receive buffer {:#x} still registered at close; unregistered, its GPADL deleted\n",
                self.chan,
                e.id
            );
            drop(e);
        }
    }
}

impl Packet {
    /// Sends a transfer-page packet (type 7) from a server: `data` in band,
    /// and `ranges` of the client's receive buffer that the client
    /// registered under `pageset_id`. `mapping` is the server's mapping of
    /// that buffer's GPADL, through which the server wrote the ranges'
    /// bytes beforehand; every range must lie inside it. A kmcl addition
    /// (the host's side of Linux's netvsc receive path).
    ///
    /// `EINVAL` on a client, for a range outside `mapping`, or for ranges
    /// and data that do not fit the packet. As [`Packet::send`] otherwise.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn send_transfer_pages(
        mut self,
        mapping: &GpadlMapping,
        pageset_id: u16,
        ranges: &[TransferRange],
        data: &[u8],
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        let within = ranges.iter().all(|r| r.end() <= mapping.len() as u64);
        if self.channel().endpoint() != Endpoint::Server || !within {
            return Err(SendError {
                error: EINVAL,
                packet: self,
            });
        }
        let wait = flags.contains(SendFlags::WAIT_FOR_COMPLETION);
        let bits = if wait {
            packet::FLAG_COMPLETION_REQUESTED
        } else {
            0
        };
        let inner = self.get_mut();
        // The transaction id is patched in when the send takes its slot.
        let Some(off) = xfer::encode(
            &mut inner.buf,
            bits,
            0,
            pageset_id,
            false,
            ranges,
            data.len(),
        ) else {
            return Err(SendError {
                error: EINVAL,
                packet: self,
            });
        };
        let total = off + packet::align8(data.len());
        inner.buf[off..off + data.len()].copy_from_slice(data);
        inner.buf[off + data.len()..total].fill(0);
        inner.len = total;
        inner.wait = wait;
        inner.payload_len = data.len();
        inner.range_count = 0;
        // The transport writes the descriptor; the transfer-page header and
        // ranges before `off` go out as the packet's ranges.
        inner.ty = packet::TYPE_DATA_XFER_PAGES;
        inner.offset = off;
        self.submit_encoded()
    }
}
