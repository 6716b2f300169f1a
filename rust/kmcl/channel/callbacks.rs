// SPDX-License-Identifier: GPL-2.0

//! The driver's side of a channel: packet and state callbacks.
//!
//! A driver implements [`ProcessPacket`] (required to receive anything) and,
//! as it needs them, [`StateChange`] and [`SaveRestorePacket`], then hands an
//! `Arc` of each to the channel's init setters. Every method of
//! [`StateChange`] has a default that does nothing, as every KMCL state
//! callback is optional.

use kernel::prelude::*;

use super::{
    incoming::IncomingPacket,
    outgoing::Packet,
    Channel, //
};

/// Incoming packets (`EvtVmbChannelProcessPacket`,
/// `EvtVmbChannelProcessingComplete`).
pub trait ProcessPacket: Send + Sync {
    /// A packet arrived. `packet` must be finished exactly once: completed,
    /// failed or deferred.
    ///
    /// Runs in softirq context (bottom halves disabled, as for completion
    /// routines), or in process context when the channel processes incoming
    /// packets at passive level or the packet was deferred. Either way it
    /// must not pause, start or disable its own channel: those wait for
    /// it, and fail with `EWOULDBLOCK` (softirq) or `EDEADLK` (process
    /// context) here.
    #[doc(alias = "EvtVmbChannelProcessPacket")]
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket);

    /// The incoming queue went from non-empty to empty, or delivery paused
    /// (quota, a failed packet); `count` packets were delivered since the last
    /// call. Runs in the same context as [`ProcessPacket::process_packet`].
    #[doc(alias = "EvtVmbChannelProcessingComplete")]
    fn processing_complete(&self, channel: &Channel, count: u32) {
        let _ = (channel, count);
    }
}

/// State changes (`VMB_CHANNEL_STATE_CHANGE_CALLBACKS`). All run in process
/// context, on kmcl's workqueue or in the thread that called a lifecycle
/// function. None may call [`Channel::pause`], [`Channel::start`] or
/// [`Channel::disable`] on its own channel: those fail with `EDEADLK` there.
pub trait StateChange: Send + Sync {
    /// The channel was opened (client: by this endpoint; server: by the
    /// client). Long-lived GPADLs are created here. An error rolls the
    /// channel back to no traffic; on a client, PnpFailure follows.
    #[doc(alias = "EvtVmbChannelOpened")]
    fn opened(&self, channel: &Channel) -> Result {
        let _ = channel;
        Ok(())
    }

    /// The channel is configured; incoming delivery begins after this
    /// returns. Sends may be queued here, but replies must not be awaited.
    #[doc(alias = "EvtVmbChannelStarted")]
    fn started(&self, channel: &Channel) {
        let _ = channel;
    }

    /// Packets from the peer can now be received: the place for synchronous
    /// protocol negotiation.
    #[doc(alias = "EvtVmbChannelPostStarted")]
    fn post_started(&self, channel: &Channel) {
        let _ = channel;
    }

    /// Delivery stops (Pause, Disable, peer close). kmcl calls it only once
    /// every ProcessPacket and ProcessingComplete of the channel has
    /// returned, redeliveries of deferred packets included, and none runs
    /// after it until the next Started. Packets the driver still holds must
    /// still be finished: Pause and Disable wait for them. Packets deferred
    /// to process context and not yet redelivered stay with kmcl: they are
    /// redelivered after the next Started, or dropped by a teardown.
    #[doc(alias = "EvtVmbChannelSuspend")]
    fn suspend(&self, channel: &Channel) {
        let _ = channel;
    }

    /// The channel closed (Disable, peer close, rescind). GPADLs must be
    /// deleted here.
    #[doc(alias = "EvtVmbChannelClosed")]
    fn closed(&self, channel: &Channel) {
        let _ = channel;
    }

    /// A client found its target but could not connect.
    fn pnp_failure(&self, channel: &Channel, error: Error) {
        let _ = (channel, error);
    }
}

