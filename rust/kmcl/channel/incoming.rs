// SPDX-License-Identifier: GPL-2.0

//! The incoming packet handed to ProcessPacket: the completion token that
//! the driver must finish exactly once.

use core::{
    mem::ManuallyDrop,
    ptr::NonNull,
    sync::atomic::Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc, //
};

pub(crate) use super::external::ExternalData;
use super::{
    send_queue::Queued,
    Channel, //
};
use crate::{
    transport::OutPacket,
    wire::packet::{
        self,
        Kind,
        Limits, //
    },
};

/// Flag of [`super::callbacks::ProcessPacket::process_packet`]: the packet
/// references external data (`VMBUS_CHANNEL_PROCESS_PACKET_FLAGS`).
pub const PROCESS_PACKET_FLAG_EXTERNAL_DATA: u32 = 0x1;

/// The channel an incoming packet arrived on, reached without a reference
/// count of the packet's own.
///
/// # Invariants
///
/// Points to a live [`Channel`] from the packet's delivery until its finish
/// lets go of it: a packet is counted in the channel's `rx.outstanding`
/// from its delivery (where the drain also makes `rx.keep` hold a strong
/// reference) until its finish hands it back to the drain inside
/// ProcessPacket, after which it no longer reaches the channel, or lowers
/// the count under the receive lock, taking a strong reference of its own
/// for what follows; a teardown's `drop_deferred` lowers it for packets
/// that it drops, and `rx.keep` is dropped only when the count is zero
/// (`RxState::keep`).
pub(super) struct ChannelRef(NonNull<Channel>);

// SAFETY: a `ChannelRef` only gives out `&Channel`, and `Channel` is `Send`
// and `Sync`.
unsafe impl Send for ChannelRef {}

// SAFETY: as for `Send`.
unsafe impl Sync for ChannelRef {}

impl ChannelRef {
    /// The reference of a packet being delivered on `chan`.
    ///
    /// # Safety
    ///
    /// The packet is counted in `chan.rx.outstanding` and `rx.keep` is set,
    /// under the same hold of the receive lock.
    pub(super) unsafe fn new(chan: &Channel) -> Self {
        Self(NonNull::from(chan))
    }
}

impl core::ops::Deref for ChannelRef {
    type Target = Channel;

