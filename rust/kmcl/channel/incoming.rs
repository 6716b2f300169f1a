// SPDX-License-Identifier: GPL-2.0

//! The receive path: draining the incoming ring, delivering packets, and the
//! completion token that the driver must finish exactly once.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc, //
};

pub use super::external::ExternalData;
use super::{
    outgoing::Queued,
    Channel,
    Sizing,
    State, //
};
use crate::wire::packet::{
    self,
    Kind,
    Limits, //
};

/// Flag of [`super::callbacks::ProcessPacket::process_packet`]: the packet
/// references external data (`VMBUS_CHANNEL_PROCESS_PACKET_FLAGS`).
pub const PROCESS_PACKET_FLAG_EXTERNAL_DATA: u32 = 0x1;

/// Packets delivered between two read-index publications.
const COMMIT_EVERY: u32 = 16;

/// Receive-side state, under the channel lock.
pub(crate) struct RxState {
    /// Free incoming buffers, each `slot_size` bytes long.
    free: KVec<KVec<u8>>,
    slot_size: usize,
    ctx_size: usize,
    slots: u32,
    pub(crate) limits: Limits,
    /// Packets delivered to the driver and not finished.
    pub(crate) outstanding: u32,
    pub(crate) quota: u32,
    pub(crate) passive: bool,
    /// Delivery is allowed (Started and not paused or closing).
    pub(crate) enabled: bool,
    /// A context is draining the ring.
    pub(crate) delivering: bool,
    /// Delivery stopped for lack of quota or slots; a completion restarts it.
    pub(crate) stalled: bool,
    /// PacketFail or a malformed packet stopped the queue.
    pub(crate) failed: bool,
    /// Packets deferred to process context.
    deferred: KVec<IncomingPacket>,
    /// Deferred packets being redelivered in process context now: driver
    /// calls outside the drain loop that Pause and teardown wait for.
    pub(crate) redelivering: u32,
    /// Sequence number of the packet inside ProcessPacket, 0 if none.
    current: u64,
    next_seq: u64,
}

impl RxState {
    pub(crate) fn new() -> Self {
        Self {
            free: KVec::new(),
            slot_size: 0,
            ctx_size: 0,
            slots: 0,
            limits: Limits {
                max_payload: 0,
                max_ranges: 0,
                max_external_bytes: 0,
            },
            outstanding: 0,
            quota: u32::MAX,
            passive: false,
            enabled: false,
            delivering: false,
            stalled: false,
            failed: false,
            deferred: KVec::new(),
            redelivering: 0,
            current: 0,
            next_seq: 1,
        }
    }

    /// Preallocates the incoming slots for an Enable.
    ///
    /// A slot holds the largest packet the channel accepts (descriptor, GPA
    /// ranges, payload) and, behind it, the driver's context area. The same
    /// buffer later carries the packet's completion.
    /// Allocates: call without the channel lock.
    pub(crate) fn prepare(&mut self, cfg: &Sizing) -> Result {
        let ranges = cfg.max_external_chain as usize
            * (8 + 8 * (cfg.max_external_bytes as usize / 4096 + 2));
        let pkt = packet::DESCRIPTOR_SIZE
            + packet::GPA_HEADER_SIZE
            + ranges
            + packet::align8(cfg.max_packet_size as usize);
        self.ctx_size = packet::align8(cfg.client_context_size as usize);
        self.slot_size = pkt + self.ctx_size;
        self.limits = Limits {
            max_payload: cfg.max_packet_size,
            max_ranges: cfg.max_external_chain,
            max_external_bytes: cfg.max_external_bytes,
        };
        self.slots = cfg.incoming_slots;
        self.free = KVec::with_capacity(self.slots as usize, GFP_KERNEL)?;
        self.deferred = KVec::with_capacity(self.slots as usize, GFP_KERNEL)?;
        for _ in 0..self.slots {
            let mut b = KVec::with_capacity(self.slot_size, GFP_KERNEL)?;
            b.resize(self.slot_size, 0, GFP_KERNEL)?;
            // Cannot fail: the capacity was reserved above.
            let _ = self.free.push_within_capacity(b);
        }
        self.outstanding = 0;
        self.enabled = false;
        self.stalled = false;
        self.failed = false;
        Ok(())
    }

