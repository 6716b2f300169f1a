// SPDX-License-Identifier: GPL-2.0

//! The receive path: draining the incoming ring in softirq or process
//! context, delivering packets to ProcessPacket, and deferred redelivery.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    incoming::{
        ChannelRef,
        IncomingPacket, //
    },
    rx::RxState,
    Channel,
    LockGuard,
    State, //
};
use crate::{
    transport::RecvLink,
    wire::packet::{
        self,
        Kind, //
    },
};

/// Packets delivered between two read-index publications.
const COMMIT_EVERY: u32 = 16;

/// Set in [`Channel::inline`] by the finish of the packet the drain has
/// inside ProcessPacket: the packet's buffer now belongs to the drain, which
/// returns it and lowers the outstanding count under its next trip through
/// the receive lock.
pub(super) const INLINE_DONE: u64 = 1 << 63;

/// A buffer the drain returns to the free slots under its next trip
/// through the receive lock: a handled completion's, or that of a packet
/// finished inside ProcessPacket (`finished`), which also leaves the
/// outstanding count then.
struct Spare {
    buf: KVec<u8>,
    finished: bool,
}

/// Why a drain pass ended.
#[derive(PartialEq, Eq)]
enum Stop {
    Empty,
    Blocked,
}

/// What a drain does after a pass.
#[derive(PartialEq, Eq)]
enum Next {
    /// Read on.
    Read,
    /// Call ProcessingComplete, then look at `drain_again`.
    Complete,
    /// Leave: delivering is cleared.
    Done,
}

impl Channel {
    /// Softirq work: flush the send queue, then drain the incoming ring
    /// unless the channel delivers at passive level.
    pub(crate) fn on_interrupt(&self) {
        self.flush_send_queue();
        self.drain(false);
    }

    /// Process-context work: deferred packets first, then, at passive level,
    /// the ring.
    pub(crate) fn run_passive(&self) {
        loop {
            let (pkt, cb) = {
                let mut g = self.rx.lock();
                if !g.enabled || g.deferred.is_empty() {
                    break;
                }
                let mut p = g.deferred.remove(0).ok();
                if let Some(p) = &mut p {
                    p.seq = g.next_seq;
                    g.next_seq += 1;
                    self.current.store(p.seq, Ordering::Relaxed);
                }
                // Counted under the same lock that saw delivery enabled:
                // `stop_delivery` waits for this call to return.
                g.redelivering += 1;
                (p, g.process.clone())
            };
            if let (Some(p), Some(cb)) = (pkt, cb) {
                cb.process_packet(self, p);
            }
            let mut g = self.rx.lock();
            self.current.store(0, Ordering::Relaxed);
            g.redelivering -= 1;
        }
        self.wake_waiters();
        if self.rx.lock().passive {
            self.flush_send_queue();
            self.drain(true);
        }
    }

    /// Delivery may proceed: called once Started.
    pub(crate) fn start_delivery(&self) {
        {
            // Enabled only while Started, under the control lock: a
            // teardown that raced in keeps delivery off.
            let g = self.inner.lock();
            if g.state == State::Started {
                self.rx.lock().enabled = true;
            }
        }
        self.kick_delivery();
        // Deferred packets from before a pause are redelivered too.
        let _ = crate::sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
    }

    /// Stops delivery and waits until no ProcessPacket or
    /// ProcessingComplete of this channel runs: none in the drain loop and
    /// none redelivering a deferred packet.
    pub(crate) fn stop_delivery(&self) {
        self.rx.lock().enabled = false;
        self.wait_until(&self.rx, |g| !g.delivering && g.redelivering == 0);
    }

    /// Waits until the driver has finished every packet it was given.
    ///
    /// Packets deferred to process context are kmcl's, not the driver's: they
    /// stay queued across a pause and are redelivered after Start, or
    /// dropped by a teardown.
    pub(crate) fn wait_incoming_finished(&self) {
        self.wait_until(&self.rx, |g| {
            g.held_by_driver() == 0 && !g.delivering && g.redelivering == 0
        });
    }

    /// Drains the incoming ring: completions are matched to their sends,
    /// data packets go to ProcessPacket. Runs in softirq context, or in
    /// process context at passive level; `passive` says which. In softirq
    /// context, a channel that delivers at passive level queues its passive
    /// work instead.
    fn drain(&self, passive: bool) {
        let cb = {
            let mut g = self.rx.lock();
            if g.passive && !passive {
                drop(g);
                let _ = crate::sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
                return;
            }
            if g.delivering {
                // Another context drains: it looks at the ring once more
                // before it leaves, so this interrupt is not lost.
                g.drain_again = true;
                return;
            }
            if !g.enabled {
                return;
            }
            let Some(link) = g.link.as_mut() else {
                return;
            };
            link.begin_read();
            g.delivering = true;
            g.drain_again = false;
            g.process.clone()
        };
        let Some(cb) = cb else {
            let keep = self.rx.lock().stop_delivering();
            drop(keep);
            return;
        };
        let keep = self.drain_passes(&*cb);
        self.wake_waiters();
        // The caller's `&self` stands for another reference: this is never
        // the channel's last.
        drop(keep);
    }

