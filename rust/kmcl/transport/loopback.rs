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
//! Fault injection for tests goes through [`Connection::ring_memory`], which
//! gives raw access to a ring's control page and data.
//!
//! The pages of a GPA-direct send with an [`Mdl`] are lent to the peer through
//! the connection's `Lending` for as long as the packet owns the MDL; a
//! receiver reads external data from there and from nowhere else.
//!
//! [`Mdl`]: crate::channel::outgoing::Mdl

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicBool,
        AtomicU64,
        Ordering, //
    },
};

use kernel::{
    alloc::KVVec,
    new_condvar, new_mutex, new_spinlock_irq,
    page::Page,
    prelude::*,
    sync::{
        Arc,
        CondVar,
        Mutex,
        SpinLockIrq, //
    },
};

use crate::{
    channel::{
        event,
        Channel,
        Endpoint as Role,
        State, //
    },
    transport::Attachment,
    wire::{
        packet::HV_PAGE_SIZE,
        ring::{
            RingMemory,
            RingReader,
            RingWriter,
            CONTROL_SIZE, //
        },
    },
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

fn matches(server: &Channel, client: &Channel) -> bool {
    let (sty, sinst) = server.interface_ids();
    let (cty, cinst) = client.interface_ids();
    sty == cty && (cinst.is_none() || cinst == sinst)
}

impl LoopbackBus {
    /// A new, empty bus.
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
    pub fn offer_count(&self) -> usize {
        self.inner.lock().offers.len()
    }

    pub(crate) fn offer(&self, server: &Channel) -> Result {
        let mut g = self.inner.lock();
        let ids = server.interface_ids();
        if g.offers.iter().any(|o| o.interface_ids() == ids) {
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
                    c.post_event(event::CONNECT);
                }
            } else {
                i += 1;
            }
        }
    }

    pub(crate) fn park(&self, server: &Channel) {
        let Some(conn) = server.loopback_connection() else {
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
        server.post_event(event::PEER_OPENED);
        Ok(true)
    }
}

/// One GPADL registered with a connection.
pub(crate) struct GpadlEntry {
    pub(crate) id: u32,
    pub(crate) pfns: KVec<u64>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) mapped: bool,
    pub(crate) deleting: bool,
}

pub(crate) struct GpadlTable {
    pub(crate) next_id: u32,
    pub(crate) entries: KVec<GpadlEntry>,
}

/// An open loopback channel: two rings, the GPADL table, MMIO space.
#[pin_data]
pub struct Connection {
    token: u64,
    parked: AtomicBool,
    c2s: KVVec<u64>,
    s2c: KVVec<u64>,
    data_size: u32,
    mmio: KVVec<u8>,
    #[pin]
    peers: SpinLockIrq<[Option<Arc<Channel>>; 2]>,
    #[pin]
    pub(crate) gpadls: SpinLockIrq<GpadlTable>,
    #[pin]
    pub(crate) gpadl_cond: CondVar,
    lending: Arc<Lending>,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn role_index(r: Role) -> usize {
    match r {
        Role::Client => 0,
        Role::Server => 1,
    }
}

fn ring_alloc(words: usize) -> Result<KVVec<u64>> {
    let mut v = KVVec::with_capacity(words, GFP_KERNEL)?;
    v.resize(words, 0, GFP_KERNEL)?;
    Ok(v)
}

impl Connection {
    fn new(ring_pages: u32, mmio_mb: u32) -> Result<Arc<Connection>> {
        let data_size = (ring_pages - 1) * 4096;
        let words = (CONTROL_SIZE + data_size as usize) / 8;
        let mut mmio = KVVec::new();
        mmio.resize(mmio_mb as usize * 1024 * 1024, 0, GFP_KERNEL)?;
        let conn = Arc::pin_init(
            try_pin_init!(Connection {
                token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
                parked: AtomicBool::new(false),
                c2s: ring_alloc(words)?,
                s2c: ring_alloc(words)?,
                data_size,
                mmio,
                peers <- new_spinlock_irq!([None, None], "kmcl::loopback::Connection::peers"),
                gpadls <- new_spinlock_irq!(GpadlTable {
                    next_id: 1,
                    entries: KVec::new(),
                }, "kmcl::loopback::Connection::gpadls"),
                gpadl_cond <- new_condvar!("kmcl::loopback::Connection::gpadl_cond"),
                lending: Lending::new()?,
            }),
            GFP_KERNEL,
        )?;
        for r in [Role::Client, Role::Server] {
            conn.ring_memory(r).ok_or(EINVAL)?.reset();
        }
        Ok(conn)
    }

