// SPDX-License-Identifier: GPL-2.0

//! The pipe header of pipe-mode channels (`IS_PIPE` / `OFFER_AS_PIPE`;
//! Linux's `struct vmpipe_proto_header`, hv_sock's offers).
//!
//! On a pipe channel the data of every in-band packet starts with it:
//!
//! ```text
//! type u32 | data size u32 | data (size bytes) | padding to 8
//! ```
//!
//! The only type kmcl knows is [`TYPE_DATA`]: one message, whole. A header
//! whose size disagrees with the packet that carries it, or of another
//! type, is malformed.

/// Size of the pipe header.
pub const HEADER_SIZE: usize = 8;

/// Header type: the packet carries one message of `data size` bytes (the
/// type hv_sock writes).
pub const TYPE_DATA: u32 = 1;

/// Pipe mode of an offer: byte stream (`VMBUS_PIPE_TYPE_BYTE`).
pub const MODE_BYTE: u32 = 0;

/// Pipe mode of an offer: messages (`VMBUS_PIPE_TYPE_MESSAGE`).
pub const MODE_MESSAGE: u32 = 4;

/// Why a pipe header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeError {
    /// The in-band data is shorter than the header.
    Short,
    /// A header type other than [`TYPE_DATA`].
    UnknownType(u32),
    /// The size names more bytes than the packet carries, or fewer than
    /// it carries beyond its padding to 8.
    Size {
        /// The header's data size.
        header: u32,
        /// The bytes after the header, padding included.
        carried: usize,
    },
}

/// The header of a message of `len` bytes; `None` if `len` does not fit in
/// the header's size field.
pub fn encode(len: usize) -> Option<[u8; HEADER_SIZE]> {
    let size = u32::try_from(len).ok()?;
    let mut h = [0u8; HEADER_SIZE];
    h[..4].copy_from_slice(&TYPE_DATA.to_le_bytes());
    h[4..].copy_from_slice(&size.to_le_bytes());
    Some(h)
}

/// Checks the pipe header at the start of an in-band packet's `payload`
/// (padded to 8 as it is on the wire) and returns the message's length:
/// the message is `payload[HEADER_SIZE..HEADER_SIZE + len]`.
pub fn parse(payload: &[u8]) -> Result<usize, PipeError> {
    let (h, rest) = payload
        .split_first_chunk::<HEADER_SIZE>()
        .ok_or(PipeError::Short)?;
    let [t0, t1, t2, t3, s0, s1, s2, s3] = *h;
    let ty = u32::from_le_bytes([t0, t1, t2, t3]);
    let size = u32::from_le_bytes([s0, s1, s2, s3]);
    if ty != TYPE_DATA {
        return Err(PipeError::UnknownType(ty));
    }
    let bad = PipeError::Size {
        header: size,
        carried: rest.len(),
    };
    let len = usize::try_from(size).map_err(|_| bad)?;
    // Inside the packet, and no more than its padding short of its end.
    if len > rest.len() || rest.len() - len >= 8 {
        return Err(bad);
    }
    Ok(len)
}
