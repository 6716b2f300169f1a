// SPDX-License-Identifier: GPL-2.0

//! Transports: what carries an open channel.
//!
//! The channel layer (`crate::channel`) keeps the KMCL state machine, packet
//! objects, transactions, quota and queues; a transport provides the two
//! rings, signalling, and shared memory. An open channel holds an
//! attachment; a channel finds its peer through a [`Bus`].

use kernel::{
    prelude::*,
    sync::Arc, //
};

use crate::{
    channel::{
        Channel,
        Endpoint, //
    },
    wire::{
        packet,
        ring::RingError, //
    },
};

pub mod hv;
pub(crate) mod lending;
pub mod loopback;
pub mod memory;

/// The VMBus a channel uses when it names none: the machine's, if it has
/// one.
pub(crate) fn default_bus() -> Option<Bus> {
    crate::hv::default_bus().map(Bus::Hv)
}

/// A VMBus instance a channel can be offered on or opened from
/// (`VmbServerChannelInitSetVmbusHandle`).
#[derive(Clone)]
pub enum Bus {
    /// An in-kernel loopback bus.
    Loopback(Arc<loopback::LoopbackBus>),
    /// A VMBus of `hv_vmbus`: kmcl's, or a test's. Clients only: a Linux
    /// guest cannot offer channels.
    Hv(Arc<hv::HvBus>),
}

impl Bus {
    pub(crate) fn offer(&self, server: &Channel) -> Result {
        match self {
            Bus::Loopback(b) => b.offer(server),
            Bus::Hv(_) => Err(EOPNOTSUPP),
        }
    }

    /// A client was enabled on this bus.
    pub(crate) fn add_client(&self, client: &Channel) -> Result {
        match self {
            Bus::Loopback(_) => Ok(()),
            Bus::Hv(b) => b.add_client(client),
        }
    }

    /// The channel stops looking for a peer (Disable).
    pub(crate) fn withdraw(&self, chan: &Channel) {
        match self {
            Bus::Loopback(b) => b.withdraw(chan),
            Bus::Hv(b) => b.withdraw(chan),
        }
    }

    /// The channel is Disabled again, torn down.
    pub(crate) fn release(&self, chan: &Channel) {
        match self {
            Bus::Loopback(_) => {}
            Bus::Hv(b) => b.remove_client(chan),
        }
    }

    /// A client waits for its device again: after it hibernated (`look`:
    /// it may be back already), or after an open that failed.
    pub(crate) fn wait_again(&self, client: &Channel, look: bool) {
        match self {
            Bus::Loopback(_) => {}
            Bus::Hv(b) => b.wait_again(client, look),
        }
    }

    /// Connects a client: `Ok(true)` when opened, `Ok(false)` when it waits
    /// for an offer.
    pub(crate) fn connect(&self, client: &Channel) -> Result<bool> {
        match self {
            Bus::Loopback(b) => b.connect(client),
            Bus::Hv(b) => b.connect(client),
        }
    }

    /// Parks the connection of a saved server for a restored instance.
    pub(crate) fn park(&self, server: &Channel) {
        match self {
            Bus::Loopback(b) => b.park(server),
            Bus::Hv(_) => {}
        }
    }

    /// Offers a restored server and attaches it to its parked connection.
    pub(crate) fn rejoin(&self, server: &Channel, token: u64) -> Result {
        match self {
            Bus::Loopback(b) => b.rejoin(server, token),
            Bus::Hv(_) => Err(EOPNOTSUPP),
        }
    }

    /// A server's offer is free again for a new client.
    pub(crate) fn offer_available(&self, server: &Channel) {
        match self {
            Bus::Loopback(b) => b.offer_available(server),
            Bus::Hv(_) => {}
        }
    }
}

