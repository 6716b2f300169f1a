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

pub(crate) mod hv;
pub(crate) mod lending;
mod link;
pub(crate) mod loopback;
pub(crate) mod memory;

pub(crate) use link::{
    Link,
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

    /// A server's offer is free again for a new client.
    pub(crate) fn offer_available(&self, server: &Channel) {
        match self {
            Bus::Loopback(b) => b.offer_available(server),
            Bus::Hv(_) => {}
        }
    }
}

/// The transport side of an open channel.
pub(crate) enum Attachment {
    Loopback(loopback::Endpoint),
    Hv(hv::HvEndpoint),
}

/// Calls `$call` on the endpoint an [`Attachment`] carries.
macro_rules! dispatch {
    ($att:expr, $e:ident => $call:expr) => {
        match $att {
            Attachment::Loopback($e) => $call,
            Attachment::Hv($e) => $call,
        }
    };
}

impl Link for Attachment {
    fn write(&mut self, bytes: &[u8]) -> Result<bool, WriteError> {
        dispatch!(self, e => Link::write(e, bytes))
    }

    fn write_inband(&mut self, head: &packet::Descriptor, data: &[u8]) -> Result<bool, WriteError> {
        dispatch!(self, e => Link::write_inband(e, head, data))
    }

    fn free(&self) -> u32 {
        dispatch!(self, e => Link::free(e))
    }

    fn set_pending_send_size(&mut self, needed: u32) {
        dispatch!(self, e => Link::set_pending_send_size(e, needed))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        dispatch!(self, e => Link::read(e, buf))
    }

    fn begin_read(&mut self) {
        dispatch!(self, e => Link::begin_read(e))
    }

    fn end_read(&mut self) -> bool {
        dispatch!(self, e => Link::end_read(e))
    }

    fn commit(&mut self) -> bool {
        dispatch!(self, e => Link::commit(e))
    }

    fn signal_target(&self) -> SignalTarget {
        dispatch!(self, e => Link::signal_target(e))
    }

    fn ring_fill(&self) -> [(u32, u32); 2] {
        dispatch!(self, e => Link::ring_fill(e))
    }

    fn completion_id(&mut self, wire: u64) -> Option<u64> {
        dispatch!(self, e => Link::completion_id(e, wire))
    }
}

impl Attachment {
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

    /// The connection's identity in a saved state, by which a restored
    /// server rejoins it; `None` where the transport cannot save (hv).
    pub(crate) fn save_token(&self) -> Option<u64> {
        match self {
            Attachment::Loopback(e) => Some(e.conn.token()),
            Attachment::Hv(_) => None,
        }
    }
}
