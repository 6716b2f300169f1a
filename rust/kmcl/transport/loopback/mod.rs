// SPDX-License-Identifier: GPL-2.0

//! The loopback transport: a client and a server endpoint in the same kernel,
//! connected by two rings in the VMBus format.
//!
//! A [`LoopbackBus`] plays the part of VMBus: servers offer on it, clients
//! open offers through it. Opening allocates a [`Connection`] with one ring
//! per direction (the client's RingBufferPageCount each), a GPADL table and
//! the MMIO space the server asked for. Signalling the peer queues its
//! softirq work, as an interrupt from the host would run hv's tasklet.
//!
//! Fault injection for tests goes through `kmcl::testing`, whose handles
//! keep the connection, and so its rings, alive; signals to either end can
//! be dropped or held there.
//!
//! The pages of a GPA-direct send with an [`Mdl`] are lent to the peer through
//! the connection's `Lending` for as long as the packet owns the MDL; a
//! receiver reads external data from there and from nowhere else.
//!
//! [`Mdl`]: crate::channel::outgoing::Mdl

use core::sync::atomic::Ordering;

use kernel::{
    new_mutex,
    prelude::*,
    sync::{
        Arc,
        Mutex, //
    },
};

use crate::{
    channel::{
        Channel,
        Endpoint as Role,
        State, //
    },
    transport::{
        Attachment,
        SubOffer, //
    },
};

mod connection;
mod gpadl;

#[cfg(CONFIG_KUNIT)]
pub(crate) use connection::signals;
pub(crate) use connection::Connection;
pub(crate) use connection::{
    Endpoint,
    Reader,
    SignalTarget,
    Writer, //
};
pub(crate) use gpadl::{
    GpadlMapping,
    LoopbackGpadl, //
};

struct BusInner {
    offers: KVec<Arc<Channel>>,
    waiting: KVec<Arc<Channel>>,
    /// Connections of saved servers, waiting for a restored instance.
    parked: KVec<Arc<Connection>>,
}

/// kmcl's shared loopback bus, for drivers in different modules; set from
/// module init to module exit.
static DEFAULT_BUS: core::sync::atomic::AtomicPtr<LoopbackBus> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// The loopback bus that kmcl provides to every module: a server in one
/// module and a client in another meet on it.
///
/// Context: any context.
pub fn default_bus() -> Result<Arc<LoopbackBus>> {
    let p = DEFAULT_BUS.load(Ordering::Acquire);
    if p.is_null() {
        return Err(ENODEV);
    }
    // SAFETY: `p` came from `Arc::into_raw` in `DefaultBus::new` and the
    // reference it stands for is only dropped in `DefaultBus::drop`, at module
    // exit, when no module that uses kmcl is loaded any more.
    Ok(unsafe { kernel::sync::ArcBorrow::from_raw(p) }.into())
}

/// Owns the default bus for the life of the module.
pub(crate) struct DefaultBus(());

impl DefaultBus {
    pub(crate) fn new() -> Result<Self> {
        let bus = LoopbackBus::new()?;
        DEFAULT_BUS.store(Arc::into_raw(bus).cast_mut(), Ordering::Release);
        Ok(Self(()))
    }
}

