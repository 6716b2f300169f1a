// SPDX-License-Identifier: GPL-2.0

//! kmcl's benchmark module, loaded by `make bench`.
//!
//! The same workloads run five ways in one boot:
//!
//! - `raw` (a): the ring code alone (`kmcl::testing::ring`), writer and reader
//!   in one thread, no channel layer;
//! - `api` (b): the kmcl API over the loopback transport, delivery in softirq;
//! - `passive` (c): the same with incoming processing at passive level;
//! - `cpath` (d): a driver written against Linux's C API
//!   (`vmbus_sendpacket_getid()`, `hv_pkt_iter_*()` in its channel callback,
//!   `vmbus_request_addr_match()`) on a `vmbus_channel` built in memory
//!   (`kmcl_bench_c.c`);
//! - `hv` (e): the kmcl API over its hv transport on the same kind of
//!   channel.
//!
//! In (d) and (e) this module plays the host on the other end of the rings
//! with kmcl's ring code, in the same thread: the guest's sends and the
//! host's interrupts run with bottom halves disabled, where hv_vmbus's
//! tasklet would run the channel callback, so (a), (d) and (e) each run in
//! one thread, which the deterministic mode of `make bench` (QEMU `-icount`)
//! needs. With `single=1` only those three ways run.
//!
//! Workloads: `stream` (one-way packets as fast as they go; for (d) and (e)
//! `send`, the guest sends, and `recv`, the guest receives) and `reqresp`
//! (one request, wait for its response, repeat), for payloads of 64, 512 and
//! 4096 bytes. Each measurement prints one line starting `kmcl-bench:`;
//! `tools/bench/report.py` turns them into the table, the JSON and the plot.

