// SPDX-License-Identifier: GPL-2.0

//! The send path: packet objects, transactions, the send queue, and
//! synchronous requests.
//!
//! Every send that waits for a completion takes a slot of the channel's
//! transaction table. Its transaction id is `generation << 32 | (slot + 1)`;
//! the generation changes whenever the slot is freed, so a completion that
//! names a free slot, a slot of another generation, or a slot that was
//! already completed is refused. No valid id is 0.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::{
        Arc,
        CondVarTimeoutResult, //
    },
    time::Delta, //
};

pub use super::external::Mdl;
use super::{
    callbacks::CompletionRoutine,
    routines::call_routine,
    Channel,
    Inner,
    Sizing,
    State, //
};
use crate::{
    sys,
    transport::WriteError,
    wire::packet::{
        self,
        RangeSpec, //
    },
};

/// Flags of a send (`VMBUS_CHANNEL_SEND_FLAGS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SendFlags(u32);

impl SendFlags {
    /// No flags: the transaction ends when the packet enters the ring.
    pub const NONE: SendFlags = SendFlags(0);
    /// The transaction ends when the peer's completion arrives.
    pub const WAIT_FOR_COMPLETION: SendFlags = SendFlags(0x1);
    /// Describe the external data with the exact MDL length.
    pub const FORCE_MDL_LENGTH: SendFlags = SendFlags(0x2);
    /// The buffer may be pageable (no meaning on Linux; accepted).
    pub const PAGED_BUFFER: SendFlags = SendFlags(0x4);
    const ALL: u32 = 0x7;

    /// From raw bits; unknown bits are refused.
    pub fn from_bits(bits: u32) -> Option<SendFlags> {
        (bits & !Self::ALL == 0).then_some(SendFlags(bits))
    }

    /// Whether all of `other` is set.
    pub fn contains(self, other: SendFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for SendFlags {
    type Output = SendFlags;

    fn bitor(self, rhs: SendFlags) -> SendFlags {
        SendFlags(self.0 | rhs.0)
    }
}

/// External memory described by page frame numbers: one range per entry
/// (`VmbPacketSendWithExternalPfns`).
pub type ExternalRange<'a> = RangeSpec<'a>;

/// Where a packet object's memory came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Pool,
    Caller,
}

pub(crate) struct PacketInner {
    /// The next entry of the channel's list of finished one-way packets.
    pub(super) next: Option<KBox<PacketInner>>,
    chan: Option<Arc<Channel>>,
    buf: KVec<u8>,
    len: usize,
    pointer: usize,
    routine: Option<CompletionRoutine>,
    origin: Origin,
    mdl: Option<Mdl>,
    wait: bool,
    trans_id: u64,
}

impl PacketInner {
    fn new(capacity: usize, origin: Origin) -> Result<KBox<PacketInner>> {
        let mut buf = KVec::with_capacity(capacity, GFP_KERNEL)?;
        buf.resize(capacity, 0, GFP_KERNEL)?;
        Ok(KBox::new(
            PacketInner {
                next: None,
                chan: None,
                buf,
                len: 0,
                pointer: 0,
                routine: None,
                origin,
                mdl: None,
                wait: false,
                trans_id: 0,
            },
            GFP_KERNEL,
        )?)
    }
}

/// A packet object (`VMBPACKET`).
///
/// Taken from the channel's pool with [`Channel::packet_allocate`] or made in
/// caller memory with [`Packet::initialize`]. Sending consumes it; the
/// completion routine gets it back. Dropping it frees it
/// (`VmbPacketFree`): a pool packet goes back to the pool.
pub struct Packet {
    inner: Option<KBox<PacketInner>>,
}

/// Caller-owned memory for one packet object (`VmbPacketInitialize`): make it
/// in advance with [`PacketMemory::new`], turn it into a packet when needed,
/// and take it back with [`Packet::into_memory`].
pub struct PacketMemory(KBox<PacketInner>);

impl PacketMemory {
    /// Allocates memory for one packet of `channel`, [`Channel::sizeof_packet`]
    /// bytes in all.
    pub fn new(channel: &Channel) -> Result<PacketMemory> {
        let cap = channel.inner.lock().tx.encoded_capacity;
        Ok(PacketMemory(PacketInner::new(cap, Origin::Caller)?))
    }
}

/// A send that did not start; the packet is handed back.
pub struct SendError {
    /// Why.
    pub error: Error,
    /// The packet, unchanged but for its payload.
    pub packet: Packet,
}

impl core::fmt::Debug for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SendError({:?})", self.error)
    }
}

