// SPDX-License-Identifier: GPL-2.0

//! Packet objects: their memory, contexts and accessors.
//!
//! A [`Packet`] comes from the channel's pool or from caller memory. Its
//! sends are in `send.rs`, synchronous requests in `sync.rs`.

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
    Channel, //
};
use crate::wire::packet::{
    self,
    RangeSpec, //
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
    /// The epoch of the pool a pool packet belongs to (`pool.rs`); 0 for
    /// a packet in caller memory.
    pub(super) epoch: u32,
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
                epoch: 0,
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
///
/// # Examples
///
/// A one-way send, then a send whose completion the peer answers, waited
/// for with every other send of the channel:
///
/// ```
/// use kernel::{prelude::*, time::Delta};
/// use kmcl::{Channel, SendFlags};
///
/// fn notify_then_ask(channel: &Channel) -> Result {
///     let p = channel.packet_allocate()?;
///     p.send(b"notify", SendFlags::NONE).map_err(|e| e.error)?;
///     let p = channel.packet_allocate()?;
///     p.send(b"ask", SendFlags::WAIT_FOR_COMPLETION)
///         .map_err(|e| e.error)?;
///     channel.wait_sends_finished(Delta::from_millis(1000))
/// }
/// ```
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
    #[inline]
    pub(super) fn into_box(self) -> Option<KBox<PacketInner>> {
        // The packet's `Drop` has nothing to do once its memory is taken.
        let mut this = core::mem::ManuallyDrop::new(self);
        this.inner.take()
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
}

impl Drop for Packet {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        inner.mdl = None;
        // Dropped after the packet's return: its `Drop` is driver code.
        let context = inner.context.take();
        if inner.origin == Origin::Pool {
            Channel::put_back(inner);
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