use core::{
    cell::UnsafeCell,
    ptr::NonNull,
    sync::atomic::{
        AtomicBool,
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
    loopback::LoopbackBus,
    testing::{
        self,
        packet,
        ring::{
            RingError,
            RingMemory,
            RingReader,
            RingWriter,
            CONTROL_SIZE, //
        },
        VmbusChannel, //
    },
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    Packet,
    ProcessPacket,
    SendFlags,
    State,
    StateChange, //
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
        single: bool {
            default: false,
            description: "Only the single-thread ways: raw, cpath, hv",
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

/// Sorts `v` in place (heapsort: no recursion, no panic path, which keeps
/// objtool quiet about the code core's quicksort generates here).
fn heapsort(v: &mut [u64]) {
    fn sift_down(v: &mut [u64], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift_down(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

fn percentiles(lat: &mut [u64]) -> (u64, u64) {
    if lat.is_empty() {
        return (0, 0);
    }
    heapsort(lat);
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
            let b = Channel::builder(e, &THIS_MODULE)
                .process_packet_callbacks(sink.clone())
                .state_change_callbacks(sink.clone())
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .packet_pool_size(256);
            let mut h = match e {
                Endpoint::Server => b.target_interface_id(BENCH_TYPE, Guid::NULL),
                Endpoint::Client => b
                    .ring_buffer_page_count(RING_PAGES as u32)
                    .target_pnp(BENCH_TYPE, None),
            }
            .build()?;
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
        self.client.counters().signals_sent
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.client.disable();
        let _ = self.server.disable();
    }
}

/// Sets where each end's interrupts run: with `spread`, the server's on a
/// CPU this thread does not run on (a stream, whose two halves then run in
/// parallel, as with a host that interrupts another CPU); otherwise both
/// on this thread's CPU (a request/response, which waits for each answer
/// and would only pay for waking another CPU).
fn place(p: &Pair, spread: bool) -> Result {
    let here = kernel::cpu::CpuId::current().as_u32();
    let other = (here + 1) % kernel::cpu::nr_cpu_ids();
    p.client.set_target_cpu(here)?;
    p.server.set_target_cpu(if spread { other } else { here })
}

fn api_stream(p: &Pair, size: usize, n: u64) -> Result<Measure> {
    place(p, true)?;
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
    place(p, false)?;
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

// ---- Ways (d) and (e): a `vmbus_channel` in memory, the host played here. ----

/// The C half, `kmcl_bench_c.c`.
mod ffi {
    use kernel::prelude::*;

    use kmcl::testing::VmbusChannel;

    extern "C" {
        pub(super) fn kmcl_bench_chan_new(
            ring_pages: u32,
            max_pkt: u32,
            rqstor: u32,
            c_driver: bool,
        ) -> *mut VmbusChannel;
        pub(super) fn kmcl_bench_chan_free(c: *mut VmbusChannel);
        pub(super) fn kmcl_bench_chan_ring(
            c: *mut VmbusChannel,
            inbound: c_int,
            control: *mut *mut c_void,
            data: *mut *mut c_void,
            size: *mut u32,
        );
        pub(super) fn kmcl_bench_bh_disable();
        pub(super) fn kmcl_bench_bh_enable();
        pub(super) fn kmcl_bench_c_interrupt(c: *mut VmbusChannel);
        pub(super) fn kmcl_bench_c_send(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            len: u32,
            count: u32,
        ) -> c_int;
        pub(super) fn kmcl_bench_c_request(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            len: u32,
            resp: *mut c_void,
            resp_len: u32,
        ) -> c_int;
        pub(super) fn kmcl_bench_c_request_done(c: *mut VmbusChannel) -> c_int;
        pub(super) fn kmcl_bench_c_received(c: *mut VmbusChannel) -> u64;
        pub(super) fn kmcl_bench_c_errors(c: *mut VmbusChannel) -> u64;
        pub(super) fn kmcl_bench_c_sig_events(c: *mut VmbusChannel) -> u64;
    }
}

/// Pages per direction of the hv channels (control page included), as the
/// loopback rings of (a) to (c).
const HV_RING_PAGES: u32 = RING_PAGES as u32;
/// The channels' packet buffer: the largest packet, descriptor included.
const HV_MAX_PKT: u32 = 8192;
const HV_RQSTOR: u32 = 64;

/// Bottom halves off for as long as it lives; turning them back on runs
/// what was raised meanwhile, in this thread.
struct BhOff;

impl BhOff {
    fn new() -> Self {
        // SAFETY: no preconditions; undone in `drop`.
        unsafe { ffi::kmcl_bench_bh_disable() };
        BhOff
    }
}

impl Drop for BhOff {
    fn drop(&mut self) {
        // SAFETY: pairs with the disable in `new`.
        unsafe { ffi::kmcl_bench_bh_enable() };
    }
}

/// A built channel until it is freed or handed to kmcl.
///
/// # Invariants
///
/// `c` comes from `kmcl_bench_chan_new` and is freed only in `drop`.
struct CChan {
    c: NonNull<VmbusChannel>,
}

impl CChan {
    fn new(c_driver: bool) -> Result<Self> {
        // SAFETY: a plain constructor; null on failure.
        let c = unsafe { ffi::kmcl_bench_chan_new(HV_RING_PAGES, HV_MAX_PKT, HV_RQSTOR, c_driver) };
        Ok(Self {
            c: NonNull::new(c).ok_or(ENOMEM)?,
        })
    }

    fn raw(&self) -> *mut VmbusChannel {
        self.c.as_ptr()
    }

    /// The host's end of both rings: it reads what the guest sends
    /// (outbound) and writes what the guest receives (inbound).
    ///
    /// # Safety
    ///
    /// The returned value must be dropped before the channel is freed.
    unsafe fn host(&self) -> Result<Host> {
        let ring = |inbound: bool| -> Result<RingMemory> {
            let (mut control, mut data, mut size) =
                (core::ptr::null_mut(), core::ptr::null_mut(), 0u32);
            // SAFETY: `c` is live by the invariant; the out-pointers are valid.
            unsafe {
                ffi::kmcl_bench_chan_ring(
                    self.raw(),
                    inbound.into(),
                    &mut control,
                    &mut data,
                    &mut size,
                )
            };
            // SAFETY: the rings outlive the view by the caller's promise.
            unsafe {
                RingMemory::new(
                    NonNull::new(control.cast()).ok_or(EINVAL)?,
                    NonNull::new(data.cast()).ok_or(EINVAL)?,
                    size,
                )
            }
            .ok_or(EINVAL)
        };
        let mut buf = KVec::new();
        buf.resize(HV_MAX_PKT as usize, 0, GFP_KERNEL)?;
        Ok(Host {
            reader: RingReader::new(ring(false)?).map_err(|_| EIO)?,
            writer: RingWriter::new(ring(true)?).map_err(|_| EIO)?,
            size: ring(true)?.size(),
            buf,
        })
    }

    fn sig_events(&self) -> u64 {
        // SAFETY: `c` is live by the invariant.
        unsafe { ffi::kmcl_bench_c_sig_events(self.raw()) }
    }

    /// Gives up ownership: kmcl frees the channel from here on.
    fn into_raw(self) -> NonNull<VmbusChannel> {
        let c = self.c;
        core::mem::forget(self);
        c
    }
}

impl Drop for CChan {
    fn drop(&mut self) {
        // SAFETY: by the invariant, `c` is live and freed only here.
        unsafe { ffi::kmcl_bench_chan_free(self.raw()) }
    }
}

/// The host's ends of a built channel's rings.
struct Host {
    reader: RingReader,
    writer: RingWriter,
    size: u32,
    buf: KVec<u8>,
}

impl Host {
    /// Packets of `size` bytes that fit in the ring at once.
    fn batch(&self, size: usize) -> u64 {
        let total = (packet::DESCRIPTOR_SIZE + packet::align8(size)) as u64 + 8;
        (u64::from(self.size) - 1) / total
    }

    /// Reads and drops what the guest sent; returns the packet count.
    fn drain(&mut self) -> Result<u64> {
        let mut got = 0;
        while self.reader.read(&mut self.buf).map_err(|_| EIO)?.is_some() {
            got += 1;
        }
        let _ = self.reader.commit();
        Ok(got)
    }

    /// Writes `count` copies of `pkt` for the guest.
    fn feed(&mut self, pkt: &[u8], count: u64) -> Result {
        for _ in 0..count {
            let _ = self.writer.write(&[pkt]).map_err(|_| EIO)?;
        }
        Ok(())
    }

    /// Reads the guest's request and writes its completion, echoing the
    /// payload with the request's transaction id.
    fn answer(&mut self) -> Result {
        let n = self
            .reader
            .read(&mut self.buf)
            .map_err(|_| EIO)?
            .ok_or(EIO)?;
        let _ = self.reader.commit();
        let head: &[u8; 16] = self
            .buf
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .ok_or(EIO)?;
        let d = packet::Descriptor::decode(head);
        let payload = self.buf.get(d.offset8 as usize * 8..n).ok_or(EIO)?;
        let c = packet::encode_simple(packet::TYPE_COMPLETION, 0, d.trans_id, payload.len())
            .ok_or(EINVAL)?;
        let _ = self
            .writer
            .write(&[&c.encode(), payload])
            .map_err(|_| EIO)?;
        Ok(())
    }
}

/// Way (d): the C driver on its channel.
struct CWay {
    host: Host,
    chan: CChan,
}

impl CWay {
    fn new() -> Result<Self> {
        let chan = CChan::new(true)?;
        // SAFETY: `host` is declared first, so it is dropped before `chan`.
        let host = unsafe { chan.host() }?;
        Ok(Self { host, chan })
    }

    fn received(&self) -> u64 {
        // SAFETY: the channel is live.
        unsafe { ffi::kmcl_bench_c_received(self.chan.raw()) }
    }

    fn interrupt(&self) {
        let _bh = BhOff::new();
        // SAFETY: the channel is live; its callback is the C driver's.
        unsafe { ffi::kmcl_bench_c_interrupt(self.chan.raw()) }
    }

    fn check(&self) -> Result {
        // SAFETY: the channel is live.
        match unsafe { ffi::kmcl_bench_c_errors(self.chan.raw()) } {
            0 => Ok(()),
            _ => Err(EIO),
        }
    }
}

fn cpath_send(w: &mut CWay, size: usize, n: u64) -> Result<Measure> {
    let mut data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let batch = w.host.batch(size);
    let sig0 = w.chan.sig_events();
    let t = Instant::<Monotonic>::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let r = {
            let _bh = BhOff::new();
            // SAFETY: the channel is live; Linux only reads `data`.
            unsafe {
                ffi::kmcl_bench_c_send(
                    w.chan.raw(),
                    data.as_mut_ptr().cast(),
                    size as u32,
                    k as u32,
                )
            }
        };
        kernel::error::to_result(r)?;
        if w.host.drain()? != k {
            return Err(EIO);
        }
        sent += k;
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals: w.chan.sig_events() - sig0,
        p50: 0,
        p99: 0,
    })
}

fn cpath_recv(w: &mut CWay, size: usize, n: u64) -> Result<Measure> {
    let pkt = raw_packet(size)?;
    let batch = w.host.batch(size);
    let before = w.received();
    let t = Instant::<Monotonic>::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        w.host.feed(&pkt, k)?;
        w.interrupt();
        sent += k;
        if w.received() != before + sent {
            return Err(EIO);
        }
    }
    let ns = ns_since(t);
    w.check()?;
    Ok(Measure {
        ns,
        packets: n,
        signals: 0,
        p50: 0,
        p99: 0,
    })
}

fn cpath_reqresp(w: &mut CWay, size: usize, n: u64) -> Result<Measure> {
    let mut data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let mut resp = KVec::from_elem(0u8, packet::align8(size), GFP_KERNEL)?;
    let mut lat = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    let sig0 = w.chan.sig_events();
    let t = Instant::<Monotonic>::now();
    for _ in 0..n {
        let t1 = Instant::<Monotonic>::now();
        // SAFETY: the channel is live; Linux only reads `data`; `resp` stays
        // alive and unused until the response is in (checked below).
        let r = unsafe {
            ffi::kmcl_bench_c_request(
                w.chan.raw(),
                data.as_mut_ptr().cast(),
                size as u32,
                resp.as_mut_ptr().cast(),
                resp.len() as u32,
            )
        };
        kernel::error::to_result(r)?;
        w.host.answer()?;
        w.interrupt();
        // SAFETY: the channel is live.
        if unsafe { ffi::kmcl_bench_c_request_done(w.chan.raw()) } < size as c_int {
            return Err(EIO);
        }
        let _ = lat.push_within_capacity(ns_since(t1));
    }
    let ns = ns_since(t);
    w.check()?;
    let (p50, p99) = percentiles(&mut lat);
    Ok(Measure {
        ns,
        packets: n,
        signals: w.chan.sig_events() - sig0,
        p50,
        p99,
    })
}

/// Where the completion routine of (e) copies a response, as the C driver
/// copies into its request.
///
/// # Invariants
///
/// `buf` is written only by [`on_response`], which runs in this module's
/// thread inside [`HvWay::interrupt`] (or at teardown, with nothing to
/// copy), for the one request outstanding at a time; it is read only after
/// `done` was seen set.
struct Response {
    buf: UnsafeCell<[u8; 4096]>,
    len: AtomicU64,
    done: AtomicBool,
}

// SAFETY: by the invariant, writes and reads of `buf` never overlap.
unsafe impl Sync for Response {}

static RESPONSE: Response = Response {
    buf: UnsafeCell::new([0; 4096]),
    len: AtomicU64::new(0),
    done: AtomicBool::new(false),
};

fn on_response(packet: Packet, status: Result, response: &[u8]) {
    drop(packet);
    if status.is_ok() {
        let n = response.len().min(4096);
        // SAFETY: by the invariant of `Response`, nothing else touches `buf`
        // now; `n` is at most its size and the length of `response`.
        unsafe {
            core::ptr::copy_nonoverlapping(response.as_ptr(), RESPONSE.buf.get().cast::<u8>(), n)
        };
        RESPONSE.len.store(n as u64, Ordering::Relaxed);
    }
    RESPONSE.done.store(true, Ordering::Release);
}

/// Way (e): a kmcl client on a built channel.
struct HvWay {
    host: Option<Host>,
    client: ChannelHandle,
    sink: Arc<Sink>,
    sig: NonNull<VmbusChannel>,
}

impl HvWay {
    fn new() -> Result<Self> {
        let sink = Arc::new(
            Sink {
                received: AtomicU64::new(0),
            },
            GFP_KERNEL,
        )?;
        let client = Channel::builder(Endpoint::Client, &THIS_MODULE)
            .process_packet_callbacks(sink.clone())
            .state_change_callbacks(sink.clone())
            .packet_pool_size(1024)
            .build()?;
        let chan = CChan::new(false)?;
        // SAFETY: the host ends are dropped in `drop` before the channel is
        // disabled, which frees the channel.
        let host = unsafe { chan.host() }?;
        let raw = chan.into_raw();
        // SAFETY: `raw` is an open channel with rings, packet buffer and
        // requestor and no callback; `kmcl_bench_chan_free` ends its life,
        // once, when the client is disabled; only kmcl uses its guest ends.
        unsafe { testing::open_on_hv(&client, raw, Some(ffi::kmcl_bench_chan_free)) }?;
        Ok(Self {
            host: Some(host),
            client,
            sink,
            sig: raw,
        })
    }

    fn host(&mut self) -> Result<&mut Host> {
        self.host.as_mut().ok_or(EINVAL)
    }

    fn interrupt(&self) {
        let _bh = BhOff::new();
        testing::host_interrupt(&self.client);
    }

    fn sig_events(&self) -> u64 {
        // SAFETY: the channel lives until `drop` disables the client.
        unsafe { ffi::kmcl_bench_c_sig_events(self.sig.as_ptr()) }
    }
}

impl Drop for HvWay {
    fn drop(&mut self) {
        self.host = None;
        let _ = self.client.disable();
    }
}

fn hv_send(w: &mut HvWay, size: usize, n: u64) -> Result<Measure> {
    let data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let batch = w.host()?.batch(size);
    let sig0 = w.sig_events();
    let t = Instant::<Monotonic>::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        {
            let _bh = BhOff::new();
            for _ in 0..k {
                let pkt = w.client.packet_allocate()?;
                pkt.send(&data, SendFlags::NONE).map_err(|e| e.error)?;
            }
        }
        if w.host()?.drain()? != k {
            return Err(EIO);
        }
        sent += k;
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals: w.sig_events() - sig0,
        p50: 0,
        p99: 0,
    })
}

fn hv_recv(w: &mut HvWay, size: usize, n: u64) -> Result<Measure> {
    let pkt = raw_packet(size)?;
    let batch = w.host()?.batch(size);
    let before = w.sink.received.load(Ordering::Relaxed);
    let t = Instant::<Monotonic>::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        w.host()?.feed(&pkt, k)?;
        w.interrupt();
        sent += k;
        if w.sink.received.load(Ordering::Relaxed) != before + sent {
            return Err(EIO);
        }
    }
    Ok(Measure {
        ns: ns_since(t),
        packets: n,
        signals: 0,
        p50: 0,
        p99: 0,
    })
}

