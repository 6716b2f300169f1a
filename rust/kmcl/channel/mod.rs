// SPDX-License-Identifier: GPL-2.0

//! KMCL channels: allocation, init setters, and the lifecycle.
//!
//! A [`Channel`] is one endpoint of a VMBus channel, a client (VSC) or a
//! server (VSP). It is allocated Disabled with [`Channel::allocate`], which
//! returns the owning [`ChannelHandle`], configured with the `init_set_*`
//! setters (valid only while Disabled), and brought up with
//! [`Channel::enable`], which returns at once. The rest happens in process
//! context on kmcl's workqueue: a server offers, a client finds the offer and
//! opens it, and both run their state callbacks:
//!
//! ```text
//!  client: Disabled -> Enabled -> Opened -> Started <-> Paused -> Disabled
//!  server: Disabled -> Enabled -> Opened -> Started <-> Paused -> Enabled
//!                     (offered)                      (client gone) ...
//! ```
//!
//! The channel layer does not know which transport carries it: an open
//! channel holds a transport attachment, which
//! provides the rings and signalling.

use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{
    new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        CondVar,
        Mutex,
        SpinLockIrq, //
    },
    task::Task,
    workqueue::{
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

use crate::{
    sys,
    transport::{
        Attachment,
        Bus, //
    },
    wire::guid::Guid,
};

pub mod callbacks;
pub mod gpadl;
pub mod incoming;
pub mod outgoing;
pub mod save;
mod status;

use callbacks::{
    ProcessPacket,
    SaveRestorePacket,
    StateChange, //
};
use incoming::RxState;
use outgoing::TxState;

/// Channel flag: the channel is a pipe (`VMBUS_CHANNEL_FLAG_IS_PIPE`).
pub const CHANNEL_FLAG_IS_PIPE: u32 = 0x1;

/// Server flags (`VMBUS_SERVER_CHANNEL_FLAGS`).
pub mod server_flags {
    /// Offer the channel to the same partition (loopback).
    pub const LOOPBACK_OFFER: u32 = 0x1;
    /// Enumerate a device interface for the offer.
    pub const ENUMERATE_DEVICE_INTERFACE: u32 = 0x2;
    /// Offer the channel as a pipe.
    pub const OFFER_AS_PIPE: u32 = 0x4;
    /// Always create a new channel rather than reuse one.
    pub const FORCE_NEW_CHANNEL: u32 = 0x8;
    /// The offer is a TL NPI provider (hvsocket) offer.
    pub const TLNPI_PROVIDER_OFFER: u32 = 0x10;
    /// Every flag kmcl knows.
    pub const ALL: u32 = 0x1f;
}

/// Longest friendly name, in bytes.
pub const FRIENDLY_NAME_MAX: usize = 64;

/// Default number of preallocated packet objects per channel.
pub const DEFAULT_PACKET_POOL: u32 = 64;
/// Default number of incoming packet slots (bounds the transaction quota).
pub const DEFAULT_INCOMING_SLOTS: u32 = 128;
/// Default ring size in pages, control page included.
pub const DEFAULT_RING_PAGES: u32 = 16;
/// Default maximum packet size.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 4096;

/// Which end of the channel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A VMBus client (VSC): opens an offer.
    Client,
    /// A VMBus server (VSP): offers the channel.
    Server,
}

/// A channel's friendly name, copied out of the channel.
pub struct FriendlyName([u8; FRIENDLY_NAME_MAX]);

impl FriendlyName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        let n = self
            .0
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(FRIENDLY_NAME_MAX);
        // The setter only stores UTF-8, whole.
        core::str::from_utf8(&self.0[..n]).unwrap_or("")
    }
}

/// The lifecycle state of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Allocated or torn down; the init setters are valid.
    Disabled,
    /// Enabled: a server's offer is up, or a client looks for its offer.
    Enabled,
    /// Connected; the Opened callback runs or ran, Started not yet.
    Opened,
    /// Packets flow.
    Started,
    /// Paused: no incoming delivery until Start.
    Paused,
    /// Being torn down.
    Closing,
}

/// The configuration that the init setters write.
pub(crate) struct Config {
    pub(crate) client_context_size: u32,
    pub(crate) flags: u32,
    /// The friendly name, NUL-padded; kept inline so that reading it under
    /// the channel lock allocates nothing.
    pub(crate) friendly_name: [u8; FRIENDLY_NAME_MAX],
    pub(crate) max_external_bytes: u32,
    pub(crate) max_external_chain: u32,
    pub(crate) max_packet_size: u32,
    pub(crate) packet_pool: u32,
    pub(crate) incoming_slots: u32,
    pub(crate) process: Option<Arc<dyn ProcessPacket>>,
    pub(crate) state_cb: Option<Arc<dyn StateChange>>,
    pub(crate) save_restore: Option<Arc<dyn SaveRestorePacket>>,
    pub(crate) ring_pages: u32,
    pub(crate) target_type: Guid,
    pub(crate) target_instance: Option<Guid>,
    pub(crate) server_flags: u32,
    pub(crate) mmio_megabytes: u32,
    pub(crate) target_vtl: u8,
    pub(crate) bus: Option<Bus>,
}

