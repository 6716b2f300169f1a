// SPDX-License-Identifier: GPL-2.0

//! Save and restore of a server channel (VSP servicing).
//!
//! A server that must go away without its client noticing pauses its
//! channel, saves it with [`Channel::save_begin`],
//! [`Channel::save_continue`] and [`Channel::save_end`], and is disabled:
//! after a save, Disable parks the connection on its bus instead of closing
//! it, so the client stays open and its packets wait in the ring. A new
//! server channel takes the state back with [`Channel::restore_from_buffer`]
//! and, on Enable, rejoins the parked connection: every packet that was in
//! flight is handed to the driver's
//! [`SaveRestorePacket::restore_packet`](super::callbacks::SaveRestorePacket)
//! and finishes when the client's completion arrives.
//!
//! The old instance's packet objects still finish once each, with
//! `ECANCELED`, when it is disabled; the transactions live on in the new one.

use kernel::prelude::*;

use super::{
    outgoing::Packet,
    transactions::TxOwner,
    Channel,
    Endpoint,
    State, //
};
use crate::wire::{
    guid::Guid,
    packet,
    save::{
        self,
        ChannelRecord,
        CopyStatus,
        PacketRecord,
        Record, //
    },
};

/// The result of [`Channel::save_continue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStatus {
    /// The rest of the state fit: `filled` bytes. Call
    /// [`Channel::save_end`] next.
    Complete {
        /// Bytes written.
        filled: usize,
    },
    /// Part of the state was written (`filled` bytes) and more follows
    /// (`STATUS_BUFFER_OVERFLOW`).
    MoreData {
        /// Bytes written.
        filled: usize,
    },
    /// Nothing fits in the buffer (`STATUS_BUFFER_TOO_SMALL`); `required`
    /// bytes are needed for the next piece.
    BufferTooSmall {
        /// Bytes needed.
        required: usize,
    },
}

/// The result of [`Channel::restore_from_buffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStatus {
    /// More chunks are needed (`STATUS_MORE_PROCESSING_REQUIRED`).
    MoreProcessingRequired,
    /// The state is complete and checked; Enable applies it.
    Complete,
}

/// A save in progress (`VmbChannelSaveBegin` to `VmbChannelSaveEnd`).
pub struct SaveContext {
    state: KVec<u8>,
    pos: usize,
}

/// One packet of a state being restored.
pub(crate) struct SavedPacket {
    trans_id: u64,
    wire: KVec<u8>,
    driver: KVec<u8>,
}

/// A checked state waiting for Enable.
pub(crate) struct PendingRestore {
    pub(crate) token: u64,
    packets: KVec<SavedPacket>,
}

fn append(v: &mut KVec<u8>, parts: &[&[u8]]) -> Result {
    for p in parts {
        v.extend_from_slice(p, GFP_KERNEL)?;
    }
    Ok(())
}

fn push_record(state: &mut KVec<u8>, kind: u32, parts: &[&[u8]]) -> Result {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let at = state.len();
    state.resize(at + save::record_size(body), 0, GFP_KERNEL)?;
    save::encode_record(&mut state[at..], kind, parts).map_err(|_| EINVAL)?;
    Ok(())
}

impl Channel {
    /// Starts saving a paused server channel (`VmbChannelSaveBegin`): asks
    /// the driver for the state of every packet in flight
    /// ([`SaveRestorePacket::save_packet`](super::callbacks::SaveRestorePacket),
    /// first with an empty buffer, then with one of the size it asked for)
    /// and assembles the saved state. `EINVAL` on a client or a channel
    /// that is not Paused.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel.
    #[doc(alias = "VmbChannelSaveBegin")]
    pub fn save_begin(&self) -> Result<SaveContext> {
        self.check_lifecycle_call("save_begin")?;
        kernel::task::might_sleep();
        let _c = self.control.lock();
        let (cb, ids, token, slots) = {
            let g = self.inner.lock();
            if self.endpoint() != Endpoint::Server || g.state != State::Paused {
                return Err(EINVAL);
            }
            let token = g.att.as_ref().and_then(|a| a.save_token()).ok_or(ENODEV)?;
            (
                g.cfg.save_restore.clone(),
                (
                    g.cfg.target_type,
                    g.cfg.target_instance.unwrap_or(Guid::NULL),
                ),
                token,
                self.tx.lock().slot_count(),
            )
        };
        let mut state = KVec::new();
        append(&mut state, &[&save::header()])?;
        let mut records = KVec::new();
        let mut count = 0u32;
        for slot in 0..slots {
            // Paused, with the control mutex held: no completion is read and
            // no teardown runs, so the packet can leave its slot while the
            // driver looks at it.
            let Some((p, gen)) = self.tx.lock().take_packet(slot) else {
                continue;
            };
            let r = self.save_one(cb.as_deref(), &p, &mut records);
            self.tx.lock().put_packet(slot, gen, p);
            r?;
            count += 1;
        }
        let ch = ChannelRecord {
            interface_type: ids.0,
            interface_instance: ids.1,
            token,
            packets: count,
        };
        push_record(&mut state, save::kind::CHANNEL, &[&ch.encode()])?;
        append(&mut state, &[&records])?;
        push_record(&mut state, save::kind::END, &[])?;
        Ok(SaveContext { state, pos: 0 })
    }

