// SPDX-License-Identifier: GPL-2.0

//! Transfer-page packets (type 7, `VM_PKT_DATA_USING_XFER_PAGES`).
//!
//! The host hands a guest data in a receive buffer that the guest shared by
//! GPADL and announced in its device's own protocol under a page-set id. A
//! transfer-page packet names that id and lists byte ranges inside the
//! buffer. Between the 16-byte descriptor and the payload (at `offset8 * 8`)
//! it carries:
//!
//! ```text
//!   xfer_pageset_id  u16
//!   sender_owns_set  u8
//!   reserved         u8
//!   range_cnt        u32
//!   range_cnt x { byte_count u32, byte_offset u32 }
//! ```
//!
//! [`parse_header`] checks the header and the range count against the bytes
//! the descriptor gives them; [`TransferPages::check_within`] checks every
//! range against the length of the buffer the id names. Both are plain
//! `core`, so the host tests run them exactly as the module does.

/// Size of the header between the descriptor and the first range.
pub const XFER_HEADER_SIZE: usize = 8;
/// Size of one range.
pub const XFER_RANGE_SIZE: usize = 8;

/// Why a transfer-page packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XferError {
    /// The descriptor leaves less than the 8-byte header before the
    /// payload.
    ShortHeader,
    /// `range_cnt` ranges do not fit between the header and the payload.
    RangeCount(u32),
    /// The page-set id names no receive buffer of the channel.
    UnknownPageSet(u16),
    /// Range `index` reaches beyond the receive buffer.
    OutsideBuffer {
        /// Which range.
        index: u32,
    },
}

/// One range of a transfer-page packet: bytes inside the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XferRange {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Where the range starts in the receive buffer.
    pub byte_offset: u32,
}

impl XferRange {
    /// The end of the range, one past its last byte, without overflow.
    #[inline]
    pub fn end(&self) -> u64 {
        u64::from(self.byte_offset) + u64::from(self.byte_count)
    }
}

/// The checked header and ranges of a transfer-page packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferPages<'a> {
    /// The page-set id: which receive buffer.
    pub pageset_id: u16,
    /// The sender's `sender_owns_set` byte, as it came.
    pub sender_owns_set: u8,
    count: u32,
    ranges: &'a [u8],
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Checks the area between the descriptor and the payload of a type-7
/// packet: the header must fit, and `range_cnt` ranges must fit after it.
/// Bytes after the last range (up to the payload) are ignored, as Linux's
/// netvsc does.
pub fn parse_header(area: &[u8]) -> Result<TransferPages<'_>, XferError> {
    let head = area.get(..XFER_HEADER_SIZE).ok_or(XferError::ShortHeader)?;
    let pageset_id = u16::from_le_bytes([head[0], head[1]]);
    let sender_owns_set = head[2];
    let count = u32_at(head, 4).ok_or(XferError::ShortHeader)?;
    let room = area.len() - XFER_HEADER_SIZE;
    let need = (count as usize)
        .checked_mul(XFER_RANGE_SIZE)
        .ok_or(XferError::RangeCount(count))?;
    if need > room {
        return Err(XferError::RangeCount(count));
    }
    Ok(TransferPages {
        pageset_id,
        sender_owns_set,
        count,
        ranges: &area[XFER_HEADER_SIZE..XFER_HEADER_SIZE + need],
    })
}

impl<'a> TransferPages<'a> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the packet names no range.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Range `i`.
    pub fn range(&self, i: usize) -> Option<XferRange> {
        let at = i.checked_mul(XFER_RANGE_SIZE)?;
        Some(XferRange {
            byte_count: u32_at(self.ranges, at)?,
            byte_offset: u32_at(self.ranges, at.checked_add(4)?)?,
        })
    }

    /// Iterates over the ranges.
    pub fn iter(&self) -> impl Iterator<Item = XferRange> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.range(i))
    }

    /// Checks that every range lies inside a receive buffer of `len` bytes.
    pub fn check_within(&self, len: u64) -> Result<(), XferError> {
        for (i, r) in self.iter().enumerate() {
            if r.end() > len {
                return Err(XferError::OutsideBuffer { index: i as u32 });
            }
        }
        Ok(())
    }
}

/// Writes the descriptor, header and ranges of a transfer-page packet into
/// `out` and returns the offset of the payload (which follows them).
/// Returns `None` if `out` is too small or the packet too long for `len8`.
pub fn encode(
    out: &mut [u8],
    flags: u16,
    trans_id: u64,
    pageset_id: u16,
    sender_owns_set: bool,
    ranges: &[XferRange],
    payload_len: usize,
) -> Option<usize> {
    use super::packet::{
        align8,
        Descriptor,
        DESCRIPTOR_SIZE,
        TYPE_DATA_XFER_PAGES, //
    };
    let off = ranges
        .len()
        .checked_mul(XFER_RANGE_SIZE)?
        .checked_add(DESCRIPTOR_SIZE + XFER_HEADER_SIZE)?;
    let len = off.checked_add(align8(payload_len))?;
    if len > out.len() {
        return None;
    }
    let desc = Descriptor {
        ty: TYPE_DATA_XFER_PAGES,
        offset8: u16::try_from(off / 8).ok()?,
        len8: u16::try_from(len / 8).ok()?,
        flags,
        trans_id,
    };
    out[..DESCRIPTOR_SIZE].copy_from_slice(&desc.encode());
    let hdr = &mut out[DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + XFER_HEADER_SIZE];
    hdr[0..2].copy_from_slice(&pageset_id.to_le_bytes());
    hdr[2] = u8::from(sender_owns_set);
    hdr[3] = 0;
    hdr[4..8].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (i, r) in ranges.iter().enumerate() {
        let at = DESCRIPTOR_SIZE + XFER_HEADER_SIZE + i * XFER_RANGE_SIZE;
        out[at..at + 4].copy_from_slice(&r.byte_count.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&r.byte_offset.to_le_bytes());
    }
    Some(off)
}
