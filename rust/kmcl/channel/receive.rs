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
    transport::{
        LinkReader,
        RecvLink, //
    },
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

/// What a drain copies of the receive state as it starts: set while the
/// channel is Disabled, so they hold for the whole drain.
struct DrainParams {
    limits: packet::Limits,
    /// The size of the driver's context area behind each packet.
    ctx: usize,
    /// The bytes of a slot that hold the packet.
    room: usize,
    /// Pipe mode.
    pipe: bool,
}

/// Why a drain pass ended.
#[derive(PartialEq, Eq)]
enum Stop {
    Empty,
    Blocked,
}

/// What a drain does after a pass.
enum Next {
    /// Read on.
    Read,
    /// Call ProcessingComplete, then look at `drain_again`.
    Complete,
    /// Leave: delivering is cleared. With the channel's reference on
    /// itself for its packets if none is left (`RxState::keep`), to be
    /// dropped once the receive lock is released.
    Done(Option<Arc<Channel>>),
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
                if !self.rxc.enabled() || g.deferred.is_empty() {
                    break;
                }
                let mut p = g.deferred.remove(0).ok();
                if let Some(p) = &mut p {
                    p.seq = self.rxc.next_seq();
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

    /// Allows or stops delivery, under the receive lock (`RxCounters`).
    pub(crate) fn set_rx_enabled(&self, on: bool) {
        let _g = self.rx.lock();
        self.rxc.enabled.store(on, Ordering::Relaxed);
    }

    /// Delivery may proceed: called once Started.
    pub(crate) fn start_delivery(&self) {
        {
            // Enabled only while Started, under the control lock: a
            // teardown that raced in keeps delivery off.
            let g = self.inner.lock();
            if g.state == State::Started {
                self.set_rx_enabled(true);
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
        self.set_rx_enabled(false);
        self.wait_until(&self.rx, |g| !g.delivering && g.redelivering == 0);
    }

    /// Waits until the driver has finished every packet it was given.
    ///
    /// Packets deferred to process context are kmcl's, not the driver's: they
    /// stay queued across a pause and are redelivered after Start, or
    /// dropped by a teardown.
    pub(crate) fn wait_incoming_finished(&self) {
        self.wait_until(&self.rx, |g| {
            g.held_by_driver(&self.rxc) == 0 && !g.delivering && g.redelivering == 0
        });
    }

    /// Drains the incoming ring: completions are matched to their sends,
    /// data packets go to ProcessPacket. Runs in softirq context, or in
    /// process context at passive level; `passive` says which. In softirq
    /// context, a channel that delivers at passive level queues its passive
    /// work instead.
    fn drain(&self, passive: bool) {
        let (cb, link, params, first) = {
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
            if !self.rxc.enabled() {
                return;
            }
            let Some(cb) = g.process.clone() else {
                return;
            };
            // The link is this drain's until it stops delivering.
            let Some(mut link) = g.link.take() else {
                return;
            };
            link.begin_read();
            g.delivering = true;
            g.drain_again = false;
            let params = DrainParams {
                limits: g.limits,
                ctx: g.ctx_size,
                room: g.packet_room(),
                pipe: g.pipe,
            };
            // The first packet's slot, taken under this hold.
            let first = g.take_buf().map(|buf| Spare {
                buf,
                finished: false,
            });
            (cb, link, params, first)
        };
        let keep = self.drain_passes(&*cb, link, &params, first);
        self.wake_waiters();
        // The caller's `&self` stands for another reference: this is never
        // the channel's last. Tested here, so that the common `None` costs
        // no call.
        if let Some(keep) = keep {
            drop(keep);
        }
    }

    /// The passes of [`Channel::drain`]: each reads until the ring is empty
    /// or delivery blocks, publishes the read index, unmasks, then calls
    /// ProcessingComplete for what it delivered. After the last pass the
    /// drain leaves, unless an interrupt came meanwhile. A pass ends under
    /// the hold of the receive lock that found the ring empty or delivery
    /// blocked, and one that delivered nothing leaves in it too. Returns the channel's reference on itself for its
    /// packets if none is left (`RxState::keep`), for the caller to drop.
    fn drain_passes(
        &self,
        cb: &dyn super::callbacks::ProcessPacket,
        mut link: LinkReader,
        p: &DrainParams,
        first: Option<Spare>,
    ) -> Option<Arc<Channel>> {
        let mut batch = 0u32;
        let mut since_commit = 0u32;
        // The slot for the next packet: the buffer of a completion just
        // handled or of a packet handed back, back to the free slots when
        // a pass stops.
        let mut spare = first;
        // Whether `RxState::keep` was seen set since this drain began.
        let mut kept = false;
        loop {
            let stop = self.drain_one(cb, &mut link, p, &mut batch, &mut spare, &mut kept);
            since_commit += 1;
            let Some((stop, held)) = stop else {
                if since_commit >= COMMIT_EVERY {
                    since_commit = 0;
                    if link.commit() {
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
                let signal = link.commit();
                // Unmask; data that raced in is drained now, as no signal
                // will come for it: masked again at once.
                let more = link.end_read() && stop == Stop::Empty;
                if more {
                    link.begin_read();
                }
                let next = if more {
                    Next::Read
                } else if batch == 0 {
                    self.leave_or_again(&mut g, &mut link)
                } else {
                    Next::Complete
                };
                if let Next::Done(keep) = next {
                    // Back under the hold that clears `delivering`.
                    g.link = Some(link);
                    drop(g);
                    if signal {
                        self.signal_peer();
                    }
                    return keep;
                }
                (signal, next)
            };
            if signal {
                self.signal_peer();
            }
            if matches!(next, Next::Complete) {
                cb.processing_complete(self, core::mem::take(&mut batch));
                let mut g = self.rx.lock();
                if let Next::Done(keep) = self.leave_or_again(&mut g, &mut link) {
                    g.link = Some(link);
                    return keep;
                }
            }
        }
    }

    /// At the end of a pass, with the receive lock held: an interrupt that
    /// came while the pass ran found the ring being drained, so look again
    /// ([`Next::Read`]); otherwise stop delivering ([`Next::Done`]), with,
    /// if no packet is left, the channel's reference on itself for its
    /// packets.
    fn leave_or_again(&self, g: &mut RxState, link: &mut LinkReader) -> Next {
        if core::mem::take(&mut g.drain_again) && self.rxc.enabled() && !self.rxc.failed() {
            link.begin_read();
            return Next::Read;
        }
        self.current.store(0, Ordering::Relaxed);
        Next::Done(g.stop_delivering(&self.rxc))
    }

    /// Reads and handles one packet, without the receive lock unless it
    /// must take a slot from the free ones, admit a transfer-page packet or
    /// stop. `None`: go on; otherwise why the pass stops, with the receive
    /// lock still held unless it was given up.
    fn drain_one(
        &self,
        cb: &dyn super::callbacks::ProcessPacket,
        link: &mut LinkReader,
        p: &DrainParams,
        batch: &mut u32,
        spare: &mut Option<Spare>,
        kept: &mut bool,
    ) -> Option<(Stop, Option<LockGuard<'_, RxState>>)> {
        let c = &self.rxc;
        // A buffer handed back is the next packet's, as it would be from
        // the free slots, which it goes back to if the drain stops.
        let back = spare.take().map(|b| {
            if b.finished {
                // This drain reads on: no kick needed.
                c.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            b.buf
        });
        // `enabled` is cleared under the control lock when the channel
        // leaves Started: it stands for the state check.
        if !c.may_deliver() {
            return Some((Stop::Blocked, Some(self.blocked(back))));
        }
        let mut buf = match back {
            Some(b) => b,
            None => {
                let mut g = self.rx.lock();
                match g.take_buf() {
                    Some(b) => b,
                    None => {
                        // A finish returns its slot under this lock and
                        // sees `stalled`.
                        g.stalled = true;
                        self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
                        return Some((Stop::Blocked, Some(g)));
                    }
                }
            }
        };
        let n = match link.read(&mut buf[..p.room]) {
            Ok(Some(n)) => n,
            Ok(None) => {
                let mut g = self.rx.lock();
                g.put_buf(buf);
                return Some((Stop::Empty, Some(g)));
            }
            Err(e) => {
                let mut g = self.rx.lock();
                g.put_buf(buf);
                self.refuse_incoming(g, "incoming ring refused", &e);
                return Some((Stop::Blocked, None));
            }
        };
        let parsed = packet::parse(&buf[..n], &p.limits).and_then(|pk| {
            // A transfer-page packet must name a registered receive buffer
            // and stay inside it (channel/xfer.rs).
            let xfer = match &pk.kind {
                Kind::XferPages(x) => Some(
                    self.rx
                        .lock()
                        .xfer
                        .admit(x)
                        .map_err(packet::PacketError::Xfer)?,
                ),
                _ => None,
            };
            Ok((
                pk.desc,
                matches!(pk.kind, Kind::Completion),
                matches!(pk.kind, Kind::GpaDirect(_)),
                pk.payload_offset,
                xfer,
            ))
        });
        let (desc, is_completion, external, payload_offset, xfer) = match parsed {
            Ok(v) => v,
            Err(e) => {
                let mut g = self.rx.lock();
                g.put_buf(buf);
                self.refuse_incoming(g, "malformed packet from the peer", &e);
                return Some((Stop::Blocked, None));
            }
        };
        // Pipe mode (channel/pipe.rs): an in-band packet's pipe header is
        // checked and stripped.
        let in_band = !is_completion && !external && xfer.is_none();
        let (payload_offset, n) = match super::pipe::strip(p.pipe, in_band, &buf, payload_offset, n)
        {
            Ok(v) => v,
            Err(e) => {
                let mut g = self.rx.lock();
                // Under the lock, as every release of a receive buffer.
                drop(xfer);
                g.put_buf(buf);
                self.refuse_incoming(g, "malformed pipe header from the peer", &e);
                return Some((Stop::Blocked, None));
            }
        };
        if is_completion {
            // Through the transport's own id mapping (Linux's requestor on
            // hv); an id it does not know maps to 0, which no send has.
            let id = link.completion_id(desc.trans_id).unwrap_or(0);
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
        // The packet reaches the channel through `keep` (`ChannelRef`),
        // which no one but this drain takes while it delivers: seen set
        // once, it stays so until the drain stops.
        if !*kept {
            let mut g = self.rx.lock();
            if g.keep.is_none() {
                g.keep = Some(self.arc());
            }
            *kept = true;
        }
        // Counted by the delivering context alone (`RxCounters`).
        c.outstanding.fetch_add(1, Ordering::Relaxed);
        let seq = c.next_seq();
        self.current.store(seq, Ordering::Relaxed);
        self.stats.packets_received.fetch_add(1, Ordering::Relaxed);
        let ctx = p.ctx;
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
            // SAFETY: the packet was counted in `outstanding` by this
            // drain, which is delivering and saw `keep` set under the
            // receive lock; it stays so while the count is not zero
            // (`RxState::keep`).
            chan: unsafe { ChannelRef::new(self) },
            buf: Some(buf),
            len: n,
            payload_offset,
            trans_id: desc.trans_id,
            completion_requested: desc.flags & packet::FLAG_COMPLETION_REQUESTED != 0,
            external,
            seq,
            limits: p.limits,
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

    /// The drain may deliver nothing more now: returns the handed-back
    /// buffer to the free slots and marks a stall for a finish to restart,
    /// under the receive lock, which it returns held. A finish that made
    /// room between the check without the lock and this one ran under the
    /// same lock and saw no stall: then the drain looks again instead.
    fn blocked(&self, back: Option<KVec<u8>>) -> LockGuard<'_, RxState> {
        let c = &self.rxc;
        let mut g = self.rx.lock();
        if let Some(b) = back {
            g.put_buf(b);
        }
        if c.enabled() && !c.failed() {
            if c.below_quota() {
                g.drain_again = true;
            } else if !g.stalled {
                g.stalled = true;
                self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
            }
        }
        g
    }

    /// Stops the incoming queue on input the peer got wrong: counted before
    /// the queue is seen stopped, logged once the lock is dropped.
    fn refuse_incoming(&self, g: LockGuard<'_, RxState>, what: &str, error: &dyn core::fmt::Debug) {
        self.stats.malformed_packets.fetch_add(1, Ordering::Relaxed);
        self.rxc.failed.store(true, Ordering::Relaxed);
        drop(g);
        pr_err!(
            "channel {}: {} ({:?}); queue stopped\n",
            self.id(),
            what,
            error
        );
    }
}
