// SPDX-License-Identifier: GPL-2.0

//! A hostile host, and the packet API, over the hv transport.
//!
//! A client channel is bound to a device built in memory (see
//! [`super::hv_binding`]); the test plays the host. Packets reach kmcl
//! through the hv transport's reader in the channel's tasklet, so each case
//! runs the hv reader's checks and kmcl's parser together. The malformed packets
//! are those of the loopback hostile suite: kmcl must refuse every one the
//! same way over both transports. The API cases are the loopback suites'
//! calls (pause, start, quota, passive delivery, deferral, failing and
//! replying), on a bound device.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    time::Delta, //
};

use super::{
    harness::{
        self,
        completion_bytes,
        inband,
        mode,
        settle,
        wait_for,
        Done,
        Ev, //
    },
    hostile::{
        gpa,
        raw, //
    },
    hv_binding::{
        bus,
        opened,
        LIMITS, //
    },
};
use crate::{
    channel::{
        outgoing::SendFlags,
        State, //
    },
    wire::packet::{
        self,
        Kind, //
    },
};

/// Writes `bytes` into the guest's ring as the host and checks that kmcl
/// stopped the queue, counted the packet and delivered nothing, and that
/// the channel still tears down.
fn expect_refused(bytes: &[u8]) -> Result<bool> {
    let bus = bus()?;
    let (h, rec, dev, d) = opened(&bus)?;
    let mut host = dev.host()?;
    host.send(bytes)?;
    let ok = wait_for(2000, || {
        h.rxc.failed() && h.stats.malformed_packets.load(Ordering::Relaxed) == 1
    }) && rec.received.load(Ordering::Relaxed) == 0;
    h.disable()?;
    bus.remove(&d);
    Ok(ok && !dev.is_open())
}

/// Sends one valid packet, then sets the host's write index to `value`.
fn expect_index_refused(value: u32) -> Result<bool> {
    let bus = bus()?;
    let (h, rec, dev, d) = opened(&bus)?;
    let mut host = dev.host()?;
    host.send(&inband(1, 0, b"valid")?)?;
    // Outside the test function a failed assertion would panic the kernel:
    // report it as a refusal that did not happen instead.
    if !wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1) {
        h.disable()?;
        bus.remove(&d);
        return Ok(false);
    }
    host.writer.memory().poke_control(0, value);
    host.interrupt();
    let ok = wait_for(2000, || {
        h.rxc.failed() && h.stats.malformed_packets.load(Ordering::Relaxed) == 1
    }) && rec.received.load(Ordering::Relaxed) == 1;
    h.disable()?;
    bus.remove(&d);
    Ok(ok)
}

#[kunit_tests(kmcl_hv_interop_hostile)]
mod tests {
    use super::*;

