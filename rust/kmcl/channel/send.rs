// SPDX-License-Identifier: GPL-2.0

//! A packet's sends: the encoding into the packet's buffer, the send
//! straight from the caller's bytes when the ring has room, the
//! transaction slot of a send that waits for its completion
//! (`transactions.rs`), the hand-over to the send queue (`send_queue.rs`),
//! and the completion's call of the driver's routine or typed context.

use core::sync::atomic::Ordering;

use kernel::prelude::*;

use super::{
    outgoing::{
        ExternalRange,
        Mdl,
        Packet,
        SendError,
        SendFlags, //
    },
    send_queue::Queued,
    transactions::{
        transaction_id,
        TxOwner, //
    },
};
use crate::{
    sys,
    transport::OutPacket,
    wire::packet::{
        self,
        RangeSpec, //
    },
};

impl Packet {
    /// Sends `data` (`VmbPacketSend`). With
    /// [`SendFlags::WAIT_FOR_COMPLETION`] the transaction ends when the
    /// peer's completion arrives; without it, when the packet enters the
    /// ring. A full ring queues the packet; it is sent in order when space
    /// frees. Callable from any context.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSend")]
    pub fn send(self, data: &[u8], flags: SendFlags) -> core::result::Result<(), SendError> {
        let packet = if flags.contains(SendFlags::WAIT_FOR_COMPLETION) {
            self
        } else {
            // A one-way packet that goes back to its pool once written: no
            // one can read its payload again, so it goes into the ring from
            // `data` when the ring has room now.
            match self.send_direct(data) {
                Ok(()) => return Ok(()),
                Err(packet) => packet,
            }
        };
        packet.send_encoded(data, &[], None, flags)
    }

