// SPDX-License-Identifier: GPL-2.0

//! Receive-side state: the preallocated incoming slots, the quota, and what
//! the drain loop and deferral need to know.

use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    callbacks::ProcessPacket,
    incoming::IncomingPacket,
    Channel,
    Sizing, //
};
use crate::{
    transport::LinkReader,
    wire::packet::{
        self,
        Limits, //
    },
};

/// Receive-side state that the drain reads and updates for each packet
/// without the receive lock.
///
/// # Invariants
///
/// - `enabled` and `failed` are written only under the receive lock, so a
///   reader under the lock sees them as they were when the lock was taken.
/// - `outstanding` is raised only by the context that is delivering
///   (`RxState::delivering`, set and cleared under the receive lock, one
///   context at a time), each time before it hands a packet to the driver.
///   It is lowered once per packet: by the finish, under the receive lock,
///   or by the delivering context for a packet handed back to it
///   (`INLINE_DONE`), or by a teardown's `RxState::drop_deferred` for a
///   packet it drops.
pub(crate) struct RxCounters {
    /// Delivery is allowed (Started and not paused or closing).
    pub(crate) enabled: AtomicBool,
    /// PacketFail or a malformed packet stopped the queue.
    pub(crate) failed: AtomicBool,
    /// Packets delivered to the driver and not finished.
    pub(crate) outstanding: AtomicU32,
    /// The transaction quota: at most this many packets outstanding.
    pub(crate) quota: AtomicU32,
    /// The sequence number of the next delivery (never 0).
    pub(crate) next_seq: AtomicU64,
}

impl RxCounters {
    pub(crate) const fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            outstanding: AtomicU32::new(0),
            quota: AtomicU32::new(u32::MAX),
            next_seq: AtomicU64::new(1),
        }
    }

    /// Whether the drain may deliver one more packet now.
    #[inline]
    pub(crate) fn may_deliver(&self) -> bool {
        self.enabled() && !self.failed() && self.below_quota()
    }

    #[inline]
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Below the quota: delivery blocked by it may go on.
    #[inline]
    pub(crate) fn below_quota(&self) -> bool {
        self.outstanding.load(Ordering::Relaxed) < self.quota.load(Ordering::Relaxed)
    }

    /// A sequence number for a delivery.
    #[inline]
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// Receive-side state, under the channel's receive lock.
pub(crate) struct RxState {
    /// The receive half of the attachment's link, while attached and no
    /// context drains: the draining context takes it out when it starts
    /// delivering and puts it back, under the same hold of the receive
    /// lock that clears `delivering`, when it stops. Whoever else needs it
    /// (the detach, the status) finds it here while no drain runs. A detach
    /// comes only with delivery stopped: after `Channel::stop_delivery`
    /// returned, or before the channel was first Started.
    pub(crate) link: Option<LinkReader>,
    /// The driver's ProcessPacket callbacks, from the configuration of the
    /// last Enable (set only while Disabled, so a copy stays current).
    pub(crate) process: Option<Arc<dyn ProcessPacket>>,
    /// Receive buffers of transfer-page packets, by page-set id: admitted
    /// and released by the drain and the finish, under this lock.
    pub(crate) xfer: super::xfer::Registry,
    /// Free incoming buffers, each `slot_size` bytes long.
    pub(super) free: KVec<KVec<u8>>,
    pub(super) slot_size: usize,
    pub(super) ctx_size: usize,
    pub(super) slots: u32,
    pub(crate) limits: Limits,
    /// The channel's reference on itself for its incoming packets, which
    /// hold none of their own (`incoming::ChannelRef`).
    ///
    /// # Invariants
    ///
    /// `Some` whenever `RxCounters::outstanding` is not zero: the drain
    /// sets it, under this lock, before it counts its first packet in.
    /// Taken only
    /// with the count zero, by whoever leaves it so with no drain
    /// delivering (a finish, a teardown's `drop_deferred`) or by the drain
    /// as it stops delivering, and dropped once the receive lock is
    /// released.
    pub(crate) keep: Option<Arc<Channel>>,
    pub(crate) passive: bool,
    /// A context is draining the ring.
    pub(crate) delivering: bool,
    /// An interrupt came while a context was draining: it drains once more.
    pub(crate) drain_again: bool,
    /// Delivery stopped for lack of quota or slots; a completion restarts it.
    pub(crate) stalled: bool,
    /// Packets deferred to process context.
    pub(super) deferred: KVec<IncomingPacket>,
    /// Deferred packets being redelivered in process context now: driver
    /// calls outside the drain loop that Pause and teardown wait for.
    pub(crate) redelivering: u32,
    /// Pipe mode: in-band packets carry the pipe header (channel/pipe.rs).
    pub(super) pipe: bool,
}

