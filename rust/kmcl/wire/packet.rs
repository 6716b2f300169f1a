// SPDX-License-Identifier: GPL-2.0

//! VMBus packets: the 16-byte descriptor, in-band data, completions, and
//! GPA-direct packets that describe external memory by page frame numbers.
//!
//! [`parse`] takes a private copy of one packet (as [`super::ring::RingReader`]
//! returns it) and checks every field against the channel's limits before
//! anything looks at the payload. The `encode_*` functions build the headers
//! that a writer puts in front of a payload.

use super::xfer::{
    self,
    TransferPages,
    XferError, //
};

/// Descriptor type of in-band data.
pub const TYPE_DATA_INBAND: u16 = 6;
/// Descriptor type of data in transfer pages: ranges of a receive buffer
/// the receiver shared (see [`super::xfer`]).
pub const TYPE_DATA_XFER_PAGES: u16 = 7;
/// Descriptor type of data that describes external memory as GPA ranges.
pub const TYPE_DATA_GPA_DIRECT: u16 = 9;
/// Descriptor type of a completion.
pub const TYPE_COMPLETION: u16 = 11;

/// Descriptor flag: the sender asks for a completion packet.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Size of the descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the GPA-direct header between descriptor and first range.
pub const GPA_HEADER_SIZE: usize = 8;
/// Page size of page frame numbers in GPA ranges.
pub const HV_PAGE_SIZE: u32 = 4096;

/// The packet descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Packet type.
    pub ty: u16,
    /// Offset of the payload from the start of the packet, in 8-byte units.
    pub offset8: u16,
    /// Length of the packet (descriptor and payload, no trailer), in 8-byte units.
    pub len8: u16,
    /// Flags.
    pub flags: u16,
    /// Transaction id, echoed by the completion.
    pub trans_id: u64,
}

impl Descriptor {
    /// Decodes the first 16 bytes of `b`.
    pub fn decode(b: &[u8; DESCRIPTOR_SIZE]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Self {
            ty: u16_at(0),
            offset8: u16_at(2),
            len8: u16_at(4),
            flags: u16_at(6),
            trans_id: u64::from_le_bytes(id),
        }
    }

    /// Encodes into 16 bytes.
    pub fn encode(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..2].copy_from_slice(&self.ty.to_le_bytes());
        b[2..4].copy_from_slice(&self.offset8.to_le_bytes());
        b[4..6].copy_from_slice(&self.len8.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.trans_id.to_le_bytes());
        b
    }
}

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than a descriptor, or `len8` disagrees with the bytes given.
    Length,
    /// `offset8` is below the descriptor size or beyond `len8`.
    Offset,
    /// The payload is larger than the channel's maximum packet size.
    TooLarge,
    /// A type kmcl does not accept.
    UnknownType(u16),
    /// Flag bits other than completion-requested.
    UnknownFlags(u16),
    /// A GPA-direct header or range list that is inconsistent.
    BadRanges,
    /// More ranges or external bytes than the channel allows.
    TooMuchExternalData,
    /// A transfer-page header, range count or range that is inconsistent.
    Xfer(XferError),
}

/// What a channel accepts from its peer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest payload in bytes.
    pub max_payload: u32,
    /// Largest number of GPA ranges in one packet.
    pub max_ranges: u32,
    /// Largest total of external bytes in one packet.
    pub max_external_bytes: u32,
}

/// One GPA range of a GPA-direct packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRange<'a> {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    pfns: &'a [u8],
}

impl<'a> GpaRange<'a> {
    /// Number of page frame numbers.
    #[inline]
    pub fn pfn_count(&self) -> usize {
        self.pfns.len() / 8
    }

    /// Page frame number `i`.
    #[inline]
    pub fn pfn(&self, i: usize) -> Option<u64> {
        let b = self.pfns.get(i * 8..i * 8 + 8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Some(u64::from_le_bytes(w))
    }
}

/// The GPA ranges of a checked GPA-direct packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRanges<'a> {
    count: u32,
    bytes: &'a [u8],
}

