// SPDX-License-Identifier: GPL-2.0

//! The promises a driver relies on beyond the paths of the other suites: no
//! driver code after Suspend or Disable, completion routines in one context
//! and never recursing, waits that give up on a signal, and the zero-timeout
//! synchronous request.

use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    AtomicUsize,
    Ordering, //
};

use kernel::{
    prelude::*,
    time::Delta, //
};

use super::harness::{
    self,
    mode,
    settle,
    wait_for,
    Done,
    Pair, //
};
use crate::{
    channel::{
        outgoing::{
            Packet,
            SendFlags, //
        },
        Channel,
        State, //
    },
    sys,
};

mod ffi {
    extern "C" {
        pub(super) fn kmcl_test_signal_self();
        pub(super) fn kmcl_test_flush_signals();
    }
}

/// A signal pending for the test's thread while it is alive.
struct PendingSignal;

impl PendingSignal {
    fn raise() -> PendingSignal {
        // SAFETY: acts on the calling kernel thread only.
        unsafe { ffi::kmcl_test_signal_self() };
        PendingSignal
    }
}

impl Drop for PendingSignal {
    fn drop(&mut self) {
        // SAFETY: acts on the calling kernel thread only.
        unsafe { ffi::kmcl_test_flush_signals() };
    }
}

/// What the slow routine of the teardown case saw.
#[derive(Default)]
struct Slow {
    started: AtomicBool,
    finished: AtomicBool,
}

/// Spins for 100 ms in the routine's atomic context, then finishes.
fn slow_routine(packet: Packet, _status: Result, _response: &[u8]) {
    // SAFETY: the test keeps the `Slow` alive until the channel is disabled,
    // after which no routine runs.
    let s = unsafe { &*(packet.pointer() as *const Slow) };
    s.started.store(true, Ordering::Relaxed);
    let end = sys::jiffies() + kernel::time::msecs_to_jiffies(100) as u64;
    while sys::jiffies() < end {
        core::hint::spin_loop();
    }
    s.finished.store(true, Ordering::Relaxed);
}

/// What the resending routine measures.
struct Resend {
    left: AtomicU32,
    sent: AtomicU32,
    failed: AtomicU32,
    /// Stack address of the first routine call, and the deepest seen.
    base: AtomicUsize,
    deepest: AtomicUsize,
    bh_off: AtomicU32,
}

/// How deep a routine may go below the first one before the case calls it
/// recursion (and stops, so that a recursing kmcl fails the case instead of
/// overflowing the stack).
const RECURSION_LIMIT: usize = 2048;

