// SPDX-License-Identifier: GPL-2.0

//! KMCL channels: allocation, init setters, and the lifecycle.
//!
//! A [`Channel`] is one endpoint of a VMBus channel, a client (VSC) or a
//! server (VSP). It is configured with a [`ChannelBuilder`] from
//! [`Channel::builder`], whose `build` returns the owning, Disabled
//! [`ChannelHandle`], and brought up with [`Channel::enable`], which
//! returns at once. The rest happens in process
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

use core::{
    any::Any,
    mem::ManuallyDrop,
    sync::atomic::{
        AtomicBool,
        AtomicU32,
        AtomicU64,
        AtomicUsize,
        Ordering, //
    },
};

use kernel::{
    new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
    sync::{
        lock::{
            spinlock::SpinLockIrqBackend,
            Guard, //
        },
        Arc,
        CondVar,
        Mutex,
        SpinLockIrq, //
    },
    workqueue::{
        impl_has_work,
        new_work,
        Work, //
    },
};

use crate::transport::Attachment;

mod builder;
pub(crate) mod callbacks;
mod config;
mod events;
pub(crate) mod external;
mod flags;
pub(crate) mod gpadl;
pub(crate) mod incoming;
mod lifecycle;
pub(crate) mod outgoing;
pub(crate) mod owners;
pub(crate) mod pipe;
mod pool;
mod receive;
mod routines;
mod rx;
pub(crate) mod save;
mod send;
mod send_queue;
mod status;
pub(crate) mod subchannel;
mod sync;
mod transactions;
pub(crate) mod xfer;

pub use builder::{
    ChannelBuilder,
    ChannelDriver, //
};
pub use config::FriendlyName;
pub(crate) use config::{
    Config,
    Sizing, //
};
use events::event;
pub use flags::{
    ChannelFlags,
    GpadlFlags,
    ServerFlags, //
};
use rx::RxState;
pub use status::Counters;
use status::Stats;
use transactions::TxState;

/// The error of a call that may sleep, made where its caller may not (a
/// ProcessPacket in softirq context, a completion routine, a spinlock held):
/// `EWOULDBLOCK`, which Linux defines as `EAGAIN`. Every blocking entry
/// point refuses such a caller with it before doing anything.
pub const EWOULDBLOCK: Error = EAGAIN;

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