    #[inline]
    fn deref(&self) -> &Channel {
        // SAFETY: by the type's invariants the channel is alive while the
        // packet can still reach it.
        unsafe { self.0.as_ref() }
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
///
/// # Examples
///
/// A ProcessPacket that answers short requests at once, fails empty ones,
/// and defers the rest to process context:
///
/// ```
/// use kernel::prelude::*;
/// use kmcl::{Channel, IncomingPacket, ProcessPacket};
///
/// struct Server;
///
/// impl ProcessPacket for Server {
///     fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
///         match packet.data().len() {
///             0 => packet.fail(),
///             1..=64 => {
///                 let mut answer = [0u8; 64];
///                 let n = packet.data().len();
///                 answer[..n].copy_from_slice(packet.data());
///                 let _ = packet.complete(&answer[..n]);
///             }
///             // Redelivered in process context, where it may sleep.
///             _ => {
///                 if let Err(refused) = packet.defer_to_passive() {
///                     refused.0.fail();
///                 }
///             }
///         }
///     }
/// }
/// ```
#[must_use = "an incoming packet must be completed, failed or deferred"]
pub struct IncomingPacket {
    pub(super) chan: ChannelRef,
    pub(super) buf: Option<KVec<u8>>,
    pub(super) len: usize,
    pub(super) payload_offset: usize,
    pub(super) trans_id: u64,
    pub(super) completion_requested: bool,
    pub(super) external: bool,
    pub(super) seq: u64,
    /// Limits of the channel when the packet arrived, so that finishing it
    /// needs no extra trip through the channel lock.
    pub(super) limits: Limits,
    pub(super) ctx_size: usize,
    /// The receive buffer a transfer-page packet points into, held until
    /// the packet is finished. Dropped by hand, under the receive lock
    /// (`finish_slow`, `Drop`), so the drop glue that a driver's module
    /// instantiates for a packet reaches no internal of kmcl.
    pub(super) xfer: ManuallyDrop<Option<super::xfer::XferHold>>,
}

/// [`IncomingPacket::defer_to_passive`] was called outside ProcessPacket; the
/// packet is handed back.
pub struct DeferError(pub IncomingPacket);

impl IncomingPacket {
    /// The payload, without the VMBus and library headers.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[inline]
    pub fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.payload_offset..self.len],
            None => &[],
        }
    }

    /// Flags: [`PROCESS_PACKET_FLAG_EXTERNAL_DATA`] or 0.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn flags(&self) -> u32 {
        if self.external {
            PROCESS_PACKET_FLAG_EXTERNAL_DATA
        } else {
            0
        }
    }

    /// The peer's transaction id (0 if it asked for no completion).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn transaction_id(&self) -> u64 {
        self.trans_id
    }

    /// Whether the peer asked for a completion packet.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn completion_requested(&self) -> bool {
        self.completion_requested
    }

    /// The per-packet scratch area of the size set with
    /// [`ChannelBuilder::client_context_size`](super::ChannelBuilder::client_context_size),
    /// zeroed for each packet.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[inline]
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbChannelPacketGetExternalData")]
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
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[inline]
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Finishes the packet (`VmbChannelPacketComplete`): releases it and, if
    /// the peer asked for one, sends a completion carrying `response`. A
    /// response larger than the maximum packet size is refused with `EINVAL`
    /// and the completion goes out empty. If the ring is full, the completion
    /// is queued and sent when space frees; it is never lost. Callable from
    /// any context.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbChannelPacketComplete")]
    #[inline]
    pub fn complete(mut self, response: &[u8]) -> Result {
        // Inline in the driver's module up to the hand-back; the rest of
        // the finish is one exported call.
        let r = if self.completion_requested || !self.hand_back() {
            self.complete_slow(response)
        } else {
            Ok(())
        };
        if self.buf.is_none() && self.xfer.is_none() {
            // Finished: the drop would find nothing to do.
            core::mem::forget(self);
        }
        r
    }

    /// Finishes the packet by sending `reply` as a new in-band packet that
    /// carries the request's transaction id, and no completion packet. This
    /// is how Hyper-V's integration-component protocols (heartbeat,
    /// shutdown, time sync, KVP) answer the host. A kmcl addition.
    ///
    /// Like a completion, the reply is queued when the ring is full and sent
    /// in order when space frees; it is never lost.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn reply_inband(mut self, reply: &[u8]) -> Result {
        self.finish_as(packet::TYPE_DATA_INBAND, Some(reply))
    }

    /// Fails the packet as malformed (`VmbChannelPacketFail`): no completion
    /// is sent and the incoming queue stops until the channel is reopened.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbChannelPacketFail")]
    pub fn fail(mut self) {
        pr_warn!(
            "channel {}: packet failed by the driver; incoming queue stopped\n",
            self.chan.id()
        );
        {
            let _g = self.chan.rx.lock();
            self.chan.rxc.failed.store(true, Ordering::Relaxed);
        }
        let _ = self.finish_with(None);
    }

    /// Redelivers the packet later in process context
    /// (`VmbChannelPacketDeferToPassive`). Only valid from inside
    /// ProcessPacket; elsewhere the packet is handed back.
    ///
    /// Context: inside ProcessPacket only, for the packet being delivered;
    /// elsewhere the packet comes back with an error.
    #[doc(alias = "VmbChannelPacketDeferToPassive")]
    pub fn defer_to_passive(self) -> core::result::Result<(), DeferError> {
        // Taken before the packet goes to the deferred queue, where it no
        // longer belongs to this call.
        let chan = self.chan.arc();
        {
            let mut g = chan.rx.lock();
            if chan.current.load(Ordering::Relaxed) != self.seq || self.seq == 0 {
                drop(g);
                return Err(DeferError(self));
            }
            chan.current.store(0, Ordering::Relaxed);
            if let Err(e) = g.deferred.push_within_capacity(self) {
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
        self.finish_as(packet::TYPE_COMPLETION, self.requested(response))
    }

    /// `response`, if the peer asked for a completion; `None` otherwise.
    fn requested<'a>(&self, response: Option<&'a [u8]>) -> Option<&'a [u8]> {
        if self.completion_requested {
            response
        } else {
            None
        }
    }

    /// Finishes the packet; with `response`, first sends it as a packet of
    /// type `ty` that carries the packet's transaction id: into the ring
    /// straight from `response`, or, behind earlier sends or a full ring,
    /// copied into the packet's own buffer and queued.
    fn finish_as(&mut self, ty: u16, response: Option<&[u8]>) -> Result {
        if response.is_none() && self.hand_back() {
            return Ok(());
        }
        self.finish_slow(ty, response)
    }

    /// The common finish, without a call: a packet finished inside the
    /// drain's ProcessPacket, with nothing to send, goes back to the drain
    /// that delivered it, which returns the buffer and lowers the
    /// outstanding count itself, and wakes the waiters when it leaves.
    /// `false`, with nothing done, for any other packet.
    #[inline(always)]
    fn hand_back(&mut self) -> bool {
        if self.xfer.is_some() || self.seq == 0 || self.buf.is_none() {
            return false;
        }
        let seq = self.seq;
        let done = self
            .chan
            .inline
            .compare_exchange(
                seq,
                seq | super::receive::INLINE_DONE,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok();
        if done {
            // The buffer belongs to the drain now; it is not freed.
            core::mem::forget(self.buf.take());
        }
        done
    }

    /// The rest of [`IncomingPacket::complete`], past the hand-back that
    /// runs inline in the driver's module: the same finish, with the packet
    /// left finished. Exported for that inlined code; a driver calls
    /// `complete`.
    #[inline(never)]
    #[doc(hidden)]
    pub fn complete_slow(&mut self, response: &[u8]) -> Result {
        self.finish_slow(packet::TYPE_COMPLETION, self.requested(Some(response)))
    }

    /// The rest of [`IncomingPacket::finish_as`].
    fn finish_slow(&mut self, ty: u16, response: Option<&[u8]>) -> Result {
        let Some(buf) = self.buf.take() else {
            return Ok(());
        };
        let chan: &Channel = &self.chan;
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
            let out = OutPacket::simple(ty, 0, self.trans_id, resp);
            if out.descriptor().is_some() {
                to_send = Some(out);
            }
        }
        let mut kick = false;
        let mut signal = false;
        let hold = {
            let mut g = chan.rx.lock();
            let _ =
                chan.current
                    .compare_exchange(self.seq, 0, Ordering::Relaxed, Ordering::Relaxed);
            let left = chan.rxc.outstanding.fetch_sub(1, Ordering::Relaxed) - 1;
            // The packet leaves the count that keeps the channel alive for
            // it (`ChannelRef`): what follows reaches the channel through a
            // reference of its own, the channel's `keep` itself if this was
            // the last packet and no drain runs.
            let hold = if left == 0 && !g.delivering {
                g.keep.take()
            } else {
                None
            };
            let hold = hold.unwrap_or_else(|| chan.arc());
            // Under the lock, which an unregister waiting for it holds.
            drop(self.xfer.take());
            if g.stalled && chan.rxc.below_quota() {
                g.stalled = false;
                kick = true;
            }
            // The send lock nests inside the receive lock: the buffer goes
            // back to the free slots at once if the send is done with it.
            let mut back = Some(buf);
            if let Some(out) = to_send {
                let mut t = chan.tx.lock();
                if t.link.is_some() {
                    match chan.write_now(&mut t, &out) {
                        // Into the ring straight from the driver's memory.
                        Ok(Some(s)) => signal = s,
                        // Behind earlier sends or a full ring: the reply
                        // waits in the packet's own buffer.
                        Ok(None) => {
                            if let Some(mut b) = back.take() {
                                b[..out.payload.len()].copy_from_slice(out.payload);
                                let item = Queued::Completion {
                                    buf: b,
                                    ty,
                                    trans_id: self.trans_id,
                                    len: out.payload.len(),
                                };
                                if let Err((_, Queued::Completion { buf, .. })) =
                                    chan.enqueue(&mut t, item)
                                {
                                    back = Some(buf);
                                }
                            }
                        }
                        Err(_) => {}
                    }
                    if ty == packet::TYPE_COMPLETION {
                        chan.stats.completions_sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some(b) = back {
                g.put_buf(b);
            }
            hold
        };
        let chan: &Channel = &hold;
        if signal {
            chan.signal_peer();
        }
        if kick {
            chan.kick_delivery();
        }
        chan.wake_waiters();
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
        if self.xfer.is_some() {
            // Not reached in practice (the finish let go of the buffer);
            // under the receive lock as every release, for the waiters.
            let g = self.chan.rx.lock();
            drop(self.xfer.take());
            drop(g);
            self.chan.wake_waiters();
        }
    }
}
