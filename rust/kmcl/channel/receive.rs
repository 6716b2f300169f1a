// SPDX-License-Identifier: GPL-2.0

//! The receive path: draining the incoming ring in softirq or process
//! context, delivering packets to ProcessPacket, and deferred redelivery.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::{
        lock::{
            spinlock::SpinLockIrqBackend,
            Guard, //
        },
        Arc, //
    },
};

use super::{
    incoming::IncomingPacket,
    Channel,
    Inner,
    State, //
};
use crate::{
    transport::Link,
    wire::packet::{
        self,
        Kind, //
    },
};

/// Packets delivered between two read-index publications.
const COMMIT_EVERY: u32 = 16;

/// Why a drain pass ended.
#[derive(PartialEq, Eq)]
enum Stop {
    Empty,
    Blocked,
}

impl Channel {
    /// Softirq work: flush the send queue, then drain the incoming ring
    /// unless the channel delivers at passive level.
    pub(crate) fn on_interrupt(&self) {
        self.flush_send_queue();
        let passive = self.inner.lock().rx.passive;
        if passive {
            let _ = crate::sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
        } else {
            self.drain();
        }
    }

    /// Process-context work: deferred packets first, then, at passive level,
    /// the ring.
    pub(crate) fn run_passive(&self) {
        loop {
            let (pkt, cb) = {
                let mut g = self.inner.lock();
                if !g.rx.enabled || g.rx.deferred.is_empty() {
                    break;
                }
                let mut p = g.rx.deferred.remove(0).ok();
                if let Some(p) = &mut p {
                    p.seq = g.rx.next_seq;
                    g.rx.next_seq += 1;
                    self.current.store(p.seq, Ordering::Relaxed);
                }
                // Counted under the same lock that saw delivery enabled:
                // `stop_delivery` waits for this call to return.
                g.rx.redelivering += 1;
                (p, g.cfg.process.clone())
            };
            if let (Some(p), Some(cb)) = (pkt, cb) {
                cb.process_packet(self, p);
            }
            let mut g = self.inner.lock();
            self.current.store(0, Ordering::Relaxed);
            g.rx.redelivering -= 1;
        }
        self.wake_waiters();
        if self.inner.lock().rx.passive {
            self.flush_send_queue();
            self.drain();
        }
    }

    /// Delivery may proceed: called once Started.
    pub(crate) fn start_delivery(&self) {
        self.inner.lock().rx.enabled = true;
        self.kick_delivery();
        // Deferred packets from before a pause are redelivered too.
        let _ = crate::sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
    }

    /// Stops delivery and waits until no ProcessPacket or
    /// ProcessingComplete of this channel runs: none in the drain loop and
    /// none redelivering a deferred packet.
    pub(crate) fn stop_delivery(&self) {
        self.inner.lock().rx.enabled = false;
        self.wait_until(|g| !g.rx.delivering && g.rx.redelivering == 0);
    }

    /// Waits until the driver has finished every packet it was given.
    ///
    /// Packets deferred to process context are kmcl's, not the driver's: they
    /// stay queued across a pause and are redelivered after Start, or
    /// dropped by a teardown.
    pub(crate) fn wait_incoming_finished(&self) {
        self.wait_until(|g| {
            g.rx.held_by_driver() == 0 && !g.rx.delivering && g.rx.redelivering == 0
        });
    }

    /// Drains the incoming ring: completions are matched to their sends,
    /// data packets go to ProcessPacket. Runs in softirq context, or in
    /// process context at passive level.
    fn drain(&self) {
        let cb = {
            let mut g = self.inner.lock();
            if g.rx.delivering {
                // Another context drains: it looks at the ring once more
                // before it leaves, so this interrupt is not lost.
                g.rx.drain_again = true;
                return;
            }
            if !g.rx.enabled || g.att.is_none() {
                return;
            }
            g.rx.delivering = true;
            g.rx.drain_again = false;
            if let Some(att) = g.att.as_mut() {
                att.begin_read();
            }
            g.cfg.process.clone()
        };
        let Some(cb) = cb else {
            self.inner.lock().rx.delivering = false;
            return;
        };
        loop {
            self.drain_pass(&*cb);
            let mut g = self.inner.lock();
            // An interrupt that came while this pass ran found the ring
            // being drained; look again before leaving.
            if core::mem::take(&mut g.rx.drain_again) && g.rx.enabled && !g.rx.failed {
                if let Some(att) = g.att.as_mut() {
                    att.begin_read();
                    continue;
                }
            }
            self.current.store(0, Ordering::Relaxed);
            g.rx.delivering = false;
            break;
        }
        self.wake_waiters();
    }