/// Per-packet save and restore on a server (`EvtVmbChannelSavePacket`,
/// `EvtVmbChannelRestorePacket`). Both run in process context.
pub trait SaveRestorePacket: Send + Sync {
    /// Saves the driver's state of the in-use `packet` into `buf`. The first
    /// call gets an empty `buf`: return `Err(needed)` with the size needed if
    /// there is state, or `Ok(0)`. The second call gets a buffer that large
    /// and returns the bytes written.
    #[doc(alias = "EvtVmbChannelSavePacket")]
    fn save_packet(
        &self,
        channel: &Channel,
        packet: &Packet,
        buf: &mut [u8],
    ) -> Result<usize, usize>;

    /// Restores one packet: `packet` already carries kmcl's state (payload,
    /// transaction id); `state` is what [`SaveRestorePacket::save_packet`]
    /// wrote. The driver takes ownership of `packet` and finishes it with
    /// [`Packet::restore`].
    #[doc(alias = "EvtVmbChannelRestorePacket")]
    fn restore_packet(&self, channel: &Channel, packet: Packet, state: &[u8]) -> Result;
}

/// The typed completion of a packet: the context a packet owns and calls
/// when its transaction ends (`EvtVmbPacketCompletionRoutine` with its
/// `VmbPacketSetPointer` context, in one).
///
/// A driver implements it on its own type and hands the packet an
/// `Arc<Self>` with [`Packet::set_completion`]; the packet keeps that
/// reference until the packet object is freed (a pool packet going back to
/// its pool included) or gets another completion, and drops it exactly once
/// then. Setting it takes a reference count, never an allocation, and it
/// stays set across sends: a packet object that is reused needs it once.
///
/// [`PacketCompletion::completed`] runs in the context of a
/// [`CompletionRoutine`]: bottom halves disabled, never inside the `send()`
/// that started the transaction. kmcl holds its own reference to the context
/// during the call, so the packet may be freed, reused or resent from it.
/// The last reference to a context may be dropped there too, so its `Drop`
/// must not sleep while a packet can still hold it.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use kernel::{prelude::*, sync::Arc};
/// use kmcl::{Channel, Packet, PacketCompletion, SendFlags};
///
/// struct Sent {
///     ok: AtomicU32,
/// }
///
/// impl PacketCompletion for Sent {
///     fn completed(&self, packet: Packet, status: Result, _response: &[u8]) {
///         if status.is_ok() {
///             self.ok.fetch_add(1, Ordering::Relaxed);
///         }
///         // Dropping `packet` frees it; the context goes with it.
///         drop(packet);
///     }
/// }
///
/// fn send_one(channel: &Channel, sent: &Arc<Sent>) -> Result {
///     let mut p = channel.packet_allocate()?;
///     p.set_completion(sent.clone());
///     p.send(b"hello", SendFlags::WAIT_FOR_COMPLETION)
///         .map_err(|e| e.error)
/// }
/// ```
#[doc(alias = "EvtVmbPacketCompletionRoutine")]
#[doc(alias = "VmbPacketSetCompletionRoutine")]
pub trait PacketCompletion: Send + Sync {
    /// The transaction of `packet` ended with `status`; `response` is the
    /// peer's completion payload (empty unless the send waited for a
    /// completion). `packet` still owns this context.
    fn completed(&self, packet: Packet, status: Result, response: &[u8]);
}

/// A completion routine (`EvtVmbPacketCompletionRoutine`), the untyped form:
/// its only context is the packet's [`Packet::pointer`]. Drivers use
/// [`PacketCompletion`], which needs neither `unsafe` nor statics.
///
/// Called once per send, with the packet back, the transaction's status and
/// the peer's completion payload (empty unless the send waited for a
/// completion). The packet may be freed, reused or resent.
///
/// It always runs with bottom halves disabled (softirq context, or
/// `local_bh_disable()` when kmcl finishes a send from process context), and
/// never inside the `send()` that started the transaction: a one-way send
/// that enters the ring at once gets its routine shortly after `send()`
/// returns, from the channel's softirq work. A routine that sends again
/// therefore never recurses.
#[doc(alias = "EvtVmbPacketCompletionRoutine")]
pub type CompletionRoutine = fn(packet: Packet, status: Result, response: &[u8]);