    fn save_one(
        &self,
        cb: Option<&dyn super::callbacks::SaveRestorePacket>,
        p: &Packet,
        records: &mut KVec<u8>,
    ) -> Result {
        let mut driver = KVec::new();
        if let Some(cb) = cb {
            match cb.save_packet(self, p, &mut []) {
                Ok(_) => {}
                Err(needed) => {
                    driver.resize(needed, 0, GFP_KERNEL)?;
                    let n = cb.save_packet(self, p, &mut driver).map_err(|_| EIO)?;
                    driver.truncate(n.min(needed));
                }
            }
        }
        let (id, wire) = p.restore_parts();
        let fixed = PacketRecord::encode_fixed(id, wire.len(), driver.len());
        push_record(records, save::kind::PACKET, &[&fixed, wire, &driver])
    }

    /// Copies the next part of the saved state into `buf`
    /// (`VmbChannelSaveContinue`). Only whole records are copied.
    ///
    /// Context: any context; it copies and allocates nothing.
    #[doc(alias = "VmbChannelSaveContinue")]
    pub fn save_continue(&self, ctx: &mut SaveContext, buf: &mut [u8]) -> Result<SaveStatus> {
        match save::copy_records(&ctx.state, &mut ctx.pos, buf) {
            Ok(CopyStatus::Complete { filled }) => Ok(SaveStatus::Complete { filled }),
            Ok(CopyStatus::MoreData { filled }) => Ok(SaveStatus::MoreData { filled }),
            Err(save::SaveError::TooSmall { required }) => {
                Ok(SaveStatus::BufferTooSmall { required })
            }
            Err(_) => Err(EINVAL),
        }
    }

    /// Ends the save (`VmbChannelSaveEnd`). From now on, Disable parks the
    /// connection for a restored instance instead of closing it; Start
    /// resumes this instance and forgets the save.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelSaveEnd")]
    pub fn save_end(&self, ctx: SaveContext) {
        drop(ctx);
        self.inner.lock().servicing = true;
    }

    /// Takes back a saved state, one chunk at a time
    /// (`VmbChannelRestoreFromBuffer`), on a Disabled server channel with the
    /// same interface ids. A malformed state is refused with `EINVAL` and
    /// forgotten.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel, the chunk not taken.
    #[doc(alias = "VmbChannelRestoreFromBuffer")]
    pub fn restore_from_buffer(&self, chunk: &[u8]) -> Result<RestoreStatus> {
        self.check_lifecycle_call("restore_from_buffer")?;
        kernel::task::might_sleep();
        let _c = self.control.lock();
        let (mut buf, ids) = {
            let mut g = self.inner.lock();
            if self.endpoint() != Endpoint::Server || g.state != State::Disabled {
                return Err(EINVAL);
            }
            (
                core::mem::take(&mut g.restore_buf),
                (
                    g.cfg.target_type,
                    g.cfg.target_instance.unwrap_or(Guid::NULL),
                ),
            )
        };
        buf.extend_from_slice(chunk, GFP_KERNEL)?;
        match save::is_complete(&buf) {
            Ok(false) => {
                self.inner.lock().restore_buf = buf;
                return Ok(RestoreStatus::MoreProcessingRequired);
            }
            Ok(true) => {}
            Err(e) => {
                pr_err!("channel {}: saved state refused ({:?})\n", self.id(), e);
                return Err(EINVAL);
            }
        }
        let pending = decode(&buf, ids).inspect_err(|_| {
            pr_err!("channel {}: saved state refused\n", self.id());
        })?;
        self.inner.lock().pending_restore = Some(pending);
        Ok(RestoreStatus::Complete)
    }

    /// Called by Enable on a server with a restored state: hands each saved
    /// packet to the driver, which restores it with [`Packet::restore`].
    pub(crate) fn restore_packets(&self, pending: PendingRestore) {
        let cb = self.inner.lock().cfg.save_restore.clone();
        for sp in pending.packets.iter() {
            let Ok(mut p) = self.packet_allocate() else {
                pr_err!(
                    "channel {}: no packet object for a restored packet\n",
                    self.id()
                );
                continue;
            };
            if p.set_restored(sp.trans_id, &sp.wire).is_err() {
                continue;
            }
            match &cb {
                Some(cb) => {
                    if let Err(e) = cb.restore_packet(self, p, &sp.driver) {
                        pr_err!(
                            "channel {}: driver failed to restore a packet ({:?})\n",
                            self.id(),
                            e
                        );
                    }
                }
                // Without callbacks the transaction is restored as it was.
                None => {
                    let _ = p.restore();
                }
            }
        }
    }