    /// One pass of [`Channel::drain`]: reads until the ring is empty or
    /// delivery blocks, then calls ProcessingComplete for what it delivered.
    fn drain_pass(&self, cb: &dyn super::callbacks::ProcessPacket) {
        let mut batch = 0u32;
        let mut since_commit = 0u32;
        loop {
            let stop = self.drain_one(cb, &mut batch);
            since_commit += 1;
            let mut signal = false;
            if stop.is_some() || since_commit >= COMMIT_EVERY {
                since_commit = 0;
                let mut g = self.inner.lock();
                if let Some(att) = g.att.as_mut() {
                    signal = att.commit();
                }
            }
            if signal {
                self.signal_peer();
            }
            match stop {
                None => continue,
                Some(Stop::Empty) => {
                    // Unmask; data that raced in is drained now, as no
                    // signal will come for it.
                    let more = {
                        let mut g = self.inner.lock();
                        g.att.as_mut().map(|a| a.end_read()).unwrap_or(false)
                    };
                    if more {
                        if let Some(att) = self.inner.lock().att.as_mut() {
                            att.begin_read();
                        }
                        continue;
                    }
                    break;
                }
                Some(Stop::Blocked) => {
                    let mut g = self.inner.lock();
                    if let Some(att) = g.att.as_mut() {
                        let _ = att.end_read();
                    }
                    break;
                }
            }
        }
        if batch > 0 {
            cb.processing_complete(self, batch);
        }
    }

    /// Reads and handles one packet. `None`: go on.
    fn drain_one(&self, cb: &dyn super::callbacks::ProcessPacket, batch: &mut u32) -> Option<Stop> {
        let mut g = self.inner.lock();
        // The previous packet's ProcessPacket has returned.
        self.current.store(0, Ordering::Relaxed);
        if !g.rx.enabled || g.rx.failed || g.state != State::Started {
            return Some(Stop::Blocked);
        }
        if g.rx.outstanding >= g.rx.quota {
            if !g.rx.stalled {
                g.rx.stalled = true;
                self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
            }
            return Some(Stop::Blocked);
        }
        let Some(mut buf) = g.rx.take_buf() else {
            g.rx.stalled = true;
            self.stats.quota_stalls.fetch_add(1, Ordering::Relaxed);
            return Some(Stop::Blocked);
        };
        let ctx = g.rx.ctx_size;
        let limits = g.rx.limits;
        let room = buf.len() - ctx;
        let read = match g.att.as_mut() {
            Some(att) => att.read(&mut buf[..room]),
            None => Ok(None),
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) => {
                g.rx.put_buf(buf);
                return Some(Stop::Empty);
            }
            Err(e) => {
                g.rx.put_buf(buf);
                self.refuse_incoming(g, "incoming ring refused", &e);
                return Some(Stop::Blocked);
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
                g.rx.put_buf(buf);
                self.refuse_incoming(g, "malformed packet from the peer", &e);
                return Some(Stop::Blocked);
            }
        };
        if is_completion {
            // Through the transport's own id mapping (Linux's requestor on
            // hv); an id it does not know maps to 0, which no send has.
            let id = g
                .att
                .as_mut()
                .and_then(|a| a.completion_id(desc.trans_id))
                .unwrap_or(0);
            drop(g);
            self.stats
                .completions_received
                .fetch_add(1, Ordering::Relaxed);
            self.on_completion(id, &buf[payload_offset..n]);
            self.inner.lock().rx.put_buf(buf);
            return None;
        }
        g.rx.outstanding += 1;
        let seq = g.rx.next_seq;
        g.rx.next_seq += 1;
        self.current.store(seq, Ordering::Relaxed);
        drop(g);
        self.stats.packets_received.fetch_add(1, Ordering::Relaxed);
        let len = buf.len();
        buf[len - ctx..].fill(0);
        *batch += 1;
        let pkt = IncomingPacket {
            chan: self.arc(),
            buf: Some(buf),
            len: n,
            payload_offset,
            trans_id: desc.trans_id,
            completion_requested: desc.flags & packet::FLAG_COMPLETION_REQUESTED != 0,
            external,
            seq,
            limits,
            ctx_size: ctx,
            xfer,
        };
        cb.process_packet(self, pkt);
        // From here on the packet can no longer be deferred.
        let _ = self
            .current
            .compare_exchange(seq, 0, Ordering::Release, Ordering::Relaxed);
        None
    }

    /// Stops the incoming queue on input the peer got wrong: counted before
    /// the queue is seen stopped, logged once the lock is dropped.
    fn refuse_incoming(
        &self,
        mut g: Guard<'_, Inner, SpinLockIrqBackend>,
        what: &str,
        error: &dyn core::fmt::Debug,
    ) {
        self.stats.malformed_packets.fetch_add(1, Ordering::Relaxed);
        g.rx.failed = true;
        drop(g);
        pr_err!(
            "channel {}: {} ({:?}); queue stopped\n",
            self.id(),
            what,
            error
        );
    }
}