    /// Bytes of a slot that hold the packet (the rest is the driver's
    /// context area).
    pub(crate) fn packet_room(&self) -> usize {
        self.slot_size - self.ctx_size
    }

    /// Frees the slots when the channel goes back to Disabled.
    pub(crate) fn release(&mut self) {
        self.free = KVec::new();
        self.deferred = KVec::new();
    }

    /// Releases packets still waiting for process context after a teardown.
    ///
    /// The peer gets no completion for them: the channel is closing.
    pub(crate) fn drop_deferred(&mut self) {
        while let Some(mut p) = self.deferred.pop() {
            if let Some(buf) = p.buf.take() {
                let _ = self.free.push_within_capacity(buf);
            }
            self.outstanding = self.outstanding.saturating_sub(1);
        }
    }

    /// Packets the driver holds: delivered, not finished, and not waiting in
    /// kmcl's deferred queue.
    pub(crate) fn held_by_driver(&self) -> u32 {
        self.outstanding - self.deferred.len() as u32
    }

    pub(crate) fn take_buf(&mut self) -> Option<KVec<u8>> {
        self.free.pop()
    }

    pub(crate) fn put_buf(&mut self, buf: KVec<u8>) {
        // The slot count is fixed, so there is always room.
        let _ = self.free.push_within_capacity(buf);
    }

    /// Incoming packets not in the free pool: held by the driver, deferred,
    /// or carrying a queued completion.
    pub(crate) fn in_use(&self) -> u32 {
        self.slots - self.free.len() as u32
    }

    /// The number of slots.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }
}

/// An incoming packet handed to ProcessPacket (`VMBPACKETCOMPLETION`).
///
/// It must be finished exactly once: [`IncomingPacket::complete`] (KMCL's
/// `VmbChannelPacketComplete`), [`IncomingPacket::fail`]
/// (`VmbChannelPacketFail`) or [`IncomingPacket::defer_to_passive`]
/// (`VmbChannelPacketDeferToPassive`). Dropping it unfinished is a driver bug:
/// kmcl logs it and completes the packet with an empty payload, so that the
/// peer is not left waiting.
#[must_use = "an incoming packet must be completed, failed or deferred"]
pub struct IncomingPacket {
    chan: Arc<Channel>,
    buf: Option<KVec<u8>>,
    len: usize,
    payload_offset: usize,
    trans_id: u64,
    completion_requested: bool,
    external: bool,
    seq: u64,
    /// Limits of the channel when the packet arrived, so that finishing it
    /// needs no extra trip through the channel lock.
    limits: Limits,
    ctx_size: usize,
}

/// [`IncomingPacket::defer_to_passive`] was called outside ProcessPacket; the
/// packet is handed back.
pub struct DeferError(pub IncomingPacket);