impl Drop for DefaultBus {
    fn drop(&mut self) {
        let p = DEFAULT_BUS.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: `p` came from `Arc::into_raw` in `new`.
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

/// An in-kernel VMBus instance for the loopback transport.
#[pin_data]
pub struct LoopbackBus {
    #[pin]
    inner: Mutex<BusInner>,
}

/// The client on the other end of `server`'s connection, if it has one.
pub(crate) fn connected_client(server: &Channel) -> Option<Arc<Channel>> {
    server.with_attachment(|a| match a {
        Some(Attachment::Loopback(e)) => e.conn.peer(Role::Client),
        _ => None,
    })
}

/// Whether `client` opens `server`'s offer; a sub-channel offer is opened
/// only by the sub-channel it was handed to (`LoopbackBus::connect_sub`).
fn matches(server: &Channel, client: &Channel) -> bool {
    if server.is_subchannel() || client.is_subchannel() {
        return false;
    }
    let (sty, sinst) = server.interface_ids();
    let (cty, cinst) = client.interface_ids();
    sty == cty && (cinst.is_none() || cinst == sinst)
}

impl LoopbackBus {
    /// A new, empty bus.
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL`.
    pub fn new() -> Result<Arc<LoopbackBus>> {
        Arc::pin_init(
            pin_init!(LoopbackBus {
                inner <- new_mutex!(BusInner {
                    offers: KVec::new(),
                    waiting: KVec::new(),
                    parked: KVec::new(),
                }, "kmcl::LoopbackBus::inner"),
            }),
            GFP_KERNEL,
        )
    }

    /// Number of offers on the bus.
    ///
    /// Context: process context only: it takes a mutex.
    pub fn offer_count(&self) -> usize {
        self.inner.lock().offers.len()
    }

    pub(crate) fn offer(&self, server: &Channel) -> Result {
        let mut g = self.inner.lock();
        let ids = server.interface_ids();
        let index = server.subchannel_index();
        if g.offers
            .iter()
            .any(|o| o.interface_ids() == ids && o.subchannel_index() == index)
        {
            pr_err!("loopback: an offer with the same interface ids exists\n");
            return Err(EEXIST);
        }
        g.offers.push(server.arc(), GFP_KERNEL)?;
        Self::wake_waiting(&mut g, server);
        Ok(())
    }

    /// Queues a connect for every client waiting for `server`'s offer.
    fn wake_waiting(g: &mut BusInner, server: &Channel) {
        let mut i = 0;
        while i < g.waiting.len() {
            if matches(server, &g.waiting[i]) {
                if let Ok(c) = g.waiting.remove(i) {
                    c.post_connect();
                }
            } else {
                i += 1;
            }
        }
    }

    pub(crate) fn park(&self, server: &Channel) {
        let Some(conn) = server.with_attachment(|a| match a {
            Some(Attachment::Loopback(e)) => Some(e.conn.clone()),
            _ => None,
        }) else {
            return;
        };
        conn.parked.store(true, Ordering::Release);
        let mut g = self.inner.lock();
        if g.parked.push(conn.clone(), GFP_KERNEL).is_err() {
            // Without room to park it, the connection closes as usual.
            conn.parked.store(false, Ordering::Release);
        }
    }

    pub(crate) fn rejoin(&self, server: &Channel, token: u64) -> Result {
        let mut g = self.inner.lock();
        let pos = g
            .parked
            .iter()
            .position(|c| c.token == token)
            .ok_or(ENOENT)?;
        g.offers.reserve(1, GFP_KERNEL)?;
        let conn = g.parked.remove(pos).map_err(|_| ENOENT)?;
        conn.parked.store(false, Ordering::Release);
        conn.set_peer(Role::Server, Some(server.arc()));
        let ep = match Endpoint::new(conn.clone(), Role::Server, server) {
            Ok(ep) => ep,
            Err(e) => {
                conn.set_peer(Role::Server, None);
                return Err(e);
            }
        };
        server.attach(Attachment::Loopback(ep))?;
        g.offers.push(server.arc(), GFP_KERNEL)?;
        Ok(())
    }

    pub(crate) fn offer_available(&self, server: &Channel) {
        let mut g = self.inner.lock();
        Self::wake_waiting(&mut g, server);
    }

    pub(crate) fn withdraw(&self, chan: &Channel) {
        let mut g = self.inner.lock();
        g.offers.retain(|o| !core::ptr::eq(&**o, chan));
        g.waiting.retain(|o| !core::ptr::eq(&**o, chan));
    }

    pub(crate) fn connect(&self, client: &Channel) -> Result<bool> {
        if client.is_subchannel() {
            return self.connect_sub(client);
        }
        let mut g = self.inner.lock();
        let server = g
            .offers
            .iter()
            .find(|s| matches(s, client) && s.state() == State::Enabled)
            .cloned();
        let Some(server) = server else {
            if !g.waiting.iter().any(|c| core::ptr::eq(&**c, client)) {
                g.waiting.push(client.arc(), GFP_KERNEL)?;
            }
            return Ok(false);
        };
        Self::join(g, client, server)
    }

    /// Opens the server sub-channel that was offered to `client`, a client
    /// sub-channel: `ENODEV` once the offer was taken, or when that server
    /// channel is no longer offered and free.
    fn connect_sub(&self, client: &Channel) -> Result<bool> {
        let Some(SubOffer::Loopback(server)) = client.take_subchannel_offer() else {
            return Err(ENODEV);
        };
        let g = self.inner.lock();
        let offered = g
            .offers
            .iter()
            .any(|s| Arc::ptr_eq(s, &server) && s.state() == State::Enabled);
        if !offered {
            return Err(ENODEV);
        }
        Self::join(g, client, server)
    }

    /// Connects `client` to `server`'s offer, with the bus locked.
    fn join(
        g: kernel::sync::MutexGuard<'_, BusInner>,
        client: &Channel,
        server: Arc<Channel>,
    ) -> Result<bool> {
        // Pipe mode: both ends are pipes, or neither (channel/pipe.rs).
        if client.is_pipe() != server.is_pipe() {
            return Err(EPROTOTYPE);
        }
        let (pages, mmio_mb) = (client.ring_pages(), server.mmio_megabytes());
        let conn = Connection::new(pages, mmio_mb)?;
        conn.set_peer(Role::Client, Some(client.arc()));
        conn.set_peer(Role::Server, Some(server.clone()));
        server.attach(Attachment::Loopback(Endpoint::new(
            conn.clone(),
            Role::Server,
            &server,
        )?))?;
        if let Err(e) = client.attach(Attachment::Loopback(Endpoint::new(
            conn.clone(),
            Role::Client,
            client,
        )?)) {
            server.detach();
            return Err(e);
        }
        drop(g);
        server.peer_opened();
        Ok(true)
    }
}