impl RxState {
    pub(crate) fn new() -> Self {
        Self {
            link: None,
            process: None,
            xfer: super::xfer::Registry::new(),
            free: KVec::new(),
            slot_size: 0,
            ctx_size: 0,
            slots: 0,
            limits: Limits {
                max_payload: 0,
                max_ranges: 0,
                max_external_bytes: 0,
            },
            keep: None,
            passive: false,
            delivering: false,
            drain_again: false,
            stalled: false,
            deferred: KVec::new(),
            redelivering: 0,
            pipe: false,
        }
    }

    /// Preallocates the incoming slots for an Enable.
    ///
    /// A slot holds the largest packet the channel accepts (descriptor, GPA
    /// ranges, payload) and, behind it, the driver's context area. The same
    /// buffer later carries the packet's completion.
    /// Allocates: call without the channel's locks.
    pub(crate) fn prepare(&mut self, cfg: &Sizing) -> Result {
        let ranges = cfg.max_external_chain as usize
            * (8 + 8 * (cfg.max_external_bytes as usize / 4096 + 2));
        let pkt = packet::DESCRIPTOR_SIZE
            + packet::GPA_HEADER_SIZE
            + ranges
            + packet::align8(cfg.max_packet_size as usize);
        self.ctx_size = packet::align8(cfg.client_context_size as usize);
        self.slot_size = pkt + self.ctx_size;
        self.limits = Limits {
            max_payload: cfg.max_packet_size,
            max_ranges: cfg.max_external_chain,
            max_external_bytes: cfg.max_external_bytes,
        };
        self.slots = cfg.incoming_slots;
        self.free = KVec::with_capacity(self.slots as usize, GFP_KERNEL)?;
        self.deferred = KVec::with_capacity(self.slots as usize, GFP_KERNEL)?;
        for _ in 0..self.slots {
            let mut b = KVec::with_capacity(self.slot_size, GFP_KERNEL)?;
            b.resize(self.slot_size, 0, GFP_KERNEL)?;
            // Cannot fail: the capacity was reserved above.
            let _ = self.free.push_within_capacity(b);
        }
        self.stalled = false;
        Ok(())
    }

    /// Bytes of a slot that hold the packet (the rest is the driver's
    /// context area).
    pub(crate) fn packet_room(&self) -> usize {
        self.slot_size - self.ctx_size
    }

    /// Frees the slots when the channel goes back to Disabled.
    pub(crate) fn release(&mut self) {
        self.free = KVec::new();
        self.deferred = KVec::new();
    }

    /// Releases packets still waiting for process context after a teardown.
    ///
    /// The peer gets no completion for them: the channel is closing. With
    /// no packet left and no drain delivering, returns the channel's
    /// reference on itself (`keep`), for the caller to drop once the receive
    /// lock is released.
    #[must_use = "drop the reference once the receive lock is released"]
    pub(crate) fn drop_deferred(&mut self, c: &RxCounters) -> Option<Arc<Channel>> {
        while let Some(mut p) = self.deferred.pop() {
            if let Some(buf) = p.buf.take() {
                let _ = self.free.push_within_capacity(buf);
            }
            // Counted once, when delivered.
            c.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        if c.outstanding() == 0 && !self.delivering {
            self.keep.take()
        } else {
            None
        }
    }

    /// The drain stops delivering. With no packet left, returns the
    /// channel's reference on itself (`keep`), for the caller to drop once
    /// the receive lock is released.
    #[must_use = "drop the reference once the receive lock is released"]
    pub(super) fn stop_delivering(&mut self, c: &RxCounters) -> Option<Arc<Channel>> {
        self.delivering = false;
        if c.outstanding() == 0 {
            self.keep.take()
        } else {
            None
        }
    }

    /// Packets the driver holds: delivered, not finished, and not waiting in
    /// kmcl's deferred queue.
    pub(crate) fn held_by_driver(&self, c: &RxCounters) -> u32 {
        c.outstanding() - self.deferred.len() as u32
    }

    pub(crate) fn take_buf(&mut self) -> Option<KVec<u8>> {
        self.free.pop()
    }

    pub(crate) fn put_buf(&mut self, buf: KVec<u8>) {
        // The slot count is fixed, so there is always room.
        let _ = self.free.push_within_capacity(buf);
    }

    /// Incoming packets not in the free pool: held by the driver, deferred,
    /// or carrying a queued completion.
    pub(crate) fn in_use(&self) -> u32 {
        self.slots - self.free.len() as u32
    }

    /// The number of slots.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }
}
