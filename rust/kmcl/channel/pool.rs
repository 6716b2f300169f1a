// SPDX-License-Identifier: GPL-2.0

//! The packet pool: allocation, the return of finished packets, and the
//! pool's one-packet cache that allocation takes from without the send
//! lock.
//!
//! The pool itself (`TxState::pool`) is under the send lock. Beside it the
//! channel keeps [`PoolCache`], one slot for a returned packet, which the
//! next [`Channel::packet_allocate`] takes with one compare-and-exchange:
//! a one-way send that wrote its packet, under the send lock it holds
//! anyway, and the drop of a packet (a completion routine's, most often),
//! without the lock, fill it; so a one-way send takes the send lock once,
//! and the return of a request's packet takes it not at all.

use core::{
    ptr,
    sync::atomic::{
        AtomicPtr,
        AtomicU32,
        Ordering, //
    },
};

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    outgoing::{
        Origin,
        Packet,
        PacketInner, //
    },
    transactions::TxState,
    Channel, //
};

/// The epochs of packet pools: each Enable's pool has one of its own, which
/// its packets carry, so that a packet of an earlier pool never enters the
/// current one. Never 0, the epoch of a send state without a pool (and of
/// a packet in caller memory).
static EPOCH: AtomicU32 = AtomicU32::new(0);

/// A new pool epoch, unique among the pools of this boot but for a wrap
/// after 2^32 Enables (a packet held across all of them would at worst be
/// refused by a send for its size, never reach memory it does not own).
pub(super) fn next_epoch() -> u32 {
    loop {
        let e = EPOCH.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if e != 0 {
            return e;
        }
    }
}

/// The value of [`PoolCache::slot`] while the cache is closed: never the
/// address of a box (misaligned).
#[inline(always)]
fn closed() -> *mut PacketInner {
    ptr::without_provenance_mut(1)
}

/// One returned pool packet, taken by the next allocation without the
/// send lock.
///
/// # Invariants
///
/// - `slot` is [`closed()`], null (open and empty), or the pointer of a
///   [`KBox`] of a pool packet of this channel (`KBox::into_raw`), which
///   the slot owns: whoever exchanges the pointer out owns the box. The
///   packet has no routine, typed completion or MDL, and it may hold its
///   reference to the channel.
/// - Only a holder of the channel's send lock makes the slot closed or
///   turns a closed slot into null, and the slot is open (not closed) only
///   while the send gate allows allocation and pool packets keep their
///   references (`TxState::pool_refs`, true until the channel's handle
///   goes away, which closes the slot under the send lock before the
///   handle's reference goes). Without the lock the slot changes only
///   from null to a packet (a put) and from a packet to null (an
///   allocation), each one compare-and-exchange: a closed slot stays
///   closed, so no packet is put into it.
/// - `epoch` is the epoch of the current pool, written under the send lock
///   while the slot is closed.
pub(crate) struct PoolCache {
    slot: AtomicPtr<PacketInner>,
    epoch: AtomicU32,
}

impl PoolCache {
    pub(crate) fn new() -> Self {
        // INVARIANT: closed.
        Self {
            slot: AtomicPtr::new(closed()),
            epoch: AtomicU32::new(0),
        }
    }

    /// The box of a slot value taken out of the slot.
    #[inline(always)]
    fn owned(p: *mut PacketInner) -> Option<KBox<PacketInner>> {
        // SAFETY: by the type invariant a slot value other than null and
        // `closed()` is a box the slot owned; the exchange that took the
        // value out made the caller its owner.
        (!p.is_null() && p != closed()).then(|| unsafe { KBox::from_raw(p) })
    }

    /// Puts `b` into the slot if it is open and empty; hands it back
    /// otherwise. The caller's reference to the channel (`b`'s own, most
    /// often) keeps the slot alive for the exchange, the call's last access
    /// to it.
    #[inline(always)]
    fn fill(&self, b: KBox<PacketInner>) -> core::result::Result<(), KBox<PacketInner>> {
        let p = KBox::into_raw(b);
        match self
            .slot
            .compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
        {
            // INVARIANT: the slot was open and owns the box from here on.
            Ok(_) => Ok(()),
            // SAFETY: `p` comes from `KBox::into_raw` above and the slot did
            // not take it.
            Err(_) => Err(unsafe { KBox::from_raw(p) }),
        }
    }

