// SPDX-License-Identifier: GPL-2.0

//! Transaction slots: ids, completions from the peer, and restore.
//!
//! Every send that waits for a completion takes a slot of the channel's
//! transaction table. Its transaction id is `generation << 32 | (slot + 1)`;
//! the generation changes whenever the slot is freed, so a completion that
//! names a free slot, a slot of another generation, or a slot that was
//! already completed is refused. No valid id is 0.

use core::sync::atomic::Ordering;

use kernel::prelude::*;

use super::{
    outgoing::{
        Origin,
        Packet,
        PacketInner, //
    },
    pool::next_epoch,
    routines::Routines,
    send_queue::{
        Gates,
        Queued, //
    },
    Channel,
    Sizing, //
};
use crate::{
    sys,
    transport::{
        LinkWriter,
        OutPacket, //
    },
    wire::packet, //
};

/// Owner of a transaction slot.
pub(crate) enum TxOwner {
    Packet(Packet),
    Sync(SyncRequest),
}

/// A synchronous request in flight.
pub(crate) struct SyncRequest {
    /// The request's payload.
    pub(super) req: KVec<u8>,
    pub(super) resp: KVec<u8>,
    pub(super) wait: bool,
    pub(super) result: Option<Result<usize>>,
}

impl SyncRequest {
    /// The request as an in-band packet with transaction id `id`.
    pub(super) fn out(&self, id: u64) -> OutPacket<'_> {
        let flags = if self.wait {
            packet::FLAG_COMPLETION_REQUESTED
        } else {
            0
        };
        OutPacket::simple(packet::TYPE_DATA_INBAND, flags, id, &self.req)
    }
}

/// The transaction id of generation `gen` of slot `slot`.
pub(super) fn transaction_id(slot: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(slot + 1)
}

pub(crate) struct TxSlot {
    pub(super) gen: u32,
    pub(super) owner: Option<TxOwner>,
    pub(super) queued: bool,
    pub(super) since: u64,
}

/// Send-side state, under the channel's send lock.
pub(crate) struct TxState {
    /// The send half of the attachment's link, while attached.
    pub(crate) link: Option<LinkWriter>,
    /// What the control state says about sends and packet allocation.
    pub(crate) gate: Gates,
    /// Finished one-way sends waiting for their completion routines.
    pub(crate) routines: Routines,
    pub(super) pool: KVec<KBox<PacketInner>>,
    pub(super) pool_size: u32,
    pub(super) slots: KVec<TxSlot>,
    pub(super) free_slots: KVec<u32>,
    pub(super) queue: KVec<Option<Queued>>,
    pub(super) head: usize,
    pub(super) queued: usize,
    pub(crate) encoded_capacity: usize,
    pub(crate) max_packet_size: u32,
    pub(crate) max_ext_chain: u32,
    pub(super) pending_send: bool,
    /// Packets in the pool keep their reference to the channel, for their
    /// next allocation (`TxState::recycle`): true until the channel's
    /// handle goes away (`Channel::drop_pool_refs`), so that the channel
    /// does not keep itself alive through its pool once its owner is gone.
    /// Carried over by each Enable's new send state.
    pub(crate) pool_refs: bool,
    /// The epoch of this send state's pool (`pool.rs`), which its packets
    /// carry; 0 before `prepare`.
    pub(crate) epoch: u32,
}

impl TxState {
    pub(crate) fn new() -> Self {
        Self {
            link: None,
            gate: Gates::DISABLED,
            routines: Routines::new(),
            pool: KVec::new(),
            pool_size: 0,
            slots: KVec::new(),
            free_slots: KVec::new(),
            queue: KVec::new(),
            head: 0,
            queued: 0,
            encoded_capacity: 0,
            max_packet_size: 0,
            max_ext_chain: 0,
            pending_send: false,
            pool_refs: true,
            epoch: 0,
        }
    }

    /// Preallocates packet objects, transaction slots and the send queue.
    /// Allocates: call without the channel's locks.
    pub(crate) fn prepare(&mut self, cfg: &Sizing) -> Result {
        let pages = cfg.max_external_bytes as usize / 4096 + 2;
        self.encoded_capacity = packet::DESCRIPTOR_SIZE
            + packet::GPA_HEADER_SIZE
            + cfg.max_external_chain as usize * (8 + 8 * pages)
            + packet::align8(cfg.max_packet_size as usize);
        self.max_packet_size = cfg.max_packet_size;
        self.max_ext_chain = cfg.max_external_chain;
        self.pool_size = cfg.packet_pool;
        self.epoch = next_epoch();
        self.pool = KVec::with_capacity(cfg.packet_pool as usize, GFP_KERNEL)?;
        for _ in 0..cfg.packet_pool {
            let mut p = PacketInner::new(self.encoded_capacity, Origin::Pool)?;
            p.epoch = self.epoch;
            let _ = self.pool.push_within_capacity(p);
        }
        // Room for every pool packet, plus caller-memory packets and
        // synchronous requests.
        let nslots = cfg.packet_pool as usize + 64;
        self.slots = KVec::with_capacity(nslots, GFP_KERNEL)?;
        self.free_slots = KVec::with_capacity(nslots, GFP_KERNEL)?;
        for i in 0..nslots {
            let _ = self.slots.push_within_capacity(TxSlot {
                gen: 1,
                owner: None,
                queued: false,
                since: 0,
            });
            let _ = self
                .free_slots
                .push_within_capacity((nslots - 1 - i) as u32);
        }
        let qcap = nslots + cfg.packet_pool as usize + cfg.incoming_slots as usize;
        self.queue = KVec::with_capacity(qcap, GFP_KERNEL)?;
        for _ in 0..qcap {
            let _ = self.queue.push_within_capacity(None);
        }
        self.head = 0;
        self.queued = 0;
        self.pending_send = false;
        Ok(())
    }