impl<'a> GpaRanges<'a> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no ranges (never, for a checked packet).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates over the ranges.
    pub fn iter(&self) -> GpaRangeIter<'a> {
        GpaRangeIter {
            rest: self.bytes,
            left: self.count,
        }
    }
}

/// Iterator over [`GpaRanges`].
pub struct GpaRangeIter<'a> {
    rest: &'a [u8],
    left: u32,
}

/// Number of pages that `byte_count` bytes from `byte_offset` touch.
pub fn pages_spanned(byte_offset: u32, byte_count: u32) -> u64 {
    (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(u64::from(HV_PAGE_SIZE))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Splits one range off `rest`; `None` if it does not fit.
#[inline]
fn split_range(rest: &[u8]) -> Option<(GpaRange<'_>, &[u8])> {
    let byte_count = u32_at(rest, 0)?;
    let byte_offset = u32_at(rest, 4)?;
    let n = usize::try_from(pages_spanned(byte_offset, byte_count)).ok()?;
    let end = n.checked_mul(8)?.checked_add(8)?;
    let pfns = rest.get(8..end)?;
    Some((
        GpaRange {
            byte_count,
            byte_offset,
            pfns,
        },
        rest.get(end..)?,
    ))
}

impl<'a> Iterator for GpaRangeIter<'a> {
    type Item = GpaRange<'a>;

    #[inline]
    fn next(&mut self) -> Option<GpaRange<'a>> {
        if self.left == 0 {
            return None;
        }
        let (r, rest) = split_range(self.rest)?;
        self.rest = rest;
        self.left -= 1;
        Some(r)
    }
}

/// What a checked packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// In-band data.
    InBand,
    /// A completion of the transaction in the descriptor.
    Completion,
    /// Data with external memory described by GPA ranges.
    GpaDirect(GpaRanges<'a>),
    /// Data in ranges of a receive buffer named by a page-set id; the
    /// ranges are not yet checked against the buffer.
    XferPages(TransferPages<'a>),
}

/// A checked packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The descriptor.
    pub desc: Descriptor,
    /// What it carries.
    pub kind: Kind<'a>,
    /// The payload: from `offset8 * 8` to `len8 * 8`.
    pub payload: &'a [u8],
    /// Offset of the payload in the packet.
    pub payload_offset: usize,
}

impl Packet<'_> {
    /// Whether the sender asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.desc.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// Checks one packet copied out of a ring; `bytes` is exactly `len8 * 8` long.
#[inline]
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Packet<'a>, PacketError> {
    let head: &[u8; DESCRIPTOR_SIZE] = bytes
        .get(..DESCRIPTOR_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::Length)?;
    let desc = Descriptor::decode(head);
    let len = usize::from(desc.len8) * 8;
    if len != bytes.len() {
        return Err(PacketError::Length);
    }
    let off = usize::from(desc.offset8) * 8;
    if off < DESCRIPTOR_SIZE || off > len {
        return Err(PacketError::Offset);
    }
    if desc.flags & !FLAG_COMPLETION_REQUESTED != 0 {
        return Err(PacketError::UnknownFlags(desc.flags));
    }
    let payload = &bytes[off..];
    if payload.len() > limits.max_payload as usize {
        return Err(PacketError::TooLarge);
    }
    let kind = match desc.ty {
        TYPE_DATA_INBAND => Kind::InBand,
        TYPE_COMPLETION => Kind::Completion,
        TYPE_DATA_GPA_DIRECT => {
            Kind::GpaDirect(check_ranges(&bytes[DESCRIPTOR_SIZE..off], limits)?)
        }
        TYPE_DATA_XFER_PAGES => Kind::XferPages(
            xfer::parse_header(&bytes[DESCRIPTOR_SIZE..off]).map_err(PacketError::Xfer)?,
        ),
        t => return Err(PacketError::UnknownType(t)),
    };
    Ok(Packet {
        desc,
        kind,
        payload,
        payload_offset: off,
    })
}