    /// The passes of [`Channel::drain`]: each reads until the ring is empty
    /// or delivery blocks, publishes the read index, unmasks, then calls
    /// ProcessingComplete for what it delivered. After the last pass the
    /// drain leaves, unless an interrupt came meanwhile. A pass ends under
    /// the hold of the receive lock that found the ring empty or delivery
    /// blocked, and one that delivered nothing leaves in it too. Returns the channel's reference on itself for its
    /// packets if none is left (`RxState::keep`), for the caller to drop.
    fn drain_passes(&self, cb: &dyn super::callbacks::ProcessPacket) -> Option<Arc<Channel>> {
        let mut batch = 0u32;
        let mut since_commit = 0u32;
        // The buffer of a completion just handled, back to the free slots
        // under the next packet's lock.
        let mut spare = None;
        let mut keep = None;
        loop {
            let stop = self.drain_one(cb, &mut batch, &mut spare);
            since_commit += 1;
            let Some((stop, held)) = stop else {
                if since_commit >= COMMIT_EVERY {
                    since_commit = 0;
                    let signal = self.rx.lock().link.as_mut().is_some_and(|l| l.commit());
                    if signal {
                        self.signal_peer();
                    }
                }
                continue;
            };
            since_commit = 0;
            let (signal, next) = {
                // The lock hold that stopped the pass ends it, unless it
                // was given up to log a refusal.
                let mut g = held.unwrap_or_else(|| self.rx.lock());
                let mut signal = false;
                let mut more = false;
                if let Some(link) = g.link.as_mut() {
                    signal = link.commit();
                    // Unmask; data that raced in is drained now, as no
                    // signal will come for it: masked again at once.
                    more = link.end_read() && stop == Stop::Empty;
                    if more {
                        link.begin_read();
                    }
                }
                let next = if more {
                    Next::Read
                } else if batch == 0 {
                    self.leave_or_again(&mut g, &mut keep)
                } else {
                    Next::Complete
                };
                (signal, next)
            };
            if signal {
                self.signal_peer();
            }
            match next {
                Next::Read => {}
                Next::Complete => {
                    cb.processing_complete(self, core::mem::take(&mut batch));
                    if self.leave_or_again(&mut self.rx.lock(), &mut keep) == Next::Done {
                        return keep;
                    }
                }
                Next::Done => return keep,
            }
        }
    }

    /// At the end of a pass, with the receive lock held: an interrupt that
    /// came while the pass ran found the ring being drained, so look again
    /// ([`Next::Read`]); otherwise stop delivering ([`Next::Done`]), and,
    /// with no packet left, move the channel's reference on itself for its
    /// packets to `keep`.
    fn leave_or_again(&self, g: &mut RxState, keep: &mut Option<Arc<Channel>>) -> Next {
        if core::mem::take(&mut g.drain_again) && g.enabled && !g.failed {
            if let Some(link) = g.link.as_mut() {
                link.begin_read();
                return Next::Read;
            }
        }
        self.current.store(0, Ordering::Relaxed);
        *keep = g.stop_delivering();
        Next::Done
    }

