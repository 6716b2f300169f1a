// SPDX-License-Identifier: GPL-2.0

//! The saved state of a server channel.
//!
//! A saved state is a header followed by records:
//!
//! ```text
//! header:  "KMCLSAVE" | version u32 | 0 u32
//! record:  kind u32 | body length u32 | body | zero padding to 8 bytes
//! ```
//!
//! The first record is a [`ChannelRecord`], then one [`PacketRecord`] per
//! packet in flight, then an end record. All integers are little-endian.
//! The state is handed out in chunks of whole records ([`copy_records`])
//! and taken back in chunks of any size ([`is_complete`], then [`parse`]).
//! It may come from storage the driver does not control, so the decoder
//! checks every length and refuses anything inconsistent.

use crate::wire::guid::Guid;

/// The header's magic.
pub const MAGIC: [u8; 8] = *b"KMCLSAVE";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: usize = 16;
/// Size of a record header.
pub const RECORD_HEADER_SIZE: usize = 8;
/// Largest record body accepted.
pub const MAX_BODY: u32 = 1 << 20;

/// Record kinds.
pub mod kind {
    /// The channel: interface ids and the connection to rejoin.
    pub const CHANNEL: u32 = 1;
    /// One packet in flight.
    pub const PACKET: u32 = 2;
    /// The end.
    pub const END: u32 = 3;
}

/// Why a saved state was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveError {
    /// Bad magic or an unknown version.
    Header,
    /// A record kind this version does not know, or in the wrong place.
    Kind(u32),
    /// A record whose length is impossible or whose body is inconsistent.
    Length,
    /// Data after the end record.
    Trailing,
    /// The output buffer is too small for the next record.
    TooSmall {
        /// Bytes the next record needs.
        required: usize,
    },
}

/// Size of a channel record's body.
pub const CHANNEL_RECORD_SIZE: usize = 16 + 16 + 8 + 4 + 4;

/// The channel record's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRecord {
    /// Interface type of the offer.
    pub interface_type: Guid,
    /// Interface instance of the offer.
    pub interface_instance: Guid,
    /// Transport token of the connection to rejoin.
    pub token: u64,
    /// Number of packet records that follow.
    pub packets: u32,
}

impl ChannelRecord {
    /// Encoded size of the body.
    pub const SIZE: usize = CHANNEL_RECORD_SIZE;

    /// Encodes the body.
    pub fn encode(&self) -> [u8; CHANNEL_RECORD_SIZE] {
        let mut b = [0u8; CHANNEL_RECORD_SIZE];
        b[0..16].copy_from_slice(&self.interface_type.0);
        b[16..32].copy_from_slice(&self.interface_instance.0);
        b[32..40].copy_from_slice(&self.token.to_le_bytes());
        b[40..44].copy_from_slice(&self.packets.to_le_bytes());
        b
    }

    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, SaveError> {
        if b.len() != Self::SIZE {
            return Err(SaveError::Length);
        }
        let mut t = [0u8; 16];
        let mut i = [0u8; 16];
        t.copy_from_slice(&b[0..16]);
        i.copy_from_slice(&b[16..32]);
        Ok(Self {
            interface_type: Guid(t),
            interface_instance: Guid(i),
            token: u64_at(b, 32),
            packets: u32_at(b, 40),
        })
    }
}

/// A packet record's body, borrowed from the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRecord<'a> {
    /// The transaction id the packet was sent with.
    pub trans_id: u64,
    /// The packet as it went into the ring.
    pub wire: &'a [u8],
    /// The driver's state from its SavePacket callback.
    pub driver: &'a [u8],
}

/// Size of the fixed part of a packet record's body.
pub const PACKET_FIXED: usize = 16;

impl PacketRecord<'_> {
    /// Fixed part of the body.
    pub const FIXED: usize = PACKET_FIXED;

    /// Body size for the given parts.
    pub fn body_len(wire: usize, driver: usize) -> usize {
        Self::FIXED + wire + driver
    }

    /// Writes the fixed part of the body.
    pub fn encode_fixed(trans_id: u64, wire: usize, driver: usize) -> [u8; PACKET_FIXED] {
        let mut b = [0u8; PACKET_FIXED];
        b[0..8].copy_from_slice(&trans_id.to_le_bytes());
        b[8..12].copy_from_slice(&(wire as u32).to_le_bytes());
        b[12..16].copy_from_slice(&(driver as u32).to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<PacketRecord<'_>, SaveError> {
        if b.len() < Self::FIXED {
            return Err(SaveError::Length);
        }
        let wire = u32_at(b, 8) as usize;
        let driver = u32_at(b, 12) as usize;
        if Self::FIXED
            .checked_add(wire)
            .and_then(|n| n.checked_add(driver))
            != Some(b.len())
        {
            return Err(SaveError::Length);
        }
        if wire < 16 || wire % 8 != 0 {
            return Err(SaveError::Length);
        }
        Ok(PacketRecord {
            trans_id: u64_at(b, 0),
            wire: &b[Self::FIXED..Self::FIXED + wire],
            driver: &b[Self::FIXED + wire..],
        })
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Rounds up to 8.
const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// The header bytes.
pub fn header() -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Encoded size of a record with a body of `body` bytes.
pub const fn record_size(body: usize) -> usize {
    RECORD_HEADER_SIZE + pad8(body)
}

/// Writes one record made of `parts` into `out`; returns its size.
pub fn encode_record(out: &mut [u8], kind: u32, parts: &[&[u8]]) -> Result<usize, SaveError> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let total = record_size(body);
    if body > MAX_BODY as usize {
        return Err(SaveError::Length);
    }
    let Some(dst) = out.get_mut(..total) else {
        return Err(SaveError::TooSmall { required: total });
    };
    dst[0..4].copy_from_slice(&kind.to_le_bytes());
    dst[4..8].copy_from_slice(&(body as u32).to_le_bytes());
    let mut off = RECORD_HEADER_SIZE;
    for p in parts {
        dst[off..off + p.len()].copy_from_slice(p);
        off += p.len();
    }
    dst[off..total].fill(0);
    Ok(total)
}

/// Size of the record starting at `rec` (which must hold its 8-byte header).
fn record_len_at(rec: &[u8]) -> Result<usize, SaveError> {
    if rec.len() < RECORD_HEADER_SIZE {
        return Err(SaveError::Length);
    }
    let body = u32_at(rec, 4);
    if body > MAX_BODY {
        return Err(SaveError::Length);
    }
    Ok(record_size(body as usize))
}

/// What [`copy_records`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    /// Everything left was copied: `filled` bytes.
    Complete {
        /// Bytes written.
        filled: usize,
    },
    /// Some records were copied (`filled` bytes); more follow.
    MoreData {
        /// Bytes written.
        filled: usize,
    },
}