    /// Takes the cached packet for an allocation: `Ok(None)` when the
    /// cache is closed or empty (or another allocation took the packet),
    /// `Err` with a packet of an earlier pool, which the caller returns
    /// under the send lock.
    #[inline(always)]
    fn take(&self) -> core::result::Result<Option<KBox<PacketInner>>, KBox<PacketInner>> {
        let p = self.slot.load(Ordering::Relaxed);
        if p.is_null() || p == closed() {
            return Ok(None);
        }
        // Whether the slot still owns `p` (taken and put back meanwhile,
        // it is the same box, the slot's again): no field of the packet is
        // read before the exchange makes it this call's.
        if self
            .slot
            .compare_exchange(p, ptr::null_mut(), Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        match Self::owned(p) {
            Some(b) if b.epoch == self.epoch.load(Ordering::Relaxed) => Ok(Some(b)),
            Some(b) => Err(b),
            None => Ok(None),
        }
    }

    /// Whether a packet is in the slot. Read under the send lock, for the
    /// pool's count.
    fn occupied(&self) -> bool {
        let p = self.slot.load(Ordering::Relaxed);
        !p.is_null() && p != closed()
    }
}

// Inline: the drop glue of `Channel`, which a module that drops an
// `Arc<Channel>` instantiates, reaches it (no exported symbol).
impl Drop for PoolCache {
    #[inline]
    fn drop(&mut self) {
        // The channel goes away, so its handle went and closed the slot;
        // a packet left in it is freed all the same.
        drop(Self::owned(*self.slot.get_mut()));
    }
}

impl Channel {
    /// Opens the cache to the current pool or closes it, after a change of
    /// the send gate or of `pool_refs`; closing it empties it into the
    /// pool. Called with the send lock held; returns the reference of a
    /// packet taken out that the pool did not keep, for the caller to drop
    /// after the lock.
    pub(crate) fn cache_gate(&self, tx: &mut TxState) -> Option<Arc<Channel>> {
        let open = tx.gate.alloc.is_ok() && tx.pool_refs && tx.epoch != 0;
        let cur = self.cache.slot.load(Ordering::Relaxed);
        if open && cur != closed() && self.cache.epoch.load(Ordering::Relaxed) == tx.epoch {
            return None;
        }
        // INVARIANT: under the send lock; closed first, whatever follows.
        let taken = self.cache.slot.swap(closed(), Ordering::Acquire);
        let left = PoolCache::owned(taken).and_then(|b| tx.recycle(b));
        if open {
            // INVARIANT: the epoch is written while the slot is closed; the
            // gate allows allocation and the handle lives.
            self.cache.epoch.store(tx.epoch, Ordering::Relaxed);
            self.cache.slot.store(ptr::null_mut(), Ordering::Release);
        }
        left
    }

    /// Returns a finished pool packet, [`PacketInner::recyclable`], under
    /// the send lock `tx`, as dropping it would: into the cache, with its
    /// reference to the channel, when the cache is open and empty and the
    /// packet is of the current pool, else into the pool
    /// (`TxState::recycle`, whose result this returns).
    #[inline(always)]
    #[must_use = "the channel's reference, if the pool did not keep it"]
    pub(super) fn recycle_locked(
        &self,
        tx: &mut TxState,
        mut b: KBox<PacketInner>,
    ) -> Option<Arc<Channel>> {
        if b.epoch == tx.epoch {
            // Recyclable: no routine, typed completion or MDL to clear.
            b.pointer = 0;
            // An open slot means the pool keeps references.
            match self.cache.fill(b) {
                Ok(()) => return None,
                Err(full) => b = full,
            }
        }
        tx.recycle(b)
    }

    /// Returns finished packets of this channel, `list` (linked through
    /// `next`, each [`PacketInner::recyclable`]), to its pool in one trip
    /// through the send lock, as dropping each would.
    pub(super) fn recycle(&self, mut list: Option<KBox<PacketInner>>) {
        let mut g = self.tx.lock();
        while let Some(mut b) = list.take() {
            list = b.next.take();
            // Not the last reference: the caller borrows the channel.
            drop(self.recycle_locked(&mut g, b));
        }
    }

    /// Returns a dropped pool packet to its pool: into the cache without
    /// the send lock when it is open and empty, else under the lock.
    pub(super) fn put_back(mut b: KBox<PacketInner>) {
        let Some(chan) = b.chan.as_deref() else {
            // Not this channel's any more (its handle went away): freed.
            return;
        };
        // SAFETY: the packet's reference keeps the channel alive until the
        // packet is in the cache (the exchange that puts it there is this
        // call's last access to the channel) or, under the send lock, in
        // the pool; from there on the pool keeps the reference, or `left`
        // holds it, until the lock is released: taking the packet out of
        // the pool, or the pool's references away, takes the lock after
        // this hold of it, and the cache, from which an allocation takes
        // packets without the lock, is open only while the handle lives,
        // which closes it under the lock before its reference goes.
        let chan = unsafe { &*ptr::from_ref(chan) };
        b.reset();
        if b.epoch != chan.cache.epoch.load(Ordering::Relaxed) {
            return Self::put_back_locked(chan, b);
        }
        if let Err(b) = chan.cache.fill(b) {
            Self::put_back_locked(chan, b);
        }
    }