impl Packet {
    fn get(&self) -> &PacketInner {
        // INVARIANT: `inner` is `Some` until `drop` or `into_memory`.
        self.inner
            .as_deref()
            .expect("packet used after it was taken apart")
    }

    fn get_mut(&mut self) -> &mut PacketInner {
        self.inner
            .as_deref_mut()
            .expect("packet used after it was taken apart")
    }

    /// Takes the packet's memory apart, for the list of finished packets.
    pub(super) fn into_box(mut self) -> Option<KBox<PacketInner>> {
        self.inner.take()
    }

    /// Puts a packet taken apart with [`Packet::into_box`] together again.
    pub(super) fn from_box(inner: KBox<PacketInner>) -> Packet {
        Packet { inner: Some(inner) }
    }

    /// Makes a packet of `channel` in caller memory (`VmbPacketInitialize`).
    pub fn initialize(channel: &Channel, mut memory: PacketMemory) -> Packet {
        memory.0.chan = Some(channel.arc());
        memory.0.routine = None;
        memory.0.pointer = 0;
        Packet {
            inner: Some(memory.0),
        }
    }

    /// Takes back the memory of a packet made with [`Packet::initialize`];
    /// a pool packet goes back to its pool and `None` is returned.
    pub fn into_memory(mut self) -> Option<PacketMemory> {
        if self.get().origin == Origin::Caller {
            let mut inner = self.inner.take()?;
            inner.chan = None;
            inner.mdl = None;
            return Some(PacketMemory(inner));
        }
        None
    }

    /// The channel of the packet (`VmbPacketGetChannel`).
    pub fn channel(&self) -> &Channel {
        // INVARIANT: a live packet always belongs to a channel.
        self.get()
            .chan
            .as_deref()
            .expect("packet without a channel")
    }

    /// Stores a driver value in the packet (`VmbPacketSetPointer`).
    pub fn set_pointer(&mut self, value: usize) {
        self.get_mut().pointer = value;
    }

    /// The value stored with [`Packet::set_pointer`] (`VmbPacketGetPointer`).
    pub fn pointer(&self) -> usize {
        self.get().pointer
    }

    /// Sets the routine called when the transaction ends
    /// (`VmbPacketSetCompletionRoutine`). Without one, the packet is freed.
    pub fn set_completion_routine(&mut self, routine: CompletionRoutine) {
        self.get_mut().routine = Some(routine);
    }

    /// The transaction id of the last send that waited for a completion.
    pub fn transaction_id(&self) -> u64 {
        self.get().trans_id
    }

    /// The encoded packet as it went into the ring: descriptor, any GPA
    /// ranges, payload and padding.
    pub fn wire_bytes(&self) -> &[u8] {
        let i = self.get();
        &i.buf[..i.len]
    }

    /// The payload of the last send.
    pub fn payload(&self) -> &[u8] {
        let b = self.wire_bytes();
        if b.len() < packet::DESCRIPTOR_SIZE {
            return &[];
        }
        let mut d = [0u8; 16];
        d.copy_from_slice(&b[..16]);
        let off = packet::Descriptor::decode(&d).offset8 as usize * 8;
        b.get(off..).unwrap_or(&[])
    }

    /// Takes back the memory of an external-data send. From here on the
    /// peer reads none of it.
    pub fn take_mdl(&mut self) -> Option<Mdl> {
        let mut mdl = self.get_mut().mdl.take()?;
        mdl.revoke();
        Some(mdl)
    }

    /// Sends `data` (`VmbPacketSend`). With
    /// [`SendFlags::WAIT_FOR_COMPLETION`] the transaction ends when the
    /// peer's completion arrives; without it, when the packet enters the
    /// ring. A full ring queues the packet; it is sent in order when space
    /// frees. Callable from any context.
    pub fn send(self, data: &[u8], flags: SendFlags) -> core::result::Result<(), SendError> {
        self.send_encoded(data, &[], None, flags)
    }