impl Config {
    fn new() -> Self {
        Self {
            client_context_size: 0,
            flags: 0,
            friendly_name: [0; FRIENDLY_NAME_MAX],
            max_external_bytes: 64 * 4096,
            max_external_chain: 4,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            packet_pool: DEFAULT_PACKET_POOL,
            incoming_slots: DEFAULT_INCOMING_SLOTS,
            process: None,
            state_cb: None,
            save_restore: None,
            ring_pages: DEFAULT_RING_PAGES,
            target_type: Guid::NULL,
            target_instance: None,
            server_flags: 0,
            mmio_megabytes: 0,
            target_vtl: 0,
            bus: None,
        }
    }
}

/// The sizes that the preallocations of an Enable depend on.
#[derive(Clone, Copy)]
pub(crate) struct Sizing {
    pub(crate) client_context_size: u32,
    pub(crate) max_external_bytes: u32,
    pub(crate) max_external_chain: u32,
    pub(crate) max_packet_size: u32,
    pub(crate) packet_pool: u32,
    pub(crate) incoming_slots: u32,
}

impl Config {
    fn sizing(&self) -> Sizing {
        Sizing {
            client_context_size: self.client_context_size,
            max_external_bytes: self.max_external_bytes,
            max_external_chain: self.max_external_chain,
            max_packet_size: self.max_packet_size,
            packet_pool: self.packet_pool,
            incoming_slots: self.incoming_slots,
        }
    }
}

/// What `vmbus_open()` is given for a client channel.
pub(crate) struct HvOpenParams {
    pub(crate) ring_pages: u32,
    pub(crate) max_pkt: u32,
    pub(crate) rqstor: u32,
}

/// Control events for the channel's process-context work.
pub(crate) mod event {
    /// Look for the offer and open it (client).
    pub(crate) const CONNECT: u32 = 1 << 0;
    /// A client opened this server's offer.
    pub(crate) const PEER_OPENED: u32 = 1 << 1;
    /// The peer closed or went away.
    pub(crate) const PEER_CLOSED: u32 = 1 << 2;
}

/// Mutable channel state, under the channel's spinlock.
pub(crate) struct Inner {
    pub(crate) state: State,
    pub(crate) cfg: Config,
    pub(crate) att: Option<Attachment>,
    pub(crate) rx: RxState,
    pub(crate) tx: TxState,
    /// Pending control events.
    pub(crate) events: u32,
    /// The task running a state callback of this channel, if any.
    pub(crate) in_callback: usize,
    /// Pause armed while Disabled, applied at the next open.
    pub(crate) pause_armed: bool,
    /// The peer closed; sends fail with `ENODEV` until the channel is reset.
    pub(crate) peer_gone: bool,
    /// The channel is being disabled: blocking calls give up with `ENODEV`.
    pub(crate) disabling: bool,
    /// The Opened callback ran successfully, so Closed is owed.
    pub(crate) opened: bool,
    /// The transport went away for a while (hibernation): after the
    /// teardown a client waits, Enabled, to open again.
    pub(crate) reconnect: bool,
    /// The host rescinded the client's device: calls fail with `ENODEV`
    /// until the next Enable.
    pub(crate) lost: bool,
    /// Monitor latency set by `set_interrupt_latency`, in 100 ns units.
    pub(crate) interrupt_latency: u32,
    /// A save ended: Disable parks the connection for a restored instance.
    pub(crate) servicing: bool,
    /// Chunks of a saved state being restored.
    pub(crate) restore_buf: KVec<u8>,
    /// A complete restored state, applied by the next Enable.
    pub(crate) pending_restore: Option<save::PendingRestore>,
}

/// Counters shown in debugfs.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) packets_received: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) completions_received: AtomicU64,
    pub(crate) completions_sent: AtomicU64,
    pub(crate) signals_sent: AtomicU64,
    pub(crate) interrupts: AtomicU64,
    pub(crate) quota_stalls: AtomicU64,
    pub(crate) ring_full: AtomicU64,
    pub(crate) rejected_completions: AtomicU64,
    pub(crate) malformed_packets: AtomicU64,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A KMCL channel endpoint (`VMBCHANNEL`).
///
/// Reached as `&Channel` from its [`ChannelHandle`], from callbacks, and from
/// packets ([`outgoing::Packet::channel`]).
///
/// # Invariants
///
/// `inner.state` is `Disabled` exactly when `inner.att` is `None` and no
/// callback of this channel is scheduled to run.
#[pin_data]
pub struct Channel {
    id: u32,
    endpoint: Endpoint,
    #[pin]
    pub(crate) inner: SpinLockIrq<Inner>,
    #[pin]
    pub(crate) cond: CondVar,
    #[pin]
    control: Mutex<()>,
    #[pin]
    bh_work: Work<Channel, 0>,
    #[pin]
    passive_work: Work<Channel, 1>,
    #[pin]
    control_work: Work<Channel, 2>,
    pub(crate) stats: Stats,
    pointer: core::sync::atomic::AtomicUsize,
}

