// SPDX-License-Identifier: GPL-2.0

//! The receive path on loopback: ProcessPacket, ProcessingComplete,
//! completions, PacketFail, deferral, passive delivery, quota, the client
//! context area, and external data.

use core::sync::atomic::Ordering;

use kernel::{
    page::Page,
    prelude::*, //
};

use super::harness::{
    self,
    mode,
    settle,
    wait_for,
    Done,
    Ev,
    Pair, //
};
use crate::channel::outgoing::{
    Mdl,
    SendFlags, //
};

fn received(p: &Pair) -> u32 {
    p.srec.received.load(Ordering::Relaxed)
}

#[kunit_tests(kmcl_receive)]
mod tests {
    use super::*;

    #[test]
    fn process_packet_gets_the_payload_without_headers() -> Result {
        let p = Pair::connected()?;
        harness::send(&p.client, b"hello, server", false)?;
        assert!(wait_for(2000, || received(&p) == 1));
        // "hello, server" is 13 bytes; VMBus carries it padded to 16.
        assert!(harness::padded_eq(&p.srec.last_payload(), b"hello, server"));
        Ok(())
    }

    #[test]
    fn process_packet_runs_in_softirq_context() -> Result {
        let p = Pair::connected()?;
        for _ in 0..4 {
            harness::send(&p.client, b"ctx", false)?;
        }
        assert!(wait_for(2000, || received(&p) == 4));
        assert_eq!(p.srec.in_softirq.load(Ordering::Relaxed), 4);
        assert_eq!(p.srec.in_task.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn loopback_signals_run_process_packet_on_the_target_cpu() -> Result {
        // Both CPUs of the test VM: one of them is not the sender's.
        for cpu in 0..kernel::cpu::nr_cpu_ids().min(2) {
            let mut p = Pair::plain()?;
            p.server.set_target_cpu(cpu)?;
            p.up()?;
            for i in 1..=3 {
                harness::send(&p.client, b"where", false)?;
                assert!(wait_for(2000, || received(&p) == i));
                assert_eq!(p.srec.last_cpu.load(Ordering::Relaxed), cpu);
            }
        }
        Ok(())
    }

    #[test]
    fn processing_complete_reports_each_batch() -> Result {
        let p = Pair::connected()?;
        p.server.pause()?;
        for i in 1..=5u64 {
            harness::send(&p.client, &i.to_le_bytes(), false)?;
        }
        p.server.start()?;
        assert!(wait_for(2000, || received(&p) == 5));
        settle(10);
        // The five queued packets drained as one batch, reported once.
        assert_eq!(&p.srec.batches()[..], &[5]);
        harness::send(&p.client, b"one", false)?;
        assert!(wait_for(2000, || p.srec.batches().len() == 2));
        assert_eq!(&p.srec.batches()[..], &[5, 1]);
        Ok(())
    }

    #[test]
    fn completion_is_sent_only_when_requested() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        harness::send_recorded(&p.client, b"oneway", SendFlags::NONE, &done)?;
        assert!(wait_for(2000, || received(&p) == 1));
        settle(20);
        assert_eq!(
            p.client.stats.completions_received.load(Ordering::Relaxed),
            0
        );
        assert_eq!(p.server.stats.completions_sent.load(Ordering::Relaxed), 0);
        harness::send_recorded(&p.client, b"twoway", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 2));
        assert_eq!(
            p.client.stats.completions_received.load(Ordering::Relaxed),
            1
        );
        assert_eq!(p.server.stats.completions_sent.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn completion_payload_reaches_the_sender() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        harness::send_recorded(
            &p.client,
            b"ping-pay",
            SendFlags::WAIT_FOR_COMPLETION,
            &done,
        )?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        assert_eq!(done.ok.load(Ordering::Relaxed), 1);
        assert_eq!(done.resp_len.load(Ordering::Relaxed), 8);
        assert_eq!(
            done.resp_head.load(Ordering::Relaxed),
            u64::from_le_bytes(*b"ping-pay")
        );
        // An empty completion carries no payload.
        p.srec.mode.store(mode::EMPTY, Ordering::Relaxed);
        harness::send_recorded(&p.client, b"x", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 2));
        assert_eq!(done.resp_len.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn packet_fail_stops_the_queue() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::FAIL, Ordering::Relaxed);
        harness::send(&p.client, b"bad", false)?;
        assert!(wait_for(2000, || received(&p) == 1));
        p.srec.mode.store(mode::ECHO, Ordering::Relaxed);
        harness::send(&p.client, b"after", false)?;
        settle(50);
        // delivery continued after PacketFail.
        assert_eq!(received(&p), 1);
        Ok(())
    }

