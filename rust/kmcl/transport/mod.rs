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
    wire::ring::RingError,
};

pub(crate) mod hv;
pub(crate) mod lending;
mod link;
pub(crate) mod loopback;
pub(crate) mod memory;

pub(crate) use link::{
    OutPacket,
    RecvLink,
    SendLink,
    SignalTarget,
    WriteError, //
};

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

    /// The client primary on the other end of `server`'s connection, to
    /// which the server offers sub-channels; loopback only.
    pub(crate) fn subchannel_peer(&self, server: &Channel) -> Option<Arc<Channel>> {
        match self {
            Bus::Loopback(_) => loopback::connected_client(server),
            Bus::Hv(_) => None,
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

/// A sub-channel offer that a client sub-channel opens: valid until the
/// offer callback of its primary returns (see `channel::subchannel`).
pub(crate) enum SubOffer {
    /// The loopback server channel offered as the sub-channel.
    Loopback(Arc<Channel>),
    /// The sub-channel's `vmbus_channel`, as hv_vmbus offered it.
    Hv(hv::subchannel::HvSubOffer),
}

/// The transport side of an open channel: what closes it, shares memory
/// and saves it. Its link (the two rings) is taken out once, as a
/// [`LinkReader`] and a [`LinkWriter`], which the channel keeps under its
/// receive and send locks.
pub(crate) enum Attachment {
    Loopback(loopback::Endpoint),
    Hv(hv::HvEndpoint),
}

/// The receive half of an attachment's link.
pub(crate) enum LinkReader {
    Loopback(loopback::Reader),
    Hv(hv::HvLink),
}

/// The send half of an attachment's link.
pub(crate) enum LinkWriter {
    Loopback(loopback::Writer),
    Hv(hv::HvLink),
}

/// Calls `$call` on the transport's value that a `$kind` carries.
macro_rules! dispatch {
    ($kind:ident, $v:expr, $e:ident => $call:expr) => {
        match $v {
            $kind::Loopback($e) => $call,
            $kind::Hv($e) => $call,
        }
    };
}

impl SendLink for LinkWriter {
    fn send(&mut self, packet: &OutPacket<'_>) -> Result<bool, WriteError> {
        dispatch!(LinkWriter, self, e => SendLink::send(e, packet))
    }

    fn free(&self) -> u32 {
        dispatch!(LinkWriter, self, e => SendLink::free(e))
    }

    fn set_pending_send_size(&mut self, needed: u32) {
        dispatch!(LinkWriter, self, e => SendLink::set_pending_send_size(e, needed))
    }

    fn signal_target(&self) -> SignalTarget {
        dispatch!(LinkWriter, self, e => SendLink::signal_target(e))
    }

    fn fill(&self) -> (u32, u32) {
        dispatch!(LinkWriter, self, e => SendLink::fill(e))
    }
}

impl RecvLink for LinkReader {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        dispatch!(LinkReader, self, e => RecvLink::read(e, buf))
    }

    fn begin_read(&mut self) {
        dispatch!(LinkReader, self, e => RecvLink::begin_read(e))
    }

    fn end_read(&mut self) -> bool {
        dispatch!(LinkReader, self, e => RecvLink::end_read(e))
    }

    fn commit(&mut self) -> bool {
        dispatch!(LinkReader, self, e => RecvLink::commit(e))
    }

    fn fill(&self) -> (u32, u32) {
        dispatch!(LinkReader, self, e => RecvLink::fill(e))
    }

    fn completion_id(&mut self, wire: u64) -> Option<u64> {
        dispatch!(LinkReader, self, e => RecvLink::completion_id(e, wire))
    }
}

impl LinkWriter {
    /// Where this end lends the pages of its GPA-direct sends to the peer,
    /// and as whom: loopback only, since a host reads guest memory itself.
    pub(crate) fn lending(&self) -> Option<(&Arc<lending::Lending>, Endpoint)> {
        match self {
            LinkWriter::Loopback(w) => Some(w.lending()),
            LinkWriter::Hv(_) => None,
        }
    }
}

impl Attachment {
    /// Takes the link out of the attachment, as its receive and send
    /// halves; `None` once they were taken.
    ///
    /// # Safety
    ///
    /// Both halves must be dropped before the attachment is closed: they
    /// reach rings that the close may free.
    pub(crate) unsafe fn take_link(&mut self) -> Option<(LinkReader, LinkWriter)> {
        match self {
            Attachment::Loopback(e) => e
                .take_link()
                .map(|(r, w)| (LinkReader::Loopback(r), LinkWriter::Loopback(w))),
            Attachment::Hv(e) => {
                // SAFETY: the caller's promise.
                let link = unsafe { e.take_link() };
                link.map(|(r, w)| (LinkReader::Hv(r), LinkWriter::Hv(w)))
            }
        }
    }

    /// Closes this end and tells the peer.
    pub(crate) fn close(self, chan: &Channel) {
        match self {
            Attachment::Loopback(e) => e.close(chan),
            Attachment::Hv(e) => e.close(),
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

    /// The CPU the peer interrupts for this channel, where the transport
    /// chooses it (hv); `None` where it does not (loopback).
    pub(crate) fn target_cpu(&self) -> Option<u32> {
        match self {
            Attachment::Loopback(_) => None,
            Attachment::Hv(e) => Some(e.target_cpu()),
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
}