impl_has_work! {
    impl HasWork<Self, 0> for Channel { self.bh_work }
    impl HasWork<Self, 1> for Channel { self.passive_work }
    impl HasWork<Self, 2> for Channel { self.control_work }
}

/// The owner of a channel, returned by [`Channel::allocate`].
///
/// Dropping it disables the channel if needed (blocking, process context)
/// and frees it, as [`ChannelHandle::cleanup`] does for a Disabled channel.
pub struct ChannelHandle {
    chan: Arc<Channel>,
    _status: Option<status::StatusFile>,
}

impl core::ops::Deref for ChannelHandle {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.chan
    }
}

impl ChannelHandle {
    /// Frees a Disabled channel (`VmbChannelCleanup`). A channel in any other
    /// state is handed back with `EBUSY`.
    pub fn cleanup(self) -> core::result::Result<(), (Error, ChannelHandle)> {
        if self.chan.state() != State::Disabled {
            return Err((EBUSY, self));
        }
        drop(self);
        Ok(())
    }

    /// A new reference to the channel, for work items and other threads.
    pub fn arc(&self) -> Arc<Channel> {
        self.chan.clone()
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        if self.chan.state() != State::Disabled {
            self.chan.disable();
        }
        // The configuration holds the driver's callbacks, which may hold
        // references to the channel: drop them to break such cycles.
        let cfg = {
            let mut g = self.chan.inner.lock();
            core::mem::replace(&mut g.cfg, Config::new())
        };
        drop(cfg);
    }
}

/// Returns `EINVAL` unless the channel is Disabled, for the init setters.
macro_rules! init_setter {
    ($self:ident, $g:ident, $body:block) => {{
        let mut $g = $self.inner.lock();
        if $g.state != State::Disabled {
            return Err(EINVAL);
        }
        $body
        Ok(())
    }};
}

impl Channel {
    /// Allocates a Disabled channel endpoint (`VmbChannelAllocate`).
    pub fn allocate(endpoint: Endpoint) -> Result<ChannelHandle> {
        let chan = Arc::pin_init(
            try_pin_init!(Channel {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                endpoint,
                inner <- new_spinlock_irq!(Inner {
                    state: State::Disabled,
                    cfg: Config::new(),
                    att: None,
                    rx: RxState::new(),
                    tx: TxState::new(),
                    events: 0,
                    in_callback: 0,
                    pause_armed: false,
                    peer_gone: false,
                    disabling: false,
                    opened: false,
                    reconnect: false,
                    lost: false,
                    interrupt_latency: 0,
                    servicing: false,
                    restore_buf: KVec::new(),
                    pending_restore: None,
                }, "kmcl::Channel::inner"),
                cond <- new_condvar!("kmcl::Channel::cond"),
                control <- new_mutex!((), "kmcl::Channel::control"),
                bh_work <- new_work!("kmcl::Channel::bh_work"),
                passive_work <- new_work!("kmcl::Channel::passive_work"),
                control_work <- new_work!("kmcl::Channel::control_work"),
                stats: Stats::default(),
                pointer: core::sync::atomic::AtomicUsize::new(0),
            }),
            GFP_KERNEL,
        )?;
        Ok(ChannelHandle {
            chan,
            _status: None,
        })
    }

    /// The endpoint kind.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// A number unique among the channels of this boot.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Stores a driver value in the channel (`VmbChannelSetPointer`).
    pub fn set_pointer(&self, value: usize) {
        self.pointer.store(value, Ordering::Relaxed);
    }

    /// The value stored with [`Channel::set_pointer`] (`VmbChannelGetPointer`).
    pub fn pointer(&self) -> usize {
        self.pointer.load(Ordering::Relaxed)
    }

    /// Signals this channel has sent its peer since it was allocated.
    pub fn stats_signals_sent(&self) -> u64 {
        self.stats.signals_sent.load(Ordering::Relaxed)
    }

    /// Times delivery stalled on the quota or on incoming slots.
    pub fn stats_quota_stalls(&self) -> u64 {
        self.stats.quota_stalls.load(Ordering::Relaxed)
    }

    /// Times a write found the ring full.
    pub fn stats_ring_full(&self) -> u64 {
        self.stats.ring_full.load(Ordering::Relaxed)
    }

    /// Waits in process context until the channel is in `state`, for at
    /// most `timeout`; `ETIMEDOUT` otherwise. Enable returns before the
    /// channel opens: this is how a caller waits for `State::Started`.
    pub fn wait_for_state(&self, state: State, timeout: kernel::time::Delta) -> Result {
        kernel::task::might_sleep();
        let ms = u32::try_from(timeout.as_millis().max(0)).unwrap_or(u32::MAX);
        let deadline = sys::jiffies() + u64::from(kernel::time::msecs_to_jiffies(ms) as u32);
        let mut g = self.inner.lock();
        while g.state != state {
            let now = sys::jiffies();
            if now >= deadline {
                return Err(ETIMEDOUT);
            }
            // State changes notify the condition variable; the timeout only
            // bounds the wait.
            let _ = self
                .cond
                .wait_interruptible_timeout(&mut g, (deadline - now) as kernel::time::Jiffies);
        }
        Ok(())
    }

