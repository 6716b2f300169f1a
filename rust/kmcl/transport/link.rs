// SPDX-License-Identifier: GPL-2.0

//! An open link: what the channel layer needs of a transport while a
//! channel is open, in two halves that the channel keeps under different
//! locks: the send half ([`SendLink`], the outgoing ring) and the receive
//! half ([`RecvLink`], the incoming ring). Each transport implements both;
//! [`LinkWriter`](super::LinkWriter) and [`LinkReader`](super::LinkReader)
//! dispatch to the half they carry.

use crate::wire::{
    packet,
    ring::RingError, //
};

/// Whom to signal, taken out of the send lock before signalling.
pub(crate) enum SignalTarget {
    Loopback(super::loopback::SignalTarget),
    /// Linux's ring code signals the host itself.
    None,
}

impl SignalTarget {
    pub(crate) fn signal(self) {
        match self {
            SignalTarget::Loopback(t) => t.signal(),
            SignalTarget::None => {}
        }
    }
}

/// A packet to send, by its parts. The transport builds the descriptor (hv:
/// Linux does) and pads the payload; nothing is encoded beforehand.
#[derive(Clone, Copy)]
pub(crate) struct OutPacket<'a> {
    /// The packet type (`packet::TYPE_*`).
    pub(crate) ty: u16,
    /// The descriptor's flags (`packet::FLAG_COMPLETION_REQUESTED`).
    pub(crate) flags: u16,
    /// The transaction id on the wire.
    pub(crate) trans_id: u64,
    /// For a GPA-direct or a transfer-page packet, its header and ranges,
    /// as they follow the descriptor on the wire (a multiple of 8 bytes);
    /// empty otherwise.
    pub(crate) ranges: &'a [u8],
    /// The payload, unpadded.
    pub(crate) payload: &'a [u8],
}

impl OutPacket<'_> {
    /// An in-band or completion packet of type `ty` without ranges.
    pub(crate) fn simple(ty: u16, flags: u16, trans_id: u64, payload: &[u8]) -> OutPacket<'_> {
        OutPacket {
            ty,
            flags,
            trans_id,
            ranges: &[],
            payload,
        }
    }

    /// The descriptor of the packet; `None` if it is too long for one.
    pub(crate) fn descriptor(&self) -> Option<packet::Descriptor> {
        let off = packet::DESCRIPTOR_SIZE.checked_add(self.ranges.len())?;
        let len = off.checked_add(packet::align8(self.payload.len()))?;
        if self.ranges.len() % 8 != 0 {
            return None;
        }
        Some(packet::Descriptor {
            ty: self.ty,
            offset8: u16::try_from(off / 8).ok()?,
            len8: u16::try_from(len / 8).ok()?,
            flags: self.flags,
            trans_id: self.trans_id,
        })
    }
}

/// The send half of an open channel's link: its outgoing ring.
///
/// Called with the channel's send lock held: no method sleeps or signals.
pub(crate) trait SendLink {
    /// Writes one packet, straight from the caller's memory, allocating
    /// nothing; `Ok(true)` if the peer must be signalled.
    fn send(&mut self, packet: &OutPacket<'_>) -> Result<bool, WriteError>;

    /// Free bytes in the outgoing ring.
    fn free(&self) -> u32;

    /// Stores the free space the writer waits for (0: not waiting).
    fn set_pending_send_size(&mut self, needed: u32);

    /// Whom to signal, to be signalled once the send lock is dropped.
    fn signal_target(&self) -> SignalTarget;

    /// Bytes used and size of the outgoing ring.
    fn fill(&self) -> (u32, u32);
}

/// The receive half of an open channel's link: its incoming ring.
///
/// Called with the channel's receive lock held: no method sleeps or
/// signals.
pub(crate) trait RecvLink {
    /// Copies the next incoming packet into `buf`; `Ok(None)` when empty.
    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError>;

    /// Masks the peer's signals while the ring is drained.
    fn begin_read(&mut self);

    /// Unmasks signals; `true` if data arrived meanwhile.
    fn end_read(&mut self) -> bool;

    /// Publishes the read index; `true` if the writer must be signalled.
    fn commit(&mut self) -> bool;

    /// Bytes used and size of the incoming ring.
    fn fill(&self) -> (u32, u32);

    /// kmcl's transaction id for the id a completion carries on the wire;
    /// `None` if the transport already knows it is not one of ours.
    fn completion_id(&mut self, wire: u64) -> Option<u64>;
}

pub(super) fn ring_result(
    r: Result<crate::wire::ring::WriteOutcome, RingError>,
) -> Result<bool, WriteError> {
    match r {
        Ok(o) => Ok(o.signal),
        Err(RingError::Full { needed }) => Err(WriteError::Full(needed)),
        Err(_) => Err(WriteError::Broken),
    }
}

/// Why a write did not go into the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// No room; the size of the write, trailer included, for the pending
    /// send size (the write fits once more than this is free).
    Full(u32),
    /// The ring is unusable (the peer corrupted it).
    Broken,
    /// The host rescinded the channel.
    Gone,
}
