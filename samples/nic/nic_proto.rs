// SPDX-License-Identifier: GPL-2.0

//! The protocol of the NIC sample, shared by `nic_vsc.rs` and `nic_vsp.rs`
//! (each includes this file as its module `proto`).
//!
//! In-band messages, little-endian, each starting with a `u32` type. The
//! VSC sends every request with a completion requested; the completion
//! carries a `u32` status (0 success, 1 refused) and what the message says.
//!
//! | type | on | body | completion |
//! | --- | --- | --- | --- |
//! | 1 `SUBCHANNEL_REQUEST` | primary | `u32` sub-channels wanted | status, `u32` granted: that many are offered before the completion is sent |
//! | 2 `RECEIVE_BUFFER` | primary | `u16` queue, `u16` page-set id, `u32` GPADL id, `u32` length | status |
//! | 3 `TRANSMIT` | the queue's channel | `u32` frames | status; the VSP then sends that many frames on the queue |
//! | 4 `FRAME` | the queue's channel | `u32` frame length; the frame is the packet's external data (GPA direct) | status: 0 when the frame is intact and the queue's next |
//! | 5 `RX` | the queue's channel, from the VSP | `u32` queue; one transfer-page range holding one frame | none (the VSC completes the packet empty) |
//!
//! Queues are numbered in the order their sub-channels are offered (the
//! sub-channel index a loopback server gives keeps growing over its
//! connections).
//!
//! A receive buffer is [`SLOTS`] slots of [`SLOT_SIZE`] bytes; each frame
//! in flight from the VSP has a slot of its own, reused once the VSC
//! completes the transfer-page packet that named it.
//!
//! A frame is a 16-byte header (`u16` queue, `u16` zero, `u32` sequence
//! number, `u32` payload length, `u32` checksum) and a payload of 48 to 496
//! bytes. Sequence numbers count from 0 on each queue and each direction,
//! per connection. The checksum (FNV-1a over the header's first 12 bytes
//! and the payload) detects corruption; the sequence numbers, loss,
//! duplication and reordering.

use kernel::prelude::*;

use kmcl::Guid;

/// The sample NIC interface type.
pub(crate) const NIC_TYPE: Guid = Guid::from_str_const("7d1e5a0c-3b2f-4e8a-9c6d-5f4a3b2c1d0e");

pub(crate) const MSG_SUBCHANNEL_REQUEST: u32 = 1;
pub(crate) const MSG_RECEIVE_BUFFER: u32 = 2;
pub(crate) const MSG_TRANSMIT: u32 = 3;
pub(crate) const MSG_FRAME: u32 = 4;
pub(crate) const MSG_RX: u32 = 5;

pub(crate) const STATUS_OK: u32 = 0;

/// Bytes of a receive-buffer slot: the largest frame.
pub(crate) const SLOT_SIZE: usize = 512;
/// Slots of a queue's receive buffer: its frames in flight.
pub(crate) const SLOTS: usize = 16;

const FRAME_HEADER: usize = 16;
const FRAME_MIN_PAYLOAD: usize = 48;

/// The length of frame `seq`, header included: 64 to 512 bytes.
fn frame_len(seq: u32) -> usize {
    let span = SLOT_SIZE - FRAME_HEADER - FRAME_MIN_PAYLOAD + 1;
    FRAME_HEADER + FRAME_MIN_PAYLOAD + (seq as usize).wrapping_mul(13) % span
}

/// FNV-1a, 32 bits.
pub(crate) fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Writes frame `seq` of `queue` into `buf`; returns its length.
pub(crate) fn build_frame(queue: u16, seq: u32, buf: &mut [u8; SLOT_SIZE]) -> usize {
    let n = frame_len(seq);
    let payload = n - FRAME_HEADER;
    buf[0..2].copy_from_slice(&queue.to_le_bytes());
    buf[2..4].fill(0);
    buf[4..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&(payload as u32).to_le_bytes());
    for (i, b) in buf[FRAME_HEADER..n].iter_mut().enumerate() {
        *b = (seq.wrapping_mul(31) as usize + i * 7 + usize::from(queue)) as u8;
    }
    let sum = fnv1a(fnv1a(0x811c_9dc5, &buf[0..12]), &buf[FRAME_HEADER..n]);
    buf[12..16].copy_from_slice(&sum.to_le_bytes());
    n
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Checks a frame's length and checksum; returns its queue and sequence
/// number. `EBADMSG` for a frame that is not intact.
pub(crate) fn check_frame(f: &[u8]) -> Result<(u16, u32)> {
    let queue = le_u16(f, 0).ok_or(EBADMSG)?;
    let seq = le_u32(f, 4).ok_or(EBADMSG)?;
    let payload = le_u32(f, 8).ok_or(EBADMSG)? as usize;
    let sum = le_u32(f, 12).ok_or(EBADMSG)?;
    if FRAME_HEADER + payload != f.len() || f.len() != frame_len(seq) {
        return Err(EBADMSG);
    }
    if fnv1a(fnv1a(0x811c_9dc5, &f[0..12]), &f[FRAME_HEADER..]) != sum {
        return Err(EBADMSG);
    }
    Ok((queue, seq))
}