    #[test]
    fn offsets_linux_would_replace_are_refused() -> Result {
        // Beyond the length, inside the descriptor, zero: hv_pkt_iter_first()
        // would substitute 16; kmcl refuses the packet instead.
        assert!(expect_refused(&raw(6, 4, 3, 0, &[0; 8]))?);
        assert!(expect_refused(&raw(6, 1, 3, 0, &[0; 8]))?);
        assert!(expect_refused(&raw(6, 0, 3, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn lengths_linux_would_clamp_are_refused() -> Result {
        assert!(expect_refused(&raw(6, 2, 0, 0, &[0; 8]))?);
        assert!(expect_refused(&raw(6, 2, 200, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn payload_beyond_the_maximum_packet_size_is_refused() -> Result {
        let body = KVec::from_elem(0u8, 4104, GFP_KERNEL)?;
        assert!(expect_refused(&raw(6, 2, 2 + 4104 / 8, 0, &body))?);
        let payload = KVec::from_elem(0u8, 4104, GFP_KERNEL)?;
        assert!(expect_refused(&completion_bytes(1, &payload))?);
        Ok(())
    }

    #[test]
    fn unknown_types_and_flags_are_refused() -> Result {
        assert!(expect_refused(&raw(5, 2, 3, 0, &[0; 8]))?);
        assert!(expect_refused(&raw(
            packet::TYPE_DATA_XFER_PAGES,
            2,
            3,
            0,
            &[0; 8]
        ))?);
        assert!(expect_refused(&raw(6, 2, 3, 0x8000, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn malformed_gpa_direct_packets_are_refused() -> Result {
        assert!(expect_refused(&gpa(0, &[]))?);
        assert!(expect_refused(&gpa(u32::MAX, &[(16, 0, 1)]))?);
        assert!(expect_refused(&gpa(1, &[(16, 0x1000, 2)]))?);
        assert!(expect_refused(&gpa(1, &[(0, 0, 0)]))?);
        assert!(expect_refused(&gpa(5, &[(16, 0, 1); 5]))?);
        assert!(expect_refused(&gpa(1, &[(u32::MAX, 0, 1)]))?);
        Ok(())
    }

    #[test]
    fn host_gpa_direct_packets_are_refused() -> Result {
        // Well formed and within every limit: a guest still never reads
        // memory that the host names, so the packet is refused as the
        // malformed ones are.
        assert!(expect_refused(&gpa(1, &[(16, 0, 1)]))?);
        assert!(expect_refused(&gpa(2, &[(4096, 0, 1), (100, 4000, 2)]))?);
        Ok(())
    }

    #[test]
    fn write_index_outside_the_ring_stops_the_queue() -> Result {
        assert!(expect_index_refused(
            (super::super::hv_binding::RING_PAGES - 1) * 4096
        )?);
        assert!(expect_index_refused(u32::MAX)?);
        assert!(expect_index_refused(36)?);
        Ok(())
    }

    #[test]
    fn interrupt_storm_delivers_nothing_extra() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        host.send(&inband(1, 0, b"one")?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        for _ in 0..2000 {
            host.interrupt();
        }
        settle(50);
        assert_eq!(rec.received.load(Ordering::Relaxed), 1);
        assert!(!h.rxc.failed());
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn completion_for_a_send_that_asked_none_is_refused() -> Result {
        let bus = bus()?;
        let (h, _rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        let done = Done::new()?;
        harness::send_recorded(&h, b"no completion wanted", SendFlags::NONE, &done)?;
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert!(!pk.completion_requested());
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        // The requestor handed out no id: whatever the host names is refused.
        for id in [0, 1, pk.desc.trans_id] {
            host.send(&completion_bytes(id, b"forged"))?;
        }
        assert!(wait_for(2000, || h
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 3));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn rescind_ends_a_blocked_synchronous_request() -> Result {
        let bus = bus()?;
        let (h, _rec, dev, d) = opened(&bus)?;
        let chan = h.arc();
        let (dev_ptr, d2) = (core::ptr::from_ref(&dev) as usize, d.clone());
        let bus2 = bus.clone();
        // The host never answers; it rescinds the offer instead.
        let remover = crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            harness::settle(50);
            // SAFETY: the test waits for this work before `dev` goes away.
            let dev = unsafe { &*(dev_ptr as *const super::super::hv_binding::TestDevice) };
            dev.rescind();
            bus2.remove(&d2);
        });
        remover?;
        let mut resp = [0u8; 8];
        let r = chan.send_synchronous_request(
            b"blocked",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(5000)),
        );
        assert!(matches!(r, Err(e) if e == ENODEV));
        assert!(wait_for(2000, || !dev.is_open()));
        assert!(wait_for(2000, || h.state() == State::Disabled));
        // The removal has returned before the device goes away.
        crate::sys::flush_work();
        Ok(())
    }

    #[test]
    fn traffic_both_ways_under_load_loses_nothing() -> Result {
        const N: u64 = 3000;
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        rec.mode.store(mode::EMPTY, Ordering::Relaxed);
        let done = Done::new()?;
        // The guest sends N numbered requests from another thread, retrying
        // while its pool or queue is full.
        let (chan, done2) = (h.arc(), done.clone());
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let mut i = 1u64;
            while i <= N {
                match harness::send_recorded(
                    &chan,
                    &i.to_le_bytes(),
                    SendFlags::WAIT_FOR_COMPLETION,
                    &done2,
                ) {
                    Ok(()) => i += 1,
                    Err(e) if e == ENOMEM || e == EBUSY => {
                        kernel::time::delay::fsleep(Delta::from_micros(50))
                    }
                    Err(_) => return,
                }
            }
        })?;
        // The host sends N numbered requests, answers the guest's, and
        // counts the guest's completions of its own, all in order.
        let (mut sent, mut requests, mut completions) = (0u64, 0u64, 0u64);
        let mut pending: KVec<KVec<u8>> = KVec::new();
        let mut buf = KVec::from_elem(0u8, 8192, GFP_KERNEL)?;
        let deadline =
            crate::sys::jiffies() + u64::from(kernel::time::msecs_to_jiffies(30_000) as u32);
        while requests < N || completions < N || sent < N || !pending.is_empty() {
            if crate::sys::jiffies() > deadline {
                return Err(ETIMEDOUT);
            }
            if pending.is_empty() && sent < N {
                sent += 1;
                pending.push(inband(sent, 1, &sent.to_le_bytes())?, GFP_KERNEL)?;
            }
            let mut progress = false;
            while let Some(p) = pending.first() {
                if host.writer.write(&[p]).is_err() {
                    break;
                }
                let _ = pending.remove(0);
                progress = true;
            }
            while let Some(n) = host.reader.read(&mut buf).map_err(|_| EIO)? {
                progress = true;
                let pk = packet::parse(&buf[..n], &LIMITS).map_err(|_| EIO)?;
                let mut head = [0u8; 8];
                match pk.kind {
                    Kind::InBand => {
                        head.copy_from_slice(&pk.payload[..8]);
                        requests += 1;
                        assert_eq!(u64::from_le_bytes(head), requests);
                        pending.push(completion_bytes(pk.desc.trans_id, b""), GFP_KERNEL)?;
                    }
                    Kind::Completion => {
                        completions += 1;
                        assert_eq!(pk.desc.trans_id, completions);
                    }
                    _ => return Err(EIO),
                }
            }
            let _ = host.reader.commit();
            host.interrupt();
            if !progress {
                kernel::time::delay::fsleep(Delta::from_micros(20));
            }
        }
        assert!(wait_for(5000, || done.ok.load(Ordering::Relaxed) == N as u32));
        assert!(done.order.1.load(Ordering::Relaxed));
        assert_eq!(rec.received.load(Ordering::Relaxed), N as u32);
        assert_eq!(h.stats.malformed_packets.load(Ordering::Relaxed), 0);
        assert_eq!(h.stats.rejected_completions.load(Ordering::Relaxed), 0);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    // ---- The loopback suites' API calls, on a bound device. ----

    #[test]
    fn api_pause_holds_delivery_and_start_resumes_it() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        h.pause()?;
        assert_eq!(rec.count(Ev::Suspend), 1);
        host.send(&inband(1, 0, b"while paused")?)?;
        settle(30);
        assert_eq!(rec.received.load(Ordering::Relaxed), 0);
        h.start()?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(rec.count(Ev::Started), 2);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_quota_stalls_delivery_until_packets_finish() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        rec.mode.store(mode::HOLD, Ordering::Relaxed);
        h.set_transaction_quota(2)?;
        for i in 0..6u64 {
            host.send(&inband(i + 1, 0, &i.to_le_bytes())?)?;
        }
        assert!(wait_for(2000, || rec.held() == 2));
        settle(30);
        assert_eq!(rec.received.load(Ordering::Relaxed), 2);
        assert!(h.counters().quota_stalls >= 1);
        // Finishing packets restarts delivery from the ring, in order.
        while rec.received.load(Ordering::Relaxed) < 6 || rec.held() > 0 {
            if !wait_for(2000, || rec.held() > 0) {
                return Err(ETIMEDOUT);
            }
            rec.release_held();
        }
        assert_eq!(rec.heads().as_slice(), &[0, 1, 2, 3, 4, 5]);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_passive_delivery_runs_in_process_context() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        h.set_incoming_processing_at_passive(true);
        host.send(&inband(3, 1, b"passive")?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(rec.in_task.load(Ordering::Relaxed), 1);
        assert_eq!(rec.in_softirq.load(Ordering::Relaxed), 0);
        let p = host.next()?;
        assert_eq!(
            packet::parse(&p, &LIMITS).map_err(|_| EIO)?.kind,
            Kind::Completion
        );
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_deferred_packet_completes_from_process_context() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        rec.mode.store(mode::DEFER, Ordering::Relaxed);
        host.send(&inband(9, 1, b"defer me")?)?;
        assert!(wait_for(2000, || rec
            .deferred_then_seen
            .load(Ordering::Relaxed)
            == 1));
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert_eq!((pk.kind, pk.desc.trans_id), (Kind::Completion, 9));
        assert_eq!(pk.payload, b"defer me");
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_failed_packet_stops_the_queue() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        rec.mode.store(mode::FAIL, Ordering::Relaxed);
        host.send(&inband(11, 1, b"fail me")?)?;
        assert!(wait_for(2000, || h.rxc.failed()));
        rec.mode.store(mode::ECHO, Ordering::Relaxed);
        host.send(&inband(12, 1, b"after")?)?;
        settle(30);
        assert_eq!(rec.received.load(Ordering::Relaxed), 1);
        // No completion for the failed packet (the settle above gave one
        // time to arrive).
        let mut buf = [0u8; 64];
        assert!(matches!(host.reader.read(&mut buf), Ok(None)));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_full_ring_queues_and_the_host_interrupt_resumes() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        let done = Done::new()?;
        let mut buf = [0u8; 1000];
        let mut sent = 0u64;
        // Fill the ring, then queue a few more behind it.
        while h.counters().ring_full == 0 && sent < 64 {
            sent += 1;
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            harness::send_recorded(&h, &buf, SendFlags::NONE, &done)?;
        }
        assert!(h.counters().ring_full > 0);
        for _ in 0..3 {
            sent += 1;
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            harness::send_recorded(&h, &buf, SendFlags::NONE, &done)?;
        }
        // kmcl asked the host to signal when there is room.
        assert!(host.reader.memory().snapshot()[3] > 0);
        // The host reads everything, interrupting the guest when the ring
        // drains; the tasklet's callback flushes the queue, in order.
        let mut seen = 0u64;
        while seen < sent {
            let p = match host.next() {
                Ok(p) => p,
                Err(_) => return Err(ETIMEDOUT),
            };
            let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
            let mut head = [0u8; 8];
            head.copy_from_slice(&pk.payload[..8]);
            seen += 1;
            assert_eq!(u64::from_le_bytes(head), seen);
            if host.reader.available().unwrap_or(0) == 0 {
                host.interrupt();
            }
        }
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == sent as u32));
        assert!(done.order.1.load(Ordering::Relaxed));
        // ProcessingComplete follows deliveries over hv too.
        host.send(&inband(1, 0, b"batch")?)?;
        assert!(wait_for(2000, || rec.batches().iter().sum::<u32>() == 1));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn api_reply_reaches_the_host_as_an_inband_packet() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        rec.mode.store(mode::REPLY, Ordering::Relaxed);
        host.send(&inband(12, 0, b"reply to me")?)?;
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert_eq!((pk.kind, pk.desc.trans_id), (Kind::InBand, 12));
        assert_eq!(pk.payload, b"reply to me\0\0\0\0\0");
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }
}
