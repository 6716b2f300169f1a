// SPDX-License-Identifier: GPL-2.0

//! The teardown mode of the stress (`teardown=1`, `make stress
//! STRESS_MODE=teardown`): the same loopback pair, with connections torn down
//! and paused while the packets flow.
//!
//! - A controller pauses and restarts the client, and at random disables it
//!   and enables it again (a client needs a new Enable after a Disable); the
//!   server's offer stays up, and a thread of its own pauses and restarts the
//!   server. Every interval and choice comes from a generator seeded by the
//!   `seed` parameter, which the result line prints.
//! - The server processes incoming packets at passive level; both sides defer
//!   one packet in eight to process context.
//! - Four streams: two from the client, two from the server; the odd ones
//!   wait for the peer's completion, the even ones are one-way.
//!
//! Every packet carries its stream and a sequence number that counts all the
//! sends of its stream that started, across connections. What happened to
//! each is logged: the outcome of its send (its completion routine's status)
//! and on which of the receiver's connections it was first delivered. At the
//! end a packet that was not delivered is:
//!
//! - *cancelled* when its routine said `ECANCELED` or `ENODEV` (a Disable or
//!   the peer's close cancelled it);
//! - *dropped* when it was a one-way send that entered the ring of a
//!   connection that closed before the peer read it: the routine of a one-way
//!   send reports the entry into the ring, and a closed ring is discarded. It
//!   is told from a loss by the order of the ring: a packet is dropped only
//!   if the packets around it that were delivered arrived on different
//!   connections;
//! - *lost* otherwise: a gap between two packets of one connection, a
//!   transaction the peer completed without it being delivered, one sent on
//!   the last connection (which is drained before the end), or a send whose
//!   routine never ran.
//!
//! Each side has a flag that the thread calling `disable()` sets right after
//! it returns and clears just before `enable()`. Every callback (packet,
//! processing complete, state, completion routine) checks it: a callback that
//! sees it set is a *late call*.

use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{
    alloc::KVVec,
    new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        SpinLockIrq, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
    workqueue::{
        self,
        impl_has_work,
        Work,
        WorkItem, //
    },
};

use kmcl::{
    loopback::LoopbackBus,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    Packet,
    ProcessPacket,
    SendError,
    SendFlags,
    State,
    StateChange, //
};

use super::{
    SIZES,
    STRESS_TYPE,
    THIS_MODULE, //
};

/// Streams 0 and 1 go from the client to the server, 2 and 3 back.
const STREAMS: usize = 4;
const CLIENT: usize = 0;
const SERVER: usize = 1;

/// The side that sends `stream`.
fn sender_side(stream: usize) -> usize {
    if stream < 2 {
        CLIENT
    } else {
        SERVER
    }
}

/// Whether the sends of `stream` wait for the peer's completion.
fn waits(stream: usize) -> bool {
    stream % 2 == 1
}

/// What the log holds for each packet, in one `u32`: the outcome of its send
/// (two bits), how many times it was delivered (two bits, saturating), and
/// the receiver's connection of its first delivery.
mod entry {
    pub(super) const OUTCOME: u32 = 0b11;
    /// No send of it started.
    pub(super) const UNSENT: u32 = 0;
    /// The send started; its routine has not run.
    pub(super) const PENDING: u32 = 1;
    /// The routine ran with `Ok`: in the ring (one-way), or completed by the
    /// peer.
    pub(super) const DONE: u32 = 2;
    /// The routine ran with an error.
    pub(super) const CANCELLED: u32 = 3;
    pub(super) const DELIVERED_SHIFT: u32 = 2;
    pub(super) const CONN_SHIFT: u32 = 4;

    pub(super) fn delivered(e: u32) -> u32 {
        (e >> DELIVERED_SHIFT) & 0b11
    }