    /// The ring that `writer` writes to.
    pub fn ring_memory(&self, writer: Role) -> Option<RingMemory> {
        let v = match writer {
            Role::Client => &self.c2s,
            Role::Server => &self.s2c,
        };
        let base = v.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: `base` is a non-null, 8-aligned allocation of `CONTROL_SIZE +
        // data_size` bytes, owned by this connection; every `RingMemory` made
        // here is used only while an `Arc<Connection>` is held, and the
        // vectors are never resized.
        unsafe {
            RingMemory::new(
                NonNull::new(base)?,
                NonNull::new(base.add(CONTROL_SIZE))?,
                self.data_size,
            )
        }
    }

    fn set_peer(&self, r: Role, chan: Option<Arc<Channel>>) -> Option<Arc<Channel>> {
        core::mem::replace(&mut self.peers.lock()[role_index(r)], chan)
    }

    fn peer(&self, r: Role) -> Option<Arc<Channel>> {
        self.peers.lock()[role_index(r)].clone()
    }

    /// The MMIO space.
    pub(crate) fn mmio(&self) -> &[u8] {
        &self.mmio
    }

    /// The connection's identity in saved states.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// One end of a loopback connection.
pub(crate) struct Endpoint {
    pub(crate) conn: Arc<Connection>,
    role: Role,
    pub(crate) writer: RingWriter,
    pub(crate) reader: RingReader,
}

fn other(r: Role) -> Role {
    match r {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

impl Endpoint {
    /// The `role` end of `conn`, for `chan`, which is Enabled (its
    /// transaction table is sized).
    fn new(conn: Arc<Connection>, role: Role, chan: &Channel) -> Result<Endpoint> {
        let writer = RingWriter::new(conn.ring_memory(role).ok_or(EINVAL)?).map_err(|_| EIO)?;
        let reader =
            RingReader::new(conn.ring_memory(other(role)).ok_or(EINVAL)?).map_err(|_| EIO)?;
        let slots = chan.inner.lock().tx.slots_len();
        conn.lending.reset(role, slots)?;
        Ok(Endpoint {
            conn,
            role,
            writer,
            reader,
        })
    }

    pub(crate) fn signal_target(&self) -> SignalTarget {
        SignalTarget {
            conn: self.conn.clone(),
            to: other(self.role),
        }
    }

    pub(crate) fn close(self, _chan: &Channel) {
        self.conn.set_peer(self.role, None);
        // A parked connection waits for a restored server; the client is
        // not told.
        if self.conn.parked.load(Ordering::Acquire) {
            return;
        }
        if let Some(peer) = self.conn.peer(other(self.role)) {
            peer.peer_closed();
        }
    }

    /// Where this end lends the pages of its GPA-direct sends, and as whom.
    pub(crate) fn lending(&self) -> (&Arc<Lending>, Role) {
        (&self.conn.lending, self.role)
    }

    pub(crate) fn ring_fill(&self) -> [(u32, u32); 2] {
        let size = self.writer.memory().size();
        let out = size - self.writer.free().unwrap_or(size);
        let inc = self.reader.available().unwrap_or(0);
        [(out, size), (inc, size)]
    }
}

/// A peer to signal.
pub(crate) struct SignalTarget {
    conn: Arc<Connection>,
    to: Role,
}

impl SignalTarget {
    pub(crate) fn signal(self) {
        if let Some(peer) = self.conn.peer(self.to) {
            peer.interrupt();
        }
    }
}

impl Channel {
    /// What the peer of this open loopback channel lends, and the peer's
    /// role: where this end reads external data. `None` on any other
    /// transport.
    pub(crate) fn peer_lending(&self) -> Option<(Arc<Lending>, Role)> {
        let g = self.inner.lock();
        let (lending, role) = g.att.as_ref()?.lending()?;
        Some((lending.clone(), other(role)))
    }

    /// The loopback connection of an open channel (for tests and fault
    /// injection).
    pub fn loopback_connection(&self) -> Option<Arc<Connection>> {
        self.inner
            .lock()
            .att
            .as_ref()
            .and_then(|a| a.loopback().cloned())
    }
}

/// One transaction's lent pages: the first of `count` pages and their frame
/// numbers.
struct Lent {
    id: u64,
    pages: NonNull<Page>,
    kpfns: NonNull<u64>,
    count: usize,
}

// SAFETY: an entry is only followed under the lock of its [`Lending`], and
// `Page` may be read from any thread.
unsafe impl Send for Lent {}

/// The pages that each end's GPA-direct sends in flight lend to the other
/// end, one table per end, indexed by the slot of the sender's transaction.
///
/// A reader names the sender's transaction id and a page frame number; it
/// reads only when the entry of that transaction holds that page.
///
/// # Invariants
///
/// An entry's `pages` and `kpfns` point at `count` pages and their frame
/// numbers that stay valid and are not written until the entry is removed
/// by [`Lending::revoke`] (the promise of [`Lending::lend`]). So while the
/// lock is held, every entry's pages can be read.
#[pin_data]
pub(crate) struct Lending {
    #[pin]
    tables: SpinLockIrq<[KVec<Option<Lent>>; 2]>,
}

/// The table index of transaction `id`: kmcl's ids carry the slot plus one
/// in their low 32 bits (`channel/outgoing.rs`).
fn lent_index(id: u64) -> Option<usize> {
    ((id & 0xffff_ffff) as usize).checked_sub(1)
}

impl Lending {
    fn new() -> Result<Arc<Lending>> {
        Arc::pin_init(
            pin_init!(Lending {
                tables <- new_spinlock_irq!([KVec::new(), KVec::new()],
                    "kmcl::loopback::Lending::tables"),
            }),
            GFP_KERNEL,
        )
    }

    /// Gives `lender` an empty table for `slots` transactions: when an end
    /// attaches, whatever an earlier instance lent is forgotten. Sleeps.
    fn reset(&self, lender: Role, slots: usize) -> Result {
        let mut t = KVec::with_capacity(slots, GFP_KERNEL)?;
        for _ in 0..slots {
            t.push(None, GFP_KERNEL)?;
        }
        // Entries only point at memory they do not own: dropping the old
        // table outside the lock frees nothing else.
        let _old = core::mem::replace(&mut self.tables.lock()[role_index(lender)], t);
        Ok(())
    }

    /// Lends `pages` (with frame numbers `kpfns`) for `lender`'s transaction
    /// `id`, replacing whatever an ended transaction of the same slot lent.
    /// Returns `false` for an id outside the table. Allocates nothing.
    ///
    /// # Safety
    ///
    /// `pages` and `kpfns` must stay valid, and the pages unwritten, until
    /// [`Lending::revoke`] is called with `lender`, `id` and
    /// `pages.as_ptr()`.
    pub(crate) unsafe fn lend(&self, lender: Role, id: u64, pages: &[Page], kpfns: &[u64]) -> bool {
        let count = pages.len().min(kpfns.len());
        let mut g = self.tables.lock();
        let Some(e) = lent_index(id).and_then(|i| g[role_index(lender)].get_mut(i)) else {
            return false;
        };
        // INVARIANT: the caller's promise.
        *e = Some(Lent {
            id,
            pages: NonNull::from(pages).cast(),
            kpfns: NonNull::from(kpfns).cast(),
            count,
        });
        true
    }

    /// Ends what [`Lending::lend`] lent for `lender`'s transaction `id` over
    /// `pages`; when this returns, no reader is copying from them and none
    /// will. Callable from any context.
    pub(crate) fn revoke(&self, lender: Role, id: u64, pages: *const Page) {
        let mut g = self.tables.lock();
        if let Some(e) = lent_index(id).and_then(|i| g[role_index(lender)].get_mut(i)) {
            if e.as_ref()
                .is_some_and(|l| l.id == id && core::ptr::eq(l.pages.as_ptr(), pages))
            {
                *e = None;
            }
        }
    }

    /// Copies `dst.len()` bytes at `offset` of the 4 KiB page `hv_pfn` into
    /// `dst`, if `lender`'s transaction `id` lends the page that holds it;
    /// `EACCES` otherwise. `offset + dst.len()` must not cross the 4 KiB
    /// page.
    pub(crate) fn copy(
        &self,
        lender: Role,
        id: u64,
        hv_pfn: u64,
        offset: usize,
        dst: &mut [u8],
    ) -> Result {
        let hv = HV_PAGE_SIZE as usize;
        if offset.checked_add(dst.len()).is_none_or(|end| end > hv) {
            return Err(EINVAL);
        }
        // A kernel page holds one or more 4 KiB pages.
        let per_page = crate::channel::external::hv_pages_per_page();
        let kpfn = hv_pfn / per_page;
        let at = (hv_pfn % per_page) as usize * hv + offset;
        let g = self.tables.lock();
        let lent = lent_index(id)
            .and_then(|i| g[role_index(lender)].get(i))
            .and_then(|e| e.as_ref())
            .filter(|l| l.id == id)
            .ok_or(EACCES)?;
        // SAFETY: by the invariants, with the lock held, `kpfns` points at
        // `count` frame numbers that are alive.
        let kpfns = unsafe { core::slice::from_raw_parts(lent.kpfns.as_ptr(), lent.count) };
        let i = kpfns.iter().position(|&p| p == kpfn).ok_or(EACCES)?;
        // SAFETY: as above, for the `count` pages; `i < count`.
        let page = unsafe { &*lent.pages.as_ptr().add(i) };
        // SAFETY: `dst` is writable for its length; by the invariants nothing
        // writes the page while the entry exists, and the lock keeps it until
        // the copy is done. `at + dst.len()` stays inside the kernel page,
        // which `read_raw` checks too.
        unsafe { page.read_raw(dst.as_mut_ptr(), at, dst.len()) }
    }
}
