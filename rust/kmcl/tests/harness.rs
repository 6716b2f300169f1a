// SPDX-License-Identifier: GPL-2.0

//! Test harness: a recording driver and a connected client/server pair on a
//! private loopback bus.

use core::sync::atomic::{
    AtomicBool,
    AtomicI32,
    AtomicU32,
    Ordering, //
};

use kernel::{
    new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        SpinLockIrq, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

use crate::{
    channel::{
        callbacks::{
            ProcessPacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        Channel,
        ChannelBuilder,
        ChannelHandle,
        Endpoint,
        State, //
    },
    sys,
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
    wire::guid::Guid,
};

pub(crate) const IFACE: Guid = Guid::from_str_const("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501");
pub(crate) const INSTANCE: Guid = Guid::from_str_const("a7f3c6a1-1c2d-4e5f-8a9b-0c1d2e3f4a5b");

/// What the recorder does with an incoming packet.
pub(crate) mod mode {
    /// Complete with the packet's own payload.
    pub(crate) const ECHO: u32 = 0;
    /// Complete with no payload.
    pub(crate) const EMPTY: u32 = 1;
    /// Keep it; the test finishes it.
    pub(crate) const HOLD: u32 = 2;
    /// Defer it to process context, then echo it there.
    pub(crate) const DEFER: u32 = 3;
    /// Fail it.
    pub(crate) const FAIL: u32 = 4;
    /// Drop it unfinished.
    pub(crate) const DROP: u32 = 5;
    /// Answer with an in-band reply carrying its payload and id.
    pub(crate) const REPLY: u32 = 6;
    /// Defer it to process context, sleep `defer_sleep_ms` there, then echo.
    pub(crate) const DEFER_SLOW: u32 = 7;
}

/// A recorded state callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Opened,
    Started,
    PostStarted,
    Suspend,
    Closed,
    PnpFailure,
    Batch(u32),
}

pub(crate) struct RecState {
    pub(crate) events: KVec<Ev>,
    pub(crate) held: KVec<IncomingPacket>,
    /// First 8 payload bytes (little-endian) of each delivered packet.
    pub(crate) heads: KVec<u64>,
    pub(crate) last_payload: KVec<u8>,
    pub(crate) last_context_len: usize,
    pub(crate) last_context_was_zero: bool,
    pub(crate) external_bytes: KVec<u8>,
}

/// A driver that records what kmcl calls.
#[pin_data]
pub(crate) struct Recorder {
    #[pin]
    pub(crate) st: SpinLockIrq<RecState>,
    pub(crate) mode: AtomicU32,
    pub(crate) received: AtomicU32,
    pub(crate) in_softirq: AtomicU32,
    pub(crate) in_task: AtomicU32,
    /// Errno the Opened callback returns, 0 for success.
    pub(crate) opened_error: AtomicI32,
    /// How long the Opened callback sleeps before it returns.
    pub(crate) opened_sleep_ms: AtomicU32,
    /// Call `pause` from inside Started and record its errno here.
    pub(crate) pause_in_started: AtomicBool,
    pub(crate) pause_in_started_result: AtomicI32,
    /// Make a synchronous request in PostStarted; its result (length or
    /// negative errno) lands here.
    pub(crate) sync_in_post_started: AtomicBool,
    pub(crate) sync_result: AtomicI32,
    pub(crate) deferred_then_seen: AtomicU32,
    /// How long a [`mode::DEFER_SLOW`] redelivery sleeps.
    pub(crate) defer_sleep_ms: AtomicU32,
    /// Redeliveries of [`mode::DEFER_SLOW`] inside their sleep now.
    pub(crate) redelivering: AtomicU32,
    /// Between Suspend and the next Started.
    pub(crate) suspended: AtomicBool,
    /// Driver calls kmcl made where its contract says none may run: a
    /// ProcessPacket or ProcessingComplete after Suspend, or a Suspend while
    /// a ProcessPacket still ran.
    pub(crate) late_calls: AtomicU32,
    /// The CPU the last ProcessPacket ran on.
    pub(crate) last_cpu: AtomicU32,
}

impl Recorder {
    pub(crate) fn new() -> Result<Arc<Recorder>> {
        Arc::pin_init(
            try_pin_init!(Recorder {
                st <- new_spinlock_irq!(RecState {
                    events: KVec::with_capacity(256, GFP_KERNEL)?,
                    held: KVec::with_capacity(512, GFP_KERNEL)?,
                    heads: KVec::with_capacity(4096, GFP_KERNEL)?,
                    last_payload: KVec::with_capacity(8192, GFP_KERNEL)?,
                    last_context_len: 0,
                    last_context_was_zero: false,
                    external_bytes: KVec::with_capacity(16384, GFP_KERNEL)?,
                }, "kmcl::tests::Recorder"),
                mode: AtomicU32::new(mode::ECHO),
                received: AtomicU32::new(0),
                in_softirq: AtomicU32::new(0),
                in_task: AtomicU32::new(0),
                opened_error: AtomicI32::new(0),
                opened_sleep_ms: AtomicU32::new(0),
                pause_in_started: AtomicBool::new(false),
                pause_in_started_result: AtomicI32::new(1),
                sync_in_post_started: AtomicBool::new(false),
                sync_result: AtomicI32::new(i32::MIN),
                deferred_then_seen: AtomicU32::new(0),
                defer_sleep_ms: AtomicU32::new(30),
                redelivering: AtomicU32::new(0),
                suspended: AtomicBool::new(false),
                late_calls: AtomicU32::new(0),
                last_cpu: AtomicU32::new(u32::MAX),
            }),
            GFP_KERNEL,
        )
    }

    fn push(&self, ev: Ev) {
        let _ = self.st.lock().events.push_within_capacity(ev);
    }

    /// The recorded state events, batches left out.
    pub(crate) fn states(&self) -> KVec<Ev> {
        let g = self.st.lock();
        let mut v = KVec::with_capacity(g.events.len(), GFP_ATOMIC).unwrap_or_default();
        for e in g.events.iter() {
            if !matches!(e, Ev::Batch(_)) {
                let _ = v.push_within_capacity(*e);
            }
        }
        v
    }

    pub(crate) fn count(&self, ev: Ev) -> usize {
        self.st.lock().events.iter().filter(|e| **e == ev).count()
    }

    /// The batch sizes reported by ProcessingComplete.
    pub(crate) fn batches(&self) -> KVec<u32> {
        let g = self.st.lock();
        let mut v = KVec::with_capacity(g.events.len(), GFP_ATOMIC).unwrap_or_default();
        for e in g.events.iter() {
            if let Ev::Batch(n) = e {
                let _ = v.push_within_capacity(*n);
            }
        }
        v
    }

    pub(crate) fn held(&self) -> usize {
        self.st.lock().held.len()
    }

    /// Takes the oldest held packet.
    pub(crate) fn take_held(&self) -> Option<IncomingPacket> {
        let mut g = self.st.lock();
        if g.held.is_empty() {
            None
        } else {
            g.held.remove(0).ok()
        }
    }

    /// Completes every held packet with an empty payload.
    pub(crate) fn release_held(&self) {
        while let Some(p) = self.take_held() {
            let _ = p.complete(&[]);
        }
    }

    pub(crate) fn heads(&self) -> KVec<u64> {
        let g = self.st.lock();
        let mut v = KVec::with_capacity(g.heads.len(), GFP_ATOMIC).unwrap_or_default();
        let _ = v.extend_from_slice(&g.heads, GFP_ATOMIC);
        v
    }

    pub(crate) fn last_payload(&self) -> KVec<u8> {
        let g = self.st.lock();
        let mut v = KVec::with_capacity(g.last_payload.len(), GFP_ATOMIC).unwrap_or_default();
        let _ = v.extend_from_slice(&g.last_payload, GFP_ATOMIC);
        v
    }
}

impl ProcessPacket for Recorder {
    fn process_packet(&self, channel: &Channel, mut packet: IncomingPacket) {
        if self.suspended.load(Ordering::Relaxed) {
            self.late_calls.fetch_add(1, Ordering::Relaxed);
        }
        if sys::in_softirq() {
            self.in_softirq.fetch_add(1, Ordering::Relaxed);
        }
        self.last_cpu
            .store(kernel::cpu::CpuId::current().as_u32(), Ordering::Relaxed);
        if sys::in_task() {
            self.in_task.fetch_add(1, Ordering::Relaxed);
        }
        {
            let ctx = packet.context();
            let zero = ctx.iter().all(|b| *b == 0);
            let len = ctx.len();
            // Dirty it, so that a slot reused without zeroing would show.
            ctx.fill(0xa5);
            let mut g = self.st.lock();
            g.last_context_len = len;
            g.last_context_was_zero = zero;
            let d = packet.data();
            let mut h = [0u8; 8];
            let n = d.len().min(8);
            h[..n].copy_from_slice(&d[..n]);
            let _ = g.heads.push_within_capacity(u64::from_le_bytes(h));
            g.last_payload.clear();
            let take = d.len().min(g.last_payload.capacity());
            let _ = g.last_payload.extend_from_slice(&d[..take], GFP_ATOMIC);
            if let Some(ext) = packet.external_data() {
                let cap = g.external_bytes.capacity();
                g.external_bytes.resize(cap, 0, GFP_ATOMIC).ok();
                let n = ext.copy_to(&mut g.external_bytes).unwrap_or(0);
                g.external_bytes.truncate(n);
            }
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let _ = channel;
        match self.mode.load(Ordering::Relaxed) {
            mode::EMPTY => {
                let _ = packet.complete(&[]);
            }
            mode::HOLD => {
                let mut g = self.st.lock();
                if let Err(e) = g.held.push_within_capacity(packet) {
                    drop(g);
                    let _ = e.0.complete(&[]);
                }
            }
            mode::DEFER => {
                if sys::in_task() {
                    self.deferred_then_seen.fetch_add(1, Ordering::Relaxed);
                    let d = self.last_payload();
                    let _ = packet.complete(&d);
                } else if let Err(e) = packet.defer_to_passive() {
                    let _ = e.0.complete(&[]);
                }
            }
            mode::DEFER_SLOW => {
                if sys::in_task() {
                    self.redelivering.fetch_add(1, Ordering::Relaxed);
                    let ms = self.defer_sleep_ms.load(Ordering::Relaxed);
                    fsleep(Delta::from_millis(i64::from(ms)));
                    self.redelivering.fetch_sub(1, Ordering::Relaxed);
                    let d = self.last_payload();
                    let _ = packet.complete(&d);
                } else if let Err(e) = packet.defer_to_passive() {
                    let _ = e.0.complete(&[]);
                }
            }
            mode::FAIL => packet.fail(),
            mode::DROP => drop(packet),
            mode::REPLY => {
                let d = self.last_payload();
                let _ = packet.reply_inband(&d);
            }
            _ => {
                let d = self.last_payload();
                let _ = packet.complete(&d);
            }
        }
    }

    fn processing_complete(&self, _channel: &Channel, count: u32) {
        if self.suspended.load(Ordering::Relaxed) {
            self.late_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.push(Ev::Batch(count));
    }
}

impl StateChange for Recorder {
    fn opened(&self, _channel: &Channel) -> Result {
        self.push(Ev::Opened);
        let ms = self.opened_sleep_ms.load(Ordering::Relaxed);
        if ms != 0 {
            fsleep(Delta::from_millis(i64::from(ms)));
        }
        match self.opened_error.load(Ordering::Relaxed) {
            0 => Ok(()),
            e => Err(Error::from_errno(-e)),
        }
    }

    fn started(&self, channel: &Channel) {
        self.suspended.store(false, Ordering::Relaxed);
        self.push(Ev::Started);
        if self.pause_in_started.load(Ordering::Relaxed) {
            let r = channel.arc().pause();
            self.pause_in_started_result.store(
                r.err().map(|e| e.to_errno()).unwrap_or(0),
                Ordering::Relaxed,
            );
        }
    }

    fn post_started(&self, channel: &Channel) {
        self.push(Ev::PostStarted);
        if self.sync_in_post_started.load(Ordering::Relaxed) {
            let mut resp = [0u8; 16];
            let r = channel.send_synchronous_request(
                b"negotiate",
                crate::channel::outgoing::SendFlags::WAIT_FOR_COMPLETION,
                &mut resp,
                Some(Delta::from_millis(5000)),
            );
            self.sync_result.store(
                match r {
                    Ok(n) if padded_eq(&resp[..n], b"negotiate") => n as i32,
                    Ok(_) => -1000,
                    Err(e) => e.to_errno(),
                },
                Ordering::Relaxed,
            );
        }
    }

    fn suspend(&self, _channel: &Channel) {
        if self.redelivering.load(Ordering::Relaxed) != 0 {
            self.late_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.suspended.store(true, Ordering::Relaxed);
        self.push(Ev::Suspend);
    }

    fn closed(&self, _channel: &Channel) {
        self.push(Ev::Closed);
    }

    fn pnp_failure(&self, _channel: &Channel, _error: Error) {
        self.push(Ev::PnpFailure);
    }
}

/// Polls `cond` every millisecond for up to `ms` milliseconds.
pub(crate) fn wait_for(ms: u32, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..ms {
        if cond() {
            return true;
        }
        fsleep(Delta::from_millis(1));
    }
    cond()
}

/// Gives asynchronous work `ms` milliseconds to happen (or, for checks that
/// something does not happen, to fail to).
pub(crate) fn settle(ms: i64) {
    fsleep(Delta::from_millis(ms));
}

/// Whether `got` is `want` padded with zeroes to a multiple of 8 bytes, as
/// VMBus carries payloads.
pub(crate) fn padded_eq(got: &[u8], want: &[u8]) -> bool {
    got.len() == crate::wire::packet::align8(want.len())
        && got[..want.len()] == *want
        && got[want.len()..].iter().all(|b| *b == 0)
}

/// A builder for a channel with a recorder and the test interface ids, to
/// which a test may add settings before [`ChannelBuilder::build`].
pub(crate) fn builder(
    bus: &Arc<LoopbackBus>,
    endpoint: Endpoint,
    rec: &Arc<Recorder>,
) -> ChannelBuilder {
    let b = Channel::builder(endpoint, &crate::THIS_MODULE)
        .process_packet_callbacks(rec.clone())
        .state_change_callbacks(rec.clone())
        .vmbus_handle(Bus::Loopback(bus.clone()));
    match endpoint {
        Endpoint::Server => b.target_interface_id(IFACE, INSTANCE),
        Endpoint::Client => b.target_pnp(IFACE, Some(INSTANCE)),
    }
}

/// Builds a channel with a recorder and the test interface ids.
pub(crate) fn channel(
    bus: &Arc<LoopbackBus>,
    endpoint: Endpoint,
    rec: &Arc<Recorder>,
) -> Result<ChannelHandle> {
    builder(bus, endpoint, rec).build()
}

/// A client and a server connected over a private loopback bus.
pub(crate) struct Pair {
    pub(crate) bus: Arc<LoopbackBus>,
    pub(crate) server: ChannelHandle,
    pub(crate) client: ChannelHandle,
    pub(crate) srec: Arc<Recorder>,
    pub(crate) crec: Arc<Recorder>,
}

impl Pair {
    /// Builds a pair; `setup` gets each end's endpoint kind and builder and
    /// may add settings to it before it is built.
    pub(crate) fn new(setup: impl Fn(Endpoint, ChannelBuilder) -> ChannelBuilder) -> Result<Pair> {
        Pair::with(Recorder::new()?, Recorder::new()?, setup)
    }

    /// [`Pair::new`] with the server's and the client's recorders given.
    pub(crate) fn with(
        srec: Arc<Recorder>,
        crec: Arc<Recorder>,
        setup: impl Fn(Endpoint, ChannelBuilder) -> ChannelBuilder,
    ) -> Result<Pair> {
        let bus = LoopbackBus::new()?;
        let server = setup(Endpoint::Server, builder(&bus, Endpoint::Server, &srec)).build()?;
        let client = setup(Endpoint::Client, builder(&bus, Endpoint::Client, &crec)).build()?;
        Ok(Pair {
            bus,
            server,
            client,
            srec,
            crec,
        })
    }

    /// A pair with default settings, not enabled.
    pub(crate) fn plain() -> Result<Pair> {
        Pair::new(|_, b| b)
    }

    /// Enables both ends and waits until both are Started (or Paused).
    pub(crate) fn up(&mut self) -> Result {
        self.server.enable()?;
        self.client.enable()?;
        // Up: Started with PostStarted done, or Paused by an armed pause.
        let up = |ch: &ChannelHandle, rec: &Recorder| match ch.state() {
            State::Started => rec.count(Ev::PostStarted) > 0,
            State::Paused => true,
            _ => false,
        };
        let ok = wait_for(5000, || {
            up(&self.server, &self.srec) && up(&self.client, &self.crec)
        });
        if !ok {
            return Err(ETIMEDOUT);
        }
        // Let both PostStarted callbacks finish.
        settle(5);
        Ok(())
    }

    /// A connected pair with default settings.
    pub(crate) fn connected() -> Result<Pair> {
        let mut p = Pair::plain()?;
        p.up()?;
        Ok(p)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.srec.mode.store(mode::EMPTY, Ordering::Relaxed);
        self.crec.mode.store(mode::EMPTY, Ordering::Relaxed);
        self.srec.release_held();
        self.crec.release_held();
        let _ = self.client.disable();
        self.srec.release_held();
        let _ = self.server.disable();
        self.crec.release_held();
        sys::flush_work();
    }
}

/// Sends `data` from `chan` with a fresh pool packet.
pub(crate) fn send(chan: &Channel, data: &[u8], wait: bool) -> Result {
    let p = chan.packet_allocate()?;
    let flags = if wait {
        crate::channel::outgoing::SendFlags::WAIT_FOR_COMPLETION
    } else {
        crate::channel::outgoing::SendFlags::NONE
    };
    p.send(data, flags).map_err(|e| e.error)
}

/// Where a completion routine records what it saw; reached through the
/// packet's pointer.
#[derive(Default)]
pub(crate) struct Done {
    pub(crate) count: AtomicU32,
    pub(crate) ok: AtomicU32,
    pub(crate) cancelled: AtomicU32,
    pub(crate) removed: AtomicU32,
    pub(crate) atomic: AtomicU32,
    /// Routines that ran with bottom halves disabled.
    pub(crate) bh_off: AtomicU32,
    pub(crate) resp_len: AtomicU32,
    pub(crate) resp_head: core::sync::atomic::AtomicU64,
    /// Payload heads in completion order.
    pub(crate) order: Order,
}

/// The last payload head seen, and whether every head was one above the
/// previous: sends numbered 1, 2, 3, ... finished in order.
pub(crate) struct Order(
    pub(crate) core::sync::atomic::AtomicU64,
    pub(crate) AtomicBool,
);

impl Default for Order {
    fn default() -> Self {
        Self(core::sync::atomic::AtomicU64::new(0), AtomicBool::new(true))
    }
}

impl Done {
    pub(crate) fn new() -> Result<Arc<Done>> {
        Ok(Arc::new(Done::default(), GFP_KERNEL)?)
    }

    /// Packs a pointer to `self` for [`Packet::set_pointer`].
    pub(crate) fn cookie(this: &Arc<Done>) -> usize {
        Arc::as_ptr(this) as usize
    }
}

/// A completion routine that records into the [`Done`] named by the packet's
/// pointer, then frees the packet.
pub(crate) fn record_completion(
    packet: crate::channel::outgoing::Packet,
    status: Result,
    response: &[u8],
) {
    // SAFETY: every test that installs this routine sets the pointer to a
    // `Done` it keeps alive until all its sends have finished.
    let d = unsafe { &*(packet.pointer() as *const Done) };
    if !sys::preemptible() {
        d.atomic.fetch_add(1, Ordering::Relaxed);
    }
    if sys::bh_disabled() {
        d.bh_off.fetch_add(1, Ordering::Relaxed);
    }
    match status {
        Ok(()) => d.ok.fetch_add(1, Ordering::Relaxed),
        Err(e) if e == ECANCELED => d.cancelled.fetch_add(1, Ordering::Relaxed),
        Err(e) if e == ENODEV => d.removed.fetch_add(1, Ordering::Relaxed),
        Err(_) => 0,
    };
    d.resp_len.store(response.len() as u32, Ordering::Relaxed);
    let mut h = [0u8; 8];
    let n = response.len().min(8);
    h[..n].copy_from_slice(&response[..n]);
    d.resp_head.store(u64::from_le_bytes(h), Ordering::Relaxed);
    // Ordering: payload heads must arrive as 1, 2, 3, ...
    let head = {
        let p = packet.payload();
        let mut h = [0u8; 8];
        let n = p.len().min(8);
        h[..n].copy_from_slice(&p[..n]);
        u64::from_le_bytes(h)
    };
    let prev = d.order.0.swap(head, Ordering::Relaxed);
    if head != prev + 1 {
        d.order.1.store(false, Ordering::Relaxed);
    }
    d.count.fetch_add(1, Ordering::Relaxed);
    drop(packet);
}

/// Sends `data` with a recording completion routine.
pub(crate) fn send_recorded(
    chan: &Channel,
    data: &[u8],
    flags: crate::channel::outgoing::SendFlags,
    done: &Arc<Done>,
) -> Result {
    recorded_packet(chan, done)?
        .send(data, flags)
        .map_err(|e| e.error)
}

/// A pool packet of `chan` whose completion routine records into `done`.
pub(crate) fn recorded_packet(
    chan: &Channel,
    done: &Arc<Done>,
) -> Result<crate::channel::outgoing::Packet> {
    let mut p = chan.packet_allocate()?;
    p.set_pointer(Done::cookie(done));
    p.set_completion_routine(record_completion);
    Ok(p)
}

impl Channel {
    /// Writes raw bytes into this channel's outgoing ring and signals the
    /// peer: the hostile-peer hook of the tests.
    pub(crate) fn inject_raw(&self, bytes: &[u8]) -> Result {
        crate::testing::write_raw(self, bytes)
    }
}

/// A completion packet for transaction `id` with `payload`.
pub(crate) fn completion_bytes(id: u64, payload: &[u8]) -> KVec<u8> {
    use crate::wire::packet;
    let mut v = KVec::new();
    if let Some(d) = packet::encode_simple(packet::TYPE_COMPLETION, 0, id, payload.len()) {
        let _ = v.extend_from_slice(&d.encode(), GFP_KERNEL);
        let _ = v.extend_from_slice(payload, GFP_KERNEL);
        let _ = v.resize(d.len8 as usize * 8, 0, GFP_KERNEL);
    }
    v
}

/// An in-band packet as kmcl encodes it.
pub(crate) fn inband(trans_id: u64, flags: u16, payload: &[u8]) -> Result<KVec<u8>> {
    use crate::wire::packet;
    let d = packet::encode_simple(packet::TYPE_DATA_INBAND, flags, trans_id, payload.len())
        .ok_or(EINVAL)?;
    let mut v = KVec::new();
    v.extend_from_slice(&d.encode(), GFP_KERNEL)?;
    v.extend_from_slice(payload, GFP_KERNEL)?;
    v.resize(d.len8 as usize * 8, 0, GFP_KERNEL)?;
    Ok(v)
}

/// A server driver whose ProcessingComplete holds the first drain open
/// until the test thread, on another CPU, has sent one more packet (or for
/// at most 50 ms).
#[derive(Default)]
pub(crate) struct Holder {
    pub(crate) received: AtomicU32,
    /// The drain is inside ProcessingComplete, waiting.
    pub(crate) holding: AtomicBool,
    /// The test thread sent while the drain was held.
    pub(crate) sent: AtomicBool,
    /// Hold the next drain.
    pub(crate) armed: AtomicBool,
}

impl crate::channel::callbacks::ProcessPacket for Holder {
    fn process_packet(&self, _channel: &Channel, packet: crate::channel::incoming::IncomingPacket) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let _ = packet.complete(&[]);
    }

    fn processing_complete(&self, _channel: &Channel, _count: u32) {
        if !self.armed.swap(false, Ordering::Relaxed) {
            return;
        }
        self.holding.store(true, Ordering::Release);
        let end = sys::jiffies() + kernel::time::msecs_to_jiffies(50) as u64;
        while sys::jiffies() < end && !self.sent.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // Leave the sender a moment to signal.
        let end = sys::jiffies() + kernel::time::msecs_to_jiffies(5) as u64;
        while sys::jiffies() < end {
            core::hint::spin_loop();
        }
        self.holding.store(false, Ordering::Release);
    }
}