    /// [`Channel::put_back`] under the send lock.
    fn put_back_locked(chan: &Channel, b: KBox<PacketInner>) {
        let mut g = chan.tx.lock();
        let left = chan.recycle_locked(&mut g, b);
        drop(g);
        drop(left);
    }
}

impl PacketInner {
    /// Whether finishing the packet is no more than its return to its
    /// pool: a pool packet with no routine, no typed completion and no MDL.
    pub(super) fn recyclable(&self) -> bool {
        self.routine.is_none()
            && self.context.is_none()
            && self.origin == Origin::Pool
            && self.mdl.is_none()
    }

    /// Clears what a driver set, for the packet's next allocation.
    #[inline(always)]
    fn reset(&mut self) {
        self.mdl = None;
        self.routine = None;
        self.pointer = 0;
    }
}

impl TxState {
    /// Puts a finished pool packet back into the pool, as dropping it
    /// would. The packet keeps its reference to the channel in the pool
    /// while `pool_refs` says so, for its next allocation; otherwise, or if
    /// the pool does not take the packet back (a packet of an earlier
    /// pool, or a full pool), the reference is returned, for the caller to
    /// drop once the send lock is released (or under it, if it is not the
    /// last one).
    #[inline(always)]
    #[must_use = "the channel's reference, if the pool did not keep it"]
    pub(super) fn recycle(&mut self, mut b: KBox<PacketInner>) -> Option<Arc<Channel>> {
        b.reset();
        let chan = if self.pool_refs { None } else { b.chan.take() };
        if b.epoch == self.epoch && self.pool.len() < self.pool_size as usize {
            if let Err(mut e) = self.pool.push_within_capacity(b) {
                return chan.or_else(|| e.0.chan.take());
            }
            return chan;
        }
        chan.or_else(|| b.chan.take())
    }
}

/// The packet pool, which the send lock keeps.
impl Channel {
    /// Bytes of caller memory one packet object takes
    /// (`VmbChannelSizeofPacket`).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbChannelSizeofPacket")]
    pub fn sizeof_packet(&self) -> usize {
        core::mem::size_of::<PacketInner>() + self.tx.lock().encoded_capacity
    }

    /// Takes a packet object from the channel's pool (`VmbPacketAllocate`).
    /// Never allocates memory; fails with `ENOMEM` when the pool is empty
    /// and `EINVAL` while the channel is Disabled.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketAllocate")]
    pub fn packet_allocate(&self) -> Result<Packet> {
        let inner = match self.cache.take() {
            Ok(Some(inner)) => inner,
            Ok(None) => self.allocate_locked(None)?,
            Err(stale) => self.allocate_locked(Some(stale))?,
        };
        Ok(self.packet_of(inner))
    }

    /// A pool packet handed out: it belongs to this channel.
    #[inline(always)]
    fn packet_of(&self, mut inner: KBox<PacketInner>) -> Packet {
        // A packet back from an earlier send may still hold its reference
        // (`TxState::recycle`); the pool is this channel's.
        if inner.chan.is_none() {
            inner.chan = Some(self.arc());
        }
        Packet::from_box(inner)
    }

    /// Allocation under the send lock; `stale`, a packet of an earlier pool
    /// found in the cache, is returned first.
    fn allocate_locked(&self, stale: Option<KBox<PacketInner>>) -> Result<KBox<PacketInner>> {
        let mut g = self.tx.lock();
        // Not the last reference: the caller borrows the channel.
        drop(stale.and_then(|b| g.recycle(b)));
        g.gate.alloc?;
        let inner = g.pool.pop().ok_or(ENOMEM)?;
        Ok(inner)
    }

    /// The channel's handle goes away: packets in the pool drop their
    /// references to the channel, and packets that come back later drop
    /// theirs as they do (`TxState::pool_refs`); the cache closes. None of
    /// these references is the last: the handle still holds its own.
    pub(crate) fn drop_pool_refs(&self) {
        let mut g = self.tx.lock();
        g.pool_refs = false;
        drop(self.cache_gate(&mut g));
        for b in g.pool.iter_mut() {
            b.chan = None;
        }
    }

    /// Free packet objects in the pool, the cached one included.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn packet_pool_available(&self) -> usize {
        let g = self.tx.lock();
        g.pool.len() + usize::from(self.cache.occupied())
    }
}
