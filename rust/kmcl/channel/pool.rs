// SPDX-License-Identifier: GPL-2.0

//! The packet pool: allocation, the return of finished packets, and the
//! pool's one-packet cache that allocation takes from without the send
//! lock.
//!
//! The pool itself (`TxState::pool`) is under the send lock. Beside it the
//! channel keeps [`PoolCache`], one slot for a returned packet, which the
//! next [`Channel::packet_allocate`] takes with one atomic exchange: a
//! one-way send that wrote its packet, under the send lock it holds anyway,
//! and the drop of a packet (a completion routine's, most often), without
//! the lock, fill it; so a one-way send takes the send lock once, and the
//! return of a request's packet takes it not at all.

use core::{
    ptr,
    sync::atomic::{
        fence,
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
/// current one. Never 0, which [`PoolCache`] reads as closed.
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

/// One returned pool packet, taken by the next allocation without the
/// send lock.
///
/// # Invariants
///
/// - `slot` is null or the pointer of a [`KBox`] of a pool packet
///   (`KBox::into_raw`), which the slot owns: whoever exchanges the pointer
///   out owns the box. The packet has no routine, typed completion or MDL.
/// - `open` is written only under the channel's send lock. It is 0
///   (closed) or the epoch of the channel's current pool (open), and open
///   only while the send gate allows allocation and pool packets keep
///   their references (`TxState::pool_refs`, true until the channel's
///   handle goes away).
/// - Under the send lock a packet is put in the slot only while `open` is
///   its epoch; it may then keep its reference to the channel. Without the
///   lock a packet is put in without a reference, only after `open` was
///   read as its epoch, and a full barrier later `open` is read again:
///   found changed, the putter takes the slot's packet back.
/// - Whoever changes `open` away from an epoch (under the send lock)
///   empties the slot after a full barrier. With the putter's barrier, one
///   of the two sees the other's store, so no packet stays in the slot
///   once its pool is closed (the no-lost-packet argument is in
///   Documentation/architecture.rst).
pub(crate) struct PoolCache {
    slot: AtomicPtr<PacketInner>,
    open: AtomicU32,
}

impl PoolCache {
    pub(crate) const fn new() -> Self {
        // INVARIANT: empty and closed.
        Self {
            slot: AtomicPtr::new(ptr::null_mut()),
            open: AtomicU32::new(0),
        }
    }

    /// Takes the packet out of the slot, whatever its pool.
    #[inline]
    fn take_any(&self) -> Option<KBox<PacketInner>> {
        let p = self.slot.swap(ptr::null_mut(), Ordering::Acquire);
        // SAFETY: by the type invariant a non-null `slot` is a box the slot
        // owns; the exchange made this call its owner.
        (!p.is_null()).then(|| unsafe { KBox::from_raw(p) })
    }

    /// Puts `b` into an empty slot; hands it back if the slot is full.
    #[inline(always)]
    fn fill(&self, b: KBox<PacketInner>) -> core::result::Result<(), KBox<PacketInner>> {
        let p = KBox::into_raw(b);
        match self
            .slot
            .compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
        {
            // INVARIANT: the slot owns the box from here on.
            Ok(_) => Ok(()),
            // SAFETY: `p` comes from `KBox::into_raw` above and the slot did
            // not take it.
            Err(_) => Err(unsafe { KBox::from_raw(p) }),
        }
    }

    /// Takes the cached packet for an allocation: `Ok(None)` when the
    /// cache is closed or empty, `Err` with a packet of another pool, which
    /// the caller returns under the send lock.
    #[inline(always)]
    fn take(&self) -> core::result::Result<Option<KBox<PacketInner>>, KBox<PacketInner>> {
        let e = self.open.load(Ordering::Relaxed);
        if e == 0 {
            return Ok(None);
        }
        match self.take_any() {
            Some(b) if b.epoch == e => Ok(Some(b)),
            Some(b) => Err(b),
            None => Ok(None),
        }
    }

    /// Puts `b`, a finished packet with its reference to the channel taken
    /// out, into the slot without the send lock, when the cache is open to
    /// its pool and empty. Otherwise hands back a packet for the caller to
    /// return under the send lock: `b`, or the slot's packet if the cache
    /// closed meanwhile. The caller keeps the channel alive for the call.
    fn put_unlocked(&self, b: KBox<PacketInner>) -> core::result::Result<(), KBox<PacketInner>> {
        let e = b.epoch;
        if e == 0 || self.open.load(Ordering::Relaxed) != e {
            return Err(b);
        }
        self.fill(b)?;
        // Pairs with the barrier of `Channel::cache_gate`: either the closer
        // sees the packet in the slot, or this reads `open` changed.
        fence(Ordering::SeqCst);
        if self.open.load(Ordering::Relaxed) == e {
            return Ok(());
        }
        self.take_any().map_or(Ok(()), Err)
    }

    /// Whether a packet is in the slot. Read under the send lock, for the
    /// pool's count.
    fn occupied(&self) -> bool {
        !self.slot.load(Ordering::Relaxed).is_null()
    }
}

// Inline: the drop glue of `Channel`, which a module that drops an
// `Arc<Channel>` instantiates, reaches it (no exported symbol).
impl Drop for PoolCache {
    #[inline]
    fn drop(&mut self) {
        // The channel goes away: a packet left in the slot holds no
        // reference to it (one that did would keep it alive).
        drop(self.take_any());
    }
}

impl Channel {
    /// Opens the cache to the current pool or closes it, after a change of
    /// the send gate or of `pool_refs`; a closed cache is emptied into the
    /// pool. Called with the send lock held; returns the reference a
    /// packet taken out dropped, for the caller to drop after the lock.
    pub(crate) fn cache_gate(&self, tx: &mut TxState) -> Option<Arc<Channel>> {
        let e = if tx.gate.alloc.is_ok() && tx.pool_refs {
            tx.epoch
        } else {
            0
        };
        if self.cache.open.load(Ordering::Relaxed) == e {
            return None;
        }
        // INVARIANT: written under the send lock; the slot is emptied below.
        self.cache.open.store(e, Ordering::Relaxed);
        // Pairs with the barrier of `PoolCache::put_unlocked`.
        fence(Ordering::SeqCst);
        let b = self.cache.take_any()?;
        tx.recycle(b)
    }

    /// Returns a finished pool packet under the send lock `tx`, as
    /// dropping it would: into the cache, with its reference to the
    /// channel, when the cache is open to its pool and empty, else into
    /// the pool (`TxState::recycle`, whose result this returns).
    #[inline(always)]
    #[must_use = "the channel's reference, if the pool did not keep it"]
    pub(super) fn recycle_locked(
        &self,
        tx: &mut TxState,
        mut b: KBox<PacketInner>,
    ) -> Option<Arc<Channel>> {
        if b.epoch != 0 && self.cache.open.load(Ordering::Relaxed) == b.epoch {
            b.reset();
            // INVARIANT: under the send lock, `open` is the packet's epoch;
            // an open cache means the pool keeps references.
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
    /// the send lock when it can, else under the lock.
    pub(super) fn put_back(mut b: KBox<PacketInner>) {
        let Some(chan) = b.chan.take() else {
            // Not this channel's any more (its handle went away): freed.
            return;
        };
        b.reset();
        let mut b = match chan.cache.put_unlocked(b) {
            // `chan`, this call's reference, is dropped on the way out.
            Ok(()) => return,
            Err(b) => b,
        };
        // SAFETY: `chan` keeps the channel alive until it is moved into
        // `b` below; from there on `b` holds the reference until it is in
        // the pool under the send lock, and then the pool keeps it, or
        // `left` holds it, until the lock is released: taking the packet
        // out of the pool, or the pool's references away, takes the lock
        // after this hold of it. Otherwise `extra` holds it past the lock.
        let c = unsafe { &*Arc::as_ptr(&chan) };
        let mut g = c.tx.lock();
        let extra = if b.chan.is_none() {
            b.chan = Some(chan);
            None
        } else {
            Some(chan)
        };
        let left = g.recycle(b);
        drop(g);
        drop(left);
        drop(extra);
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
