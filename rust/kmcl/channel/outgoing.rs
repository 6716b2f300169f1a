// SPDX-License-Identifier: GPL-2.0

//! Packet objects and their sends.
//!
//! A [`Packet`] comes from the channel's pool or from caller memory; a send
//! encodes it, takes a transaction slot if it waits for a completion
//! (`transactions.rs`), and hands it to the send queue (`send_queue.rs`).
//! Synchronous requests are in `sync.rs`.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc, //
};

pub(crate) use super::external::Mdl;
use super::{
    callbacks::{
        CompletionRoutine,
        PacketCompletion, //
    },
    send_queue::Queued,
    transactions::{
        transaction_id,
        TxOwner, //
    },
    Channel, //
};
use crate::{
    sys,
    transport::OutPacket,
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
    ///
    /// Context: any context.
    #[inline]
    pub fn from_bits(bits: u32) -> Option<SendFlags> {
        (bits & !Self::ALL == 0).then_some(SendFlags(bits))
    }

    /// Whether all of `other` is set.
    ///
    /// Context: any context.
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
pub(super) enum Origin {
    Pool,
    Caller,
}

pub(crate) struct PacketInner {
    /// The next entry of the channel's list of finished one-way packets.
    pub(super) next: Option<KBox<PacketInner>>,
    pub(super) chan: Option<Arc<Channel>>,
    pub(super) buf: KVec<u8>,
    pub(super) len: usize,
    pub(super) pointer: usize,
    pub(super) routine: Option<CompletionRoutine>,
    /// The typed completion; set, it is called instead of `routine`.
    pub(super) context: Option<Arc<dyn PacketCompletion>>,
    pub(super) origin: Origin,
    pub(super) mdl: Option<Mdl>,
    pub(super) wait: bool,
    pub(super) trans_id: u64,
    /// Payload bytes and external ranges of the encoded send, checked
    /// against the channel's limits when it is submitted.
    pub(super) payload_len: usize,
    pub(super) range_count: usize,
    /// Type of the last send, and where its payload starts in `buf`.
    pub(super) ty: u16,
    pub(super) offset: usize,
}

impl PacketInner {
    pub(super) fn new(capacity: usize, origin: Origin) -> Result<KBox<PacketInner>> {
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
                context: None,
                origin,
                mdl: None,
                wait: false,
                trans_id: 0,
                payload_len: 0,
                range_count: 0,
                ty: packet::TYPE_DATA_INBAND,
                offset: packet::DESCRIPTOR_SIZE,
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
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL`.
    pub fn new(channel: &Channel) -> Result<PacketMemory> {
        let cap = channel.tx.lock().encoded_capacity;
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
    pub(super) fn get(&self) -> &PacketInner {
        // INVARIANT: `inner` is `Some` until `drop` or `into_memory`.
        self.inner
            .as_deref()
            .expect("packet used after it was taken apart")
    }

    pub(super) fn get_mut(&mut self) -> &mut PacketInner {
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketInitialize")]
    pub fn initialize(channel: &Channel, mut memory: PacketMemory) -> Packet {
        memory.0.chan = Some(channel.arc());
        memory.0.routine = None;
        memory.0.context = None;
        memory.0.pointer = 0;
        Packet {
            inner: Some(memory.0),
        }
    }

    /// Takes back the memory of a packet made with [`Packet::initialize`];
    /// a pool packet goes back to its pool and `None` is returned.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn into_memory(mut self) -> Option<PacketMemory> {
        if self.get().origin == Origin::Caller {
            let mut inner = self.inner.take()?;
            inner.chan = None;
            inner.mdl = None;
            inner.context = None;
            return Some(PacketMemory(inner));
        }
        None
    }

    /// The channel of the packet (`VmbPacketGetChannel`).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketGetChannel")]
    pub fn channel(&self) -> &Channel {
        // INVARIANT: a live packet always belongs to a channel.
        self.get()
            .chan
            .as_deref()
            .expect("packet without a channel")
    }

    /// Stores a driver value in the packet (`VmbPacketSetPointer`), the
    /// untyped context of a [`CompletionRoutine`]. Drivers give the packet a
    /// typed context with [`Packet::set_completion`] instead.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSetPointer")]
    pub fn set_pointer(&mut self, value: usize) {
        self.get_mut().pointer = value;
    }

    /// The value stored with [`Packet::set_pointer`] (`VmbPacketGetPointer`).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketGetPointer")]
    pub fn pointer(&self) -> usize {
        self.get().pointer
    }

    /// Sets the untyped routine called when the transaction ends
    /// (`VmbPacketSetCompletionRoutine`), replacing (and dropping) a typed
    /// completion. Without either, the packet is freed. Drivers use
    /// [`Packet::set_completion`].
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSetCompletionRoutine")]
    pub fn set_completion_routine(&mut self, routine: CompletionRoutine) {
        let old = {
            let i = self.get_mut();
            i.routine = Some(routine);
            i.context.take()
        };
        drop(old);
    }

    /// Gives the packet its typed completion: `context` is called when each
    /// transaction of the packet ends (`VmbPacketSetCompletionRoutine` with
    /// a typed context). It replaces a routine or an earlier context, whose
    /// reference is dropped here, and stays set across sends until the
    /// packet object is freed, when the packet drops it. Takes a reference
    /// count and allocates nothing; callable from any context.
    ///
    /// `context` is usually an `Arc` of the driver's own type, which
    /// converts to `Arc<dyn PacketCompletion>` at the call.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSetCompletionRoutine")]
    #[doc(alias = "VmbPacketSetPointer")]
    pub fn set_completion(&mut self, context: Arc<dyn PacketCompletion>) {
        let old = {
            let i = self.get_mut();
            i.routine = None;
            i.context.replace(context)
        };
        drop(old);
    }

    /// Takes the typed completion out of the packet: a later end of
    /// transaction frees the packet (or calls a routine set afterwards).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn take_completion(&mut self) -> Option<Arc<dyn PacketCompletion>> {
        self.get_mut().context.take()
    }

    /// Whether the packet has a typed completion.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn has_completion(&self) -> bool {
        self.get().context.is_some()
    }

    /// The transaction id of the last send that waited for a completion.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn transaction_id(&self) -> u64 {
        self.get().trans_id
    }

    /// The encoded packet as it went into the ring: descriptor, any GPA
    /// ranges, payload and padding.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn wire_bytes(&self) -> &[u8] {
        let i = self.get();
        &i.buf[..i.len]
    }

    /// The payload of the last send.
    ///
    /// Context: any context, ProcessPacket and completion context included.
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSend")]
    pub fn send(self, data: &[u8], flags: SendFlags) -> core::result::Result<(), SendError> {
        self.send_encoded(data, &[], None, flags)
    }

    /// Sends `data` with external memory given as page frame numbers
    /// (`VmbPacketSendWithExternalPfns`). Requires
    /// [`SendFlags::WAIT_FOR_COMPLETION`].
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSendWithExternalPfns")]
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSendWithExternalMdl")]
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
        if ranges.is_empty() && mdl.is_none() && !flags.contains(SendFlags::WAIT_FOR_COMPLETION) {
            // A one-way packet that goes back to its pool once written: no
            // one can read its payload again, so it goes into the ring from
            // `data` when the ring has room now.
            let packet = match self.send_direct(data) {
                Ok(()) => return Ok(()),
                Err(packet) => packet,
            };
            self = packet;
        }
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
        // The channel's limits are checked at submission, under the lock
        // that takes anyway; the buffer bounds what can be encoded.
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
        inner.payload_len = data.len();
        inner.range_count = ranges.len();
        inner.offset = off;
        inner.ty = if ranges.is_empty() {
            packet::TYPE_DATA_INBAND
        } else {
            packet::TYPE_DATA_GPA_DIRECT
        };
        Ok(())
    }

    /// The last send by its parts, in the packet's buffer, as the transport
    /// takes it. (The descriptor in the buffer serves [`Packet::wire_bytes`]
    /// and saved states; the transport builds its own.)
    pub(super) fn out(&self) -> OutPacket<'_> {
        let i = self.get();
        let (flags, trans_id) = if i.wait {
            (packet::FLAG_COMPLETION_REQUESTED, i.trans_id)
        } else {
            (0, 0)
        };
        OutPacket {
            ty: i.ty,
            flags,
            trans_id,
            ranges: i.buf.get(packet::DESCRIPTOR_SIZE..i.offset).unwrap_or(&[]),
            payload: i.buf.get(i.offset..i.offset + i.payload_len).unwrap_or(&[]),
        }
    }

    /// Writes a one-way in-band packet into the ring straight from `data`,
    /// without copying it into the packet, when nothing can read the
    /// packet's payload afterwards (no routine, typed completion or MDL, a
    /// pool packet, which goes back to its pool at once) and the ring takes
    /// it now. Otherwise (the packet must queue, or the send fails) nothing
    /// was sent and the packet is handed back for the encoded send, which
    /// copies the payload and answers as it always does.
    fn send_direct(mut self, data: &[u8]) -> core::result::Result<(), Packet> {
        let inner = self.get_mut();
        if !inner.recyclable() {
            return Err(self);
        }
        match packet::encode_simple(packet::TYPE_DATA_INBAND, 0, 0, data.len()) {
            Some(d) if inner.buf.len() >= d.len8 as usize * 8 => {}
            _ => return Err(self),
        }
        // The packet's reference keeps the channel alive until the end of
        // this send, once the packet is back in the pool.
        let Some(chan) = inner.chan.take() else {
            return Err(self);
        };
        let mut g = chan.tx.lock();
        let out = OutPacket::simple(packet::TYPE_DATA_INBAND, 0, 0, data);
        let signal = if g.gate.send.is_ok() && data.len() <= g.max_packet_size as usize {
            chan.write_now(&mut g, &out).ok().flatten()
        } else {
            None
        };
        let Some(signal) = signal else {
            drop(g);
            self.get_mut().chan = Some(chan);
            return Err(self);
        };
        chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(mut b) = self.into_box() {
            // Nothing of an earlier send is left to read in the pool.
            b.len = 0;
            g.recycle(b);
        }
        drop(g);
        if signal {
            chan.signal_peer();
        }
        Ok(())
    }

    /// Takes a transaction slot if needed and hands the packet to the ring.
    pub(super) fn submit_encoded(mut self) -> core::result::Result<(), SendError> {
        let chan = self.channel().arc();
        let wait = self.get().wait;
        let mut g = chan.tx.lock();
        let within = {
            let i = self.get();
            i.payload_len <= g.max_packet_size as usize && i.range_count <= g.max_ext_chain as usize
        };
        if let Err(e) = g.gate.send.and(if within { Ok(()) } else { Err(EINVAL) }) {
            drop(g);
            return Err(SendError {
                error: e,
                packet: self,
            });
        }
        let item = if wait {
            let Some(slot) = g.free_slots.pop() else {
                drop(g);
                return Err(SendError {
                    error: EBUSY,
                    packet: self,
                });
            };
            let gen = g.slots[slot as usize].gen;
            let id = transaction_id(slot, gen);
            let inner = self.get_mut();
            inner.trans_id = id;
            inner.buf[8..16].copy_from_slice(&id.to_le_bytes());
            if let Some(mdl) = inner.mdl.as_mut() {
                // Before the packet can reach the ring: from here on the
                // peer may read the pages (loopback).
                mdl.lend(g.link.as_ref().and_then(|l| l.lending()), id);
            }
            let s = &mut g.slots[slot as usize];
            s.since = sys::jiffies();
            s.owner = Some(TxOwner::Packet(self));
            Queued::Tx { slot, gen }
        } else {
            Queued::Oneway(self)
        };
        match chan.submit(&mut g, item) {
            Ok(s) => {
                chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                // The routine runs after this send returns, never inside it;
                // a packet without one goes back to its pool now.
                let schedule = match s.written {
                    Some(Queued::Oneway(p)) if p.get().recyclable() => {
                        if let Some(b) = p.into_box() {
                            g.recycle(b);
                        }
                        false
                    }
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
                    Queued::Tx { slot, .. } => g.free_slot(slot),
                    Queued::Completion { .. } => None,
                };
                drop(g);
                match p {
                    Some(packet) => Err(SendError { error: e, packet }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Ends the transaction: calls the typed completion or the completion
    /// routine, or frees.
    pub(crate) fn complete_routine(self, status: Result, response: &[u8]) {
        // A reference of its own: the packet, and with it the packet's
        // reference, may be freed inside the call.
        if let Some(context) = self.get().context.clone() {
            context.completed(self, status, response);
            return;
        }
        match self.get().routine {
            Some(r) => r(self, status, response),
            None => drop(self),
        }
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        inner.mdl = None;
        // Dropped after the channel lock below is released: its `Drop` is
        // driver code.
        let context = inner.context.take();
        if inner.origin == Origin::Pool {
            if let Some(chan) = inner.chan.take() {
                chan.tx.lock().recycle(inner);
            }
        }
        drop(context);
    }
}

impl Channel {
    /// A reference-counted handle to this channel.
    ///
    /// Context: any context.
    pub fn arc(&self) -> Arc<Channel> {
        // SAFETY: every `Channel` is created by `Channel::allocate` inside an
        // `Arc`, and `&self` proves the count is non-zero for this borrow.
        unsafe { kernel::sync::ArcBorrow::from_raw(core::ptr::from_ref(self)) }.into()
    }
}
