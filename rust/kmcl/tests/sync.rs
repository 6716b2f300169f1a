// SPDX-License-Identifier: GPL-2.0

//! Synchronous requests.

use core::sync::atomic::{
    AtomicI32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    self,
    mode,
    settle,
    wait_for,
    Pair, //
};
use crate::channel::{
    outgoing::SendFlags,
    Endpoint, //
};

const WAIT: SendFlags = SendFlags::WAIT_FOR_COMPLETION;

fn ms(n: i64) -> Option<Delta> {
    Some(Delta::from_millis(n))
}

#[kunit_tests(kmcl_sync)]
mod tests {
    use super::*;

    #[test]
    fn sync_request_returns_the_response() -> Result {
        let p = Pair::connected()?;
        let mut resp = [0u8; 32];
        let n = p
            .client
            .send_synchronous_request(b"question", WAIT, &mut resp, ms(2000))?;
        assert!(harness::padded_eq(&resp[..n], b"question"));
        // Works without a time limit too.
        let n = p
            .client
            .send_synchronous_request(b"again", WAIT, &mut resp, None)?;
        assert!(harness::padded_eq(&resp[..n], b"again"));
        Ok(())
    }

    #[test]
    fn sync_request_in_post_started_works() -> Result {
        let mut p = Pair::plain()?;
        p.crec.sync_in_post_started.store(true, Ordering::Relaxed);
        p.up()?;
        assert!(wait_for(5000, || p
            .crec
            .sync_result
            .load(Ordering::Relaxed)
            != i32::MIN));
        assert_eq!(p.crec.sync_result.load(Ordering::Relaxed), 16);
        Ok(())
    }

    #[test]
    fn timeout_cancels_reclaims_and_ignores_the_late_completion() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let (busy_before, _) = p.client.tx.lock().outstanding();
        let mut resp = [0u8; 8];
        let r = p
            .client
            .send_synchronous_request(b"slow", WAIT, &mut resp, ms(50));
        assert_eq!(r, Err(ETIMEDOUT));
        // slot leaked.
        assert_eq!(p.client.tx.lock().outstanding().0, busy_before);
        // The server answers late: refused, nothing breaks.
        assert!(wait_for(1000, || p.srec.held() == 1));
        p.srec.take_held().ok_or(EINVAL)?.complete(b"late")?;
        assert!(wait_for(1000, || {
            p.client.stats.rejected_completions.load(Ordering::Relaxed) == 1
        }));
        // The channel still works.
        p.srec.mode.store(mode::ECHO, Ordering::Relaxed);
        let n = p
            .client
            .send_synchronous_request(b"fast", WAIT, &mut resp, ms(2000))?;
        assert!(harness::padded_eq(&resp[..n], b"fast"));
        Ok(())
    }

    #[test]
    fn zero_timeout_fails_when_the_ring_is_full() -> Result {
        let mut p = Pair::new(|e, b| {
            if e == Endpoint::Client {
                b.ring_buffer_page_count(2)
            } else {
                b
            }
        })?;
        p.up()?;
        p.server.pause()?;
        let fill = [0u8; 1000];
        let mut sent = 0;
        while p
            .client
            .send_synchronous_request(&fill, SendFlags::NONE, &mut [], ms(0))
            .is_ok()
        {
            sent += 1;
            if sent > 100 {
                return Err(EINVAL);
            }
        }
        assert!(sent >= 3);
        assert_eq!(
            p.client
                .send_synchronous_request(&fill, SendFlags::NONE, &mut [], ms(0)),
            Err(EAGAIN)
        );
        let mut resp = [0u8; 8];
        assert_eq!(
            p.client
                .send_synchronous_request(&fill, WAIT, &mut resp, ms(0)),
            Err(EAGAIN)
        );
        p.server.start()?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == sent));
        Ok(())
    }

    #[test]
    fn zero_timeout_without_wait_works_in_atomic_context() -> Result {
        let p = Pair::connected()?;
        let r = crate::sys::with_bh_disabled(|| {
            p.client
                .send_synchronous_request(b"atomic", SendFlags::NONE, &mut [], ms(0))
        });
        assert_eq!(r, Ok(0));
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        assert!(harness::padded_eq(&p.srec.last_payload(), b"atomic"));
        Ok(())
    }

    #[test]
    fn response_buffer_must_be_a_multiple_of_8() -> Result {
        let p = Pair::connected()?;
        let mut resp = [0u8; 12];
        assert_eq!(
            p.client
                .send_synchronous_request(b"x", WAIT, &mut resp, ms(100)),
            Err(EINVAL)
        );
        Ok(())
    }

    #[test]
    fn response_larger_than_the_buffer_is_eoverflow() -> Result {
        let p = Pair::connected()?;
        let mut resp = [0u8; 8];
        assert_eq!(
            p.client
                .send_synchronous_request(b"longer than eight", WAIT, &mut resp, ms(2000)),
            Err(EOVERFLOW)
        );
        Ok(())
    }

    #[test]
    fn disable_fails_a_pending_request_with_enodev() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let result = spawn_request(&p)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        settle(10);
        // returned before teardown.
        assert_eq!(result.load(Ordering::Relaxed), 1);
        p.client.disable()?;
        assert!(wait_for(3000, || result.load(Ordering::Relaxed) != 1));
        assert_eq!(result.load(Ordering::Relaxed), ENODEV.to_errno());
        Ok(())
    }

    #[test]
    fn peer_close_fails_a_pending_request_with_enodev() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::FAIL, Ordering::Relaxed);
        let result = spawn_request(&p)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        settle(10);
        assert_eq!(result.load(Ordering::Relaxed), 1);
        p.server.disable()?;
        assert!(wait_for(3000, || result.load(Ordering::Relaxed) != 1));
        assert_eq!(result.load(Ordering::Relaxed), ENODEV.to_errno());
        Ok(())
    }
}

/// Makes a 10 s synchronous request from a work item; the result (0 or a
/// negative errno) lands in the returned cell, which holds 1 until then.
fn spawn_request(p: &Pair) -> Result<Arc<AtomicI32>> {
    let client = p.client.arc();
    let result = Arc::new(AtomicI32::new(1), GFP_KERNEL)?;
    let r2 = result.clone();
    crate::sys::wq().try_spawn(GFP_KERNEL, move || {
        let mut resp = [0u8; 8];
        let r = client.send_synchronous_request(b"pending", WAIT, &mut resp, ms(10_000));
        r2.store(
            r.err().map(|e| e.to_errno()).unwrap_or(0),
            Ordering::Relaxed,
        );
    })?;
    Ok(result)
}