    pub(crate) fn restore_packet_transaction(&self, packet: Packet) -> Result {
        let (id, _) = packet.restore_parts();
        // A packet handed back is dropped once the send lock is released:
        // dropping a pool packet takes that lock.
        let r = self.tx.lock().restore_slot(packet, id);
        r.map_err(|(e, _)| e)
    }
}

/// Decodes and checks a complete state against the channel's interface ids.
fn decode(buf: &[u8], ids: (Guid, Guid)) -> Result<PendingRestore> {
    let mut token = None;
    let mut packets = KVec::new();
    let mut err = None;
    let r = save::parse(buf, |rec| {
        match rec {
            Record::Channel(c) => {
                if (c.interface_type, c.interface_instance) != ids {
                    return Err(save::SaveError::Kind(save::kind::CHANNEL));
                }
                token = Some(c.token);
            }
            Record::Packet(p) => {
                let mut wire = KVec::new();
                let mut driver = KVec::new();
                let ok = wire.extend_from_slice(p.wire, GFP_KERNEL).is_ok()
                    && driver.extend_from_slice(p.driver, GFP_KERNEL).is_ok()
                    && packets
                        .push(
                            SavedPacket {
                                trans_id: p.trans_id,
                                wire,
                                driver,
                            },
                            GFP_KERNEL,
                        )
                        .is_ok();
                if !ok {
                    err = Some(ENOMEM);
                    return Err(save::SaveError::Length);
                }
            }
            Record::End => {}
        }
        Ok(())
    });
    if let Some(e) = err {
        return Err(e);
    }
    r.map_err(|_| EINVAL)?;
    Ok(PendingRestore {
        token: token.ok_or(EINVAL)?,
        packets,
    })
}

impl super::transactions::TxState {
    /// Number of transaction slots.
    pub(crate) fn slot_count(&self) -> u32 {
        self.slots_len() as u32
    }

    /// Takes the packet of slot `slot` out for saving; the slot stays
    /// reserved. Returns it with the slot's generation.
    pub(crate) fn take_packet(&mut self, slot: u32) -> Option<(Packet, u32)> {
        let (owner, gen) = self.slot_owner_mut(slot)?;
        match owner.take() {
            Some(TxOwner::Packet(p)) => Some((p, gen)),
            other => {
                *owner = other;
                None
            }
        }
    }

    /// Puts a packet back after [`Self::take_packet`].
    pub(crate) fn put_packet(&mut self, slot: u32, gen: u32, p: Packet) {
        if let Some((owner, g)) = self.slot_owner_mut(slot) {
            if g == gen && owner.is_none() {
                *owner = Some(TxOwner::Packet(p));
            }
        }
    }
}

/// A packet's part in save and restore.
impl Packet {
    /// Restores a packet after [`Channel::restore_from_buffer`]
    /// (`VmbPacketRestore`): the transaction it belonged to is live again,
    /// and its completion reaches the packet's routine.
    ///
    /// Context: process context, inside `SaveRestorePacket::restore_packet`.
    #[doc(alias = "VmbPacketRestore")]
    pub fn restore(self) -> Result {
        let chan = self.get().chan.clone().ok_or(EINVAL)?;
        chan.restore_packet_transaction(self)
    }

    pub(crate) fn restore_parts(&self) -> (u64, &[u8]) {
        let i = self.get();
        (i.trans_id, &i.buf[..i.len])
    }

    pub(crate) fn set_restored(&mut self, trans_id: u64, wire: &[u8]) -> Result {
        let i = self.get_mut();
        if wire.len() > i.buf.len() {
            return Err(EINVAL);
        }
        i.buf[..wire.len()].copy_from_slice(wire);
        i.len = wire.len();
        i.trans_id = trans_id;
        i.wait = true;
        if let Some(head) = wire.get(..packet::DESCRIPTOR_SIZE) {
            let mut d = [0u8; packet::DESCRIPTOR_SIZE];
            d.copy_from_slice(head);
            let d = packet::Descriptor::decode(&d);
            i.ty = d.ty;
            i.offset = (d.offset8 as usize * 8).clamp(packet::DESCRIPTOR_SIZE, i.len);
            i.payload_len = i.len - i.offset;
        }
        Ok(())
    }
}
