// SPDX-License-Identifier: GPL-2.0

//! kmcl's stress test, loaded by `make check` (short) and `make stress`
//! (1 000 000 packets).
//!
//! A client and a server on a private loopback bus with 3-page rings send
//! to each other at the same time, two sender threads per direction (so
//! both CPUs write), with payloads from 8 to 3000 bytes. Every packet
//! carries its stream and sequence number; receivers check them on first
//! delivery. Meanwhile the receivers defer every 16th packet to process
//! context under a transaction quota of 2 (quota stalls), a controller
//! pauses and restarts the server (pause/start), and the small rings fill
//! up (ring-full queueing). At the end: packets lost, duplicated and
//! reordered per stream must all be 0.
//!
//! With `teardown=1` (`make stress STRESS_MODE=teardown`) the run tears
//! connections down and pauses them while the packets flow instead; see
//! [`teardown`].

use core::sync::atomic::{
    AtomicU64,
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
    workqueue::{
        self,
        impl_has_work,
        Work,
        WorkItem, //
    },
};

use kmcl::{
    context,
    loopback::LoopbackBus,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    ProcessPacket,
    SendFlags,
    State,
    StateChange, //
};

module! {
    type: KmclStress,
    name: "kmcl_stress",
    authors: ["The kmcl developers"],
    description: "kmcl stress test: both directions, both CPUs, sequence-checked",
    license: "GPL",
    params: {
        packets: u32 {
            default: 20000,
            description: "Packets in all (both directions) per run",
        },
        run_at_load: bool {
            default: false,
            description: "Run the stress at load and print the counts (make stress)",
        },
        teardown: bool {
            default: false,
            description: "At load, run the teardown mode: random Pause, Start, Disable and Enable",
        },
        seed: u64 {
            default: 1,
            description: "Seed of the teardown mode's random choices (printed with the counts)",
        },
    },
}

mod teardown;

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <KmclStress as kernel::ModuleMetadata>::THIS_MODULE;

const STRESS_TYPE: Guid = Guid::from_str_const("5e1a7c3d-2b4f-4a6e-9c8d-7f6e5d4c3b2a");
const STREAMS: usize = 2;
const SIZES: [usize; 5] = [8, 64, 200, 1000, 3000];

/// What one receiver saw.
#[pin_data]
struct Receiver {
    #[pin]
    expected: SpinLockIrq<[u64; STREAMS]>,
    received: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    corrupt: AtomicU64,
}