fn resend_routine(packet: Packet, status: Result, _response: &[u8]) {
    // SAFETY: the test keeps the `Resend` alive until the channel is
    // disabled, after which no routine runs.
    let r = unsafe { &*(packet.pointer() as *const Resend) };
    let marker = 0u8;
    let here = core::ptr::from_ref(&marker) as usize;
    let _ = r
        .base
        .compare_exchange(0, here, Ordering::Relaxed, Ordering::Relaxed);
    let depth = r.base.load(Ordering::Relaxed).saturating_sub(here);
    r.deepest.fetch_max(depth, Ordering::Relaxed);
    if sys::bh_disabled() {
        r.bh_off.fetch_add(1, Ordering::Relaxed);
    }
    if status.is_err() || depth > RECURSION_LIMIT {
        r.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if r.left.fetch_sub(1, Ordering::Relaxed) == 0 {
        r.left.store(0, Ordering::Relaxed);
        return;
    }
    r.sent.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = packet.send(b"again", SendFlags::NONE) {
        r.failed.fetch_add(1, Ordering::Relaxed);
        drop(e.packet);
    }
}

/// A connected pair whose client has 2-page rings.
fn small_ring_pair() -> Result<Pair> {
    let mut p = Pair::new(|e, b| {
        if e == crate::channel::Endpoint::Client {
            b.ring_buffer_page_count(2)
        } else {
            b
        }
    })?;
    p.up()?;
    Ok(p)
}

/// Fills `chan`'s outgoing ring with one-way sends until one is queued.
fn fill_until_queued(chan: &Channel) -> Result<u32> {
    let before = chan.counters().ring_full;
    let payload = [0x5au8; 512];
    for n in 1..=64u32 {
        harness::send(chan, &payload, false)?;
        if chan.counters().ring_full != before {
            return Ok(n);
        }
    }
    Err(EAGAIN)
}

#[kunit_tests(kmcl_contract)]
mod tests {
    use super::*;

    #[test]
    fn pause_waits_for_a_deferred_redelivery() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::DEFER_SLOW, Ordering::Relaxed);
        p.srec.defer_sleep_ms.store(30, Ordering::Relaxed);
        harness::send(&p.client, b"deferred", false)?;
        assert!(wait_for(2000, || p
            .srec
            .redelivering
            .load(Ordering::Relaxed)
            == 1));
        // Suspend must wait until the redelivered ProcessPacket returned.
        p.server.pause()?;
        assert_eq!(p.srec.redelivering.load(Ordering::Relaxed), 0);
        assert_eq!(p.srec.late_calls.load(Ordering::Relaxed), 0);
        p.server.start()?;
        Ok(())
    }

    #[test]
    fn disable_waits_for_a_deferred_redelivery() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::DEFER_SLOW, Ordering::Relaxed);
        p.srec.defer_sleep_ms.store(30, Ordering::Relaxed);
        for i in 0..4u8 {
            harness::send(&p.client, &[i; 8], false)?;
        }
        assert!(wait_for(2000, || p
            .srec
            .redelivering
            .load(Ordering::Relaxed)
            == 1));
        p.server.disable()?;
        // Nothing of the driver runs once Disable has returned.
        assert_eq!(p.srec.redelivering.load(Ordering::Relaxed), 0);
        let calls = p.srec.received.load(Ordering::Relaxed);
        settle(100);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), calls);
        assert_eq!(p.srec.late_calls.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn disable_waits_for_a_queued_oneway_routine() -> Result {
        let slow = KBox::new(Slow::default(), GFP_KERNEL)?;
        let p = small_ring_pair()?;
        p.server.pause()?;
        fill_until_queued(&p.client)?;
        // One more, queued behind the full ring, with a slow routine.
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_pointer(core::ptr::from_ref(&*slow) as usize);
        pkt.set_completion_routine(slow_routine);
        pkt.send(b"slow", SendFlags::NONE).map_err(|e| e.error)?;
        assert!(!slow.started.load(Ordering::Relaxed));
        p.server.start()?;
        assert!(wait_for(2000, || slow.started.load(Ordering::Relaxed)));
        p.client.disable()?;
        assert!(slow.finished.load(Ordering::Relaxed));
        Ok(())
    }

    #[test]
    fn routines_run_with_bottom_halves_disabled() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        // A one-way send that enters the ring at once.
        harness::send_recorded(&p.client, b"oneway", SendFlags::NONE, &done)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        // A transaction completed by the peer.
        harness::send_recorded(&p.client, b"wait", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 2));
        // A transaction cancelled by Disable, in the disabling thread.
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        harness::send_recorded(&p.client, b"held", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        p.client.disable()?;
        assert_eq!(done.count.load(Ordering::Relaxed), 3);
        assert_eq!(done.cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(done.bh_off.load(Ordering::Relaxed), 3);
        Ok(())
    }

    #[test]
    fn a_routine_that_resends_never_recurses() -> Result {
        const SENDS: u32 = 10_000;
        let r = KBox::new(
            Resend {
                left: AtomicU32::new(SENDS),
                sent: AtomicU32::new(0),
                failed: AtomicU32::new(0),
                base: AtomicUsize::new(0),
                deepest: AtomicUsize::new(0),
                bh_off: AtomicU32::new(0),
            },
            GFP_KERNEL,
        )?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::EMPTY, Ordering::Relaxed);
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_pointer(core::ptr::from_ref(&*r) as usize);
        pkt.set_completion_routine(resend_routine);
        pkt.send(b"first", SendFlags::NONE).map_err(|e| e.error)?;
        assert!(wait_for(20000, || {
            r.left.load(Ordering::Relaxed) == 0 || r.failed.load(Ordering::Relaxed) != 0
        }));
        assert!(wait_for(2000, || {
            p.srec.received.load(Ordering::Relaxed) == SENDS + 1
        }));
        p.client.disable()?;
        assert_eq!(r.failed.load(Ordering::Relaxed), 0);
        assert_eq!(r.sent.load(Ordering::Relaxed), SENDS);
        assert!(r.deepest.load(Ordering::Relaxed) <= RECURSION_LIMIT);
        assert_eq!(r.bh_off.load(Ordering::Relaxed), SENDS + 1);
        Ok(())
    }

    #[test]
    fn waiting_for_all_sends_to_finish() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        for i in 1..=4u64 {
            harness::send_recorded(
                &p.client,
                &i.to_le_bytes(),
                SendFlags::WAIT_FOR_COMPLETION,
                &done,
            )?;
        }
        harness::send_recorded(&p.client, &5u64.to_le_bytes(), SendFlags::NONE, &done)?;
        // The server holds all five; four transactions wait for it.
        assert!(wait_for(2000, || p.srec.held() == 5));
        let r = p.client.wait_sends_finished(Delta::from_millis(100));
        assert!(matches!(r, Err(e) if e == ETIMEDOUT));
        assert!(done.count.load(Ordering::Relaxed) < 5);
        p.srec.release_held();
        p.client.wait_sends_finished(Delta::from_millis(2000))?;
        // Every routine has returned by then.
        assert_eq!(done.count.load(Ordering::Relaxed), 5);
        assert_eq!(done.ok.load(Ordering::Relaxed), 5);
        Ok(())
    }

    #[test]
    fn counters_count_what_went_through() -> Result {
        let p = Pair::connected()?;
        let (c0, s0) = (p.client.counters(), p.server.counters());
        for i in 0..3u8 {
            harness::send(&p.client, &[i; 8], false)?;
        }
        let mut resp = [0u8; 8];
        p.client.send_synchronous_request(
            b"counted",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        assert!(wait_for(2000, || p.server.counters().packets_received
            == s0.packets_received + 4));
        let (c, s) = (p.client.counters(), p.server.counters());
        assert_eq!(c.packets_sent - c0.packets_sent, 4);
        assert_eq!(c.completions_received - c0.completions_received, 1);
        assert_eq!(s.completions_sent - s0.completions_sent, 1);
        assert_eq!(c.rejected_completions, 0);
        assert_eq!(s.malformed_packets, 0);
        Ok(())
    }

    #[test]
    fn wait_for_state_gives_up_on_a_signal() -> Result {
        let p = Pair::connected()?;
        let start = sys::jiffies();
        let r = {
            let _sig = PendingSignal::raise();
            p.client
                .wait_for_state(State::Paused, Delta::from_millis(1000))
        };
        assert!(matches!(r, Err(e) if e == ERESTARTSYS));
        // It returned at once instead of spinning out the timeout.
        assert!(sys::jiffies() - start < kernel::time::msecs_to_jiffies(500) as u64);
        // Without a signal, the state it is in is reached at once.
        p.client
            .wait_for_state(State::Started, Delta::from_millis(1000))?;
        Ok(())
    }

    #[test]
    fn synchronous_request_gives_up_on_a_signal_and_cancels_once() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let mut resp = [0u8; 16];
        let flags = SendFlags::WAIT_FOR_COMPLETION;
        for timeout in [Some(Delta::from_millis(1000)), None] {
            let rejected = super::rejected(&p.client);
            let held = p.srec.held();
            let start = sys::jiffies();
            let r = {
                let _sig = PendingSignal::raise();
                p.client
                    .send_synchronous_request(b"signal", flags, &mut resp, timeout)
            };
            assert!(matches!(r, Err(e) if e == ERESTARTSYS));
            assert!(sys::jiffies() - start < kernel::time::msecs_to_jiffies(500) as u64);
            // The peer got it; its late completion is refused, once.
            assert!(wait_for(2000, || p.srec.held() == held + 1));
            p.srec.release_held();
            assert!(wait_for(2000, || {
                super::rejected(&p.client) == rejected + 1
            }));
        }
        // The slots came back: a request still works.
        p.srec.mode.store(mode::ECHO, Ordering::Relaxed);
        let n = p.client.send_synchronous_request(
            b"after",
            flags,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        assert!(harness::padded_eq(&resp[..n], b"after"));
        Ok(())
    }

    #[test]
    fn zero_timeout_request_that_fits_waits_for_its_response() -> Result {
        let p = Pair::connected()?;
        // The peer answers after 20 ms, from process context.
        p.srec.mode.store(mode::DEFER_SLOW, Ordering::Relaxed);
        p.srec.defer_sleep_ms.store(20, Ordering::Relaxed);
        let mut resp = [0u8; 16];
        let zero = Some(Delta::from_millis(0));
        let n = p.client.send_synchronous_request(
            b"zero",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            zero,
        )?;
        assert!(harness::padded_eq(&resp[..n], b"zero"));
        // Without WAIT_FOR_COMPLETION, it is done once in the ring.
        p.srec.mode.store(mode::EMPTY, Ordering::Relaxed);
        let before = p.srec.received.load(Ordering::Relaxed);
        let n = p
            .client
            .send_synchronous_request(b"oneway", SendFlags::NONE, &mut resp, zero)?;
        assert_eq!(n, 0);
        assert!(wait_for(2000, || {
            p.srec.received.load(Ordering::Relaxed) == before + 1
        }));
        Ok(())
    }

    #[test]
    fn zero_timeout_request_that_does_not_fit_sends_nothing() -> Result {
        let p = small_ring_pair()?;
        p.server.pause()?;
        let sent = fill_until_queued(&p.client)?;
        let mut resp = [0u8; 16];
        let zero = Some(Delta::from_millis(0));
        for flags in [SendFlags::WAIT_FOR_COMPLETION, SendFlags::NONE] {
            let r = p
                .client
                .send_synchronous_request(b"nofit", flags, &mut resp, zero);
            assert!(matches!(r, Err(e) if e == EAGAIN));
        }
        // Only the sends that filled the ring reach the peer.
        p.srec.mode.store(mode::EMPTY, Ordering::Relaxed);
        p.server.start()?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == sent));
        settle(50);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), sent);
        Ok(())
    }
}

/// Completions the channel refused so far.
pub(crate) fn rejected(chan: &Channel) -> u64 {
    chan.stats
        .rejected_completions
        .load(core::sync::atomic::Ordering::Relaxed)
}