    pub(super) fn conn(e: u32) -> u32 {
        e >> CONN_SHIFT
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small generator (splitmix64): the same seed gives the same choices.
struct Prng(u64);

impl Prng {
    /// The generator of one thread of the run: `which` tells them apart.
    fn new(seed: u64, which: u64) -> Self {
        Prng(mix(seed ^ which.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number below `n`, which is above zero.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One side's flag and counts.
struct Side {
    /// Set by the thread that called `disable()` right after it returned;
    /// cleared just before `enable()`.
    disabled: AtomicBool,
    /// Driver calls that saw `disabled` set.
    late: AtomicU64,
    /// Connections this side has seen opened: the number of the current one.
    conn: AtomicU32,
}

impl Side {
    fn new() -> Self {
        Side {
            disabled: AtomicBool::new(false),
            late: AtomicU64::new(0),
            conn: AtomicU32::new(0),
        }
    }

    /// Every callback starts here.
    fn enter(&self, name: &str, what: &str) {
        if self.disabled.load(Ordering::Acquire) && self.late.fetch_add(1, Ordering::Relaxed) < 8 {
            pr_err!("kmcl-stress teardown: {what} of the {name} ran after its Disable returned\n");
        }
    }
}

/// The log of one stream.
#[pin_data]
struct StreamLog {
    #[pin]
    log: SpinLockIrq<Entries>,
    /// The sequence number of the stream's next send.
    next: AtomicU64,
}

struct Entries {
    /// One entry per sequence number, see [`entry`].
    e: KVVec<u32>,
    /// The highest sequence number delivered so far.
    last: Option<u64>,
}

impl StreamLog {
    fn new(per: u64) -> Result<Arc<Self>> {
        let n = usize::try_from(per).map_err(|_| EINVAL)?;
        let mut e = KVVec::with_capacity(n, GFP_KERNEL)?;
        e.resize(n, 0, GFP_KERNEL)?;
        Arc::pin_init(
            pin_init!(StreamLog {
                log <- new_spinlock_irq!(Entries { e, last: None }, "kmcl_stress::StreamLog::log"),
                next: AtomicU64::new(0),
            }),
            GFP_KERNEL,
        )
    }

    fn set_outcome(&self, seq: u64, outcome: u32) {
        let mut g = self.log.lock();
        if let Some(e) = g.e.get_mut(seq as usize) {
            *e = (*e & !entry::OUTCOME) | outcome;
        }
    }
}

/// What all threads and callbacks of a run share.
struct Shared {
    seed: u64,
    /// Packets per stream.
    per: u64,
    sides: [Side; 2],
    streams: KVec<Arc<StreamLog>>,
    /// Tells every thread to stop: the run is over or stuck.
    abort: AtomicBool,
    /// Tells the server's pauser to stop: the last connection begins.
    quiet: AtomicBool,
    sent: AtomicU64,
    routines: AtomicU64,
    received: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    corrupt: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    misreported: AtomicU64,
    pauses: AtomicU64,
}

fn side_name(side: usize) -> &'static str {
    if side == CLIENT {
        "client"
    } else {
        "server"
    }
}

/// The stream and sequence number of a packet of this run, if well formed.
fn header(d: &[u8], per: u64) -> Option<(usize, u64)> {
    let stream = u64::from_le_bytes(d.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(d.get(8..16)?.try_into().ok()?);
    if stream >= STREAMS as u64 || seq >= per {
        return None;
    }
    let fill = (seq as u8).wrapping_add(stream as u8);
    if d[16..].iter().any(|b| *b != fill && *b != 0) {
        return None;
    }
    Some((stream as usize, seq))
}

impl Shared {
    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Sends started and not finished by a routine.
    fn in_flight(&self) -> u64 {
        Self::count(&self.sent).saturating_sub(Self::count(&self.routines))
    }

    /// Logs the first delivery of a packet to `side`; returns its stream
    /// and sequence number, unless it is corrupt.
    fn delivered(&self, side: usize, d: &[u8]) -> Option<(usize, u64)> {
        let (stream, seq) = match header(d, self.per) {
            Some((stream, seq)) if sender_side(stream) != side => (stream, seq),
            _ => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let conn = self.sides[side].conn.load(Ordering::Relaxed);
        let mut g = self.streams[stream].log.lock();
        let last = g.last;
        let e = g.e.get_mut(seq as usize)?;
        let n = entry::delivered(*e);
        if n > 0 {
            *e = (*e & !(0b11 << entry::DELIVERED_SHIFT))
                | ((n + 1).min(3) << entry::DELIVERED_SHIFT);
            drop(g);
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return Some((stream, seq));
        }
        *e = (*e & entry::OUTCOME) | (1 << entry::DELIVERED_SHIFT) | (conn << entry::CONN_SHIFT);
        match last {
            Some(l) if seq < l => {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
            _ => g.last = Some(seq),
        }
        drop(g);
        self.received.fetch_add(1, Ordering::Relaxed);
        Some((stream, seq))
    }

    /// Logs the routine of a send.
    fn finished(&self, payload: &[u8], status: Result) {
        self.routines.fetch_add(1, Ordering::Relaxed);
        let outcome = match status {
            Ok(()) => entry::DONE,
            Err(e) if e == ECANCELED || e == ENODEV => {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                entry::CANCELLED
            }
            Err(e) => {
                if self.misreported.fetch_add(1, Ordering::Relaxed) < 8 {
                    pr_err!("kmcl-stress teardown: a send finished with {:?}\n", e);
                }
                entry::CANCELLED
            }
        };
        let Some((stream, seq)) = header(payload, self.per) else {
            self.misreported.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut g = self.streams[stream].log.lock();
        let Some(e) = g.e.get_mut(seq as usize) else {
            return;
        };
        let was = *e & entry::OUTCOME;
        *e = (*e & !entry::OUTCOME) | outcome;
        drop(g);
        if was != entry::PENDING && self.misreported.fetch_add(1, Ordering::Relaxed) < 8 {
            pr_err!("kmcl-stress teardown: a second routine for packet {seq} of stream {stream}\n");
        }
    }
}

/// The completion routine of every send of the run.
fn routine(mut p: Packet, status: Result, _response: &[u8]) {
    let raw = p.pointer() as *const Shared;
    p.set_pointer(0);
    if raw.is_null() {
        return;
    }
    // SAFETY: `send_stream` stored in the packet a reference to the run's
    // `Shared` made by `Arc::into_raw`, and kmcl calls a routine once per
    // send, with the packet; the pointer is cleared above, so the reference
    // is taken back exactly once.
    let shared = unsafe { Arc::from_raw(raw) };
    let side = match p.channel().endpoint() {
        Endpoint::Client => CLIENT,
        Endpoint::Server => SERVER,
    };
    shared.sides[side].enter(side_name(side), "a completion routine");
    shared.finished(p.payload(), status);
}

/// The callbacks of one side.
struct Peer {
    shared: Arc<Shared>,
    side: usize,
}

impl Peer {
    fn enter(&self, what: &str) {
        self.shared.sides[self.side].enter(side_name(self.side), what);
    }
}

impl ProcessPacket for Peer {
    fn process_packet(&self, _channel: &Channel, mut packet: IncomingPacket) {
        self.enter("ProcessPacket");
        // The context area marks a packet already logged (a redelivery).
        if packet.context()[0] == 0 {
            packet.context()[0] = 1;
            let id = self.shared.delivered(self.side, packet.data());
            // One packet in eight is deferred, chosen by the seed.
            if let Some((stream, seq)) = id {
                if mix(self.shared.seed ^ ((stream as u64) << 56) ^ seq) % 8 == 0 {
                    match packet.defer_to_passive() {
                        Ok(()) => return,
                        Err(e) => packet = e.0,
                    }
                }
            }
        }
        let _ = packet.complete(&[]);
    }

    fn processing_complete(&self, _channel: &Channel, _count: u32) {
        self.enter("ProcessingComplete");
    }
}

impl StateChange for Peer {
    fn opened(&self, _channel: &Channel) -> Result {
        self.enter("Opened");
        self.shared.sides[self.side]
            .conn
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn started(&self, _channel: &Channel) {
        self.enter("Started");
    }

    fn post_started(&self, _channel: &Channel) {
        self.enter("PostStarted");
    }

    fn suspend(&self, _channel: &Channel) {
        self.enter("Suspend");
    }

    fn closed(&self, _channel: &Channel) {
        self.enter("Closed");
    }

    fn pnp_failure(&self, _channel: &Channel, error: Error) {
        self.enter("PnpFailure");
        pr_err!("kmcl-stress teardown: PnpFailure {:?}\n", error);
    }
}

/// A thread of the run, as a work item of its own.
#[pin_data]
struct Worker {
    shared: Arc<Shared>,
    chan: Arc<Channel>,
    /// A stream to send, or `None` to pause and restart `chan`.
    stream: Option<usize>,
    finished: Arc<AtomicU64>,
    #[pin]
    work: Work<Worker>,
}

impl_has_work! {
    impl HasWork<Self> for Worker { self.work }
}

impl WorkItem for Worker {
    type Pointer = Arc<Worker>;

    fn run(this: Arc<Worker>) {
        match this.stream {
            Some(stream) => send_stream(&this.shared, &this.chan, stream),
            None => pause_loop(&this.shared, &this.chan),
        }
        this.finished.fetch_add(1, Ordering::Release);
    }
}

/// Starts a worker on the system's long-running workqueue.
fn spawn(
    shared: &Arc<Shared>,
    chan: Arc<Channel>,
    stream: Option<usize>,
    finished: Arc<AtomicU64>,
) -> Result {
    let w = Arc::pin_init(
        pin_init!(Worker {
            shared: shared.clone(),
            chan,
            stream,
            finished,
            work <- kernel::new_work!("kmcl_stress::teardown::Worker::work"),
        }),
        GFP_KERNEL,
    )?;
    let _ = workqueue::system_long().enqueue(w);
    Ok(())
}

/// Sends the packets of `stream` on `chan`, whatever the state of the
/// connection: a send that does not start is tried again.
fn send_stream(shared: &Arc<Shared>, chan: &Channel, stream: usize) {
    let log = &shared.streams[stream];
    let flags = if waits(stream) {
        SendFlags::WAIT_FOR_COMPLETION
    } else {
        SendFlags::NONE
    };
    let mut buf = [0u8; 3000];
    let mut seq = 0;
    while seq < shared.per && !shared.abort.load(Ordering::Relaxed) {
        let size = SIZES[(seq as usize + stream) % SIZES.len()].max(16);
        buf[..8].copy_from_slice(&(stream as u64).to_le_bytes());
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
        buf[16..size].fill((seq as u8).wrapping_add(stream as u8));
        let mut p = match chan.packet_allocate() {
            Ok(p) => p,
            Err(e) => {
                // An empty pool drains; a Disabled channel comes back.
                if e != ENOMEM {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                }
                fsleep(Delta::from_micros(100));
                continue;
            }
        };
        p.set_completion_routine(routine);
        p.set_pointer(Arc::into_raw(shared.clone()) as usize);
        log.set_outcome(seq, entry::PENDING);
        shared.sent.fetch_add(1, Ordering::Relaxed);
        match p.send(&buf[..size], flags) {
            Ok(()) => {
                seq += 1;
                log.next.store(seq, Ordering::Relaxed);
            }
            Err(SendError { error, mut packet }) => {
                shared.sent.fetch_sub(1, Ordering::Relaxed);
                log.set_outcome(seq, entry::UNSENT);
                let raw = packet.pointer() as *const Shared;
                packet.set_pointer(0);
                // SAFETY: the send did not start: the packet came back with
                // the reference stored above, which nothing else took.
                drop(unsafe { Arc::from_raw(raw) });
                drop(packet);
                if error != ENOMEM && error != EBUSY {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                }
                fsleep(Delta::from_micros(100));
            }
        }
    }
}

/// Pauses and restarts `chan` at random until the run stops.
fn pause_loop(shared: &Shared, chan: &Channel) {
    let mut rng = Prng::new(shared.seed, 1);
    while !shared.abort.load(Ordering::Relaxed) && !shared.quiet.load(Ordering::Relaxed) {
        fsleep(Delta::from_micros((1000 + rng.below(9000)) as i64));
        if chan.state() == State::Started && chan.pause().is_ok() {
            shared.pauses.fetch_add(1, Ordering::Relaxed);
            fsleep(Delta::from_micros(rng.below(2000) as i64));
            let _ = chan.start();
        }
    }
}

/// The outcome of one run in teardown mode.
pub(crate) struct Outcome {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) corrupt: u64,
    pub(crate) pauses: u64,
    pub(crate) connections: u32,
    pub(crate) disables: u64,
    pub(crate) cancelled: u64,
    pub(crate) dropped: u64,
    pub(crate) late_calls: u64,
    pub(crate) misreported: u64,
    /// A step that did not finish in time, if any.
    pub(crate) hang: Option<&'static str>,
}

fn open_pair(
    shared: &Arc<Shared>,
    bus: &Arc<LoopbackBus>,
) -> Result<(ChannelHandle, ChannelHandle)> {
    let end = |e, side| {
        Channel::builder(e, &THIS_MODULE)
            .driver(Peer {
                shared: shared.clone(),
                side,
            })
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .client_context_size(8)
            .packet_pool_size(32)
    };
    let mut server = end(Endpoint::Server, SERVER)
        .friendly_name(c"stress-teardown-server")
        .target_interface_id(STRESS_TYPE, Guid::NULL)
        .build()?;
    let mut client = end(Endpoint::Client, CLIENT)
        .friendly_name(c"stress-teardown-client")
        .target_pnp(STRESS_TYPE, None)
        .ring_buffer_page_count(3)
        .build()?;
    for h in [&server, &client] {
        h.set_transaction_quota(2)?;
    }
    // Each end's receive work on a CPU of its own (see kmcl_stress.rs).
    server.set_target_cpu(1 % kernel::cpu::nr_cpu_ids())?;
    client.set_target_cpu(0)?;
    server.set_incoming_processing_at_passive(true);
    server.enable()?;
    client.enable()?;
    client.wait_for_state(State::Started, Delta::from_millis(10_000))?;
    server.wait_for_state(State::Started, Delta::from_millis(10_000))?;
    Ok((client, server))
}

/// How long a step may take before the run is called stuck.
const STUCK: Delta = Delta::from_millis(20_000);

/// Waits until `done` holds, for at most [`STUCK`] without `progress`
/// changing.
fn wait_progress(done: impl Fn() -> bool, progress: impl Fn() -> u64) -> Result {
    let mut last = progress();
    let mut since = Instant::<Monotonic>::now();
    while !done() {
        fsleep(Delta::from_millis(1));
        let now = progress();
        if now != last {
            last = now;
            since = Instant::<Monotonic>::now();
        } else if since.elapsed() > STUCK {
            return Err(ETIMEDOUT);
        }
    }
    Ok(())
}

/// Leaves a paused channel started again, and waits for Started.
fn settle(chan: &Channel) -> Result {
    if chan.state() == State::Paused {
        chan.start()?;
    }
    chan.wait_for_state(State::Started, STUCK)
}

/// Sorts the packets of `stream` that were not delivered into lost and
/// dropped (see the module's documentation); `fence` is the stream's first
/// packet sent on the last connection. Returns (lost, dropped, misreported).
fn account(stream: usize, e: &[u32], fence: u64) -> (u64, u64, u64) {
    let (mut lost, mut dropped, mut misreported) = (0u64, 0u64, 0u64);
    // The receiver's connection of the last delivered packet.
    let mut prev = 1u32;
    let mut gap = 0usize;
    for i in 0..=e.len() {
        let next = match e.get(i) {
            Some(&x) if entry::delivered(x) > 0 => Some(entry::conn(x)),
            Some(_) => continue,
            None => None,
        };
        for (seq, &x) in (gap as u64..).zip(&e[gap..i]) {
            let is_lost = match x & entry::OUTCOME {
                entry::PENDING => true,
                entry::DONE => waits(stream) || seq >= fence || next == Some(prev),
                _ => false,
            };
            if is_lost {
                if lost < 4 {
                    pr_err!(
                        "kmcl-stress teardown: lost: stream {stream} packet {seq} (outcome {}), delivered neighbours on connections {prev} and {:?}\n",
                        x & entry::OUTCOME,
                        next
                    );
                }
                lost += 1;
            } else if x & entry::OUTCOME == entry::DONE {
                dropped += 1;
            }
        }
        if let Some(&x) = e.get(i) {
            // A one-way send reported cancelled never reached the ring.
            if !waits(stream) && x & entry::OUTCOME == entry::CANCELLED {
                misreported += 1;
            }
        }
        if let Some(n) = next {
            prev = n;
        }
        gap = i + 1;
    }
    (lost, dropped, misreported)
}

/// Runs the teardown mode with `total` packets (all streams) and `seed`,
/// and prints the result line.
pub(crate) fn run(total: u64, seed: u64) -> Result<Outcome> {
    let per = (total / STREAMS as u64).max(1);
    let mut streams = KVec::with_capacity(STREAMS, GFP_KERNEL)?;
    for _ in 0..STREAMS {
        streams.push(StreamLog::new(per)?, GFP_KERNEL)?;
    }
    let shared = Arc::new(
        Shared {
            seed,
            per,
            sides: [Side::new(), Side::new()],
            streams,
            abort: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            routines: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            misreported: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        },
        GFP_KERNEL,
    )?;
    let bus = LoopbackBus::new()?;
    let (mut client, server) = open_pair(&shared, &bus)?;
    let senders = Arc::new(AtomicU64::new(0), GFP_KERNEL)?;
    let pauser = Arc::new(AtomicU64::new(0), GFP_KERNEL)?;
    for stream in 0..STREAMS {
        let chan = if sender_side(stream) == CLIENT {
            client.arc()
        } else {
            server.arc()
        };
        spawn(&shared, chan, Some(stream), senders.clone())?;
    }
    spawn(&shared, server.arc(), None, pauser.clone())?;

    let c = &shared.sides[CLIENT];
    let progress = || Shared::count(&shared.sent) + Shared::count(&shared.routines);
    let mut hang = None;
    let mut disables = 0u64;
    let mut rng = Prng::new(seed, 0);
    // Teardowns stop once nine tenths of the packets went out (and three
    // Disables happened): the rest go through the last connection, which
    // must deliver all of them.
    let target = per * STREAMS as u64 * 9 / 10;
    let mut last = progress();
    let mut since = Instant::<Monotonic>::now();
    while (Shared::count(&shared.sent) < target || disables < 3) && hang.is_none() {
        fsleep(Delta::from_micros((1000 + rng.below(9000)) as i64));
        if rng.below(4) == 0 {
            client.disable()?;
            c.disabled.store(true, Ordering::Release);
            disables += 1;
            fsleep(Delta::from_micros(rng.below(3000) as i64));
            c.disabled.store(false, Ordering::Release);
            if client.enable().is_err() {
                hang = Some("the client's Enable failed");
            } else if client.wait_for_state(State::Started, STUCK).is_err() {
                hang = Some("the client did not start after Enable");
            }
        } else if client.pause().is_ok() {
            shared.pauses.fetch_add(1, Ordering::Relaxed);
            fsleep(Delta::from_micros(rng.below(2000) as i64));
            if client.start().is_err() {
                hang = Some("the client's Start failed");
            }
        }
        let now = progress();
        if now != last {
            last = now;
            since = Instant::<Monotonic>::now();
        } else if since.elapsed() > STUCK {
            hang = Some("no send started or finished during the teardowns");
        }
    }

    // The last connection: stop the pauser, settle both sides, note where
    // each stream stands (every later send goes to this connection), and
    // let everything through.
    shared.quiet.store(true, Ordering::Relaxed);
    if hang.is_some() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    let mut fence = [per; STREAMS];
    if hang.is_none() && wait_progress(|| pauser.load(Ordering::Acquire) == 1, || 0).is_err() {
        hang = Some("the server's pauser did not stop");
    }
    if hang.is_none() && (settle(&server).is_err() || settle(&client).is_err()) {
        hang = Some("the last connection did not start");
    }
    if hang.is_none() {
        for (f, s) in fence.iter_mut().zip(shared.streams.iter()) {
            *f = s.next.load(Ordering::Relaxed);
        }
        let all = STREAMS as u64;
        if wait_progress(|| senders.load(Ordering::Acquire) == all, progress).is_err() {
            hang = Some("the sends of the last connection did not finish");
        }
    }
    if hang.is_none() {
        // Drained: nothing in flight, and nothing delivered for 200 ms.
        let seen = || Shared::count(&shared.received) + Shared::count(&shared.routines);
        let mut last = seen();
        let mut since = Instant::<Monotonic>::now();
        loop {
            fsleep(Delta::from_millis(1));
            let now = seen();
            if now != last {
                last = now;
                since = Instant::<Monotonic>::now();
            } else if shared.in_flight() == 0 && since.elapsed() > Delta::from_millis(200) {
                break;
            } else if since.elapsed() > STUCK {
                hang = Some("the last connection did not drain");
                break;
            }
        }
    }
    shared.abort.store(true, Ordering::Relaxed);
    client.disable()?;
    c.disabled.store(true, Ordering::Release);
    server.disable()?;
    shared.sides[SERVER].disabled.store(true, Ordering::Release);
    // The threads stop at once now.
    while senders.load(Ordering::Acquire) != STREAMS as u64 || pauser.load(Ordering::Acquire) != 1 {
        fsleep(Delta::from_millis(1));
    }
    // Room for a late call to show itself.
    fsleep(Delta::from_millis(20));

    let (mut lost, mut dropped, mut misreported) = (0, 0, Shared::count(&shared.misreported));
    for (stream, (log, f)) in shared.streams.iter().zip(fence).enumerate() {
        let e = core::mem::take(&mut log.log.lock().e);
        let (l, d, m) = account(stream, &e, f);
        lost += l;
        dropped += d;
        misreported += m;
    }
    let late_calls =
        c.late.load(Ordering::Relaxed) + shared.sides[SERVER].late.load(Ordering::Relaxed);
    let o = Outcome {
        sent: Shared::count(&shared.sent),
        received: Shared::count(&shared.received),
        lost,
        duplicated: Shared::count(&shared.duplicated),
        reordered: Shared::count(&shared.reordered),
        corrupt: Shared::count(&shared.corrupt),
        pauses: Shared::count(&shared.pauses),
        connections: c.conn.load(Ordering::Relaxed),
        disables,
        cancelled: Shared::count(&shared.cancelled),
        dropped,
        late_calls,
        misreported,
        hang,
    };
    if let Some(what) = o.hang {
        pr_err!("kmcl-stress teardown: stuck (seed {seed}): {what}\n");
    }
    pr_info!(
        "kmcl-stress: sent={} received={} lost={} duplicated={} reordered={} corrupt={} quota_stalls={} ring_full={} pauses={} mode=teardown seed={} connections={} disables={} cancelled={} dropped={} refused={} late_calls={} misreported={} hangs={}\n",
        o.sent,
        o.received,
        o.lost,
        o.duplicated,
        o.reordered,
        o.corrupt,
        client.counters().quota_stalls + server.counters().quota_stalls,
        client.counters().ring_full + server.counters().ring_full,
        o.pauses,
        seed,
        o.connections,
        o.disables,
        o.cancelled,
        o.dropped,
        Shared::count(&shared.refused),
        o.late_calls,
        o.misreported,
        u32::from(o.hang.is_some())
    );
    Ok(o)
}