    #[test]
    fn defer_to_passive_redelivers_in_process_context() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::DEFER, Ordering::Relaxed);
        harness::send_recorded(
            &p.client,
            b"deferred",
            SendFlags::WAIT_FOR_COMPLETION,
            &done,
        )?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        // Delivered twice: once in softirq, once in process context.
        assert_eq!(received(&p), 2);
        assert_eq!(p.srec.in_softirq.load(Ordering::Relaxed), 1);
        assert_eq!(p.srec.deferred_then_seen.load(Ordering::Relaxed), 1);
        assert_eq!(
            done.resp_head.load(Ordering::Relaxed),
            u64::from_le_bytes(*b"deferred")
        );
        Ok(())
    }

    #[test]
    fn pause_leaves_deferred_packets_for_after_start() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::DEFER, Ordering::Relaxed);
        // Keep process context busy so the deferred packet stays queued:
        // pause right after it is deferred.
        p.server.set_incoming_processing_at_passive(false);
        harness::send(&p.client, b"later", false)?;
        assert!(wait_for(2000, || received(&p) >= 1));
        // Pause returns although kmcl may still hold the deferred packet.
        p.server.pause()?;
        p.server.start()?;
        assert!(wait_for(2000, || p
            .srec
            .deferred_then_seen
            .load(Ordering::Relaxed)
            == 1));
        Ok(())
    }

    #[test]
    fn defer_outside_process_packet_is_refused() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        harness::send(&p.client, b"held", false)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let pkt = p.srec.take_held().ok_or(EINVAL)?;
        match pkt.defer_to_passive() {
            Ok(()) => return Err(EINVAL),
            Err(e) => e.0.complete(&[])?,
        }
        Ok(())
    }

    #[test]
    fn a_held_packet_keeps_its_channel_and_lets_go_once_finished() -> Result {
        let p = Pair::connected()?;
        // Packets finished inside ProcessPacket leave no reference behind
        // once the drain ends.
        harness::send(&p.client, b"inline", false)?;
        assert!(wait_for(2000, || received(&p) == 1));
        assert!(wait_for(2000, || !p.server.rx.lock().delivering));
        assert!(p.server.rx.lock().keep.is_none());
        // A packet held past ProcessPacket reaches its channel through the
        // channel's reference on itself, until it is finished.
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        harness::send(&p.client, b"held", false)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        assert!(wait_for(2000, || !p.server.rx.lock().delivering));
        assert!(p.server.rx.lock().keep.is_some());
        let pkt = p.srec.take_held().ok_or(EINVAL)?;
        assert_eq!(pkt.channel().id(), p.server.id());
        pkt.complete(&[])?;
        assert!(p.server.rx.lock().keep.is_none());
        Ok(())
    }

    #[test]
    fn incoming_processing_at_passive_runs_in_process_context() -> Result {
        let p = Pair::connected()?;
        p.server.set_incoming_processing_at_passive(true);
        for _ in 0..3 {
            harness::send(&p.client, b"passive", false)?;
        }
        assert!(wait_for(2000, || received(&p) == 3));
        assert_eq!(p.srec.in_task.load(Ordering::Relaxed), 3);
        assert_eq!(p.srec.in_softirq.load(Ordering::Relaxed), 0);
        // And back.
        p.server.set_incoming_processing_at_passive(false);
        harness::send(&p.client, b"bh", false)?;
        assert!(wait_for(2000, || received(&p) == 4));
        assert_eq!(p.srec.in_softirq.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn quota_caps_outstanding_packets() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        p.server.set_transaction_quota(2)?;
        for i in 0..5u64 {
            harness::send(&p.client, &i.to_le_bytes(), false)?;
        }
        assert!(wait_for(2000, || p.srec.held() == 2));
        settle(30);
        assert_eq!(p.srec.held(), 2);
        assert!(p.server.stats.quota_stalls.load(Ordering::Relaxed) >= 1);
        // Only a completion restarts the queue: one finished, one more in.
        let first = p.srec.take_held().ok_or(EINVAL)?;
        first.complete(&[])?;
        assert!(wait_for(2000, || received(&p) == 3));
        settle(20);
        assert_eq!(received(&p), 3);
        Ok(())
    }

    #[test]
    fn quota_below_outstanding_waits_for_enough_completions() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        for i in 0..4u64 {
            harness::send(&p.client, &i.to_le_bytes(), false)?;
        }
        assert!(wait_for(2000, || p.srec.held() == 4));
        p.server.set_transaction_quota(2)?;
        harness::send(&p.client, b"waiting", false)?;
        for _ in 0..2 {
            p.srec.take_held().ok_or(EINVAL)?.complete(&[])?;
        }
        settle(30);
        // Two still outstanding: at the quota, nothing more is delivered.
        assert_eq!(received(&p), 4);
        p.srec.take_held().ok_or(EINVAL)?.complete(&[])?;
        assert!(wait_for(2000, || received(&p) == 5));
        Ok(())
    }

    #[test]
    fn quota_stall_reports_processing_complete() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        p.server.set_transaction_quota(1)?;
        harness::send(&p.client, b"a", false)?;
        harness::send(&p.client, b"b", false)?;
        assert!(wait_for(2000, || p.srec.batches().len() == 1));
        assert_eq!(&p.srec.batches()[..], &[1]);
        Ok(())
    }

    #[test]
    fn client_context_area_is_sized_and_zeroed() -> Result {
        let mut p = Pair::new(|_, b| b.client_context_size(40))?;
        p.up()?;
        for _ in 0..3 {
            harness::send(&p.client, b"ctx", false)?;
        }
        assert!(wait_for(2000, || received(&p) == 3));
        let g = p.srec.st.lock();
        assert_eq!(g.last_context_len, 40);
        // The recorder dirties each area; the next packet must see zeroes.
        assert!(g.last_context_was_zero);
        Ok(())
    }

    #[test]
    fn external_data_reaches_the_server() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        let page = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
        let pattern = [0x5au8; 64];
        // SAFETY: 64 bytes at offset 100 lie inside the page.
        unsafe { page.write_raw(pattern.as_ptr(), 100, 64)? };
        // The page goes with the packet: the server may read what the
        // client passes and keeps alive, and nothing else.
        let mut pages = KVec::new();
        pages.push(page, GFP_KERNEL)?;
        let mdl = Mdl::from_pages(pages, 100, 64)?;
        let pkt = harness::recorded_packet(&p.client, &done)?;
        pkt.send_with_external_mdl(b"ext", mdl, SendFlags::WAIT_FOR_COMPLETION)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        let g = p.srec.st.lock();
        assert_eq!(&g.external_bytes[..], &pattern[..]);
        assert!(harness::padded_eq(&g.last_payload, b"ext"));
        Ok(())
    }

    #[test]
    fn dropped_packet_is_completed_for_the_sender() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::DROP, Ordering::Relaxed);
        harness::send_recorded(&p.client, b"dropped", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        assert_eq!(done.ok.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn inband_replies_queue_behind_a_full_ring_and_keep_order() -> Result {
        let mut p = Pair::new(|e, b| {
            if e == crate::channel::Endpoint::Client {
                b.ring_buffer_page_count(2)
            } else {
                b
            }
            .packet_pool_size(100)
        })?;
        p.up()?;
        p.crec.mode.store(mode::REPLY, Ordering::Relaxed);
        p.server.pause()?;
        // Fill the client's ring: these queue once it is full.
        let mut n = 0u64;
        while p.client.stats.ring_full.load(Ordering::Relaxed) == 0 && n < 50 {
            n += 1;
            harness::send(&p.client, &n.to_le_bytes(), false)?;
        }
        // Requests from the server, answered in-band by the client while its
        // ring is full: the replies queue behind the packets above.
        for i in 1..=3u64 {
            p.server
                .send_inband_with_transaction_id(&(1000 + i).to_le_bytes(), i)?;
        }
        assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 3));
        p.server.start()?;
        assert!(wait_for(3000, || received(&p) == n as u32 + 3));
        let heads = p.srec.heads();
        for (i, h) in heads.iter().enumerate() {
            let want = if (i as u64) < n {
                i as u64 + 1
            } else {
                1000 + i as u64 - n + 1
            };
            assert_eq!(*h, want);
        }
        Ok(())
    }

    #[test]
    fn payload_of_maximum_size_is_delivered_whole() -> Result {
        let mut p = Pair::new(|_, b| b.maximum_packet_size(3000))?;
        p.up()?;
        let mut big = KVec::new();
        for i in 0..3000u32 {
            big.push((i % 251) as u8, GFP_KERNEL)?;
        }
        harness::send(&p.client, &big, false)?;
        assert!(wait_for(2000, || received(&p) == 1));
        assert_eq!(&p.srec.last_payload()[..], &big[..]);
        assert_eq!(harness::send(&p.client, &[0u8; 3001], false), Err(EINVAL));
        let _ = Ev::Opened;
        Ok(())
    }
}
