// SPDX-License-Identifier: GPL-2.0

//! Sub-channels: offers of an open primary arrive and open as channels of
//! their own, carry traffic independently, close before their primary, and
//! survive a rescind of their own and a move of their target CPU. On
//! loopback, and over hv on `vmbus_channel`s built in memory, with the
//! sub-channel offered through the primary's sc-create callback as
//! hv_vmbus offers it.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicU32,
        Ordering, //
    },
};

use kernel::{
    new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        SpinLockIrq, //
    },
    time::Delta,
};

use super::{
    harness::{
        self,
        inband,
        mode,
        wait_for,
        Ev,
        Pair,
        Recorder, //
    },
    hv_binding::{
        self,
        TestDevice,
        INST_1,
        RING_PAGES,
        TYPE_A, //
    },
};
use crate::{
    channel::{
        callbacks::StateChange,
        subchannel::SubchannelOffer,
        Channel,
        ChannelBuilder,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::hv::HvBus,
    vmbus::ffi::VmbusChannel,
    wire::ring::{
        RingReader,
        RingWriter, //
    },
};

mod ffi {
    use kernel::prelude::*;

    use crate::vmbus::ffi::VmbusChannel;

    extern "C" {
        pub(super) fn kmcl_hv_test_subchannel_new(
            primary: *mut VmbusChannel,
            index: u16,
        ) -> *mut VmbusChannel;
        pub(super) fn kmcl_hv_test_offer_subchannel(sc: *mut VmbusChannel) -> c_int;
        pub(super) fn kmcl_hv_test_set_target_cpu(c: *mut VmbusChannel, cpu: u32);
        pub(super) fn kmcl_hv_test_interrupt_on(c: *mut VmbusChannel, cpu: u32);
        pub(super) fn kmcl_hv_test_interrupt(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_set_rescind(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_channel_free(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_open_params(
            c: *mut VmbusChannel,
            ring_datasize: *mut u32,
            max_pkt: *mut u32,
            rqstor: *mut u32,
            direct: *mut bool,
        );
        pub(super) fn kmcl_hv_test_has_callback(c: *mut VmbusChannel) -> bool;
    }
}

/// State events of several channels in the order they ran: `(tag, event)`,
/// tag 0 for the primary and the sub-channel index for a sub-channel.
#[pin_data]
struct Log {
    #[pin]
    events: SpinLockIrq<KVec<(u16, Ev)>>,
}

impl Log {
    fn new() -> Result<Arc<Log>> {
        Arc::pin_init(
            pin_init!(Log {
                events <- new_spinlock_irq!(KVec::new(), "kmcl::tests::subchannel::Log"),
            }),
            GFP_KERNEL,
        )
    }

    fn push(&self, tag: u16, ev: Ev) {
        let mut g = self.events.lock();
        if g.len() < g.capacity() {
            let _ = g.push_within_capacity((tag, ev));
        }
    }

    fn reserve(&self) -> Result {
        let mut v = KVec::with_capacity(256, GFP_KERNEL)?;
        let mut g = self.events.lock();
        core::mem::swap(&mut *g, &mut v);
        Ok(())
    }

    /// Where `(tag, ev)` first ran, if it did.
    fn position(&self, tag: u16, ev: Ev) -> Option<usize> {
        self.events.lock().iter().position(|e| *e == (tag, ev))
    }

    fn count(&self, tag: u16, ev: Ev) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| **e == (tag, ev))
            .count()
    }
}

/// State callbacks that record into a recorder and the shared log.
struct Tagged {
    tag: u16,
    log: Arc<Log>,
    rec: Arc<Recorder>,
}

impl StateChange for Tagged {
    fn opened(&self, ch: &Channel) -> Result {
        self.log.push(self.tag, Ev::Opened);
        self.rec.opened(ch)
    }

    fn started(&self, ch: &Channel) {
        self.log.push(self.tag, Ev::Started);
        self.rec.started(ch)
    }

    fn post_started(&self, ch: &Channel) {
        self.rec.post_started(ch)
    }

    fn suspend(&self, ch: &Channel) {
        self.log.push(self.tag, Ev::Suspend);
        self.rec.suspend(ch)
    }

    fn closed(&self, ch: &Channel) {
        self.log.push(self.tag, Ev::Closed);
        self.rec.closed(ch)
    }
}

/// A sub-channel the driver took.
struct Taken {
    handle: ChannelHandle,
    rec: Arc<Recorder>,
}

/// A client primary's driver: takes every sub-channel offered, each with
/// its own recorder, ring size and quota, and enables it.
#[pin_data]
struct Taker {
    log: Arc<Log>,
    #[pin]
    subs: kernel::sync::Mutex<KVec<Taken>>,
    /// Ring pages of sub-channel `i`: `ring_base + i`.
    ring_base: u32,
    /// Keep the handle but do not enable it.
    hold_disabled: AtomicU32,
    offers: AtomicU32,
}

impl Taker {
    fn new(log: &Arc<Log>, ring_base: u32) -> Result<Arc<Taker>> {
        Arc::pin_init(
            pin_init!(Taker {
                log: log.clone(),
                subs <- kernel::new_mutex!(KVec::new(), "kmcl::tests::subchannel::Taker"),
                ring_base,
                hold_disabled: AtomicU32::new(0),
                offers: AtomicU32::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// The channel and recorder of sub-channel `index`.
    fn sub(&self, index: u16) -> Option<(Arc<Channel>, Arc<Recorder>)> {
        self.subs
            .lock()
            .iter()
            .find(|t| t.handle.subchannel_index() == index)
            .map(|t| (t.handle.arc(), t.rec.clone()))
    }

    fn count(&self) -> usize {
        self.subs.lock().len()
    }

    fn take(&self, primary: &Channel, sub: ChannelBuilder) -> Result {
        let index = sub.subchannel_index();
        let rec = Recorder::new()?;
        let mut sub = sub
            .process_packet_callbacks(rec.clone())
            .state_change_callbacks(Arc::new(
                Tagged {
                    tag: index,
                    log: self.log.clone(),
                    rec: rec.clone(),
                },
                GFP_KERNEL,
            )?)
            .ring_buffer_page_count(self.ring_base + u32::from(index))
            .build()?;
        sub.set_transaction_quota(u32::from(index) + 1)?;
        assert_eq!(sub.interface_ids(), primary.interface_ids());
        assert_eq!(sub.endpoint(), Endpoint::Client);
        assert_eq!(sub.state(), State::Disabled);
        if self.hold_disabled.load(Ordering::Relaxed) == 0 {
            sub.enable()?;
        }
        self.subs
            .lock()
            .push(Taken { handle: sub, rec }, GFP_KERNEL)?;
        Ok(())
    }
}

impl SubchannelOffer for Taker {
    fn subchannel_offered(&self, primary: &Channel, subchannel: ChannelBuilder) {
        self.offers.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.take(primary, subchannel) {
            pr_err!("subchannel test: taking an offer failed: {:?}\n", e);
        }
    }
}

/// A loopback pair whose client takes sub-channels, with the primary's
/// state events in the log under tag 0.
fn pair(log: &Arc<Log>, taker: &Arc<Taker>) -> Result<Pair> {
    let crec = Recorder::new()?;
    let tagged: Arc<dyn StateChange> = Arc::new(
        Tagged {
            tag: 0,
            log: log.clone(),
            rec: crec.clone(),
        },
        GFP_KERNEL,
    )?;
    let mut p = Pair::with(Recorder::new()?, crec, |e, b| match e {
        Endpoint::Client => b
            .subchannel_callback(taker.clone())
            .state_change_callbacks(tagged.clone()),
        Endpoint::Server => b,
    })?;
    p.up()?;
    Ok(p)
}

/// A server sub-channel with its recorder, not yet offered.
fn server_sub(p: &Pair) -> Result<(ChannelHandle, Arc<Recorder>)> {
    let rec = Recorder::new()?;
    let h = harness::channel(&p.bus, Endpoint::Server, &rec)?;
    Ok((h, rec))
}

/// Offers `n` server sub-channels of `p`'s server.
fn offer_n(p: &Pair, n: u16) -> Result<KVec<(ChannelHandle, Arc<Recorder>)>> {
    let mut v = KVec::new();
    for i in 1..=n {
        let (mut h, rec) = server_sub(p)?;
        assert_eq!(p.server.offer_subchannel(&mut h)?, i);
        v.push((h, rec), GFP_KERNEL)?;
    }
    Ok(v)
}

/// Sends `data` one way from `chan`, retrying while the ring and queue are
/// full.
fn send_retry(chan: &Channel, data: &[u8]) -> Result {
    for _ in 0..2000 {
        match harness::send(chan, data, false) {
            Ok(()) => return Ok(()),
            Err(e) if e == EBUSY || e == ENOMEM || e == EAGAIN => harness::settle(1),
            Err(e) => return Err(e),
        }
    }
    Err(ETIMEDOUT)
}

/// The head of packet `n` of sub-channel `index`.
fn head(index: u16, n: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(n)
}

/// Whether `rec` received exactly heads `0..n` of `index`, in order.
fn in_order(rec: &Recorder, index: u16, n: u32) -> bool {
    let h = rec.heads();
    h.len() == n as usize
        && h.iter()
            .enumerate()
            .all(|(i, v)| *v == head(index, i as u32))
}

// ---- hv: sub-channels built in memory. ----

/// A sub-channel offer built in memory, as hv_vmbus builds one.
///
/// # Invariants
///
/// `chan` comes from `kmcl_hv_test_subchannel_new` and is freed only in
/// `drop`, after kmcl closed it; its primary outlives it.
struct TestSub {
    chan: NonNull<VmbusChannel>,
}

impl TestSub {
    fn new(primary: &TestDevice, index: u16) -> Result<Self> {
        // SAFETY: the primary is live; a plain constructor, null on failure.
        let c = unsafe { ffi::kmcl_hv_test_subchannel_new(primary.raw(), index) };
        Ok(Self {
            chan: NonNull::new(c).ok_or(ENOMEM)?,
        })
    }

    fn raw(&self) -> *mut VmbusChannel {
        self.chan.as_ptr()
    }

    /// hv_vmbus offers it: the primary's sc-create callback runs, if set.
    fn offer(&self) -> Result {
        // SAFETY: the channel and its primary are live.
        kernel::error::to_result(unsafe { ffi::kmcl_hv_test_offer_subchannel(self.raw()) })
    }

    fn open_params(&self) -> (u32, u32, u32, bool) {
        let (mut a, mut b, mut c, mut d) = (0, 0, 0, false);
        // SAFETY: the channel is live; the out-pointers are valid.
        unsafe { ffi::kmcl_hv_test_open_params(self.raw(), &mut a, &mut b, &mut c, &mut d) };
        (a, b, c, d)
    }

    fn is_open(&self) -> bool {
        self.open_params().0 != 0
    }

    fn has_callback(&self) -> bool {
        // SAFETY: the channel is live.
        unsafe { ffi::kmcl_hv_test_has_callback(self.raw()) }
    }

    fn rescind(&self) {
        // SAFETY: the channel is live.
        unsafe { ffi::kmcl_hv_test_set_rescind(self.raw()) }
    }

    fn set_target_cpu(&self, cpu: u32) {
        // SAFETY: the channel is live.
        unsafe { ffi::kmcl_hv_test_set_target_cpu(self.raw(), cpu) }
    }

    /// The host's ends of the open sub-channel's rings: what it writes to
    /// the guest and what it reads from it.
    fn host(&self) -> Result<(RingWriter, RingReader)> {
        // SAFETY: the channel is open; the rings live until it closes, and
        // every test drops the host's ends before.
        let ring = |inbound| unsafe { super::hv_interop::ring_of(self.raw(), inbound) };
        Ok((
            RingWriter::new(ring(true)?).map_err(|_| EIO)?,
            RingReader::new(ring(false)?).map_err(|_| EIO)?,
        ))
    }

    /// Writes an in-band packet for the guest and interrupts it on `cpu`
    /// (or the current CPU, for `None`).
    fn host_send(&self, w: &mut RingWriter, bytes: &[u8], cpu: Option<u32>) -> Result {
        let _ = w.write(&[bytes]).map_err(|_| EIO)?;
        // SAFETY: the channel is open.
        unsafe {
            match cpu {
                Some(cpu) => ffi::kmcl_hv_test_interrupt_on(self.raw(), cpu),
                None => ffi::kmcl_hv_test_interrupt(self.raw()),
            }
        }
        Ok(())
    }
}

impl Drop for TestSub {
    fn drop(&mut self) {
        // SAFETY: by the invariant; kmcl closed it (the test's primary and
        // its sub-channels are disabled or removed first).
        unsafe { ffi::kmcl_hv_test_channel_free(self.raw()) };
    }
}

/// An hv client primary on a device built in memory, taking sub-channels.
fn hv_primary(
    bus: &Arc<HvBus>,
    log: &Arc<Log>,
    taker: &Arc<Taker>,
) -> Result<(
    ChannelHandle,
    Arc<Recorder>,
    TestDevice,
    Arc<crate::transport::hv::bus::HvDevice>,
)> {
    let (dev, d) = hv_binding::offer(bus, TYPE_A, INST_1, 0)?;
    let (b, rec) = hv_binding::client_builder(bus, TYPE_A, None)?;
    let mut h = b
        .subchannel_callback(taker.clone())
        .state_change_callbacks(Arc::new(
            Tagged {
                tag: 0,
                log: log.clone(),
                rec: rec.clone(),
            },
            GFP_KERNEL,
        )?)
        .build()?;
    h.enable()?;
    h.wait_for_state(State::Started, Delta::from_millis(2000))?;
    Ok((h, rec, dev, d))
}

/// Whether every sub-channel in `tags` ran Closed before the primary's
/// Suspend.
fn subs_closed_first(log: &Log, tags: &[u16]) -> bool {
    let Some(primary) = log.position(0, Ev::Suspend) else {
        return false;
    };
    tags.iter().all(|t| {
        log.count(*t, Ev::Closed) == 1 && log.position(*t, Ev::Closed).is_some_and(|c| c < primary)
    }) && log.position(0, Ev::Closed).is_some_and(|c| c > primary)
}

#[kunit_tests(kmcl_subchannel)]
mod tests {
    use super::*;

    #[test]
    fn offers_arrive_and_open_with_their_own_settings() -> Result {
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 4)?;
        let p = pair(&log, &taker)?;
        let subs = offer_n(&p, 3)?;
        assert_eq!(taker.count(), 3);
        for i in 1..=3u16 {
            let (sub, rec) = taker.sub(i).ok_or(ENOENT)?;
            // Open before the server's offer returned.
            assert_eq!(sub.state(), State::Started);
            assert_eq!(rec.count(Ev::Opened), 1);
            assert_eq!(sub.subchannel_index(), i);
            // Its own ring size.
            let conn = sub.loopback_connection().ok_or(ENODEV)?;
            let ring = conn.ring_memory(Endpoint::Client).ok_or(EINVAL)?;
            assert_eq!(ring.size(), (4 + u32::from(i) - 1) * 4096);
            // Not the primary's connection.
            let primary = p.client.loopback_connection().ok_or(ENODEV)?;
            assert!(!Arc::ptr_eq(&conn, &primary));
        }
        for (h, rec) in subs.iter() {
            assert!(wait_for(2000, || h.state() == State::Started
                && rec.count(Ev::PostStarted) == 1));
        }
        // The primary is still its own self.
        assert_eq!(p.client.subchannel_index(), 0);
        assert_eq!(p.client.state(), State::Started);
        drop(p);
        Ok(())
    }

    #[test]
    fn traffic_on_each_subchannel_is_independent_and_in_order() -> Result {
        const N: u32 = 150;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 8)?;
        let p = pair(&log, &taker)?;
        let subs = offer_n(&p, 4)?;
        // Sub-channel 1 holds what it gets: with its quota of 2 it stalls.
        let (_, held) = taker.sub(1).ok_or(ENOENT)?;
        held.mode.store(mode::HOLD, Ordering::Relaxed);
        for n in 0..N {
            for (i, (h, _)) in subs.iter().enumerate() {
                let index = i as u16 + 1;
                send_retry(h, &head(index, n).to_le_bytes())?;
            }
        }
        // The others get everything, each its own packets, in order.
        for index in 2..=4u16 {
            let (_, rec) = taker.sub(index).ok_or(ENOENT)?;
            assert!(wait_for(4000, || rec.received.load(Ordering::Relaxed) == N));
            assert!(in_order(&rec, index, N));
        }
        // The stalled one was given its quota and no more.
        assert_eq!(held.received.load(Ordering::Relaxed), 2);
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        // Released, it gets the rest, in order.
        held.mode.store(mode::EMPTY, Ordering::Relaxed);
        held.release_held();
        assert!(wait_for(4000, || {
            held.release_held();
            held.received.load(Ordering::Relaxed) == N
        }));
        assert!(in_order(&held, 1, N));
        drop(p);
        Ok(())
    }

    #[test]
    fn primary_disable_closes_subchannels_first() -> Result {
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 4)?;
        let p = pair(&log, &taker)?;
        let subs = offer_n(&p, 2)?;
        p.client.disable()?;
        assert!(subs_closed_first(&log, &[1, 2]));
        for i in 1..=2u16 {
            let (sub, rec) = taker.sub(i).ok_or(ENOENT)?;
            assert_eq!(sub.state(), State::Disabled);
            assert_eq!(rec.count(Ev::Suspend), 1);
            // Its offer is gone with the primary's connection.
            assert!(matches!(sub.enable(), Err(e) if e == ENODEV));
        }
        // Nothing of theirs runs any more, whatever the server does.
        let (_, rec1) = taker.sub(1).ok_or(ENOENT)?;
        let _ = harness::send(&subs[0].0, b"late", false);
        harness::settle(20);
        assert_eq!(rec1.received.load(Ordering::Relaxed), 0);
        assert_eq!(log.count(1, Ev::Closed), 1);
        // The server's sub-channels saw their clients go, and its primary's
        // teardown disabled them.
        for (h, rec) in subs.iter() {
            assert!(wait_for(2000, || rec.count(Ev::Closed) == 1
                && h.state() == State::Disabled));
        }
        drop(p);
        Ok(())
    }

    #[test]
    fn subchannel_rescind_before_the_primary_is_handled() -> Result {
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 4)?;
        let p = pair(&log, &taker)?;
        let subs = offer_n(&p, 2)?;
        // The server withdraws sub-channel 1 first.
        subs[0].0.disable()?;
        let (sub1, rec1) = taker.sub(1).ok_or(ENOENT)?;
        assert!(wait_for(2000, || sub1.state() == State::Disabled));
        assert_eq!(rec1.count(Ev::Closed), 1);
        // The other and the primary carry on.
        let (sub2, rec2) = taker.sub(2).ok_or(ENOENT)?;
        assert_eq!(sub2.state(), State::Started);
        send_retry(&subs[1].0, &head(2, 0).to_le_bytes())?;
        assert!(wait_for(2000, || rec2.received.load(Ordering::Relaxed) == 1));
        assert_eq!(p.client.state(), State::Started);
        // Sub-channel 2 holds a packet: its teardown waits for the driver.
        rec2.mode.store(mode::HOLD, Ordering::Relaxed);
        send_retry(&subs[1].0, &head(2, 1).to_le_bytes())?;
        assert!(wait_for(2000, || rec2.held() == 1));
        // Then the primary goes: the remaining sub-channel closes first,
        // and the primary's teardown waits for it.
        p.server.disable()?;
        harness::settle(50);
        assert_eq!(log.position(0, Ev::Suspend), None);
        rec2.mode.store(mode::EMPTY, Ordering::Relaxed);
        rec2.release_held();
        assert!(wait_for(2000, || p.client.state() == State::Disabled));
        assert!(subs_closed_first(&log, &[2]));
        assert_eq!(log.count(1, Ev::Closed), 1);
        assert_eq!(sub2.state(), State::Disabled);
        drop(p);
        Ok(())
    }

    #[test]
    fn subchannel_of_a_channel_that_is_not_open_is_refused() -> Result {
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 4)?;
        let mut p = Pair::new(|e, b| match e {
            Endpoint::Client => b.subchannel_callback(taker.clone()),
            Endpoint::Server => b,
        })?;
        // A server takes no sub-channel callback.
        let r = harness::builder(&p.bus, Endpoint::Server, &p.srec)
            .subchannel_callback(taker.clone())
            .build();
        assert!(matches!(r, Err(e) if e == EINVAL));
        // Not open yet: refused, the sub-channel left Disabled.
        let (mut h, _rec) = server_sub(&p)?;
        assert!(matches!(p.server.offer_subchannel(&mut h), Err(e) if e == EINVAL));
        assert_eq!(h.state(), State::Disabled);
        p.up()?;
        // A channel is no sub-channel of itself, nor a client one.
        let (mut c, _crec) = {
            let rec = Recorder::new()?;
            (harness::channel(&p.bus, Endpoint::Client, &rec)?, rec)
        };
        assert!(matches!(p.server.offer_subchannel(&mut c), Err(e) if e == EINVAL));
        // A handle kept past the callback and enabled later has no offer.
        taker.hold_disabled.store(1, Ordering::Relaxed);
        assert_eq!(p.server.offer_subchannel(&mut h)?, 1);
        let (late, _) = taker.sub(1).ok_or(ENOENT)?;
        assert!(matches!(late.enable(), Err(e) if e == ENODEV));
        assert_eq!(late.state(), State::Disabled);
        // The server's sub-channel stays offered, unopened.
        assert_eq!(h.state(), State::Enabled);
        taker.hold_disabled.store(0, Ordering::Relaxed);
        // The client closes: the server primary is no longer open.
        p.client.disable()?;
        assert!(wait_for(2000, || p.server.state() == State::Enabled));
        let (mut h2, _rec2) = server_sub(&p)?;
        assert!(matches!(p.server.offer_subchannel(&mut h2), Err(e) if e == EINVAL));
        assert_eq!(h2.state(), State::Disabled);
        assert_eq!(taker.offers.load(Ordering::Relaxed), 1);
        drop(p);
        Ok(())
    }

    #[test]
    fn target_cpu_change_during_traffic_loses_nothing() -> Result {
        const N: u32 = 200;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, 8)?;
        let p = pair(&log, &taker)?;
        let subs = offer_n(&p, 2)?;
        let cpus = kernel::cpu::nr_cpu_ids();
        let (sub1, _) = taker.sub(1).ok_or(ENOENT)?;
        assert_eq!(sub1.target_cpu(), None);
        assert!(matches!(sub1.set_target_cpu(cpus), Err(e) if e == EINVAL));
        for n in 0..N {
            for (i, (h, _)) in subs.iter().enumerate() {
                let index = i as u16 + 1;
                let (sub, _) = taker.sub(index).ok_or(ENOENT)?;
                sub.set_target_cpu((n + u32::from(index)) % cpus)?;
                send_retry(h, &head(index, n).to_le_bytes())?;
            }
        }
        for index in 1..=2u16 {
            let (sub, rec) = taker.sub(index).ok_or(ENOENT)?;
            assert!(wait_for(4000, || rec.received.load(Ordering::Relaxed) == N));
            assert!(in_order(&rec, index, N));
            assert_eq!(sub.target_cpu(), Some((N - 1 + u32::from(index)) % cpus));
        }
        drop(p);
        Ok(())
    }

    #[test]
    fn hv_offer_opens_carries_packets_and_closes() -> Result {
        let bus = hv_binding::bus()?;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, RING_PAGES)?;
        let (h, _rec, dev, d) = hv_primary(&bus, &log, &taker)?;
        let sc1 = TestSub::new(&dev, 1)?;
        let sc2 = TestSub::new(&dev, 2)?;
        sc1.offer()?;
        sc2.offer()?;
        assert_eq!(taker.count(), 2);
        for (i, sc) in [(1u16, &sc1), (2, &sc2)] {
            let (sub, _) = taker.sub(i).ok_or(ENOENT)?;
            assert_eq!(sub.state(), State::Started);
            // Opened with vmbus_open() on its own vmbus_channel, with its
            // own ring size (rounded up to a power of two over hv) and
            // kmcl's settings.
            let (datasize, max_pkt, rqstor, direct) = sc.open_params();
            let pages = (RING_PAGES + u32::from(i)).next_power_of_two();
            assert_eq!(datasize, (pages - 1) * 4096);
            assert!(max_pkt > 4096 && rqstor > 0 && direct);
            assert!(sc.has_callback());
        }
        // Host to guest on each, guest to host on each.
        for (i, sc) in [(1u16, &sc1), (2, &sc2)] {
            let (sub, rec) = taker.sub(i).ok_or(ENOENT)?;
            let (mut w, mut r) = sc.host()?;
            for n in 0..3 {
                sc.host_send(&mut w, &inband(0, 0, &head(i, n).to_le_bytes())?, None)?;
            }
            assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 3));
            assert!(in_order(&rec, i, 3));
            assert!(rec.in_softirq.load(Ordering::Relaxed) == 3);
            harness::send(&sub, b"from the sub", false)?;
            let mut buf = [0u8; 256];
            let mut got = None;
            assert!(wait_for(2000, || {
                got = r.read(&mut buf).ok().flatten();
                got.is_some()
            }));
            let n = got.ok_or(EIO)?;
            let pk = crate::wire::packet::parse(&buf[..n], &hv_binding::LIMITS).map_err(|_| EIO)?;
            assert!(harness::padded_eq(pk.payload, b"from the sub"));
            let _ = r.commit();
        }
        // Nothing of it reached the primary.
        assert_eq!(h.counters().packets_received, 0);
        // A sub-channel closes on its own.
        let (sub1, _) = taker.sub(1).ok_or(ENOENT)?;
        sub1.disable()?;
        assert!(!sc1.is_open());
        assert!(!sc1.has_callback());
        assert!(sc2.is_open());
        h.disable()?;
        assert!(!sc2.is_open());
        bus.remove(&d);
        drop(h);
        drop(taker);
        drop(sc1);
        drop(sc2);
        drop(dev);
        Ok(())
    }

    #[test]
    fn hv_primary_removal_closes_subchannels_first() -> Result {
        let bus = hv_binding::bus()?;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, RING_PAGES)?;
        let (h, _rec, dev, d) = hv_primary(&bus, &log, &taker)?;
        let sc1 = TestSub::new(&dev, 1)?;
        let sc2 = TestSub::new(&dev, 2)?;
        sc1.offer()?;
        sc2.offer()?;
        dev.rescind();
        bus.remove(&d);
        assert_eq!(h.state(), State::Disabled);
        assert!(subs_closed_first(&log, &[1, 2]));
        assert!(!sc1.is_open() && !sc2.is_open());
        for i in 1..=2u16 {
            let (sub, _) = taker.sub(i).ok_or(ENOENT)?;
            assert_eq!(sub.state(), State::Disabled);
        }
        drop(h);
        drop(taker);
        drop(sc1);
        drop(sc2);
        drop(dev);
        Ok(())
    }

    #[test]
    fn hv_subchannel_rescind_before_the_primary_is_handled() -> Result {
        let bus = hv_binding::bus()?;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, RING_PAGES)?;
        let (h, _rec, dev, d) = hv_primary(&bus, &log, &taker)?;
        let sc1 = TestSub::new(&dev, 1)?;
        let sc2 = TestSub::new(&dev, 2)?;
        sc1.offer()?;
        sc2.offer()?;
        // hv_vmbus rescinds the sub-channels first: Linux refuses sends.
        sc1.rescind();
        let (sub1, _) = taker.sub(1).ok_or(ENOENT)?;
        assert!(matches!(harness::send(&sub1, b"late", false), Err(e) if e == ENODEV));
        // The other still carries packets.
        let (sub2, rec2) = taker.sub(2).ok_or(ENOENT)?;
        {
            let (mut w, _r) = sc2.host()?;
            sc2.host_send(&mut w, &inband(0, 0, &head(2, 0).to_le_bytes())?, None)?;
            assert!(wait_for(2000, || rec2.received.load(Ordering::Relaxed) == 1));
        }
        sc2.rescind();
        dev.rescind();
        bus.remove(&d);
        assert!(subs_closed_first(&log, &[1, 2]));
        assert!(!sc1.is_open() && !sc2.is_open());
        assert_eq!(sub1.state(), State::Disabled);
        assert_eq!(sub2.state(), State::Disabled);
        assert_eq!(h.state(), State::Disabled);
        drop(h);
        drop(taker);
        drop(sc1);
        drop(sc2);
        drop(dev);
        Ok(())
    }

    #[test]
    fn hv_offer_of_a_primary_that_is_not_open_is_refused() -> Result {
        let bus = hv_binding::bus()?;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, RING_PAGES)?;
        let (h, _rec, dev, d) = hv_primary(&bus, &log, &taker)?;
        h.disable()?;
        // The sc-create callback went with the close.
        let sc = TestSub::new(&dev, 1)?;
        assert!(matches!(sc.offer(), Err(e) if e == ENOENT));
        assert_eq!(taker.offers.load(Ordering::Relaxed), 0);
        assert!(!sc.is_open());
        // A primary without a sub-channel callback leaves offers unopened.
        let (mut h2, _rec2) = hv_binding::client(&bus, TYPE_A, None)?;
        h2.enable()?;
        h2.wait_for_state(State::Started, Delta::from_millis(2000))?;
        sc.offer()?;
        assert!(!sc.is_open());
        // A handle kept past the callback has no offer to open.
        h2.disable()?;
        taker.hold_disabled.store(1, Ordering::Relaxed);
        let (b3, _rec3) = hv_binding::client_builder(&bus, TYPE_A, None)?;
        let mut h3 = b3.subchannel_callback(taker.clone()).build()?;
        h3.enable()?;
        h3.wait_for_state(State::Started, Delta::from_millis(2000))?;
        sc.offer()?;
        let (late, _) = taker.sub(1).ok_or(ENOENT)?;
        assert!(matches!(late.enable(), Err(e) if e == ENODEV));
        assert!(!sc.is_open());
        h3.disable()?;
        bus.remove(&d);
        drop(h);
        drop(h2);
        drop(h3);
        drop(taker);
        drop(sc);
        drop(dev);
        Ok(())
    }

    #[test]
    fn hv_target_cpu_moves_during_traffic_without_loss() -> Result {
        const N: u32 = 120;
        let bus = hv_binding::bus()?;
        let log = Log::new()?;
        log.reserve()?;
        let taker = Taker::new(&log, RING_PAGES)?;
        let (h, _rec, dev, d) = hv_primary(&bus, &log, &taker)?;
        let sc = TestSub::new(&dev, 1)?;
        sc.offer()?;
        let (sub, rec) = taker.sub(1).ok_or(ENOENT)?;
        // hv_vmbus's choice is reported; a driver cannot move it.
        assert_eq!(sub.target_cpu(), Some(0));
        assert!(matches!(sub.set_target_cpu(0), Err(e) if e == EOPNOTSUPP));
        let cpus = kernel::cpu::nr_cpu_ids();
        {
            let (mut w, _r) = sc.host()?;
            for n in 0..N {
                // As the sysfs "cpu" attribute moves it: the interrupt now
                // arrives on the new CPU.
                let cpu = n % cpus;
                sc.set_target_cpu(cpu);
                assert_eq!(sub.target_cpu(), Some(cpu));
                sc.host_send(&mut w, &inband(0, 0, &head(1, n).to_le_bytes())?, Some(cpu))?;
                if n % 32 == 31 {
                    assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == n + 1));
                }
            }
            assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == N));
        }
        assert!(in_order(&rec, 1, N));
        assert_eq!(rec.late_calls.load(Ordering::Relaxed), 0);
        h.disable()?;
        assert!(!sc.is_open());
        bus.remove(&d);
        drop(h);
        drop(taker);
        drop(sc);
        drop(dev);
        Ok(())
    }
}