/// Checks the GPA header and ranges that sit between descriptor and payload.
#[inline(never)]
fn check_ranges<'a>(area: &'a [u8], limits: &Limits) -> Result<GpaRanges<'a>, PacketError> {
    let count = u32_at(area, 4).ok_or(PacketError::BadRanges)?;
    if count == 0 {
        return Err(PacketError::BadRanges);
    }
    if count > limits.max_ranges {
        return Err(PacketError::TooMuchExternalData);
    }
    let bytes = &area[GPA_HEADER_SIZE..];
    let mut rest = bytes;
    let mut total: u64 = 0;
    for _ in 0..count {
        let (r, next) = split_range(rest).ok_or(PacketError::BadRanges)?;
        if r.byte_count == 0 || r.byte_offset >= HV_PAGE_SIZE {
            return Err(PacketError::BadRanges);
        }
        total += u64::from(r.byte_count);
        rest = next;
    }
    // The ranges must fill the area exactly: no slack for hidden data.
    if !rest.is_empty() {
        return Err(PacketError::BadRanges);
    }
    if total > u64::from(limits.max_external_bytes) {
        return Err(PacketError::TooMuchExternalData);
    }
    Ok(GpaRanges { count, bytes })
}

/// Rounds `n` up to a multiple of 8.
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The header of an in-band or completion packet with a payload of
/// `payload_len` bytes. Returns `None` if the packet would be too long for
/// `len8`.
pub fn encode_simple(ty: u16, flags: u16, trans_id: u64, payload_len: usize) -> Option<Descriptor> {
    let len = DESCRIPTOR_SIZE.checked_add(align8(payload_len))?;
    Some(Descriptor {
        ty,
        offset8: (DESCRIPTOR_SIZE / 8) as u16,
        len8: u16::try_from(len / 8).ok()?,
        flags,
        trans_id,
    })
}

/// One external range to describe in a GPA-direct packet.
#[derive(Clone, Copy, Debug)]
pub struct RangeSpec<'a> {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset into the first page; below 4096.
    pub byte_offset: u32,
    /// Page frame numbers: exactly `pages_spanned(byte_offset, byte_count)`.
    pub pfns: &'a [u64],
}

/// Writes the descriptor, GPA header and ranges of a GPA-direct packet into
/// `out` and returns how many bytes were written (the payload follows them).
/// Returns `None` if `out` is too small or a range is inconsistent.
pub fn encode_gpa_direct(
    out: &mut [u8],
    flags: u16,
    trans_id: u64,
    ranges: &[RangeSpec<'_>],
    payload_len: usize,
) -> Option<usize> {
    let mut off = DESCRIPTOR_SIZE + GPA_HEADER_SIZE;
    for r in ranges {
        if r.byte_count == 0
            || r.byte_offset >= HV_PAGE_SIZE
            || pages_spanned(r.byte_offset, r.byte_count) != r.pfns.len() as u64
        {
            return None;
        }
        let end = off.checked_add(8 + 8 * r.pfns.len())?;
        let dst = out.get_mut(off..end)?;
        dst[0..4].copy_from_slice(&r.byte_count.to_le_bytes());
        dst[4..8].copy_from_slice(&r.byte_offset.to_le_bytes());
        for (i, pfn) in r.pfns.iter().enumerate() {
            dst[8 + i * 8..16 + i * 8].copy_from_slice(&pfn.to_le_bytes());
        }
        off = end;
    }
    if ranges.is_empty() {
        return None;
    }
    let len = off.checked_add(align8(payload_len))?;
    let desc = Descriptor {
        ty: TYPE_DATA_GPA_DIRECT,
        offset8: u16::try_from(off / 8).ok()?,
        len8: u16::try_from(len / 8).ok()?,
        flags,
        trans_id,
    };
    out.get_mut(..DESCRIPTOR_SIZE)?
        .copy_from_slice(&desc.encode());
    let hdr = out.get_mut(DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + GPA_HEADER_SIZE)?;
    hdr[0..4].copy_from_slice(&0u32.to_le_bytes());
    hdr[4..8].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
    Some(off)
}