/// Copies whole records from `state` (a sequence of records produced by
/// [`encode_record`], or the header first), starting at `*pos`, into `out`.
/// `BufferTooSmall` is reported as `SaveError::TooSmall` when not even the
/// next record fits.
pub fn copy_records(
    state: &[u8],
    pos: &mut usize,
    out: &mut [u8],
) -> Result<CopyStatus, SaveError> {
    let mut filled = 0;
    while *pos < state.len() {
        let rest = &state[*pos..];
        let n = if *pos == 0 {
            HEADER_SIZE
        } else {
            record_len_at(rest)?
        };
        if n > rest.len() {
            return Err(SaveError::Length);
        }
        if filled + n > out.len() {
            if filled == 0 {
                return Err(SaveError::TooSmall { required: n });
            }
            return Ok(CopyStatus::MoreData { filled });
        }
        out[filled..filled + n].copy_from_slice(&rest[..n]);
        filled += n;
        *pos += n;
    }
    Ok(CopyStatus::Complete { filled })
}

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// The channel record.
    Channel(ChannelRecord),
    /// A packet record.
    Packet(PacketRecord<'a>),
    /// The end.
    End,
}

/// Parses a complete saved state held in `buf`, calling `f` for each record
/// in order. The channel record must come first and the end record last,
/// with exactly as many packet records as the channel record announces.
pub fn parse<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(Record<'a>) -> Result<(), SaveError>,
) -> Result<(), SaveError> {
    let Some(h) = buf.get(..HEADER_SIZE) else {
        return Err(SaveError::Header);
    };
    if h[..8] != MAGIC || u32_at(h, 8) != VERSION || u32_at(h, 12) != 0 {
        return Err(SaveError::Header);
    }
    let mut off = HEADER_SIZE;
    let mut expected_packets = None;
    let mut seen_packets = 0u32;
    loop {
        let rest = &buf[off..];
        let n = record_len_at(rest)?;
        let rec = rest.get(..n).ok_or(SaveError::Length)?;
        let k = u32_at(rec, 0);
        let body_len = u32_at(rec, 4) as usize;
        let body = &rec[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + body_len];
        if rec[RECORD_HEADER_SIZE + body_len..].iter().any(|b| *b != 0) {
            return Err(SaveError::Length);
        }
        off += n;
        match (k, expected_packets) {
            (kind::CHANNEL, None) => {
                let c = ChannelRecord::decode(body)?;
                expected_packets = Some(c.packets);
                f(Record::Channel(c))?;
            }
            (kind::PACKET, Some(max)) if seen_packets < max => {
                seen_packets += 1;
                f(Record::Packet(PacketRecord::decode(body)?))?;
            }
            (kind::END, Some(max)) if seen_packets == max && body_len == 0 => {
                f(Record::End)?;
                return if off == buf.len() {
                    Ok(())
                } else {
                    Err(SaveError::Trailing)
                };
            }
            (k, _) => return Err(SaveError::Kind(k)),
        }
    }
}

/// Whether `buf` holds a complete saved state: a header and records up to
/// and including an end record. `Ok(false)` means more data is needed.
///
/// The header and each record's kind are checked as soon as they arrive, so
/// that garbage is refused at once instead of waiting for an end that never
/// comes.
pub fn is_complete(buf: &[u8]) -> Result<bool, SaveError> {
    let magic = buf.len().min(8);
    if buf[..magic] != MAGIC[..magic] {
        return Err(SaveError::Header);
    }
    if buf.len() < HEADER_SIZE {
        return Ok(false);
    }
    if u32_at(buf, 8) != VERSION || u32_at(buf, 12) != 0 {
        return Err(SaveError::Header);
    }
    let mut off = HEADER_SIZE;
    loop {
        let rest = &buf[off..];
        if rest.len() < RECORD_HEADER_SIZE {
            return Ok(false);
        }
        let k = u32_at(rest, 0);
        if !matches!(k, kind::CHANNEL | kind::PACKET | kind::END) {
            return Err(SaveError::Kind(k));
        }
        let n = record_len_at(rest)?;
        if rest.len() < n {
            return Ok(false);
        }
        if k == kind::END {
            return if off + n == buf.len() {
                Ok(true)
            } else {
                Err(SaveError::Trailing)
            };
        }
        off += n;
    }
}