fn hv_reqresp(w: &mut HvWay, size: usize, n: u64) -> Result<Measure> {
    let data = KVec::from_elem(0x5au8, size, GFP_KERNEL)?;
    let mut lat = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    let sig0 = w.sig_events();
    let t = Instant::<Monotonic>::now();
    for _ in 0..n {
        let t1 = Instant::<Monotonic>::now();
        RESPONSE.done.store(false, Ordering::Relaxed);
        let mut pkt = w.client.packet_allocate()?;
        pkt.set_completion_routine(on_response);
        pkt.send(&data, SendFlags::WAIT_FOR_COMPLETION)
            .map_err(|e| e.error)?;
        w.host()?.answer()?;
        w.interrupt();
        if !RESPONSE.done.load(Ordering::Acquire)
            || RESPONSE.len.load(Ordering::Relaxed) < size as u64
        {
            return Err(EIO);
        }
        let _ = lat.push_within_capacity(ns_since(t1));
    }
    let ns = ns_since(t);
    let (p50, p99) = percentiles(&mut lat);
    Ok(Measure {
        ns,
        packets: n,
        signals: w.sig_events() - sig0,
        p50,
        p99,
    })
}

struct KmclBench;

impl kernel::Module for KmclBench {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let n = u64::from(module_parameters::packets.value());
        let q = u64::from(module_parameters::requests.value());
        let runs = module_parameters::runs.value();
        let single = module_parameters::single.value();
        let threaded = if single {
            None
        } else {
            Some((Pair::new(false)?, Pair::new(true)?))
        };
        let mut cway = CWay::new()?;
        let mut hv = HvWay::new()?;
        for run in 0..runs {
            report("lock", "lockpair", 0, run, &lock_pair(n)?);
            for size in SIZES {
                report("raw", "stream", size, run, &raw_stream(size, n)?);
                report("cpath", "send", size, run, &cpath_send(&mut cway, size, n)?);
                report("hv", "send", size, run, &hv_send(&mut hv, size, n)?);
                report("cpath", "recv", size, run, &cpath_recv(&mut cway, size, n)?);
                report("hv", "recv", size, run, &hv_recv(&mut hv, size, n)?);
                report("raw", "reqresp", size, run, &raw_reqresp(size, q)?);
                report(
                    "cpath",
                    "reqresp",
                    size,
                    run,
                    &cpath_reqresp(&mut cway, size, q)?,
                );
                report("hv", "reqresp", size, run, &hv_reqresp(&mut hv, size, q)?);
                if let Some((api, passive)) = &threaded {
                    report("api", "stream", size, run, &api_stream(api, size, n)?);
                    report(
                        "passive",
                        "stream",
                        size,
                        run,
                        &api_stream(passive, size, n)?,
                    );
                    report("api", "reqresp", size, run, &api_reqresp(api, size, q)?);
                    report(
                        "passive",
                        "reqresp",
                        size,
                        run,
                        &api_reqresp(passive, size, q)?,
                    );
                }
            }
        }
        pr_info!("kmcl-bench: done\n");
        Ok(KmclBench)
    }
}
