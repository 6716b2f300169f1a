// SPDX-License-Identifier: GPL-2.0

//! Synchronous requests, and in-band sends that allocate nothing.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::CondVarTimeoutResult,
    time::Delta, //
};

use super::{
    outgoing::SendFlags,
    send_queue::Queued,
    transactions::{
        SyncRequest,
        TxOwner, //
    },
    Channel, //
};
use crate::{
    sys,
    transport::{
        OutPacket,
        SendLink,
        WriteError, //
    },
    wire::packet, //
};

impl Channel {
    /// Sends `data` and waits for the peer's completion
    /// (`VmbChannelSendSynchronousRequest`); returns the completion's length,
    /// copied into `response`, whose length must be a multiple of 8.
    ///
    /// - `timeout` `None` waits without limit. A positive timeout bounds
    ///   the whole call; on expiry the request is cancelled (`ETIMEDOUT`):
    ///   its slot is reclaimed and a late completion is refused.
    /// - A `timeout` of zero governs ring space only: the request must go
    ///   into the ring now, or the call fails with `EAGAIN` and nothing is
    ///   sent. With [`SendFlags::WAIT_FOR_COMPLETION`] the call then waits
    ///   for the response without limit, as with `None`, so a request the
    ///   peer executes is never reported as failed. Without it, the call
    ///   returns `Ok(0)` once the packet is in the ring, allocates nothing,
    ///   and may be called from any context; every other form sleeps.
    /// - A signal pending for the caller cancels the request as a timeout
    ///   does and fails the call with `ERESTARTSYS`.
    /// - A channel going away fails it with `ENODEV`; a completion larger
    ///   than `response` with `EOVERFLOW`.
    ///
    /// Context: any context for a zero `timeout` without
    /// [`SendFlags::WAIT_FOR_COMPLETION`]; every other form process context
    /// only (`might_sleep()` is checked), a state callback included, and
    /// refused with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context
    /// before anything is sent.
    #[doc(alias = "VmbChannelSendSynchronousRequest")]
    pub fn send_synchronous_request(
        &self,
        data: &[u8],
        flags: SendFlags,
        response: &mut [u8],
        timeout: Option<Delta>,
    ) -> Result<usize> {
        if response.len() % 8 != 0 {
            return Err(EINVAL);
        }
        let wait = flags.contains(SendFlags::WAIT_FOR_COMPLETION);
        let zero = timeout.is_some_and(|t| t.as_millis() <= 0);
        if zero && !wait {
            return self.send_now(data);
        }
        self.check_may_sleep("send_synchronous_request")?;
        kernel::task::might_sleep();
        let d = packet::encode_simple(
            packet::TYPE_DATA_INBAND,
            if wait {
                packet::FLAG_COMPLETION_REQUESTED
            } else {
                0
            },
            0,
            data.len(),
        )
        .ok_or(EINVAL)?;
        if data.len() > self.tx.lock().max_packet_size as usize {
            return Err(EINVAL);
        }
        let total = d.len8 as usize * 8;
        let mut req = KVec::with_capacity(data.len(), GFP_KERNEL)?;
        req.extend_from_slice(data, GFP_KERNEL)?;
        let mut resp = KVec::with_capacity(response.len(), GFP_KERNEL)?;
        resp.resize(response.len(), 0, GFP_KERNEL)?;

        let (slot, gen, signal) = {
            let mut g = self.tx.lock();
            g.gate.send?;
            if zero
                && (g.queued != 0
                    || g.link.as_ref().map(|l| l.free()).unwrap_or(0) <= total as u32 + 8)
            {
                return Err(EAGAIN);
            }
            let slot = g.free_slots.pop().ok_or(EBUSY)?;
            let s = &mut g.slots[slot as usize];
            let gen = s.gen;
            s.since = sys::jiffies();
            s.owner = Some(TxOwner::Sync(SyncRequest {
                req,
                resp,
                wait,
                result: None,
            }));
            match self.submit(&mut g, Queued::Tx { slot, gen }) {
                Ok(s) => {
                    self.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                    (slot, gen, s.signal)
                }
                Err((e, _)) => {
                    g.free_slot(slot);
                    return Err(e);
                }
            }
        };
        if signal {
            self.signal_peer();
        }

        // A zero timeout governs ring space only: the request went in, so
        // its response is awaited like that of a request without a limit.
        let deadline = timeout.filter(|_| !zero).map(super::lifecycle::deadline);
        let mut g = self.tx.lock();
        loop {
            let s = &mut g.slots[slot as usize];
            if s.gen != gen {
                return Err(ENODEV);
            }
            let done = match s.owner.as_mut() {
                Some(TxOwner::Sync(r)) => {
                    if !r.wait && !s.queued && r.result.is_none() {
                        r.result = Some(Ok(0));
                    }
                    r.result.is_some()
                }
                _ => return Err(ENODEV),
            };
            if done {
                break;
            }
            if g.gate.abandon {
                g.free_slot(slot);
                drop(g);
                self.wake_waiters();
                return Err(ENODEV);
            }
            let left = match deadline {
                None => kernel::time::msecs_to_jiffies(1000),
                Some(dl) => {
                    let now = sys::jiffies();
                    if now >= dl {
                        // Freeing the slot moves its generation on: a late
                        // completion is refused. Over hv, Linux's requestor
                        // keeps its own slot until that completion comes.
                        g.free_slot(slot);
                        drop(g);
                        self.wake_waiters();
                        return Err(ETIMEDOUT);
                    }
                    (dl - now) as kernel::time::Jiffies
                }
            };
            match self.counted_wait(&mut g, |c, g| c.wait_interruptible_timeout(g, left)) {
                CondVarTimeoutResult::Signal { .. } => {
                    // Cancelled exactly as a timeout cancels it.
                    g.free_slot(slot);
                    drop(g);
                    self.wake_waiters();
                    return Err(ERESTARTSYS);
                }
                CondVarTimeoutResult::Timeout | CondVarTimeoutResult::Woken { .. } => {}
            }
        }
        let owner = g.slots[slot as usize].owner.take();
        // The slot's owner was taken above; free the slot itself.
        g.free_slot(slot);
        drop(g);
        self.wake_waiters();
        match owner {
            Some(TxOwner::Sync(r)) => {
                let n = r.result.unwrap_or(Err(ENODEV))?;
                response[..n].copy_from_slice(&r.resp[..n]);
                Ok(n)
            }
            _ => Err(ENODEV),
        }
    }