    /// Frees the preallocations when the channel goes back to Disabled.
    pub(crate) fn release(&mut self) {
        self.pool = KVec::new();
        self.slots = KVec::new();
        self.free_slots = KVec::new();
        self.queue = KVec::new();
        self.head = 0;
        self.queued = 0;
    }
}

impl TxState {
    /// Frees a slot; returns its packet, if it held one.
    pub(crate) fn free_slot(&mut self, slot: u32) -> Option<Packet> {
        let s = self.slots.get_mut(slot as usize)?;
        s.gen = s.gen.wrapping_add(1);
        s.queued = false;
        let owner = s.owner.take();
        let _ = self.free_slots.push_within_capacity(slot);
        match owner {
            Some(TxOwner::Packet(p)) => Some(p),
            _ => None,
        }
    }

    /// Transactions in flight and entries queued.
    pub(crate) fn outstanding(&self) -> (usize, usize) {
        (self.slots.len() - self.free_slots.len(), self.queued)
    }

    /// Age in jiffies of the oldest transaction in flight.
    pub(crate) fn oldest(&self, now: u64) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.owner.is_some())
            .map(|s| now.saturating_sub(s.since))
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn slots_len(&self) -> usize {
        self.slots.len()
    }

    /// The owner and generation of a busy slot.
    pub(crate) fn slot_owner_mut(&mut self, slot: u32) -> Option<(&mut Option<TxOwner>, u32)> {
        let s = self.slots.get_mut(slot as usize)?;
        Some((&mut s.owner, s.gen))
    }

    /// Puts a restored packet back in flight under its old id.
    pub(crate) fn restore_slot(
        &mut self,
        p: Packet,
        id: u64,
    ) -> core::result::Result<(), (Error, Packet)> {
        let idx = (id & 0xffff_ffff) as u32;
        let gen = (id >> 32) as u32;
        if idx == 0 || idx as usize > self.slots.len() {
            return Err((EINVAL, p));
        }
        let slot = idx - 1;
        let Some(pos) = self.free_slots.iter().position(|&s| s == slot) else {
            return Err((EBUSY, p));
        };
        let last = self.free_slots.len() - 1;
        self.free_slots.swap(pos, last);
        self.free_slots.truncate(last);
        let s = &mut self.slots[slot as usize];
        s.gen = gen;
        s.owner = Some(TxOwner::Packet(p));
        s.queued = false;
        s.since = sys::jiffies();
        Ok(())
    }
}

impl Channel {
    /// Handles a completion packet from the peer.
    pub(crate) fn on_completion(&self, trans_id: u64, payload: &[u8]) {
        let idx = (trans_id & 0xffff_ffff) as u32;
        let gen = (trans_id >> 32) as u32;
        let mut g = self.tx.lock();
        let tx = &mut *g;
        let valid = idx != 0
            && (idx as usize) <= tx.slots.len()
            && tx.slots[idx as usize - 1].gen == gen
            && !tx.slots[idx as usize - 1].queued;
        let slot = idx.wrapping_sub(1);
        let accepted = valid
            && match tx.slots[slot as usize].owner.as_mut() {
                Some(TxOwner::Packet(_)) => true,
                Some(TxOwner::Sync(r)) if r.wait && r.result.is_none() => {
                    r.result = Some(if payload.len() > r.resp.len() {
                        Err(EOVERFLOW)
                    } else {
                        r.resp[..payload.len()].copy_from_slice(payload);
                        Ok(payload.len())
                    });
                    false
                }
                _ => {
                    // A duplicate for a finished request, or a completion of
                    // a send that asked for none.
                    self.reject_completion(trans_id);
                    drop(g);
                    return;
                }
            };
        if !valid {
            drop(g);
            self.reject_completion(trans_id);
            return;
        }
        let p = if accepted { g.free_slot(slot) } else { None };
        if p.is_some() {
            g.routines.begin_call();
        }
        drop(g);
        if let Some(p) = p {
            self.call_counted_routine(p, Ok(()), payload);
        }
        self.wake_waiters();
    }

    fn reject_completion(&self, trans_id: u64) {
        let n = self
            .stats
            .rejected_completions
            .fetch_add(1, Ordering::Relaxed);
        if n < 10 {
            pr_warn!(
                "channel {}: refused completion with transaction id {:#x} (unknown, stale or duplicate)\n",
                self.id(),
                trans_id
            );
        }
    }
}