    /// The current lifecycle state.
    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    // ---- Init setters: valid only while Disabled, else `EINVAL`. ----

    /// Size of the per-incoming-packet scratch area
    /// (`VmbChannelInitSetClientContextSize`).
    pub fn init_set_client_context_size(&self, size: u32) -> Result {
        if size > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.client_context_size = size;
        })
    }

    /// Channel flags, [`CHANNEL_FLAG_IS_PIPE`] (`VmbChannelInitSetFlags`).
    pub fn init_set_flags(&self, flags: u32) -> Result {
        if flags & !CHANNEL_FLAG_IS_PIPE != 0 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.flags = flags;
        })
    }

    /// Name for debugging and debugfs (`VmbChannelInitSetFriendlyName`): at
    /// most [`FRIENDLY_NAME_MAX`] bytes of UTF-8.
    pub fn init_set_friendly_name(&self, name: &CStr) -> Result {
        let b = name.to_str().map_err(|_| EINVAL)?.as_bytes();
        if b.len() > FRIENDLY_NAME_MAX {
            return Err(EINVAL);
        }
        let mut buf = [0u8; FRIENDLY_NAME_MAX];
        buf[..b.len()].copy_from_slice(b);
        init_setter!(self, g, {
            g.cfg.friendly_name = buf;
        })
    }

    /// Largest external data a packet may describe: total bytes and number of
    /// ranges, both above zero (`VmbChannelInitSetMaximumExternalData`).
    pub fn init_set_maximum_external_data(&self, size: u32, chain_length: u32) -> Result {
        if size == 0 || chain_length == 0 || chain_length > 64 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.max_external_bytes = size;
            g.cfg.max_external_chain = chain_length;
        })
    }

    /// Largest payload a send may ever carry, above zero
    /// (`VmbChannelInitSetMaximumPacketSize`).
    pub fn init_set_maximum_packet_size(&self, size: u32) -> Result {
        if size == 0 || size > 1 << 20 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.max_packet_size = size;
        })
    }

    /// Packet callbacks (`VmbChannelInitSetProcessPacketCallbacks`).
    pub fn init_set_process_packet_callbacks(&self, cb: Arc<dyn ProcessPacket>) -> Result {
        init_setter!(self, g, {
            g.cfg.process = Some(cb);
        })
    }

    /// State callbacks (`VmbChannelInitSetStateChangeCallbacks`).
    pub fn init_set_state_change_callbacks(&self, cb: Arc<dyn StateChange>) -> Result {
        init_setter!(self, g, {
            g.cfg.state_cb = Some(cb);
        })
    }

    /// Number of preallocated packet objects (a kmcl addition: KMCL's pool
    /// grows on demand, kmcl's is fixed so that sends never allocate).
    pub fn init_set_packet_pool_size(&self, count: u32) -> Result {
        if count == 0 || count > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.packet_pool = count;
        })
    }

    /// Number of preallocated incoming packet slots, the upper bound of the
    /// transaction quota (a kmcl addition, for the same reason).
    pub fn init_set_incoming_slots(&self, count: u32) -> Result {
        if count == 0 || count > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.incoming_slots = count;
        })
    }

    /// The VMBus instance to use (`VmbServerChannelInitSetVmbusHandle`). kmcl
    /// accepts it on clients too, to pick a loopback bus.
    pub fn init_set_vmbus_handle(&self, bus: Bus) -> Result {
        init_setter!(self, g, {
            g.cfg.bus = Some(bus);
        })
    }

    /// Ring size in pages per direction, control page included, at least 2
    /// (`VmbClientChannelInitSetRingBufferPageCount`). Client only.
    pub fn init_set_ring_buffer_page_count(&self, pages: u32) -> Result {
        if self.endpoint != Endpoint::Client || !(2..=1024).contains(&pages) {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.ring_pages = pages;
        })
    }

    /// The offer to open: interface type and, optionally, instance
    /// (`VmbClientChannelInitSetTargetPnp`). PnP failures reach
    /// [`StateChange::pnp_failure`]. Client only.
    pub fn init_set_target_pnp(&self, interface_type: Guid, instance: Option<Guid>) -> Result {
        if self.endpoint != Endpoint::Client || interface_type.is_null() {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_type = interface_type;
            g.cfg.target_instance = instance;
        })
    }

    /// Server flags, see [`server_flags`] (`VmbServerChannelInitSetFlags`).
    pub fn init_set_server_flags(&self, flags: u32) -> Result {
        if self.endpoint != Endpoint::Server || flags & !server_flags::ALL != 0 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.server_flags = flags;
        })
    }

    /// MMIO space to reserve for the device, in MiB
    /// (`VmbServerChannelInitSetMmioMegabytes`). Server only.
    pub fn init_set_mmio_megabytes(&self, megabytes: u32) -> Result {
        if self.endpoint != Endpoint::Server || megabytes > 64 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.mmio_megabytes = megabytes;
        })
    }

    /// Per-packet save/restore callbacks
    /// (`VmbServerChannelInitSetSaveRestorePacketCallbacks`). Server only.
    pub fn init_set_save_restore_packet_callbacks(&self, cb: Arc<dyn SaveRestorePacket>) -> Result {
        if self.endpoint != Endpoint::Server {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.save_restore = Some(cb);
        })
    }

    /// The interface type and instance of the offer
    /// (`VmbServerChannelInitSetTargetInterfaceId`). Server only.
    pub fn init_set_target_interface_id(&self, interface_type: Guid, instance: Guid) -> Result {
        if self.endpoint != Endpoint::Server || interface_type.is_null() {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_type = interface_type;
            g.cfg.target_instance = Some(instance);
        })
    }

    /// The VTL the offer is made to (`VmbServerChannelInitSetTargetVtl`).
    /// Server only; 0 to 2.
    pub fn init_set_target_vtl(&self, vtl: u8) -> Result {
        if self.endpoint != Endpoint::Server || vtl > 2 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_vtl = vtl;
        })
    }

    // ---- Settings that may change at any time. ----

    /// Caps how many incoming packets may be delivered and not yet finished
    /// (`VmbChannelSetTransactionQuota`), above zero. Lowering it below the
    /// outstanding count delivers nothing more until enough packets finish.
    pub fn set_transaction_quota(&self, quota: u32) -> Result {
        if quota == 0 {
            return Err(EINVAL);
        }
        let mut g = self.inner.lock();
        g.rx.quota = quota;
        Ok(())
    }

    /// Delivers incoming packets in process context instead of softirq
    /// context (`VmbChannelSetIncomingProcessingAtPassive`).
    pub fn set_incoming_processing_at_passive(&self, passive: bool) {
        self.inner.lock().rx.passive = passive;
    }

    /// The interface type and instance of the channel's offer
    /// (`VmbChannelGetInterfaceInstance` returns the latter).
    pub fn interface_ids(&self) -> (Guid, Option<Guid>) {
        let g = self.inner.lock();
        (g.cfg.target_type, g.cfg.target_instance)
    }

    pub(crate) fn flags(&self) -> u32 {
        self.inner.lock().cfg.flags
    }

    pub(crate) fn ring_pages(&self) -> u32 {
        self.inner.lock().cfg.ring_pages
    }

    pub(crate) fn mmio_megabytes(&self) -> u32 {
        self.inner.lock().cfg.mmio_megabytes
    }

    /// The friendly name; empty if none was set.
    pub fn friendly_name(&self) -> FriendlyName {
        FriendlyName(self.inner.lock().cfg.friendly_name)
    }

    // ---- Lifecycle. ----

    fn check_not_in_callback(&self) -> Result {
        let me = Task::current_raw() as usize;
        if self.inner.lock().in_callback == me {
            pr_err!(
                "channel {}: lifecycle call from inside its own state callback\n",
                self.id
            );
            return Err(EDEADLK);
        }
        Ok(())
    }

    /// Enables a Disabled channel (`VmbChannelEnable`): a server offers it, a
    /// client opens its target or waits for it. Returns at once; the state
    /// callbacks follow in process context.
    pub fn enable(&self) -> Result {
        kernel::task::might_sleep();
        let _c = self.control.lock();
        let sizing = {
            let g = self.inner.lock();
            if g.state != State::Disabled {
                return Err(EINVAL);
            }
            if g.cfg.process.is_none() {
                pr_err!("channel {}: enable without packet callbacks\n", self.id);
                return Err(EINVAL);
            }
            if g.cfg.target_type.is_null() {
                return Err(EINVAL);
            }
            g.cfg.sizing()
        };
        // A channel that names no bus uses the machine's VMBus.
        let bus = {
            let named = self.inner.lock().cfg.bus.clone();
            match named.or_else(|| crate::hv::default_bus().map(Bus::Hv)) {
                Some(bus) => bus,
                None => return Err(ENODEV),
            }
        };
        self.inner.lock().cfg.bus = Some(bus);
        self.prepare_enabled(&sizing)?;
        let Some(bus) = self.inner.lock().cfg.bus.clone() else {
            return Err(ENODEV);
        };
        let pending = self.inner.lock().pending_restore.take();
        let r = match (self.endpoint, pending) {
            (Endpoint::Server, Some(pending)) => bus.rejoin(self, pending.token).map(|()| {
                self.restore_packets(pending);
                self.post_event(event::PEER_OPENED);
            }),
            (Endpoint::Server, None) => bus.offer(self),
            (Endpoint::Client, _) => bus.add_client(self).map(|()| {
                self.post_event(event::CONNECT);
            }),
        };
        if r.is_err() {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
            g.rx.release();
            g.tx.release();
        }
        r
    }

    /// Disables the channel (`VmbChannelDisable`): closes it on a client,
    /// revokes the offer on a server. Blocks until the channel is torn down:
    /// Suspend and Closed have run, every outstanding incoming packet has
    /// been finished by the driver, and every outstanding send has finished
    /// with `ECANCELED`.
    pub fn disable(&self) {
        kernel::task::might_sleep();
        if self.check_not_in_callback().is_err() {
            return;
        }
        {
            let mut g = self.inner.lock();
            g.disabling = true;
        }
        self.cond.notify_all();
        let _c = self.control.lock();
        let (bus, servicing) = {
            let mut g = self.inner.lock();
            if g.state == State::Disabled {
                return;
            }
            (g.cfg.bus.clone(), core::mem::take(&mut g.servicing))
        };
        if let Some(bus) = &bus {
            if servicing {
                bus.park(self);
            }
            bus.withdraw(self);
        }
        self.teardown(false);
        {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
            g.events = 0;
            g.disabling = false;
            g.reconnect = false;
        }
        if let Some(bus) = bus {
            bus.release(self);
        }
    }

    /// Pauses incoming delivery (`VmbChannelPause`). Blocks until Suspend has
    /// run and the driver has finished every outstanding incoming packet. On
    /// a Disabled channel, arms a pause that applies after the next open.
    pub fn pause(&self) -> Result {
        kernel::task::might_sleep();
        self.check_not_in_callback()?;
        let _c = self.control.lock();
        {
            let mut g = self.inner.lock();
            match g.state {
                State::Disabled => {
                    g.pause_armed = true;
                    return Ok(());
                }
                State::Started => g.state = State::Paused,
                State::Paused => return Ok(()),
                _ => return Err(EINVAL),
            }
        }
        self.stop_delivery();
        self.call_state(|cb, ch| cb.suspend(ch));
        self.wait_incoming_finished();
        Ok(())
    }

    /// Leaves the paused state (`VmbChannelStart`): Started runs again and
    /// delivery resumes. On a Disabled channel, disarms a pending pause.
    pub fn start(&self) -> Result {
        kernel::task::might_sleep();
        self.check_not_in_callback()?;
        let _c = self.control.lock();
        {
            let mut g = self.inner.lock();
            match g.state {
                State::Disabled => {
                    g.pause_armed = false;
                    return Ok(());
                }
                State::Paused => {}
                State::Started => return Ok(()),
                _ => return Err(EINVAL),
            }
            g.state = State::Started;
            // Resuming this instance abandons a save.
            g.servicing = false;
        }
        self.call_state(|cb, ch| cb.started(ch));
        self.start_delivery();
        Ok(())
    }

    // ---- Internals shared by the lifecycle and the transports. ----

    /// Runs a state callback with the in-callback marker set.
    pub(crate) fn call_state<R: Default>(
        &self,
        f: impl FnOnce(&dyn StateChange, &Channel) -> R,
    ) -> R {
        let cb = {
            let mut g = self.inner.lock();
            g.in_callback = Task::current_raw() as usize;
            g.cfg.state_cb.clone()
        };
        let r = cb.as_deref().map(|cb| f(cb, self)).unwrap_or_default();
        self.inner.lock().in_callback = 0;
        r
    }

    /// Queues a control event for the process-context work.
    pub(crate) fn post_event(&self, ev: u32) {
        self.inner.lock().events |= ev;
        let _ = sys::wq().enqueue::<Arc<Channel>, 2>(self.arc());
    }

    /// The channel's interrupt: the peer wrote to the ring, or freed space.
    pub(crate) fn interrupt(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let _ = sys::bh_wq().enqueue::<Arc<Channel>, 0>(self.arc());
    }

    /// Queues incoming delivery in the context the channel is set up for.
    pub(crate) fn kick_delivery(&self) {
        let passive = self.inner.lock().rx.passive;
        if passive {
            let _ = sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
        } else {
            let _ = sys::bh_wq().enqueue::<Arc<Channel>, 0>(self.arc());
        }
    }

    /// Attaches an open connection and moves to Opened.
    pub(crate) fn attach(&self, att: Attachment) -> Result {
        self.attach_or_return(att).map_err(|(e, att)| {
            // Nothing used it: closing tells the peer.
            att.close(self);
            e
        })
    }

    /// As [`Channel::attach`], but hands the connection back on failure.
    pub(crate) fn attach_or_return(
        &self,
        att: Attachment,
    ) -> core::result::Result<(), (Error, Attachment)> {
        let mut g = self.inner.lock();
        if g.state != State::Enabled || g.att.is_some() || g.disabling {
            return Err((EBUSY, att));
        }
        g.att = Some(att);
        g.state = State::Opened;
        g.peer_gone = false;
        Ok(())
    }

    /// Looks for the offer again: a device became free.
    pub(crate) fn post_connect(&self) {
        self.post_event(event::CONNECT);
    }

    /// The transport under the channel went away: removed for good (the
    /// host rescinded the offer, the device was unbound), or, with
    /// `suspend`, for hibernation, after which a client opens again.
    ///
    /// Only an attached channel is affected; `false` otherwise (the bus
    /// then deals with an open still in flight).
    pub(crate) fn transport_lost(&self, suspend: bool) -> bool {
        {
            let mut g = self.inner.lock();
            if g.att.is_none() {
                return false;
            }
            if suspend {
                g.reconnect = true;
            } else {
                g.lost = true;
            }
        }
        self.peer_closed();
        true
    }

    /// The host's interrupt, in the channel's tasklet: flush the send queue
    /// and drain the ring in place.
    pub(crate) fn on_host_interrupt(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        self.on_interrupt();
    }

    /// The sizes `vmbus_open()` is given for this channel.
    pub(crate) fn hv_open_params(&self) -> HvOpenParams {
        let g = self.inner.lock();
        HvOpenParams {
            ring_pages: g.cfg.ring_pages,
            // The largest packet kmcl accepts (descriptor, ranges and
            // payload): Linux copies each packet out into a buffer this big.
            // No packet is larger than the ring's data area, and Linux
            // copies up to this many bytes from the ring even when the host
            // lies about the length: never more than the ring holds.
            max_pkt: (g.rx.packet_room() as u32).min((g.cfg.ring_pages - 1) * 4096),
            // Two requestor slots per transaction slot. A request that timed
            // out keeps its requestor slot until the host completes it (its
            // late completion is then refused), so the requestor needs room
            // beyond the requests in flight; should a host never answer, a
            // full requestor only queues sends, as a full ring does.
            rqstor: g.tx.slot_count() * 2,
        }
    }

    /// The peer closed: sends fail from now on, and the control work tears
    /// the channel down.
    pub(crate) fn peer_closed(&self) {
        self.inner.lock().peer_gone = true;
        self.cond.notify_all();
        self.post_event(event::PEER_CLOSED);
    }

    /// The Opened, Started and PostStarted sequence after a connection.
    /// Returns the Opened callback's error, after rolling back.
    pub(crate) fn run_open_sequence(&self) -> Result {
        if let Err(e) = self
            .call_state(|cb, ch| Some(cb.opened(ch)))
            .unwrap_or(Ok(()))
        {
            pr_info!(
                "channel {}: Opened failed ({:?}); rolled back\n",
                self.id,
                e
            );
            self.detach();
            self.inner.lock().state = State::Enabled;
            return Err(e);
        }
        let paused = {
            let mut g = self.inner.lock();
            if g.state != State::Opened {
                // The peer closed meanwhile; the control work handles it.
                g.opened = true;
                return Ok(());
            }
            g.opened = true;
            if g.pause_armed {
                g.pause_armed = false;
                g.state = State::Paused;
                true
            } else {
                g.state = State::Started;
                false
            }
        };
        self.cond.notify_all();
        if !paused {
            self.call_state(|cb, ch| cb.started(ch));
            self.start_delivery();
            self.call_state(|cb, ch| cb.post_started(ch));
        }
        Ok(())
    }

    /// Makes the preallocations of an Enable (packet pool, transaction table,
    /// send queue, incoming slots) and moves a Disabled channel to Enabled.
    /// Called with the control mutex held, which keeps the state Disabled
    /// while the allocations, which sleep, run outside the channel lock.
    fn prepare_enabled(&self, sizing: &Sizing) -> Result {
        let mut rx = RxState::new();
        rx.prepare(sizing)?;
        let mut tx = TxState::new();
        tx.prepare(sizing)?;
        let mut g = self.inner.lock();
        // The quota and the delivery context are settings, not state.
        rx.quota = g.rx.quota;
        rx.passive = g.rx.passive;
        g.rx = rx;
        g.tx = tx;
        g.state = State::Enabled;
        g.peer_gone = false;
        g.disabling = false;
        g.opened = false;
        g.lost = false;
        g.reconnect = false;
        Ok(())
    }

    /// Opens the channel on a `vmbus_channel` that is open already: the
    /// preallocations of an Enable, then Opened, Started and PostStarted, in
    /// the caller's thread. The interop suites use it to put kmcl on a
    /// channel they built, without a device.
    ///
    /// # Safety
    ///
    /// As [`transport::hv::HvEndpoint::new`](crate::transport::hv) with
    /// `Owner::Raw(release)`.
    #[cfg_attr(not(CONFIG_KUNIT), allow(dead_code))]
    pub(crate) unsafe fn open_on_hv(
        &self,
        chan: core::ptr::NonNull<crate::vmbus::ffi::VmbusChannel>,
        release: Option<crate::transport::hv::Release>,
    ) -> Result {
        kernel::task::might_sleep();
        let _c = self.control.lock();
        let sizing = {
            let g = self.inner.lock();
            if g.state != State::Disabled || g.cfg.process.is_none() {
                return Err(EINVAL);
            }
            g.cfg.sizing()
        };
        self.prepare_enabled(&sizing)?;
        // SAFETY: the caller's promise.
        let ep = unsafe {
            crate::transport::hv::HvEndpoint::new(chan, crate::transport::hv::Owner::Raw(release))
        };
        self.attach(Attachment::Hv(ep))?;
        drop(_c);
        let r = self.run_open_sequence();
        if r.is_err() {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
        }
        r
    }

    /// Drops the attachment and tells the peer.
    pub(crate) fn detach(&self) {
        let att = self.inner.lock().att.take();
        if let Some(att) = att {
            att.close(self);
        }
    }

    /// Tears an open or enabled channel down. `peer` says the peer closed.
    fn teardown(&self, peer: bool) {
        let (was_started, was_opened) = {
            let mut g = self.inner.lock();
            let s = g.state;
            g.state = State::Closing;
            (s == State::Started, g.opened)
        };
        self.stop_delivery();
        if was_started {
            self.call_state(|cb, ch| cb.suspend(ch));
        }
        self.wait_incoming_finished();
        self.cancel_all_sends(if peer { ENODEV } else { ECANCELED });
        if was_opened {
            self.call_state(|cb, ch| cb.closed(ch));
        }
        self.detach();
        let mut g = self.inner.lock();
        g.rx.drop_deferred();
        g.opened = false;
        g.rx.failed = false;
    }

    fn handle_events(&self) {
        let _c = self.control.lock();
        let ev = core::mem::take(&mut self.inner.lock().events);
        if ev & event::CONNECT != 0 {
            let bus = self.inner.lock().cfg.bus.clone();
            if let Some(bus) = bus {
                match bus.connect(self) {
                    Ok(true) => {
                        if let Err(e) = self.run_open_sequence() {
                            self.call_state(|cb, ch| cb.pnp_failure(ch, e));
                            // Rolled back to Enabled: wait for the device
                            // to be offered again.
                            bus.wait_again(self, false);
                        }
                    }
                    Ok(false) => {} // waiting for an offer
                    // A Disable that raced with the open is no PnP failure.
                    Err(_) if self.inner.lock().disabling => {}
                    Err(e) => self.call_state(|cb, ch| cb.pnp_failure(ch, e)),
                }
            }
        }
        if ev & event::PEER_OPENED != 0 && self.state() == State::Opened {
            let _ = self.run_open_sequence();
        }
        if ev & event::PEER_CLOSED != 0 {
            let s = self.state();
            if matches!(s, State::Opened | State::Started | State::Paused) {
                self.teardown(true);
                let mut g = self.inner.lock();
                g.peer_gone = false;
                let reconnect = core::mem::take(&mut g.reconnect);
                g.state = match self.endpoint {
                    // A server's offer stays up for the next client.
                    Endpoint::Server => State::Enabled,
                    // A client whose device hibernated waits for it again.
                    Endpoint::Client if reconnect => State::Enabled,
                    // A client needs a new Enable.
                    Endpoint::Client => State::Disabled,
                };
                let state = g.state;
                if state == State::Disabled {
                    g.rx.release();
                    g.tx.release();
                }
                let bus = g.cfg.bus.clone();
                drop(g);
                self.cond.notify_all();
                match (self.endpoint, bus) {
                    (Endpoint::Server, Some(bus)) => bus.offer_available(self),
                    (Endpoint::Client, Some(bus)) if state == State::Enabled => {
                        bus.wait_again(self, true)
                    }
                    (Endpoint::Client, Some(bus)) => bus.release(self),
                    _ => {}
                }
            }
        }
    }

    /// Waits until no lifecycle step runs on the channel: an Enable, a
    /// Disable, or a connection or teardown of its control work. A bus that
    /// took the channel's transport away waits with it for the teardown
    /// that follows to end.
    pub(crate) fn wait_lifecycle_idle(&self) {
        kernel::task::might_sleep();
        drop(self.control.lock());
    }

    /// Waits on the channel's condition variable until `done` holds.
    pub(crate) fn wait_until(&self, mut done: impl FnMut(&mut Inner) -> bool) {
        let mut g = self.inner.lock();
        while !done(&mut g) {
            self.cond.wait(&mut g);
        }
    }
}

impl WorkItem<0> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.on_interrupt();
    }
}

impl WorkItem<1> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.run_passive();
    }
}

impl WorkItem<2> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.handle_events();
    }
}

/// Status of the channel for observability; see [`status`].
pub(crate) fn attach_status(handle: &mut ChannelHandle) {
    if handle._status.is_none() {
        handle._status = status::StatusFile::new(handle.chan.clone());
    }
}

impl ChannelHandle {
    /// Enables the channel and publishes its debugfs status, see
    /// [`Channel::enable`].
    pub fn enable(&mut self) -> Result {
        self.chan.enable()?;
        attach_status(self);
        Ok(())
    }
}
