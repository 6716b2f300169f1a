// SPDX-License-Identifier: GPL-2.0

//! Transaction ids: forged, duplicate and stale completions; cancellation.

use core::sync::atomic::Ordering;

use kernel::prelude::*;

use super::harness::{
    self,
    completion_bytes,
    mode,
    settle,
    wait_for,
    Done,
    Pair, //
};
use crate::channel::outgoing::SendFlags;

const WAIT: SendFlags = SendFlags::WAIT_FOR_COMPLETION;

fn rejected(p: &Pair) -> u64 {
    p.client.stats.rejected_completions.load(Ordering::Relaxed)
}

/// Sends one held request and returns its transaction id.
fn held_request(p: &Pair, done: &kernel::sync::Arc<Done>) -> Result<u64> {
    p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
    let before = p.srec.held();
    harness::send_recorded(&p.client, b"req", WAIT, done)?;
    if !wait_for(2000, || p.srec.held() == before + 1) {
        return Err(ETIMEDOUT);
    }
    let g = p.srec.st.lock();
    Ok(g.held[before].transaction_id())
}

#[kunit_tests(kmcl_transactions)]
mod tests {
    use super::*;

    #[test]
    fn forged_completion_is_refused() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        let id = held_request(&p, &done)?;
        // Same slot, wrong generation; and a slot that is free.
        p.server
            .inject_raw(&completion_bytes(id ^ (1 << 40), b"forged"))?;
        p.server.inject_raw(&completion_bytes(
            (id & 0xffff_ffff_0000_0000) | 0x77,
            b"forged",
        ))?;
        assert!(wait_for(1000, || rejected(&p) == 2));
        assert_eq!(done.count.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn id_zero_and_out_of_range_ids_are_refused() -> Result {
        let p = Pair::connected()?;
        p.server.inject_raw(&completion_bytes(0, b""))?;
        p.server.inject_raw(&completion_bytes(u64::MAX, b""))?;
        p.server.inject_raw(&completion_bytes(0x1_0000_ffff, b""))?;
        assert!(wait_for(1000, || rejected(&p) == 3));
        // The channel is unharmed.
        let mut resp = [0u8; 8];
        p.srec.mode.store(mode::ECHO, Ordering::Relaxed);
        assert_eq!(
            p.client.send_synchronous_request(
                b"ok",
                WAIT,
                &mut resp,
                Some(kernel::time::Delta::from_millis(2000))
            ),
            Ok(8)
        );
        Ok(())
    }

    #[test]
    fn duplicate_completion_is_refused() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        let id = held_request(&p, &done)?;
        p.srec.take_held().ok_or(EINVAL)?.complete(b"first")?;
        assert!(wait_for(1000, || done.count.load(Ordering::Relaxed) == 1));
        p.server.inject_raw(&completion_bytes(id, b"again"))?;
        assert!(wait_for(1000, || rejected(&p) == 1));
        // finished twice.
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn stale_completion_for_a_reused_slot_is_refused() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        let first = held_request(&p, &done)?;
        p.srec.take_held().ok_or(EINVAL)?.complete(&[])?;
        assert!(wait_for(1000, || done.count.load(Ordering::Relaxed) == 1));
        // The next request takes the same slot under a new generation.
        let second = held_request(&p, &done)?;
        assert_eq!(first & 0xffff_ffff, second & 0xffff_ffff);
        assert!(first != second);
        p.server.inject_raw(&completion_bytes(first, b"stale"))?;
        assert!(wait_for(1000, || rejected(&p) == 1));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        p.srec.take_held().ok_or(EINVAL)?.complete(&[])?;
        assert!(wait_for(1000, || done.count.load(Ordering::Relaxed) == 2));
        Ok(())
    }

    #[test]
    fn completion_of_a_send_without_wait_is_refused() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        harness::send_recorded(&p.client, b"oneway", SendFlags::NONE, &done)?;
        assert!(wait_for(1000, || done.count.load(Ordering::Relaxed) == 1));
        // Oneway sends carry id 0; nothing may complete them.
        p.server.inject_raw(&completion_bytes(0, b""))?;
        assert!(wait_for(1000, || rejected(&p) == 1));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn disable_cancels_every_outstanding_send_once() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        for _ in 0..3 {
            held_request(&p, &done)?;
        }
        p.srec.mode.store(mode::FAIL, Ordering::Relaxed);
        p.client.disable()?;
        assert_eq!(done.count.load(Ordering::Relaxed), 3);
        assert_eq!(done.cancelled.load(Ordering::Relaxed), 3);
        // Late completions after the close reach nothing.
        p.srec.release_held();
        settle(20);
        assert_eq!(done.count.load(Ordering::Relaxed), 3);
        Ok(())
    }

    #[test]
    fn peer_close_finishes_every_outstanding_send_once() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let p = Pair::connected()?;
        for _ in 0..3 {
            held_request(&p, &done)?;
        }
        // The server fails what it holds and goes away without completing.
        while let Some(pkt) = p.srec.take_held() {
            pkt.fail();
        }
        p.server.disable()?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 3));
        assert_eq!(done.removed.load(Ordering::Relaxed), 3);
        settle(20);
        assert_eq!(done.count.load(Ordering::Relaxed), 3);
        Ok(())
    }

    #[test]
    fn queued_transaction_cannot_be_completed_early() -> Result {
        // Declared first, so that it outlives every send of the pair.
        let done = Done::new()?;
        let mut p = Pair::new(|e, b| {
            if e == crate::channel::Endpoint::Client {
                b.ring_buffer_page_count(2)
            } else {
                b
            }
            .packet_pool_size(100)
        })?;
        p.up()?;
        p.server.pause()?;
        let big = [0u8; 1500];
        for _ in 0..6 {
            harness::send_recorded(&p.client, &big, WAIT, &done)?;
        }
        let (in_flight, queued) = p.client.tx.lock().outstanding();
        assert_eq!(in_flight, 6);
        assert!(queued >= 1);
        // Guess the id of the last (queued) send: slot 6, generation 1.
        p.server.inject_raw(&completion_bytes((1 << 32) | 6, b""))?;
        p.server.start()?;
        assert!(wait_for(3000, || done.count.load(Ordering::Relaxed) == 6));
        assert!(rejected(&p) >= 1);
        Ok(())
    }
}
