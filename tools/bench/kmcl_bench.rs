// SPDX-License-Identifier: GPL-2.0

//! kmcl's benchmark module, loaded by `make bench`.
//!
//! The same workloads run three ways in one boot:
//!
//! - `raw`: the ring code alone (`kmcl::wire::ring`), writer and reader in
//!   one thread, no channel layer;
//! - `api`: the kmcl API over the loopback transport, delivery in softirq;
//! - `passive`: the same with incoming processing at passive level.
//!
//! Workloads: `stream` (one-way packets as fast as they go) and `reqresp`
//! (one request, wait for its response, repeat), for payloads of 64, 512 and
//! 4096 bytes. Each measurement prints one line starting `kmcl-bench:`;
//! `tools/bench/report.py` turns them into the table, the JSON and the plot.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicU64,
        Ordering, //
    },
};

use kernel::{
    alloc::KVVec,
    prelude::*,
    sync::Arc,
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
};

use kmcl::{
    channel::{
        callbacks::{
            ProcessPacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        outgoing::SendFlags,
        Channel,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
    wire::{
        guid::Guid,
        packet,
        ring::{
            RingError,
            RingMemory,
            RingReader,
            RingWriter,
            CONTROL_SIZE, //
        },
    },
};

module! {
    type: KmclBench,
    name: "kmcl_bench",
    authors: ["The kmcl developers"],
    description: "kmcl benchmark: raw ring against the channel API",
    license: "GPL",
    params: {
        packets: u32 {
            default: 20000,
            description: "Packets per stream measurement",
        },
        requests: u32 {
            default: 2000,
            description: "Requests per request/response measurement",
        },
        runs: u32 {
            default: 5,
            description: "Repetitions of every measurement",
        },
    },
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <KmclBench as kernel::ModuleMetadata>::THIS_MODULE;

const SIZES: [usize; 3] = [64, 512, 4096];
const RING_PAGES: usize = 16;
const BENCH_TYPE: Guid = Guid::from_str_const("9d6f1b2a-4c3e-4f5a-8b7c-6d5e4f3a2b1c");

fn ns_since(t: Instant<Monotonic>) -> u64 {
    t.elapsed().as_nanos().max(0) as u64
}

/// One ring's memory, owned here.
struct RawRing {
    mem: KVVec<u64>,
}

impl RawRing {
    fn new() -> Result<Self> {
        let mut mem = KVVec::new();
        mem.resize((CONTROL_SIZE + (RING_PAGES - 1) * 4096) / 8, 0, GFP_KERNEL)?;
        let r = Self { mem };
        r.view()?.reset();
        Ok(r)
    }

    fn view(&self) -> Result<RingMemory> {
        let base = self.mem.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: the vector is 8-aligned, holds a control page and the data
        // area, outlives every view (the views live inside the measurement
        // that owns `self`), and is never resized.
        unsafe {
            RingMemory::new(
                NonNull::new(base).ok_or(EINVAL)?,
                NonNull::new(base.add(CONTROL_SIZE)).ok_or(EINVAL)?,
                ((RING_PAGES - 1) * 4096) as u32,
            )
        }
        .ok_or(EINVAL)
    }
}

/// A packet to write: descriptor and payload, padded.
fn raw_packet(size: usize) -> Result<KVec<u8>> {
    let d = packet::encode_simple(packet::TYPE_DATA_INBAND, 0, 1, size).ok_or(EINVAL)?;
    let mut v = KVec::new();
    v.extend_from_slice(&d.encode(), GFP_KERNEL)?;
    v.resize(d.len8 as usize * 8, 0x5a, GFP_KERNEL)?;
    Ok(v)
}

struct Measure {
    ns: u64,
    packets: u64,
    signals: u64,
    p50: u64,
    p99: u64,
}

fn percentiles(lat: &mut [u64]) -> (u64, u64) {
    if lat.is_empty() {
        return (0, 0);
    }
    lat.sort_unstable();
    let at = |q: usize| lat[(lat.len() * q / 100).min(lat.len() - 1)];
    (at(50), at(99))
}

fn raw_stream(size: usize, n: u64) -> Result<Measure> {
    let ring = RawRing::new()?;
    let mut w = RingWriter::new(ring.view()?).map_err(|_| EIO)?;
    let mut r = RingReader::new(ring.view()?).map_err(|_| EIO)?;
    let pkt = raw_packet(size)?;
    let mut buf = KVec::new();
    buf.resize(pkt.len(), 0, GFP_KERNEL)?;
    let (mut sent, mut got, mut signals) = (0u64, 0u64, 0u64);
    let t = Instant::<Monotonic>::now();
    while got < n {
        // The writer fills the ring, then the reader drains what is there.
        while sent < n {
            match w.write(&[&pkt]) {
                Ok(o) => {
                    signals += u64::from(o.signal);
                    sent += 1;
                }
                Err(RingError::Full { .. }) => break,
                Err(_) => return Err(EIO),
            }
        }
        r.begin_read();
        while let Some(_len) = r.read(&mut buf).map_err(|_| EIO)? {
            got += 1;
        }
        let _ = r.commit();
        let _ = r.end_read();
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals,
        p50: 0,
        p99: 0,
    })
}

fn raw_reqresp(size: usize, n: u64) -> Result<Measure> {
    let (a, b) = (RawRing::new()?, RawRing::new()?);
    let mut wa = RingWriter::new(a.view()?).map_err(|_| EIO)?;
    let mut ra = RingReader::new(a.view()?).map_err(|_| EIO)?;
    let mut wb = RingWriter::new(b.view()?).map_err(|_| EIO)?;
    let mut rb = RingReader::new(b.view()?).map_err(|_| EIO)?;
    let pkt = raw_packet(size)?;
    let mut buf = KVec::new();
    buf.resize(pkt.len(), 0, GFP_KERNEL)?;
    let mut lat = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    let mut signals = 0u64;
    let t = Instant::<Monotonic>::now();
    for _ in 0..n {
        let t1 = Instant::<Monotonic>::now();
        signals += u64::from(wa.write(&[&pkt]).map_err(|_| EIO)?.signal);
        ra.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
        let _ = ra.commit();
        signals += u64::from(wb.write(&[&buf]).map_err(|_| EIO)?.signal);
        rb.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
        let _ = rb.commit();
        let _ = lat.push_within_capacity(ns_since(t1));
    }
    let ns = ns_since(t);
    let (p50, p99) = percentiles(&mut lat);
    Ok(Measure {
        ns,
        packets: n,
        signals,
        p50,
        p99,
    })
}

/// The server side: completes at once, echoing the payload when the sender
/// waits for a completion.
struct Sink {
    received: AtomicU64,
}

impl ProcessPacket for Sink {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if packet.completion_requested() {
            let mut buf = [0u8; 4096];
            let d = packet.data();
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            let _ = packet.complete(&buf[..n]);
        } else {
            let _ = packet.complete(&[]);
        }
    }
}

impl StateChange for Sink {}

struct Pair {
    client: ChannelHandle,
    server: ChannelHandle,
    sink: Arc<Sink>,
    _bus: Arc<LoopbackBus>,
}

impl Pair {
    fn new(passive: bool) -> Result<Pair> {
        let bus = LoopbackBus::new()?;
        let sink = Arc::new(
            Sink {
                received: AtomicU64::new(0),
            },
            GFP_KERNEL,
        )?;
        let mut ends = KVec::new();
        for e in [Endpoint::Server, Endpoint::Client] {
            let mut h = Channel::allocate(e, &THIS_MODULE)?;
            h.init_set_process_packet_callbacks(sink.clone())?;
            h.init_set_state_change_callbacks(sink.clone())?;
            h.init_set_vmbus_handle(Bus::Loopback(bus.clone()))?;
            h.init_set_packet_pool_size(256)?;
            match e {
                Endpoint::Server => h.init_set_target_interface_id(BENCH_TYPE, Guid::NULL)?,
                Endpoint::Client => {
                    h.init_set_ring_buffer_page_count(RING_PAGES as u32)?;
                    h.init_set_target_pnp(BENCH_TYPE, None)?;
                }
            }
            h.set_incoming_processing_at_passive(passive);
            h.enable()?;
            ends.push(h, GFP_KERNEL)?;
        }
        let client = ends.pop().ok_or(EINVAL)?;
        let server = ends.pop().ok_or(EINVAL)?;
        client.wait_for_state(State::Started, Delta::from_millis(10_000))?;
        server.wait_for_state(State::Started, Delta::from_millis(10_000))?;
        Ok(Pair {
            client,
            server,
            sink,
            _bus: bus,
        })
    }

    fn signals(&self) -> u64 {
        self.client.stats_signals_sent()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.client.disable();
        self.server.disable();
    }
}

fn api_stream(p: &Pair, size: usize, n: u64) -> Result<Measure> {
    let data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let before = p.sink.received.load(Ordering::Relaxed);
    let sig0 = p.signals();
    let t = Instant::<Monotonic>::now();
    let mut sent = 0;
    while sent < n {
        match p.client.packet_allocate() {
            Ok(pkt) => {
                pkt.send(&data, SendFlags::NONE).map_err(|e| e.error)?;
                sent += 1;
            }
            // All packet objects are queued behind a full ring: let the
            // server drain.
            Err(_) => fsleep(Delta::from_micros(10)),
        }
    }
    let mut spins = 0u64;
    while p.sink.received.load(Ordering::Relaxed) < before + n {
        spins += 1;
        if spins % 1024 == 0 {
            fsleep(Delta::from_micros(10));
        }
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals: p.signals() - sig0,
        p50: 0,
        p99: 0,
    })
}