    /// Sends `data` with external memory given as page frame numbers
    /// (`VmbPacketSendWithExternalPfns`). Requires
    /// [`SendFlags::WAIT_FOR_COMPLETION`].
    pub fn send_with_external_pfns(
        self,
        data: &[u8],
        ranges: &[ExternalRange<'_>],
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        if ranges.is_empty() {
            return Err(SendError {
                error: EINVAL,
                packet: self,
            });
        }
        self.send_encoded(data, ranges, None, flags)
    }

    /// Sends `data` with the memory of `mdl` described to the peer
    /// (`VmbPacketSendWithExternalMdl`). The packet owns `mdl` until the
    /// completion routine takes it back with [`Packet::take_mdl`]. Requires
    /// [`SendFlags::WAIT_FOR_COMPLETION`].
    pub fn send_with_external_mdl(
        self,
        data: &[u8],
        mdl: Mdl,
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        self.send_encoded(data, &[], Some(mdl), flags)
    }

    fn send_encoded(
        mut self,
        data: &[u8],
        ranges: &[RangeSpec<'_>],
        mdl: Option<Mdl>,
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        let mdl_range;
        let ranges = match &mdl {
            Some(m) => {
                mdl_range = [m.range()];
                &mdl_range[..]
            }
            None => ranges,
        };
        let r = self.encode(data, ranges, flags);
        // The packet owns the MDL from here on, whatever happens.
        self.get_mut().mdl = mdl;
        match r {
            Ok(()) => self.submit_encoded(),
            Err(error) => Err(SendError {
                error,
                packet: self,
            }),
        }
    }

    /// Encodes descriptor, ranges and payload into the packet's buffer.
    fn encode(&mut self, data: &[u8], ranges: &[RangeSpec<'_>], flags: SendFlags) -> Result {
        let wait = flags.contains(SendFlags::WAIT_FOR_COMPLETION);
        if !ranges.is_empty() && !wait {
            return Err(EINVAL);
        }
        let (max, chain) = {
            let g = self.channel().inner.lock();
            (g.tx.max_packet_size, g.tx.max_ext_chain)
        };
        if data.len() > max as usize || ranges.len() > chain as usize {
            return Err(EINVAL);
        }
        let inner = self.get_mut();
        let flag_bits = if wait {
            packet::FLAG_COMPLETION_REQUESTED
        } else {
            0
        };
        // The transaction id is patched in when the send takes its slot.
        let off = if ranges.is_empty() {
            match packet::encode_simple(packet::TYPE_DATA_INBAND, flag_bits, 0, data.len()) {
                Some(d) if inner.buf.len() >= d.len8 as usize * 8 => {
                    inner.buf[..16].copy_from_slice(&d.encode());
                    16
                }
                _ => return Err(EINVAL),
            }
        } else {
            packet::encode_gpa_direct(&mut inner.buf, flag_bits, 0, ranges, data.len())
                .ok_or(EINVAL)?
        };
        let total = off + packet::align8(data.len());
        if total > inner.buf.len() {
            return Err(EINVAL);
        }
        inner.buf[off..off + data.len()].copy_from_slice(data);
        inner.buf[off + data.len()..total].fill(0);
        inner.len = total;
        inner.wait = wait;
        Ok(())
    }

    /// Takes a transaction slot if needed and hands the packet to the ring.
    fn submit_encoded(mut self) -> core::result::Result<(), SendError> {
        let chan = self.channel().arc();
        let wait = self.get().wait;
        let mut g = chan.inner.lock();
        if let Err(e) = usable_for_send(&g) {
            drop(g);
            return Err(SendError {
                error: e,
                packet: self,
            });
        }
        let item = if wait {
            let Some(slot) = g.tx.free_slots.pop() else {
                drop(g);
                return Err(SendError {
                    error: EBUSY,
                    packet: self,
                });
            };
            let gen = g.tx.slots[slot as usize].gen;
            let id = (u64::from(gen) << 32) | u64::from(slot + 1);
            let inner = self.get_mut();
            inner.trans_id = id;
            inner.buf[8..16].copy_from_slice(&id.to_le_bytes());
            if let Some(mdl) = inner.mdl.as_mut() {
                // Before the packet can reach the ring: from here on the
                // peer may read the pages (loopback).
                mdl.lend(g.att.as_ref(), id);
            }
            let s = &mut g.tx.slots[slot as usize];
            s.since = sys::jiffies();
            s.owner = Some(TxOwner::Packet(self));
            Queued::Tx { slot, gen }
        } else {
            Queued::Oneway(self)
        };
        match chan.submit(&mut g, item) {
            Ok(s) => {
                chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                // The routine runs after this send returns, never inside it.
                let schedule = match s.written {
                    Some(Queued::Oneway(p)) => g.routines.push(p),
                    _ => false,
                };
                drop(g);
                if s.signal {
                    chan.signal_peer();
                }
                if schedule {
                    chan.schedule_routines();
                }
                Ok(())
            }
            Err((e, item)) => {
                let p = match item {
                    Queued::Oneway(p) => Some(p),
                    Queued::Tx { slot, .. } => g.tx.free_slot(slot),
                    Queued::Completion(..) => None,
                };
                drop(g);
                match p {
                    Some(packet) => Err(SendError { error: e, packet }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Ends the transaction: calls the completion routine, or frees.
    pub(crate) fn complete_routine(self, status: Result, response: &[u8]) {
        match self.get().routine {
            Some(r) => r(self, status, response),
            None => drop(self),
        }
    }

    /// Restores a packet after [`Channel::restore_from_buffer`]
    /// (`VmbPacketRestore`): the transaction it belonged to is live again,
    /// and its completion reaches the packet's routine.
    pub fn restore(self) -> Result {
        let chan = self.get().chan.clone().ok_or(EINVAL)?;
        chan.restore_packet_transaction(self)
    }

    pub(crate) fn restore_parts(&self) -> (u64, &[u8]) {
        let i = self.get();
        (i.trans_id, &i.buf[..i.len])
    }

    pub(crate) fn set_restored(&mut self, trans_id: u64, wire: &[u8]) -> Result {
        let i = self.get_mut();
        if wire.len() > i.buf.len() {
            return Err(EINVAL);
        }
        i.buf[..wire.len()].copy_from_slice(wire);
        i.len = wire.len();
        i.trans_id = trans_id;
        i.wait = true;
        Ok(())
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        inner.mdl = None;
        if inner.origin == Origin::Pool {
            if let Some(chan) = inner.chan.take() {
                inner.routine = None;
                inner.pointer = 0;
                let mut g = chan.inner.lock();
                if g.tx.pool.len() < g.tx.pool_size as usize
                    && inner.buf.len() == g.tx.encoded_capacity
                {
                    let _ = g.tx.pool.push_within_capacity(inner);
                }
            }
        }
    }
}

/// Owner of a transaction slot.
pub(crate) enum TxOwner {
    Packet(Packet),
    Sync(SyncRequest),
}

/// A synchronous request in flight.
pub(crate) struct SyncRequest {
    req: KVec<u8>,
    resp: KVec<u8>,
    wait: bool,
    result: Option<Result<usize>>,
}

pub(crate) struct TxSlot {
    gen: u32,
    owner: Option<TxOwner>,
    queued: bool,
    since: u64,
}

/// An entry of the send queue.
pub(crate) enum Queued {
    /// A transaction waiting for ring space; its bytes are in its slot.
    Tx { slot: u32, gen: u32 },
    /// A send without completion.
    Oneway(Packet),
    /// A completion of an incoming packet: buffer and length.
    Completion(KVec<u8>, usize),
}

/// The result of [`Channel::submit`].
pub(crate) struct Submitted {
    /// The peer must be signalled.
    pub(crate) signal: bool,
    /// The item went into the ring now, for the caller to finish.
    pub(crate) written: Option<Queued>,
}

/// Send-side state, under the channel lock.
pub(crate) struct TxState {
    pool: KVec<KBox<PacketInner>>,
    pool_size: u32,
    slots: KVec<TxSlot>,
    free_slots: KVec<u32>,
    queue: KVec<Option<Queued>>,
    head: usize,
    queued: usize,
    pub(crate) encoded_capacity: usize,
    pub(crate) max_packet_size: u32,
    pub(crate) max_ext_chain: u32,
    pending_send: bool,
}

impl TxState {
    pub(crate) fn new() -> Self {
        Self {
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
        }
    }

    /// Preallocates packet objects, transaction slots and the send queue.
    /// Allocates: call without the channel lock.
    pub(crate) fn prepare(&mut self, cfg: &Sizing) -> Result {
        let pages = cfg.max_external_bytes as usize / 4096 + 2;
        self.encoded_capacity = packet::DESCRIPTOR_SIZE
            + packet::GPA_HEADER_SIZE
            + cfg.max_external_chain as usize * (8 + 8 * pages)
            + packet::align8(cfg.max_packet_size as usize);
        self.max_packet_size = cfg.max_packet_size;
        self.max_ext_chain = cfg.max_external_chain;
        self.pool_size = cfg.packet_pool;
        self.pool = KVec::with_capacity(cfg.packet_pool as usize, GFP_KERNEL)?;
        for _ in 0..cfg.packet_pool {
            let p = PacketInner::new(self.encoded_capacity, Origin::Pool)?;
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

    fn push(&mut self, item: Queued) -> core::result::Result<(), Queued> {
        let cap = self.queue.len();
        if self.queued == cap {
            return Err(item);
        }
        let tail = (self.head + self.queued) % cap;
        self.queue[tail] = Some(item);
        self.queued += 1;
        Ok(())
    }

    fn pop(&mut self) -> Option<Queued> {
        if self.queued == 0 {
            return None;
        }
        let item = self.queue[self.head].take();
        self.head = (self.head + 1) % self.queue.len();
        self.queued -= 1;
        item
    }

    fn front(&self) -> Option<&Queued> {
        if self.queued == 0 {
            return None;
        }
        self.queue[self.head].as_ref()
    }

    /// The bytes an entry puts in the ring; `None` for a stale entry.
    fn bytes_of<'a>(&'a self, item: &'a Queued) -> Option<&'a [u8]> {
        match item {
            Queued::Tx { slot, gen } => {
                let s = self.slots.get(*slot as usize)?;
                if s.gen != *gen {
                    return None;
                }
                match s.owner.as_ref()? {
                    TxOwner::Packet(p) => Some(p.wire_bytes()),
                    TxOwner::Sync(r) => Some(&r.req),
                }
            }
            Queued::Oneway(p) => Some(p.wire_bytes()),
            Queued::Completion(b, n) => b.get(..*n),
        }
    }

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

/// Whether the channel can take a send now.
fn usable_for_send(g: &Inner) -> Result {
    if g.peer_gone || g.lost || g.disabling || g.state == State::Closing {
        return Err(ENODEV);
    }
    match g.state {
        State::Opened | State::Started | State::Paused if g.att.is_some() => Ok(()),
        _ => Err(EINVAL),
    }
}

impl Channel {
    /// A reference-counted handle to this channel.
    pub fn arc(&self) -> Arc<Channel> {
        // SAFETY: every `Channel` is created by `Channel::allocate` inside an
        // `Arc`, and `&self` proves the count is non-zero for this borrow.
        unsafe { kernel::sync::ArcBorrow::from_raw(core::ptr::from_ref(self)) }.into()
    }

    /// Bytes of caller memory one packet object takes
    /// (`VmbChannelSizeofPacket`).
    pub fn sizeof_packet(&self) -> usize {
        core::mem::size_of::<PacketInner>() + self.inner.lock().tx.encoded_capacity
    }

    /// Takes a packet object from the channel's pool (`VmbPacketAllocate`).
    /// Never allocates memory; fails with `ENOMEM` when the pool is empty
    /// and `EINVAL` while the channel is Disabled.
    pub fn packet_allocate(&self) -> Result<Packet> {
        let mut g = self.inner.lock();
        if g.lost {
            return Err(ENODEV);
        }
        if g.state == State::Disabled {
            return Err(EINVAL);
        }
        let mut inner = g.tx.pool.pop().ok_or(ENOMEM)?;
        drop(g);
        inner.chan = Some(self.arc());
        Ok(Packet { inner: Some(inner) })
    }

    /// Free packet objects in the pool.
    pub fn packet_pool_available(&self) -> usize {
        self.inner.lock().tx.pool.len()
    }

    /// Puts an item in the ring, or queues it behind earlier ones. Called
    /// with the channel lock held.
    pub(crate) fn submit(
        &self,
        g: &mut Inner,
        item: Queued,
    ) -> core::result::Result<Submitted, (Error, Queued)> {
        let Inner { tx, att, .. } = g;
        let Some(att) = att.as_mut() else {
            return Err((ENODEV, item));
        };
        if tx.queued == 0 {
            let Some(bytes) = tx.bytes_of(&item) else {
                return Err((EINVAL, item));
            };
            let mut r = att.write(bytes);
            if let Err(WriteError::Full(needed)) = r {
                self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                att.set_pending_send_size(needed);
                // The reader may have freed space before it could see the
                // pending size; try once more so that no wakeup is lost.
                r = att.write(bytes);
                tx.pending_send = true;
            }
            match r {
                Ok(signal) => {
                    return Ok(Submitted {
                        signal,
                        written: Some(item),
                    })
                }
                Err(WriteError::Full(_)) => {}
                Err(WriteError::Broken) => return Err((EIO, item)),
                Err(WriteError::Gone) => return Err((ENODEV, item)),
            }
        }
        let is_tx = match &item {
            Queued::Tx { slot, .. } => Some(*slot),
            _ => None,
        };
        tx.push(item).map_err(|item| (EBUSY, item))?;
        if let Some(slot) = is_tx {
            tx.slots[slot as usize].queued = true;
        }
        Ok(Submitted {
            signal: false,
            written: None,
        })
    }

    /// Signals the peer through the attachment.
    pub(crate) fn signal_peer(&self) {
        let target = self.inner.lock().att.as_ref().map(|a| a.signal_target());
        if let Some(t) = target {
            self.stats.signals_sent.fetch_add(1, Ordering::Relaxed);
            t.signal();
        }
    }

    /// Writes queued items while the ring has room, in order.
    pub(crate) fn flush_send_queue(&self) {
        loop {
            let mut g = self.inner.lock();
            let Inner { tx, att, .. } = &mut *g;
            let Some(att) = att.as_mut() else {
                return;
            };
            let Some(front) = tx.front() else {
                if tx.pending_send {
                    tx.pending_send = false;
                    att.set_pending_send_size(0);
                }
                return;
            };
            let r = match tx.bytes_of(front) {
                // A cancelled transaction: skip it.
                None => Ok(false),
                Some(bytes) => {
                    let mut r = att.write(bytes);
                    if let Err(WriteError::Full(needed)) = r {
                        att.set_pending_send_size(needed);
                        r = att.write(bytes);
                        tx.pending_send = true;
                    }
                    r
                }
            };
            match r {
                Ok(signal) => {
                    let item = tx.pop();
                    if let Some(Queued::Tx { slot, gen }) = &item {
                        if let Some(s) = tx.slots.get_mut(*slot as usize) {
                            if s.gen == *gen {
                                s.queued = false;
                            }
                        }
                    }
                    let schedule = match item {
                        Some(Queued::Completion(b, _)) => {
                            g.rx.put_buf(b);
                            false
                        }
                        Some(Queued::Oneway(p)) => g.routines.push(p),
                        _ => false,
                    };
                    drop(g);
                    self.cond.notify_all();
                    if signal {
                        self.signal_peer();
                    }
                    if schedule {
                        self.schedule_routines();
                    }
                }
                // The host rescinded the channel: its removal tears down.
                Err(WriteError::Full(_)) | Err(WriteError::Gone) => return,
                Err(WriteError::Broken) => {
                    drop(g);
                    pr_err!(
                        "channel {}: outgoing ring is corrupt; sends stop\n",
                        self.id()
                    );
                    return;
                }
            }
        }
    }

    /// Handles a completion packet from the peer.
    pub(crate) fn on_completion(&self, trans_id: u64, payload: &[u8]) {
        let idx = (trans_id & 0xffff_ffff) as u32;
        let gen = (trans_id >> 32) as u32;
        let mut g = self.inner.lock();
        let tx = &mut g.tx;
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
        let p = if accepted { g.tx.free_slot(slot) } else { None };
        drop(g);
        match p {
            Some(p) => call_routine(p, Ok(()), payload),
            None => self.cond.notify_all(),
        }
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

    /// Finishes every transaction in flight and every queued send with
    /// `status`, each exactly once. Synchronous requesters get `ENODEV` and
    /// free their own slots; this waits until they have.
    pub(crate) fn cancel_all_sends(&self, status: Error) {
        {
            let mut g = self.inner.lock();
            for s in g.tx.slots.iter_mut() {
                if let Some(TxOwner::Sync(r)) = s.owner.as_mut() {
                    if r.result.is_none() {
                        r.result = Some(Err(ENODEV));
                    }
                }
            }
        }
        self.cond.notify_all();
        loop {
            let mut g = self.inner.lock();
            let p = if let Some(item) = g.tx.pop() {
                match item {
                    Queued::Oneway(p) => Some(p),
                    Queued::Completion(b, _) => {
                        g.rx.put_buf(b);
                        None
                    }
                    // The slot is finished below.
                    Queued::Tx { .. } => None,
                }
            } else {
                let busy =
                    g.tx.slots
                        .iter()
                        .position(|s| matches!(s.owner, Some(TxOwner::Packet(_))));
                match busy {
                    Some(slot) => g.tx.free_slot(slot as u32),
                    None => break,
                }
            };
            drop(g);
            if let Some(p) = p {
                call_routine(p, Err(status), &[]);
            }
        }
        self.cond.notify_all();
        self.wait_until(|g| !g.tx.slots.iter().any(|s| s.owner.is_some()));
        // One-way sends that entered the ring finish as they would have.
        self.finish_routines();
    }

    /// Sends `data` and waits for the peer's completion
    /// (`VmbChannelSendSynchronousRequest`); returns the completion's length,
    /// copied into `response`, whose length must be a multiple of 8.
    ///
    /// - `timeout` `None` waits without limit. A positive timeout bounds
    ///   the whole call; on expiry the request is cancelled (`ETIMEDOUT`):
    ///   its slot is reclaimed and a late completion is refused.
    /// - A `timeout` of zero governs ring space only: the request must go
    ///   into the ring now, or the call fails with `EAGAIN` and nothing is
    ///   sent. With [`SendFlags::WAIT_FOR_COMPLETION`] the call then waits
    ///   for the response without limit, as with `None`, so a request the
    ///   peer executes is never reported as failed. Without it, the call
    ///   returns `Ok(0)` once the packet is in the ring, allocates nothing,
    ///   and may be called from any context; every other form sleeps.
    /// - A signal pending for the caller cancels the request as a timeout
    ///   does and fails the call with `ERESTARTSYS`.
    /// - A channel going away fails it with `ENODEV`; a completion larger
    ///   than `response` with `EOVERFLOW`.
    pub fn send_synchronous_request(
        &self,
        data: &[u8],
        flags: SendFlags,
        response: &mut [u8],
        timeout: Option<Delta>,
    ) -> Result<usize> {
        if response.len() % 8 != 0 {
            return Err(EINVAL);
        }
        let wait = flags.contains(SendFlags::WAIT_FOR_COMPLETION);
        let zero = timeout.is_some_and(|t| t.as_millis() <= 0);
        if zero && !wait {
            return self.send_now(data);
        }
        kernel::task::might_sleep();
        let d = packet::encode_simple(
            packet::TYPE_DATA_INBAND,
            if wait {
                packet::FLAG_COMPLETION_REQUESTED
            } else {
                0
            },
            0,
            data.len(),
        )
        .ok_or(EINVAL)?;
        {
            let g = self.inner.lock();
            if data.len() > g.tx.max_packet_size as usize {
                return Err(EINVAL);
            }
        }
        let total = d.len8 as usize * 8;
        let mut req = KVec::with_capacity(total, GFP_KERNEL)?;
        req.resize(total, 0, GFP_KERNEL)?;
        req[..16].copy_from_slice(&d.encode());
        req[16..16 + data.len()].copy_from_slice(data);
        let mut resp = KVec::with_capacity(response.len(), GFP_KERNEL)?;
        resp.resize(response.len(), 0, GFP_KERNEL)?;

        let (slot, gen, signal) = {
            let mut g = self.inner.lock();
            usable_for_send(&g)?;
            if zero
                && (g.tx.queued != 0
                    || g.att.as_ref().map(|a| a.free()).unwrap_or(0) <= total as u32 + 8)
            {
                return Err(EAGAIN);
            }
            let slot = g.tx.free_slots.pop().ok_or(EBUSY)?;
            let s = &mut g.tx.slots[slot as usize];
            let gen = s.gen;
            let id = (u64::from(gen) << 32) | u64::from(slot + 1);
            req[8..16].copy_from_slice(&id.to_le_bytes());
            s.since = sys::jiffies();
            s.owner = Some(TxOwner::Sync(SyncRequest {
                req,
                resp,
                wait,
                result: None,
            }));
            match self.submit(&mut g, Queued::Tx { slot, gen }) {
                Ok(s) => {
                    self.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                    (slot, gen, s.signal)
                }
                Err((e, _)) => {
                    g.tx.free_slot(slot);
                    return Err(e);
                }
            }
        };
        if signal {
            self.signal_peer();
        }

        // A zero timeout governs ring space only: the request went in, so
        // its response is awaited like that of a request without a limit.
        let deadline = timeout.filter(|_| !zero).map(|t| {
            let ms = u32::try_from(t.as_millis().max(0)).unwrap_or(u32::MAX);
            sys::jiffies() + kernel::time::msecs_to_jiffies(ms) as u64
        });
        let mut g = self.inner.lock();
        loop {
            let s = &mut g.tx.slots[slot as usize];
            if s.gen != gen {
                return Err(ENODEV);
            }
            let done = match s.owner.as_mut() {
                Some(TxOwner::Sync(r)) => {
                    if !r.wait && !s.queued && r.result.is_none() {
                        r.result = Some(Ok(0));
                    }
                    r.result.is_some()
                }
                _ => return Err(ENODEV),
            };
            if done {
                break;
            }
            if g.peer_gone || g.disabling {
                g.tx.free_slot(slot);
                drop(g);
                self.cond.notify_all();
                return Err(ENODEV);
            }
            let left = match deadline {
                None => kernel::time::msecs_to_jiffies(1000),
                Some(dl) => {
                    let now = sys::jiffies();
                    if now >= dl {
                        // Freeing the slot moves its generation on: a late
                        // completion is refused. Over hv, Linux's requestor
                        // keeps its own slot until that completion comes.
                        g.tx.free_slot(slot);
                        drop(g);
                        self.cond.notify_all();
                        return Err(ETIMEDOUT);
                    }
                    (dl - now) as kernel::time::Jiffies
                }
            };
            match self.cond.wait_interruptible_timeout(&mut g, left) {
                CondVarTimeoutResult::Signal { .. } => {
                    // Cancelled exactly as a timeout cancels it.
                    g.tx.free_slot(slot);
                    drop(g);
                    self.cond.notify_all();
                    return Err(ERESTARTSYS);
                }
                CondVarTimeoutResult::Timeout | CondVarTimeoutResult::Woken { .. } => {}
            }
        }
        let owner = g.tx.slots[slot as usize].owner.take();
        // The slot's owner was taken above; free the slot itself.
        g.tx.free_slot(slot);
        drop(g);
        self.cond.notify_all();
        match owner {
            Some(TxOwner::Sync(r)) => {
                let n = r.result.unwrap_or(Err(ENODEV))?;
                response[..n].copy_from_slice(&r.resp[..n]);
                Ok(n)
            }
            _ => Err(ENODEV),
        }
    }

    /// The zero-timeout send without completion: into the ring now or
    /// `EAGAIN`. Allocates nothing, so it may be called in atomic context.
    fn send_now(&self, data: &[u8]) -> Result<usize> {
        self.send_raw_inband(data, 0).map(|()| 0)
    }

    /// Writes an in-band packet with transaction id `trans_id`, asking for no
    /// completion, into the ring now, or fails with `EAGAIN`. Allocates
    /// nothing. A kmcl addition, for protocols whose replies are in-band
    /// packets that echo the request's id (Hyper-V's integration
    /// components), and for peers that play the host in tests.
    pub fn send_inband_with_transaction_id(&self, data: &[u8], trans_id: u64) -> Result {
        self.send_raw_inband(data, trans_id)
    }

    pub(crate) fn send_raw_inband(&self, data: &[u8], trans_id: u64) -> Result {
        let d = packet::encode_simple(packet::TYPE_DATA_INBAND, 0, trans_id, data.len())
            .ok_or(EINVAL)?;
        let signal = {
            let mut g = self.inner.lock();
            usable_for_send(&g)?;
            if data.len() > g.tx.max_packet_size as usize {
                return Err(EINVAL);
            }
            if g.tx.queued != 0 {
                return Err(EAGAIN);
            }
            let att = g.att.as_mut().ok_or(ENODEV)?;
            match att.write_inband(&d, data) {
                Ok(s) => s,
                Err(WriteError::Full(_)) => return Err(EAGAIN),
                Err(WriteError::Broken) => return Err(EIO),
                Err(WriteError::Gone) => return Err(ENODEV),
            }
        };
        self.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        if signal {
            self.signal_peer();
        }
        Ok(())
    }
}