impl Endpoint {
    /// The other end.
    pub(crate) fn peer(self) -> Endpoint {
        match self {
            Endpoint::Client => Endpoint::Server,
            Endpoint::Server => Endpoint::Client,
        }
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

/// Lifecycle and configuration, under the channel's control lock
/// (`Channel::inner`).
pub(crate) struct Inner {
    pub(crate) state: State,
    pub(crate) cfg: Config,
    /// The transport attachment, without its link: the link's halves are
    /// in `RxState` and `TxState` while it is attached.
    pub(crate) att: Option<Attachment>,
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

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A KMCL channel endpoint (`VMBCHANNEL`).
///
/// Reached as `&Channel` from its [`ChannelHandle`], from callbacks, and from
/// packets ([`outgoing::Packet::channel`]).
///
/// # Examples
///
/// A synchronous request, from process context:
///
/// ```
/// use kernel::{prelude::*, time::Delta};
/// use kmcl::{Channel, SendFlags};
///
/// fn version(channel: &Channel) -> Result<u32> {
///     let mut answer = [0u8; 4];
///     let n = channel.send_synchronous_request(
///         b"version?",
///         SendFlags::WAIT_FOR_COMPLETION,
///         &mut answer,
///         Some(Delta::from_millis(1000)),
///     )?;
///     if n != answer.len() {
///         return Err(EPROTO);
///     }
///     Ok(u32::from_le_bytes(answer))
/// }
/// ```
///
/// # Locks
///
/// - `control` (mutex): one lifecycle step at a time (Enable, Disable,
///   Pause, Start, a connection or teardown of the control work, save).
/// - `inner` (the control lock, IRQ-off spinlock): lifecycle state, flags,
///   configuration, pending control events, the attachment without its
///   link.
/// - `rx` (the receive lock): `RxState`: incoming slots, quota, deferred
///   packets, the drain's flags, and the receive half of the link.
/// - `tx` (the send lock): `TxState`: packet pool, transaction slots, send
///   queue, finished one-way sends, the send half of the link, and the
///   send gate, a copy of what the control lock says about sending.
///
/// Lock order: `control`, then `inner`, then `rx`, then `tx`; none is taken
/// while a later one is held. Linux's own ring locks (hv) are taken inside
/// `rx` or `tx`. `cond` is waited on with the lock that guards the
/// condition waited for; the change is made under that lock before
/// `Channel::wake_waiters`.
///
/// # Invariants
///
/// `inner.state` is `Disabled` exactly when `inner.att` is `None` and no
/// callback of this channel is scheduled to run.
///
/// `rx.link` and `tx.link` are `Some` only while `inner.att` is `Some`: they
/// are the halves of its link, set by `attach` and dropped by `detach`
/// before the attachment is closed.
///
/// `tx.gate` is `Gates::of` the control state: every change of what it is
/// computed from is published under the control lock (`Channel::publish`). `rxc.enabled` is set only while `inner.state` is
/// `Started`; leaving Started clears it under the control lock.
#[pin_data]
pub struct Channel {
    id: u32,
    endpoint: Endpoint,
    #[pin]
    pub(crate) inner: SpinLockIrq<Inner>,
    #[pin]
    pub(crate) rx: SpinLockIrq<RxState>,
    #[pin]
    pub(crate) tx: SpinLockIrq<TxState>,
    #[pin]
    pub(crate) cond: CondVar,
    #[pin]
    control: Mutex<()>,
    /// Sub-channel state (`subchannel`): a leaf lock, taken before `inner`
    /// at most, never held across a lifecycle call.
    #[pin]
    pub(crate) subs: Mutex<subchannel::Subchannels>,
    #[pin]
    bh_work: Work<Channel, 0>,
    #[pin]
    passive_work: Work<Channel, 1>,
    #[pin]
    control_work: Work<Channel, 2>,
    #[pin]
    routine_work: Work<Channel, 3>,
    pub(crate) stats: Stats,
    /// Receive-side counters that the drain reads and updates without the
    /// receive lock (`rx.rs`).
    pub(crate) rxc: rx::RxCounters,
    /// Sequence number of the packet inside ProcessPacket, 0 if none: the
    /// one packet that may be deferred. Set by the context that delivers
    /// the packet before it calls ProcessPacket, tested and cleared by a
    /// deferral under the receive lock, and cleared by the drain once
    /// ProcessPacket returned.
    pub(crate) current: AtomicU64,
    /// Sequence number of the packet the drain has inside ProcessPacket, 0
    /// if none; written only by the drain (one at a time) and by the
    /// finish of that packet, which sets `INLINE_DONE` in it to hand the
    /// packet's buffer and accounting to the drain without taking the
    /// receive lock (`receive.rs`).
    pub(crate) inline: AtomicU64,
    /// Whether the send side may have work for an interrupt: set under the
    /// send lock before an item is queued and, with a full barrier, before
    /// the ring's pending send size is stored; cleared under the send lock
    /// by the flush that finds the queue empty and the pending size
    /// cleared. An interrupt that reads it clear skips the flush
    /// (`send_queue.rs`).
    pub(crate) send_backlog: AtomicBool,
    /// The pool's packet that allocation takes without the send lock.
    cache: pool::PoolCache,
    /// Threads waiting on `cond`: a state change wakes it only when some
    /// thread waits, so the packet paths pay no wake-up.
    waiters: AtomicU32,
    /// The task running the channel's passive work (ProcessPacket in
    /// process context), 0 when none: only that work item sets it, around
    /// its run, and a work item never runs twice at once.
    passive_task: AtomicUsize,
    /// The CPU set with `set_target_cpu`, `u32::MAX` for none
    /// (`Channel::set_cpu`): reported by `target_cpu`, and where a loopback
    /// signal runs the channel's receive work.
    pub(crate) irq_cpu: AtomicU32,
    pointer: AtomicUsize,
}

impl_has_work! {
    impl HasWork<Self, 0> for Channel { self.bh_work }
    impl HasWork<Self, 1> for Channel { self.passive_work }
    impl HasWork<Self, 2> for Channel { self.control_work }
    impl HasWork<Self, 3> for Channel { self.routine_work }
}

/// The owner of a channel, returned by [`ChannelBuilder::build`].
///
/// Dropping it disables the channel if needed (blocking, process context)
/// and frees it, as [`ChannelHandle::cleanup`] does for a Disabled channel.
///
/// Its fields are dropped by its `Drop` impl, inside kmcl: the drop glue a
/// driver's module instantiates for a handle calls that one exported
/// function and reaches no internal of kmcl.
///
/// # Examples
///
/// A module that keeps its channel's handle, reads its driver's data and
/// closes it on unload:
///
/// ```
/// use core::sync::atomic::{AtomicU64, Ordering};
/// use kernel::prelude::*;
/// use kmcl::{Channel, ChannelHandle, IncomingPacket, ProcessPacket, StateChange};
///
/// struct Counter(AtomicU64);
///
/// impl ProcessPacket for Counter {
///     fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         let _ = packet.complete(&[]);
///     }
/// }
///
/// impl StateChange for Counter {}
///
/// struct MyModule {
///     chan: ChannelHandle,
/// }
///
/// impl Drop for MyModule {
///     fn drop(&mut self) {
///         // Disable waits for every callback; the counter is final then.
///         let _ = self.chan.disable();
///         let _seen = self.chan.data::<Counter>().map(|c| c.0.load(Ordering::Relaxed));
///         // Dropping `chan` frees the channel and the `Counter`.
///     }
/// }
/// ```
pub struct ChannelHandle {
    chan: ManuallyDrop<Arc<Channel>>,
    status: ManuallyDrop<Option<status::StatusFile>>,
    /// The driver's data of [`ChannelBuilder::driver`], one of the
    /// references the channel holds (its configuration holds the others,
    /// as callbacks); dropped with the handle, after the channel dropped
    /// its own.
    data: ManuallyDrop<Option<Arc<dyn Any + Send + Sync>>>,
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
    ///
    /// Context: process context only; in atomic context the handle is
    /// handed back with [`EWOULDBLOCK`].
    #[doc(alias = "VmbChannelCleanup")]
    pub fn cleanup(self) -> core::result::Result<(), (Error, ChannelHandle)> {
        if let Err(e) = self.chan.check_may_sleep("cleanup") {
            return Err((e, self));
        }
        if self.chan.state() != State::Disabled {
            return Err((EBUSY, self));
        }
        drop(self);
        Ok(())
    }

    /// A new reference to the channel, for work items and other threads.
    ///
    /// Context: any context.
    #[inline]
    pub fn arc(&self) -> Arc<Channel> {
        Arc::clone(&self.chan)
    }

    /// The driver's data given to [`ChannelBuilder::driver`], if it is a
    /// `D`; `None` for a channel built without one or with another type.
    /// The same value the callbacks get as `&self`.
    ///
    /// Context: any context.
    #[inline]
    pub fn data<D: 'static>(&self) -> Option<&D> {
        let data: &(dyn Any + Send + Sync) = (*self.data).as_deref()?;
        data.downcast_ref::<D>()
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        if self.chan.state() != State::Disabled {
            // Process context, as the handle's owner drops it; a refusal
            // (from the channel's own state callback) is logged by
            // `disable`, and the channel then goes away with its callbacks
            // dropped, as the module's exit would leave it.
            kernel::task::might_sleep();
            let _ = self.chan.disable();
        }
        self.chan.drop_driver_callbacks();
        self.chan.drop_pool_refs();
        owners::remove(&self.chan);
        // SAFETY: `drop` runs once, and no field is used after this.
        unsafe {
            ManuallyDrop::drop(&mut self.status);
            ManuallyDrop::drop(&mut self.data);
            ManuallyDrop::drop(&mut self.chan);
        }
    }
}

impl Channel {
    /// Allocates a Disabled channel endpoint (`VmbChannelAllocate`).
    ///
    /// `module` is the module that owns the channel (its `THIS_MODULE`), the
    /// one whose code the channel's callbacks run. Should that module go
    /// away with the handle still alive, kmcl disables the channel and drops
    /// its callbacks before the module's memory is freed.
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL` and takes
    /// a mutex.
    pub(crate) fn allocate(
        endpoint: Endpoint,
        module: &'static ThisModule,
    ) -> Result<ChannelHandle> {
        let chan = Arc::pin_init(
            try_pin_init!(Channel {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                endpoint,
                inner <- new_spinlock_irq!(Inner {
                    state: State::Disabled,
                    cfg: Config::new(),
                    att: None,
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
                rx <- new_spinlock_irq!(RxState::new(), "kmcl::Channel::rx"),
                tx <- new_spinlock_irq!(TxState::new(), "kmcl::Channel::tx"),
                cond <- new_condvar!("kmcl::Channel::cond"),
                control <- new_mutex!((), "kmcl::Channel::control"),
                subs <- new_mutex!(subchannel::Subchannels::new(), "kmcl::Channel::subs"),
                bh_work <- new_work!("kmcl::Channel::bh_work"),
                passive_work <- new_work!("kmcl::Channel::passive_work"),
                control_work <- new_work!("kmcl::Channel::control_work"),
                routine_work <- new_work!("kmcl::Channel::routine_work"),
                stats: Stats::default(),
                rxc: rx::RxCounters::new(),
                current: AtomicU64::new(0),
                inline: AtomicU64::new(0),
                send_backlog: AtomicBool::new(false),
                cache: pool::PoolCache::new(),
                waiters: AtomicU32::new(0),
                passive_task: AtomicUsize::new(0),
                irq_cpu: AtomicU32::new(u32::MAX),
                pointer: AtomicUsize::new(0),
            }),
            GFP_KERNEL,
        )?;
        owners::add(module, chan.clone())?;
        Ok(ChannelHandle {
            chan: ManuallyDrop::new(chan),
            status: ManuallyDrop::new(None),
            data: ManuallyDrop::new(None),
        })
    }

    /// Drops the driver's callbacks, which may hold references to the
    /// channel (breaking such cycles), and with them every way into the
    /// driver's code. Called on a Disabled channel that is going away.
    pub(crate) fn drop_driver_callbacks(&self) {
        let cfg = {
            let mut g = self.inner.lock();
            core::mem::replace(&mut g.cfg, Config::new())
        };
        let process = self.rx.lock().process.take();
        self.drop_subchannel_callback();
        drop(cfg);
        drop(process);
    }

    /// The endpoint kind.
    ///
    /// Context: any context.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// A number unique among the channels of this boot.
    ///
    /// Context: any context.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Stores a driver value in the channel (`VmbChannelSetPointer`).
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelSetPointer")]
    pub fn set_pointer(&self, value: usize) {
        self.pointer.store(value, Ordering::Relaxed);
    }

    /// The value stored with [`Channel::set_pointer`] (`VmbChannelGetPointer`).
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelGetPointer")]
    pub fn pointer(&self) -> usize {
        self.pointer.load(Ordering::Relaxed)
    }

    /// The current lifecycle state.
    ///
    /// Context: any context.
    pub fn state(&self) -> State {
        self.inner.lock().state
    }
}

/// The guard of one of the channel's spinlocks.
pub(crate) type LockGuard<'a, T> = Guard<'a, T, SpinLockIrqBackend>;

impl Channel {
    /// Whether the calling task runs this channel's passive work, inside
    /// which ProcessPacket runs in process context.
    pub(crate) fn in_passive_work(&self) -> bool {
        let me = kernel::task::Task::current_raw() as usize;
        self.passive_task.load(Ordering::Relaxed) == me
    }

    /// Wakes the threads waiting on the channel's condition variable (a
    /// state change they wait for happened); does nothing when none waits.
    ///
    /// A waiter counts itself under the lock that guards what it waits for
    /// (control, receive or send lock) before it sleeps, and the change it
    /// waits for is made under that lock before this is called: either the
    /// waiter saw the change, or this sees the waiter.
    pub(crate) fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.cond.notify_all();
        }
    }

    /// Runs `wait`, a wait on the channel's condition variable with one of
    /// the channel's locks, `g`, held, counted as a waiter.
    pub(crate) fn counted_wait<T, R>(
        &self,
        g: &mut LockGuard<'_, T>,
        wait: impl FnOnce(&CondVar, &mut LockGuard<'_, T>) -> R,
    ) -> R {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let r = wait(&self.cond, g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        r
    }
}