fn api_reqresp(p: &Pair, size: usize, n: u64) -> Result<Measure> {
    let data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let mut resp = KVec::from_elem(0u8, packet::align8(size), GFP_KERNEL)?;
    let mut lat = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    let sig0 = p.signals();
    let t = Instant::<Monotonic>::now();
    for _ in 0..n {
        let t1 = Instant::<Monotonic>::now();
        p.client.send_synchronous_request(
            &data,
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(5000)),
        )?;
        let _ = lat.push_within_capacity(ns_since(t1));
    }
    let ns = ns_since(t);
    let (p50, p99) = percentiles(&mut lat);
    Ok(Measure {
        ns,
        packets: n,
        signals: p.signals() - sig0,
        p50,
        p99,
    })
}

fn report(way: &str, workload: &str, size: usize, run: u32, m: &Measure) {
    pr_info!(
        "kmcl-bench: way={} workload={} size={} run={} packets={} ns={} signals={} p50={} p99={}\n",
        way,
        workload,
        size,
        run,
        m.packets,
        m.ns,
        m.signals,
        m.p50,
        m.p99
    );
}

/// The cost of one lock and unlock of a `SpinLockIrq` on this kernel: the
/// unit in which the channel layer's overhead is counted.
fn lock_pair(n: u64) -> Result<Measure> {
    let lock = KBox::pin_init(
        kernel::new_spinlock_irq!(0u64, "kmcl_bench::lock"),
        GFP_KERNEL,
    )?;
    let t = Instant::<Monotonic>::now();
    for _ in 0..n {
        *lock.lock() += 1;
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals: 0,
        p50: 0,
        p99: 0,
    })
}

struct KmclBench;

impl kernel::Module for KmclBench {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let n = u64::from(module_parameters::packets.value());
        let q = u64::from(module_parameters::requests.value());
        let runs = module_parameters::runs.value();
        let api = Pair::new(false)?;
        let passive = Pair::new(true)?;
        for run in 0..runs {
            report("lock", "lockpair", 0, run, &lock_pair(n)?);
            for size in SIZES {
                report("raw", "stream", size, run, &raw_stream(size, n)?);
                report("api", "stream", size, run, &api_stream(&api, size, n)?);
                report(
                    "passive",
                    "stream",
                    size,
                    run,
                    &api_stream(&passive, size, n)?,
                );
                report("raw", "reqresp", size, run, &raw_reqresp(size, q)?);
                report("api", "reqresp", size, run, &api_reqresp(&api, size, q)?);
                report(
                    "passive",
                    "reqresp",
                    size,
                    run,
                    &api_reqresp(&passive, size, q)?,
                );
            }
        }
        pr_info!("kmcl-bench: done\n");
        Ok(KmclBench)
    }
}