fn ring_result(r: Result<crate::wire::ring::WriteOutcome, RingError>) -> Result<bool, WriteError> {
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

/// The transport side of an open channel.
pub(crate) enum Attachment {
    Loopback(loopback::Endpoint),
    Hv(hv::HvEndpoint),
}

/// Whom to signal, taken out of the channel lock before signalling.
pub(crate) enum SignalTarget {
    Loopback(loopback::SignalTarget),
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

impl Attachment {
    /// Writes one encoded packet; `Ok(true)` if the peer must be signalled.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<bool, WriteError> {
        match self {
            Attachment::Loopback(e) => ring_result(e.writer.write(&[bytes])),
            // Linux's ring code signals the host itself.
            Attachment::Hv(e) => e.write(bytes).map(|_| false),
        }
    }

    /// Writes an in-band packet with descriptor `head` and the unpadded
    /// `data`, allocating nothing (for sends from atomic context).
    pub(crate) fn write_inband(
        &mut self,
        head: &packet::Descriptor,
        data: &[u8],
    ) -> Result<bool, WriteError> {
        match self {
            Attachment::Loopback(e) => {
                // Ring writes take whole 8-byte words: the aligned body,
                // then the tail padded with zeroes.
                let body = data.len() & !7;
                let mut tail = [0u8; 8];
                tail[..data.len() - body].copy_from_slice(&data[body..]);
                let tail_len = if data.len() == body { 0 } else { 8 };
                ring_result(
                    e.writer
                        .write(&[&head.encode(), &data[..body], &tail[..tail_len]]),
                )
            }
            // Linux builds the descriptor and the padding itself.
            Attachment::Hv(e) => e
                .send(head.ty, head.flags, head.trans_id, data)
                .map(|_| false),
        }
    }

    /// Free bytes in the outgoing ring.
    pub(crate) fn free(&self) -> u32 {
        match self {
            Attachment::Loopback(e) => e.writer.free().unwrap_or(0),
            Attachment::Hv(e) => e.free(),
        }
    }

    pub(crate) fn set_pending_send_size(&mut self, needed: u32) {
        match self {
            Attachment::Loopback(e) => e.writer.set_pending_send_size(needed),
            Attachment::Hv(e) => e.set_pending_send_size(needed),
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        match self {
            Attachment::Loopback(e) => e.reader.read(buf),
            Attachment::Hv(e) => e.read(buf),
        }
    }

    pub(crate) fn begin_read(&mut self) {
        match self {
            Attachment::Loopback(e) => e.reader.begin_read(),
            Attachment::Hv(e) => e.begin_read(),
        }
    }

    /// Unmasks signals; `true` if data arrived meanwhile.
    pub(crate) fn end_read(&mut self) -> bool {
        match self {
            Attachment::Loopback(e) => e.reader.end_read().unwrap_or(true),
            Attachment::Hv(e) => e.end_read(),
        }
    }

    /// Publishes the read index; `true` if the writer must be signalled.
    pub(crate) fn commit(&mut self) -> bool {
        match self {
            Attachment::Loopback(e) => e.reader.commit(),
            Attachment::Hv(e) => {
                // hv_pkt_iter_close() signals the host itself when needed.
                e.commit();
                false
            }
        }
    }

    pub(crate) fn signal_target(&self) -> SignalTarget {
        match self {
            Attachment::Loopback(e) => SignalTarget::Loopback(e.signal_target()),
            Attachment::Hv(_) => SignalTarget::None,
        }
    }

    /// Closes this end and tells the peer.
    pub(crate) fn close(self, chan: &Channel) {
        match self {
            Attachment::Loopback(e) => e.close(chan),
            Attachment::Hv(e) => e.close(),
        }
    }

    /// Bytes used and size of the outgoing and incoming rings.
    pub(crate) fn ring_fill(&self) -> [(u32, u32); 2] {
        match self {
            Attachment::Loopback(e) => e.ring_fill(),
            Attachment::Hv(e) => e.ring_fill(),
        }
    }

    /// Where this end lends the pages of its GPA-direct sends to the peer,
    /// and as whom: loopback only, since a host reads guest memory itself.
    pub(crate) fn lending(&self) -> Option<(&Arc<lending::Lending>, Endpoint)> {
        match self {
            Attachment::Loopback(e) => Some(e.lending()),
            Attachment::Hv(_) => None,
        }
    }

    /// The connection's identity in a saved state, by which a restored
    /// server rejoins it; `None` where the transport cannot save (hv).
    pub(crate) fn save_token(&self) -> Option<u64> {
        match self {
            Attachment::Loopback(e) => Some(e.conn.token()),
            Attachment::Hv(_) => None,
        }
    }

    /// kmcl's transaction id for the id a completion carries on the wire;
    /// `None` if the transport already knows it is not one of ours.
    pub(crate) fn completion_id(&mut self, wire: u64) -> Option<u64> {
        match self {
            Attachment::Loopback(_) => Some(wire),
            Attachment::Hv(e) => e.completion_id(wire),
        }
    }
}