    /// Sends `data` with external memory given as page frame numbers
    /// (`VmbPacketSendWithExternalPfns`). Requires
    /// [`SendFlags::WAIT_FOR_COMPLETION`].
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSendWithExternalPfns")]
    pub fn send_with_external_pfns(
        self,
        data: &[u8],
        ranges: &[ExternalRange<'_>],
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        if ranges.is_empty() {
            return Err(SendError {
                error: EINVAL,
                packet: self,
            });
        }
        self.send_encoded(data, ranges, None, flags)
    }

    /// Sends `data` with the memory of `mdl` described to the peer
    /// (`VmbPacketSendWithExternalMdl`). The packet owns `mdl` until the
    /// completion routine takes it back with [`Packet::take_mdl`]. Requires
    /// [`SendFlags::WAIT_FOR_COMPLETION`].
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbPacketSendWithExternalMdl")]
    pub fn send_with_external_mdl(
        self,
        data: &[u8],
        mdl: Mdl,
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        self.send_encoded(data, &[], Some(mdl), flags)
    }

    fn send_encoded(
        mut self,
        data: &[u8],
        ranges: &[RangeSpec<'_>],
        mdl: Option<Mdl>,
        flags: SendFlags,
    ) -> core::result::Result<(), SendError> {
        let mdl_range;
        let ranges = match &mdl {
            Some(m) => {
                mdl_range = [m.range()];
                &mdl_range[..]
            }
            None => ranges,
        };
        let r = self.encode(data, ranges, flags);
        // The packet owns the MDL from here on, whatever happens.
        self.get_mut().mdl = mdl;
        match r {
            Ok(()) => self.submit_encoded(),
            Err(error) => Err(SendError {
                error,
                packet: self,
            }),
        }
    }

    /// Encodes descriptor, ranges and payload into the packet's buffer.
    fn encode(&mut self, data: &[u8], ranges: &[RangeSpec<'_>], flags: SendFlags) -> Result {
        let wait = flags.contains(SendFlags::WAIT_FOR_COMPLETION);
        if !ranges.is_empty() && !wait {
            return Err(EINVAL);
        }
        // The channel's limits are checked at submission, under the lock
        // that takes anyway; the buffer bounds what can be encoded.
        let inner = self.get_mut();
        let flag_bits = if wait {
            packet::FLAG_COMPLETION_REQUESTED
        } else {
            0
        };
        // The transaction id is patched in when the send takes its slot.
        let off = if ranges.is_empty() {
            match packet::encode_simple(packet::TYPE_DATA_INBAND, flag_bits, 0, data.len()) {
                Some(d) if inner.buf.len() >= d.len8 as usize * 8 => {
                    inner.buf[..16].copy_from_slice(&d.encode());
                    16
                }
                _ => return Err(EINVAL),
            }
        } else {
            packet::encode_gpa_direct(&mut inner.buf, flag_bits, 0, ranges, data.len())
                .ok_or(EINVAL)?
        };
        let total = off + packet::align8(data.len());
        if total > inner.buf.len() {
            return Err(EINVAL);
        }
        inner.buf[off..off + data.len()].copy_from_slice(data);
        if total > off + data.len() {
            inner.buf[off + data.len()..total].fill(0);
        }
        inner.len = total;
        inner.wait = wait;
        inner.payload_len = data.len();
        inner.range_count = ranges.len();
        inner.offset = off;
        inner.ty = if ranges.is_empty() {
            packet::TYPE_DATA_INBAND
        } else {
            packet::TYPE_DATA_GPA_DIRECT
        };
        Ok(())
    }

    /// The last send by its parts, in the packet's buffer, as the transport
    /// takes it. (The descriptor in the buffer serves [`Packet::wire_bytes`]
    /// and saved states; the transport builds its own.)
    pub(super) fn out(&self) -> OutPacket<'_> {
        let i = self.get();
        let (flags, trans_id) = if i.wait {
            (packet::FLAG_COMPLETION_REQUESTED, i.trans_id)
        } else {
            (0, 0)
        };
        OutPacket {
            ty: i.ty,
            flags,
            trans_id,
            ranges: i.buf.get(packet::DESCRIPTOR_SIZE..i.offset).unwrap_or(&[]),
            payload: i.buf.get(i.offset..i.offset + i.payload_len).unwrap_or(&[]),
        }
    }

    /// Writes a one-way in-band packet into the ring straight from `data`,
    /// without copying it into the packet, when nothing can read the
    /// packet's payload afterwards (no routine, typed completion or MDL, a
    /// pool packet, which goes back to its pool at once) and the ring takes
    /// it now. Otherwise (the packet must queue, or the send fails) nothing
    /// was sent and the packet is handed back for the encoded send, which
    /// copies the payload and answers as it always does.
    fn send_direct(mut self, data: &[u8]) -> core::result::Result<(), Packet> {
        let inner = self.get_mut();
        if !inner.recyclable() {
            return Err(self);
        }
        match packet::encode_simple(packet::TYPE_DATA_INBAND, 0, 0, data.len()) {
            Some(d) if inner.buf.len() >= d.len8 as usize * 8 => {}
            _ => return Err(self),
        }
        let Some(chan) = inner.chan.as_deref() else {
            return Err(self);
        };
        // SAFETY: the packet's reference keeps the channel alive until the
        // packet goes back to the pool below, under the send lock; from
        // there on the pool keeps the reference, or `left` holds it, until
        // the lock is released: taking the packet out of the pool, or the
        // pool's references away, takes the lock after this hold of it. A
        // packet put in the pool's cache may be taken out without the lock,
        // but the cache is open only while the channel's handle lives, and
        // the handle's drop closes it under the send lock, after this hold,
        // before it drops the handle's reference (`pool.rs`). What follows
        // the release holds a reference of its own.
        let chan = unsafe { &*core::ptr::from_ref(chan) };
        let mut g = chan.tx.lock();
        let out = OutPacket::simple(packet::TYPE_DATA_INBAND, 0, 0, data);
        let signal = if g.gate.send.is_ok() && data.len() <= g.max_packet_size as usize {
            chan.write_now(&mut g, &out).ok().flatten()
        } else {
            None
        };
        let Some(signal) = signal else {
            drop(g);
            return Err(self);
        };
        chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        let hold = signal.then(|| chan.arc());
        let left = self.into_box().and_then(|mut b| {
            // Nothing of an earlier send is left to read in the pool.
            b.len = 0;
            chan.recycle_locked(&mut g, b)
        });
        drop(g);
        if let Some(chan) = hold {
            chan.signal_peer();
        }
        // Most often `None` (the pool kept the reference): tested here
        // rather than in an out-of-line drop.
        if let Some(chan) = left {
            drop(chan);
        }
        Ok(())
    }

    /// Takes a transaction slot if needed and hands the packet to the ring.
    pub(super) fn submit_encoded(mut self) -> core::result::Result<(), SendError> {
        // SAFETY: the packet's reference keeps the channel alive while the
        // packet is this call's; once it is in a transaction slot, the send
        // queue or the pool, only a holder of the send lock takes it out,
        // after this hold of the lock, or, handed back in an error, it is
        // this call's again. Out of the pool's cache an allocation takes it
        // without the lock, but only while the channel's handle lives,
        // whose reference its drop gives up only after closing the cache
        // under the send lock (`pool.rs`). What follows the release of the
        // lock holds a reference of its own.
        let chan = unsafe { &*core::ptr::from_ref(self.channel()) };
        let wait = self.get().wait;
        let mut g = chan.tx.lock();
        let within = {
            let i = self.get();
            i.payload_len <= g.max_packet_size as usize && i.range_count <= g.max_ext_chain as usize
        };
        if let Err(e) = g.gate.send.and(if within { Ok(()) } else { Err(EINVAL) }) {
            drop(g);
            return Err(SendError {
                error: e,
                packet: self,
            });
        }
        let item = if wait {
            let Some(slot) = g.free_slots.pop() else {
                drop(g);
                return Err(SendError {
                    error: EBUSY,
                    packet: self,
                });
            };
            let gen = g.slots[slot as usize].gen;
            let id = transaction_id(slot, gen);
            let inner = self.get_mut();
            inner.trans_id = id;
            inner.buf[8..16].copy_from_slice(&id.to_le_bytes());
            if let Some(mdl) = inner.mdl.as_mut() {
                // Before the packet can reach the ring: from here on the
                // peer may read the pages (loopback).
                mdl.lend(g.link.as_ref().and_then(|l| l.lending()), id);
            }
            let s = &mut g.slots[slot as usize];
            s.since = sys::jiffies();
            s.owner = Some(TxOwner::Packet(self));
            Queued::Tx { slot, gen }
        } else {
            Queued::Oneway(self)
        };
        match chan.submit(&mut g, item) {
            Ok(s) => {
                chan.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                // The routine runs after this send returns, never inside it;
                // a packet without one goes back to its pool now.
                let mut left = None;
                let schedule = match s.written {
                    Some(Queued::Oneway(p)) if p.get().recyclable() => {
                        left = p.into_box().and_then(|b| chan.recycle_locked(&mut g, b));
                        false
                    }
                    Some(Queued::Oneway(p)) => g.routines.push(p),
                    _ => false,
                };
                let hold = (s.signal || schedule).then(|| chan.arc());
                drop(g);
                if let Some(chan) = hold {
                    if s.signal {
                        chan.signal_peer();
                    }
                    if schedule {
                        chan.schedule_routines();
                    }
                }
                drop(left);
                Ok(())
            }
            Err((e, item)) => {
                let p = match item {
                    Queued::Oneway(p) => Some(p),
                    Queued::Tx { slot, .. } => g.free_slot(slot),
                    Queued::Completion { .. } => None,
                };
                drop(g);
                match p {
                    Some(packet) => Err(SendError { error: e, packet }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Ends the transaction: calls the typed completion or the completion
    /// routine, or frees.
    pub(crate) fn complete_routine(self, status: Result, response: &[u8]) {
        // A reference of its own: the packet, and with it the packet's
        // reference, may be freed inside the call.
        if let Some(context) = self.get().context.clone() {
            context.completed(self, status, response);
            return;
        }
        match self.get().routine {
            Some(r) => r(self, status, response),
            None => drop(self),
        }
    }
}