impl IncomingPacket {
    /// The payload, without the VMBus and library headers.
    pub fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.payload_offset..self.len],
            None => &[],
        }
    }

    /// Flags: [`PROCESS_PACKET_FLAG_EXTERNAL_DATA`] or 0.
    pub fn flags(&self) -> u32 {
        if self.external {
            PROCESS_PACKET_FLAG_EXTERNAL_DATA
        } else {
            0
        }
    }

    /// The peer's transaction id (0 if it asked for no completion).
    pub fn transaction_id(&self) -> u64 {
        self.trans_id
    }

    /// Whether the peer asked for a completion packet.
    pub fn completion_requested(&self) -> bool {
        self.completion_requested
    }

    /// The per-packet scratch area of the size set with
    /// [`Channel::init_set_client_context_size`], zeroed for each packet.
    pub fn context(&mut self) -> &mut [u8] {
        let ctx = self.ctx_size;
        match &mut self.buf {
            Some(b) => {
                let end = b.len();
                &mut b[end - ctx..end]
            }
            None => &mut [],
        }
    }

    /// The external memory the packet describes
    /// (`VmbChannelPacketGetExternalData`); `None` without
    /// [`PROCESS_PACKET_FLAG_EXTERNAL_DATA`].
    pub fn external_data(&self) -> Option<ExternalData<'_>> {
        if !self.external {
            return None;
        }
        let b = self.buf.as_ref()?;
        match packet::parse(&b[..self.len], &self.limits).ok()?.kind {
            Kind::GpaDirect(ranges) => Some(ExternalData::new(ranges, &self.chan, self.trans_id)),
            _ => None,
        }
    }

    /// The channel the packet arrived on.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Finishes the packet (`VmbChannelPacketComplete`): releases it and, if
    /// the peer asked for one, sends a completion carrying `response`. A
    /// response larger than the maximum packet size is refused with `EINVAL`
    /// and the completion goes out empty. If the ring is full, the completion
    /// is queued and sent when space frees; it is never lost. Callable from
    /// any context.
    pub fn complete(mut self, response: &[u8]) -> Result {
        self.finish_with(Some(response))
    }

    /// Finishes the packet by sending `reply` as a new in-band packet that
    /// carries the request's transaction id, and no completion packet. This
    /// is how Hyper-V's integration-component protocols (heartbeat,
    /// shutdown, time sync, KVP) answer the host. A kmcl addition.
    ///
    /// Like a completion, the reply is queued when the ring is full and sent
    /// in order when space frees; it is never lost.
    pub fn reply_inband(mut self, reply: &[u8]) -> Result {
        self.finish_as(packet::TYPE_DATA_INBAND, Some(reply))
    }

    /// Fails the packet as malformed (`VmbChannelPacketFail`): no completion
    /// is sent and the incoming queue stops until the channel is reopened.
    pub fn fail(mut self) {
        let chan = self.chan.clone();
        pr_warn!(
            "channel {}: packet failed by the driver; incoming queue stopped\n",
            chan.id()
        );
        {
            let mut g = chan.inner.lock();
            g.rx.failed = true;
        }
        let _ = self.finish_with(None);
    }

    /// Redelivers the packet later in process context
    /// (`VmbChannelPacketDeferToPassive`). Only valid from inside
    /// ProcessPacket; elsewhere the packet is handed back.
    pub fn defer_to_passive(self) -> core::result::Result<(), DeferError> {
        let chan = self.chan.clone();
        {
            let mut g = chan.inner.lock();
            if g.rx.current != self.seq || self.seq == 0 {
                drop(g);
                return Err(DeferError(self));
            }
            g.rx.current = 0;
            if let Err(e) = g.rx.deferred.push_within_capacity(self) {
                // Cannot happen: one deferred entry per slot is reserved.
                drop(g);
                return Err(DeferError(e.0));
            }
        }
        let _ = crate::sys::wq().enqueue::<Arc<Channel>, 1>(chan);
        Ok(())
    }

    /// Sends the completion if requested (with `response`, or none for a
    /// failed packet), returns the buffer, and updates the accounting.
    fn finish_with(&mut self, response: Option<&[u8]>) -> Result {
        let response = if self.completion_requested {
            response
        } else {
            None
        };
        self.finish_as(packet::TYPE_COMPLETION, response)
    }

    /// Finishes the packet; with `response`, first sends it as a packet of
    /// type `ty` that carries the packet's transaction id, in the packet's own
    /// buffer (queued behind earlier sends when the ring is full).
    fn finish_as(&mut self, ty: u16, response: Option<&[u8]>) -> Result {
        let Some(mut buf) = self.buf.take() else {
            return Ok(());
        };
        let chan = self.chan.clone();
        let mut result = Ok(());
        let mut to_send = None;
        if let Some(mut resp) = response {
            let max = self.limits.max_payload as usize;
            if resp.len() > max {
                pr_err!(
                    "channel {}: completion or reply larger than the maximum\n",
                    chan.id()
                );
                result = Err(EINVAL);
                resp = &[];
            }
            if let Some(d) = packet::encode_simple(ty, 0, self.trans_id, resp.len()) {
                let n = d.len8 as usize * 8;
                buf[..16].copy_from_slice(&d.encode());
                buf[16..16 + resp.len()].copy_from_slice(resp);
                buf[16 + resp.len()..n].fill(0);
                to_send = Some(n);
            }
        }
        let mut kick = false;
        let mut signal = false;
        {
            let mut g = chan.inner.lock();
            if g.rx.current == self.seq {
                g.rx.current = 0;
            }
            g.rx.outstanding -= 1;
            if g.rx.stalled && g.rx.outstanding < g.rx.quota {
                g.rx.stalled = false;
                kick = true;
            }
            match to_send {
                Some(n) if g.att.is_some() => {
                    match chan.submit(&mut g, Queued::Completion(buf, n)) {
                        Ok(s) => {
                            signal = s.signal;
                            if let Some(Queued::Completion(b, _)) = s.written {
                                g.rx.put_buf(b);
                            }
                        }
                        Err((_, Queued::Completion(b, _))) => g.rx.put_buf(b),
                        Err(_) => {}
                    }
                    if ty == packet::TYPE_COMPLETION {
                        chan.stats.completions_sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => g.rx.put_buf(buf),
            }
        }
        if signal {
            chan.signal_peer();
        }
        if kick {
            chan.kick_delivery();
        }
        chan.cond.notify_all();
        result
    }
}

impl Drop for IncomingPacket {
    fn drop(&mut self) {
        if self.buf.is_some() {
            pr_err!(
                "channel {}: incoming packet dropped without completion; completing it\n",
                self.chan.id()
            );
            let _ = self.finish_with(Some(&[]));
        }
    }
}

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
                    g.rx.current = p.seq;
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
            g.rx.current = 0;
            g.rx.redelivering -= 1;
        }
        self.cond.notify_all();
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
            if g.rx.delivering || !g.rx.enabled || g.att.is_none() {
                return;
            }
            g.rx.delivering = true;
            if let Some(att) = g.att.as_mut() {
                att.begin_read();
            }
            g.cfg.process.clone()
        };
        let Some(cb) = cb else {
            self.inner.lock().rx.delivering = false;
            return;
        };
        let mut batch = 0u32;
        let mut since_commit = 0u32;
        loop {
            let stop = self.drain_one(&*cb, &mut batch);
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
        {
            let mut g = self.inner.lock();
            g.rx.current = 0;
            g.rx.delivering = false;
        }
        self.cond.notify_all();
    }

    /// Reads and handles one packet. `None`: go on.
    fn drain_one(&self, cb: &dyn super::callbacks::ProcessPacket, batch: &mut u32) -> Option<Stop> {
        let mut g = self.inner.lock();
        // The previous packet's ProcessPacket has returned.
        g.rx.current = 0;
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
                // Counted before the queue is seen stopped.
                self.stats.malformed_packets.fetch_add(1, Ordering::Relaxed);
                g.rx.failed = true;
                drop(g);
                pr_err!(
                    "channel {}: incoming ring refused ({:?}); queue stopped\n",
                    self.id(),
                    e
                );
                return Some(Stop::Blocked);
            }
        };
        let parsed = packet::parse(&buf[..n], &limits).map(|p| {
            (
                p.desc,
                matches!(p.kind, Kind::Completion),
                matches!(p.kind, Kind::GpaDirect(_)),
                p.payload_offset,
            )
        });
        let (desc, is_completion, external, payload_offset) = match parsed {
            Ok(v) => v,
            Err(e) => {
                g.rx.put_buf(buf);
                // Counted before the queue is seen stopped.
                self.stats.malformed_packets.fetch_add(1, Ordering::Relaxed);
                g.rx.failed = true;
                drop(g);
                pr_err!(
                    "channel {}: malformed packet from the peer ({:?}); queue stopped\n",
                    self.id(),
                    e
                );
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
        g.rx.current = seq;
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
        };
        cb.process_packet(self, pkt);
        // From here on the packet can no longer be deferred.
        let mut g = self.inner.lock();
        if g.rx.current == seq {
            g.rx.current = 0;
        }
        None
    }
}