    /// The zero-timeout send without completion: into the ring now or
    /// `EAGAIN`. Allocates nothing, so it may be called in atomic context.
    fn send_now(&self, data: &[u8]) -> Result<usize> {
        self.send_raw_inband(data, 0).map(|()| 0)
    }

    /// Writes an in-band packet with transaction id `trans_id`, asking for no
    /// completion, into the ring now, or fails with `EAGAIN`. Allocates
    /// nothing. A kmcl addition, for protocols whose replies are in-band
    /// packets that echo the request's id (Hyper-V's integration
    /// components), and for peers that play the host in tests.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn send_inband_with_transaction_id(&self, data: &[u8], trans_id: u64) -> Result {
        self.send_raw_inband(data, trans_id)
    }

    pub(crate) fn send_raw_inband(&self, data: &[u8], trans_id: u64) -> Result {
        let out = OutPacket::simple(packet::TYPE_DATA_INBAND, 0, trans_id, data);
        out.descriptor().ok_or(EINVAL)?;
        let signal = {
            let mut g = self.tx.lock();
            g.gate.send?;
            if data.len() > g.max_packet_size as usize {
                return Err(EINVAL);
            }
            if g.queued != 0 {
                return Err(EAGAIN);
            }
            let link = g.link.as_mut().ok_or(ENODEV)?;
            match link.send(&out) {
                Ok(s) => s,
                Err(WriteError::Full(_)) => return Err(EAGAIN),
                Err(WriteError::Broken) => return Err(EIO),
                Err(WriteError::Gone) => return Err(ENODEV),
            }
        };
        self.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        if signal {
            self.signal_peer();
        }
        Ok(())
    }

    /// Waits in process context until every send of this channel has
    /// finished: no transaction in flight, nothing queued behind a full
    /// ring, and every completion routine returned. Fails with `ETIMEDOUT`
    /// when `timeout` runs out and with `ERESTARTSYS` on a pending signal.
    ///
    /// A driver that sent asynchronously waits here rather than polling its
    /// own counters.
    ///
    /// Context: process context only (`might_sleep()` is checked), a state
    /// callback included; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context (a completion
    /// routine would wait for itself).
    pub fn wait_sends_finished(&self, timeout: Delta) -> Result {
        self.check_may_sleep("wait_sends_finished")?;
        self.wait_until_interruptible(&self.tx, timeout, |g| {
            let (in_flight, queued) = g.outstanding();
            in_flight == 0 && queued == 0 && g.routines.idle()
        })
    }
}