impl Receiver {
    fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Receiver {
                expected <- new_spinlock_irq!([0; STREAMS], "kmcl_stress::expected"),
                received: AtomicU64::new(0),
                duplicated: AtomicU64::new(0),
                reordered: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// Checks a packet's header on its first delivery.
    fn check(&self, d: &[u8]) {
        if d.len() < 16 {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[..8]);
        let stream = u64::from_le_bytes(w) as usize;
        w.copy_from_slice(&d[8..16]);
        let seq = u64::from_le_bytes(w);
        let fill = (seq as u8).wrapping_add(stream as u8);
        if stream >= STREAMS || d[16..].iter().any(|b| *b != fill && *b != 0) {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut e = self.expected.lock();
        if seq < e[stream] {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        } else {
            if seq > e[stream] {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
            e[stream] = seq + 1;
        }
        drop(e);
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

impl ProcessPacket for Receiver {
    fn process_packet(&self, _channel: &Channel, mut packet: IncomingPacket) {
        // The context area marks a packet already counted (a redelivery).
        let first = packet.context()[0] == 0;
        if first {
            packet.context()[0] = 1;
            self.check(packet.data());
        }
        if first && context::in_softirq() && self.received.load(Ordering::Relaxed) % 16 == 0 {
            match packet.defer_to_passive() {
                Ok(()) => return,
                Err(e) => packet = e.0,
            }
        }
        let _ = packet.complete(&[]);
    }
}

impl StateChange for Receiver {}

struct Pair {
    client: ChannelHandle,
    server: ChannelHandle,
    crx: Arc<Receiver>,
    srx: Arc<Receiver>,
    _bus: Arc<LoopbackBus>,
}

fn open_pair() -> Result<Pair> {
    let bus = LoopbackBus::new()?;
    let srx = Receiver::new()?;
    let crx = Receiver::new()?;
    let end = |e, rx: &Arc<Receiver>| {
        Channel::builder(e, &THIS_MODULE)
            .process_packet_callbacks(rx.clone())
            .state_change_callbacks(rx.clone())
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .client_context_size(8)
            .packet_pool_size(32)
    };
    let mut server = end(Endpoint::Server, &srx)
        .friendly_name(c"stress-server")
        .target_interface_id(STRESS_TYPE, Guid::NULL)
        .build()?;
    let mut client = end(Endpoint::Client, &crx)
        .friendly_name(c"stress-client")
        .target_pnp(STRESS_TYPE, None)
        .ring_buffer_page_count(3)
        .build()?;
    // Each end's receive work on a CPU of its own, as a host interrupts
    // the CPU a channel targets: the two drains and the finishes race.
    server.set_target_cpu(1 % kernel::cpu::nr_cpu_ids())?;
    client.set_target_cpu(0)?;
    server.enable()?;
    client.enable()?;
    server.set_transaction_quota(2)?;
    client.set_transaction_quota(2)?;
    client.wait_for_state(State::Started, Delta::from_millis(10_000))?;
    server.wait_for_state(State::Started, Delta::from_millis(10_000))?;
    Ok(Pair {
        client,
        server,
        crx,
        srx,
        _bus: bus,
    })
}

/// A sender thread, as a work item of its own (each module's work items need
/// their own lock classes).
#[pin_data]
struct Sender {
    chan: Arc<Channel>,
    stream: u64,
    n: u64,
    done: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    #[pin]
    work: Work<Sender>,
}

impl_has_work! {
    impl HasWork<Self> for Sender { self.work }
}

impl WorkItem for Sender {
    type Pointer = Arc<Sender>;

    fn run(this: Arc<Sender>) {
        sender(
            this.chan.clone(),
            this.stream,
            this.n,
            this.done.clone(),
            this.finished.clone(),
        );
    }
}

/// Sends `n` packets of stream `stream` from `chan`, adds how many to
/// `done`, and counts itself in `finished`.
fn sender(chan: Arc<Channel>, stream: u64, n: u64, done: Arc<AtomicU64>, finished: Arc<AtomicU64>) {
    let mut buf = [0u8; 3000];
    let mut sent = 0;
    while sent < n {
        let size = SIZES[(sent as usize + stream as usize) % SIZES.len()].max(16);
        buf[..8].copy_from_slice(&stream.to_le_bytes());
        buf[8..16].copy_from_slice(&sent.to_le_bytes());
        buf[16..size].fill((sent as u8).wrapping_add(stream as u8));
        let r = match chan.packet_allocate() {
            Ok(p) => p.send(&buf[..size], SendFlags::NONE).map_err(|e| e.error),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => sent += 1,
            // Pool or queue exhausted behind a full ring: let it drain.
            Err(e) if e == ENOMEM || e == EBUSY => fsleep(Delta::from_micros(50)),
            Err(_) => break,
        }
    }
    done.fetch_add(sent, Ordering::Relaxed);
    drop(chan);
    finished.fetch_add(1, Ordering::Release);
}

/// The outcome of one run.
struct Outcome {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    corrupt: u64,
    quota_stalls: u64,
    ring_full: u64,
    pauses: u64,
}

fn run(total: u64) -> Result<Outcome> {
    let p = open_pair()?;
    let per = total / (2 * STREAMS as u64);
    let sent = Arc::new(AtomicU64::new(0), GFP_KERNEL)?;
    let finished = Arc::new(AtomicU64::new(0), GFP_KERNEL)?;
    let mut senders = 0;
    for stream in 0..STREAMS as u64 {
        for chan in [p.client.arc(), p.server.arc()] {
            let (done, fin) = (sent.clone(), finished.clone());
            let w = Arc::pin_init(
                pin_init!(Sender {
                    chan,
                    stream,
                    n: per,
                    done,
                    finished: fin,
                    work <- kernel::new_work!("kmcl_stress::Sender::work"),
                }),
                GFP_KERNEL,
            )?;
            let _ = workqueue::system_long().enqueue(w);
            senders += 1;
        }
    }
    // Pause and restart the server while traffic flows.
    let mut pauses = 0;
    let expect = per * 2 * STREAMS as u64;
    let received =
        || p.crx.received.load(Ordering::Relaxed) + p.srx.received.load(Ordering::Relaxed);
    let mut idle = 0;
    let mut last = 0;
    while received() < expect && idle < 20_000 {
        if pauses < 20 && received() > (pauses + 1) * expect / 25 {
            p.server.pause()?;
            fsleep(Delta::from_millis(2));
            p.server.start()?;
            pauses += 1;
        }
        fsleep(Delta::from_millis(1));
        let now = received();
        if now == last {
            idle += 1;
        } else {
            idle = 0;
            last = now;
        }
    }
    // Let the senders finish counting (they stop at once if the channels
    // broke: a send on a closed channel fails).
    for _ in 0..10_000 {
        if finished.load(Ordering::Acquire) == senders {
            break;
        }
        fsleep(Delta::from_millis(1));
    }
    let stats = |c: &Channel| (c.counters().quota_stalls, c.counters().ring_full);
    let (q1, r1) = stats(&p.client);
    let (q2, r2) = stats(&p.server);
    let o = Outcome {
        sent: sent.load(Ordering::Relaxed),
        received: received(),
        lost: sent.load(Ordering::Relaxed).saturating_sub(received()),
        duplicated: p.crx.duplicated.load(Ordering::Relaxed)
            + p.srx.duplicated.load(Ordering::Relaxed),
        reordered: p.crx.reordered.load(Ordering::Relaxed)
            + p.srx.reordered.load(Ordering::Relaxed),
        corrupt: p.crx.corrupt.load(Ordering::Relaxed) + p.srx.corrupt.load(Ordering::Relaxed),
        quota_stalls: q1 + q2,
        ring_full: r1 + r2,
        pauses,
    };
    p.client.disable()?;
    p.server.disable()?;
    while finished.load(Ordering::Acquire) != senders {
        fsleep(Delta::from_millis(1));
    }
    pr_info!(
        "kmcl-stress: sent={} received={} lost={} duplicated={} reordered={} corrupt={} quota_stalls={} ring_full={} pauses={}\n",
        o.sent,
        o.received,
        o.lost,
        o.duplicated,
        o.reordered,
        o.corrupt,
        o.quota_stalls,
        o.ring_full,
        o.pauses
    );
    Ok(o)
}

struct KmclStress;

impl kernel::Module for KmclStress {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Under make check the KUnit suite runs the stress; make stress asks
        // for it here.
        if module_parameters::run_at_load.value() {
            let packets = u64::from(module_parameters::packets.value());
            if module_parameters::teardown.value() {
                teardown::run(packets, module_parameters::seed.value())?;
            } else {
                run(packets)?;
            }
        }
        Ok(KmclStress)
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_stress)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_lose_duplicate_and_reorder_nothing() -> Result {
        let total = u64::from(module_parameters::packets.value());
        let o = run(total)?;
        assert_eq!(o.sent, total - total % (2 * STREAMS as u64));
        assert_eq!(o.received, o.sent);
        assert_eq!(o.lost, 0);
        assert_eq!(o.duplicated, 0);
        assert_eq!(o.reordered, 0);
        assert_eq!(o.corrupt, 0);
        // The conditions the test is for did occur.
        assert!(o.quota_stalls > 0);
        assert!(o.ring_full > 0);
        assert!(o.pauses > 0);
        Ok(())
    }

    #[test]
    fn teardowns_lose_duplicate_and_call_late_nothing() -> Result {
        let o = teardown::run(4000, module_parameters::seed.value())?;
        assert_eq!(o.hang, None);
        assert_eq!(o.lost, 0);
        assert_eq!(o.duplicated, 0);
        assert_eq!(o.reordered, 0);
        assert_eq!(o.corrupt, 0);
        assert_eq!(o.late_calls, 0);
        assert_eq!(o.misreported, 0);
        assert_eq!(o.sent, 4000);
        assert!(o.received + o.cancelled + o.dropped >= o.sent);
        // The conditions the test is for did occur.
        assert!(o.disables > 0);
        assert_eq!(u64::from(o.connections), o.disables + 1);
        assert!(o.pauses > 0);
        Ok(())
    }
}