    /// Reads and handles one packet. `None`: go on; otherwise why the pass
    /// stops, with the receive lock still held unless it was given up.
    fn drain_one(
        &self,
        cb: &dyn super::callbacks::ProcessPacket,
        batch: &mut u32,
        spare: &mut Option<Spare>,
    ) -> Option<(Stop, Option<LockGuard<'_, RxState>>)> {
        let mut g = self.rx.lock();
        // A buffer handed back is the next packet's, as it would be from
        // the free slots, which it goes back to if the drain stops.
        let back = spare.take().map(|b| {
            if b.finished {
                g.outstanding -= 1;
                // This drain reads on: no kick needed.
                if g.stalled && g.outstanding < g.quota {
                    g.stalled = false;
                }
            }
            b.buf
        });
        // The previous packet's ProcessPacket has returned.
        self.current.store(0, Ordering::Relaxed);
        // `enabled` is cleared under the control lock when the channel
        // leaves Started: it stands for the state check.
        if !g.enabled || g.failed || g.outstanding >= g.quota {
            if let Some(b) = back {
                g.put_buf(b);
            }
            if g.enabled && !g.failed && !g.stalled {
                g.stalled = true;
                self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
            }
            return Some((Stop::Blocked, Some(g)));
        }
        let Some(mut buf) = back.or_else(|| g.take_buf()) else {
            g.stalled = true;
            self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
            return Some((Stop::Blocked, Some(g)));
        };
        let ctx = g.ctx_size;
        let limits = g.limits;
        let room = buf.len() - ctx;
        let read = match g.link.as_mut() {
            Some(link) => link.read(&mut buf[..room]),
            None => Ok(None),
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) => {
                g.put_buf(buf);
                return Some((Stop::Empty, Some(g)));
            }
            Err(e) => {
                g.put_buf(buf);
                self.refuse_incoming(g, "incoming ring refused", &e);
                return Some((Stop::Blocked, None));
            }
        };
        let parsed = packet::parse(&buf[..n], &limits).and_then(|p| {
            // A transfer-page packet must name a registered receive buffer
            // and stay inside it (channel/xfer.rs).
            let xfer = match &p.kind {
                Kind::XferPages(x) => Some(g.xfer.admit(x).map_err(packet::PacketError::Xfer)?),
                _ => None,
            };
            Ok((
                p.desc,
                matches!(p.kind, Kind::Completion),
                matches!(p.kind, Kind::GpaDirect(_)),
                p.payload_offset,
                xfer,
            ))
        });
        let (desc, is_completion, external, payload_offset, xfer) = match parsed {
            Ok(v) => v,
            Err(e) => {
                g.put_buf(buf);
                self.refuse_incoming(g, "malformed packet from the peer", &e);
                return Some((Stop::Blocked, None));
            }
        };
        // Pipe mode (channel/pipe.rs): an in-band packet's pipe header is
        // checked and stripped.
        let in_band = !is_completion && !external && xfer.is_none();
        let (payload_offset, n) = match super::pipe::strip(g.pipe, in_band, &buf, payload_offset, n)
        {
            Ok(v) => v,
            Err(e) => {
                g.put_buf(buf);
                self.refuse_incoming(g, "malformed pipe header from the peer", &e);
                return Some((Stop::Blocked, None));
            }
        };
        if is_completion {
            // Through the transport's own id mapping (Linux's requestor on
            // hv); an id it does not know maps to 0, which no send has.
            let id = g
                .link
                .as_mut()
                .and_then(|l| l.completion_id(desc.trans_id))
                .unwrap_or(0);
            drop(g);
            self.stats
                .completions_received
                .fetch_add(1, Ordering::Relaxed);
            self.on_completion(id, &buf[payload_offset..n]);
            *spare = Some(Spare {
                buf,
                finished: false,
            });
            return None;
        }
        g.outstanding += 1;
        // The packet reaches the channel through `keep`, set while it is
        // counted (`ChannelRef`); the drain's other packets share it.
        if g.keep.is_none() {
            g.keep = Some(self.arc());
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        self.current.store(seq, Ordering::Relaxed);
        drop(g);
        self.stats.packets_received.fetch_add(1, Ordering::Relaxed);
        if ctx != 0 {
            let len = buf.len();
            buf[len - ctx..].fill(0);
        }
        *batch += 1;
        // Where the buffer is, for a finish inside ProcessPacket that hands
        // it back through `inline`.
        let raw = (buf.as_mut_ptr(), buf.len(), buf.capacity());
        self.inline.store(seq, Ordering::Relaxed);
        let pkt = IncomingPacket {
            // SAFETY: the packet was counted in `outstanding`, and `keep`
            // set, under the receive lock just released.
            chan: unsafe { ChannelRef::new(self) },
            buf: Some(buf),
            len: n,
            payload_offset,
            trans_id: desc.trans_id,
            completion_requested: desc.flags & packet::FLAG_COMPLETION_REQUESTED != 0,
            external,
            seq,
            limits,
            ctx_size: ctx,
            xfer: core::mem::ManuallyDrop::new(xfer),
        };
        cb.process_packet(self, pkt);
        // From here on the packet can no longer be deferred.
        let _ = self
            .current
            .compare_exchange(seq, 0, Ordering::Release, Ordering::Relaxed);
        // From here on a finish takes the receive lock, unless it already
        // handed the packet back.
        if let Err(v) = self
            .inline
            .compare_exchange(seq, 0, Ordering::Acquire, Ordering::Acquire)
        {
            if v == seq | INLINE_DONE {
                self.inline.store(0, Ordering::Relaxed);
                // SAFETY: `raw` are the parts of the packet's buffer, which
                // nothing resizes while a packet holds it. The finish that
                // set `INLINE_DONE` for this packet's sequence number (each
                // delivery has its own) gave the buffer up without freeing
                // it and touches it no more: it belongs to this drain now,
                // and the `Acquire` above orders the finisher's writes
                // before its reuse.
                let buf = unsafe { KVec::from_raw_parts(raw.0, raw.1, raw.2) };
                *spare = Some(Spare {
                    buf,
                    finished: true,
                });
            }
        }
        None
    }

    /// Stops the incoming queue on input the peer got wrong: counted before
    /// the queue is seen stopped, logged once the lock is dropped.
    fn refuse_incoming(
        &self,
        mut g: LockGuard<'_, RxState>,
        what: &str,
        error: &dyn core::fmt::Debug,
    ) {
        self.stats.malformed_packets.fetch_add(1, Ordering::Relaxed);
        g.failed = true;
        drop(g);
        pr_err!(
            "channel {}: {} ({:?}); queue stopped\n",
            self.id(),
            what,
            error
        );
    }
}
