// SPDX-License-Identifier: GPL-2.0

//! Messages of Hyper-V's integration components (heartbeat, shutdown, time
//! sync, KVP): the pipe header, the IC message header, version negotiation,
//! and the heartbeat message, as the public protocol that Linux's `hv_utils`
//! implements defines them.
//!
//! ```text
//! pipe header   flags u32 | message size u32                       8 bytes
//! IC header     framework version (major u16, minor u16)
//!               message type u16 | message version (u16, u16)
//!               message size u16 | status u32
//!               transaction u8 | flags u8 | reserved u16         20 bytes
//! negotiate     framework count u16 | message count u16 | 0 u32
//!               versions (major u16, minor u16)...
//! heartbeat     sequence number u64 | reserved 32 bytes
//! ```
//!
//! The host sends a request; the guest answers in place, in a packet with
//! the request's transaction id, flags "transaction | response".

/// Size of the pipe header.
pub const PIPE_HEADER_SIZE: usize = 8;
/// Size of the IC message header.
pub const IC_HEADER_SIZE: usize = 20;
/// Offset of the message body.
pub const BODY: usize = PIPE_HEADER_SIZE + IC_HEADER_SIZE;
/// Size of a heartbeat message.
pub const HEARTBEAT_SIZE: usize = BODY + 8 + 32;

/// Message type: version negotiation.
pub const MSGTYPE_NEGOTIATE: u16 = 0;
/// Message type: heartbeat.
pub const MSGTYPE_HEARTBEAT: u16 = 1;

/// Header flag: part of a transaction.
pub const FLAG_TRANSACTION: u8 = 1;
/// Header flag: a request.
pub const FLAG_REQUEST: u8 = 2;
/// Header flag: a response.
pub const FLAG_RESPONSE: u8 = 4;

/// Status: success.
pub const S_OK: u32 = 0;
/// Status: failure.
pub const E_FAIL: u32 = 0x8000_4005;

/// Most versions a negotiation message may list.
pub const MAX_VERSIONS: usize = 100;

/// A protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

/// IC framework versions a guest accepts, best first (as `hv_utils`).
pub const FRAMEWORK_VERSIONS: [Version; 2] = [Version::new(3, 0), Version::new(1, 0)];
/// Heartbeat versions a guest accepts, best first (as `hv_utils`).
pub const HEARTBEAT_VERSIONS: [Version; 2] = [Version::new(3, 0), Version::new(1, 0)];

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcError {
    /// Shorter than its headers or than its counts say.
    Short,
    /// More versions than a negotiation may list.
    TooManyVersions,
}

/// The IC message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Framework version.
    pub framework: Version,
    /// Message type.
    pub msgtype: u16,
    /// Message version.
    pub message: Version,
    /// Message size.
    pub size: u16,
    /// Status.
    pub status: u32,
    /// Transaction number.
    pub transaction: u8,
    /// Flags.
    pub flags: u8,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn put16(b: &mut [u8], i: usize, v: u16) {
    b[i..i + 2].copy_from_slice(&v.to_le_bytes());
}

impl Header {
    /// Reads the header that follows the pipe header of `msg`.
    pub fn parse(msg: &[u8]) -> Result<Header, IcError> {
        let h = msg.get(PIPE_HEADER_SIZE..BODY).ok_or(IcError::Short)?;
        Ok(Header {
            framework: Version::new(u16_at(h, 0), u16_at(h, 2)),
            msgtype: u16_at(h, 4),
            message: Version::new(u16_at(h, 6), u16_at(h, 8)),
            size: u16_at(h, 10),
            status: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            transaction: h[16],
            flags: h[17],
        })
    }

    /// Writes the pipe header (for a message of `total` bytes) and this
    /// header into `msg`.
    pub fn write(&self, msg: &mut [u8], total: usize) -> Result<(), IcError> {
        if msg.len() < BODY || total < BODY {
            return Err(IcError::Short);
        }
        msg[0..4].copy_from_slice(&0u32.to_le_bytes());
        msg[4..8].copy_from_slice(&((total - PIPE_HEADER_SIZE) as u32).to_le_bytes());
        let h = &mut msg[PIPE_HEADER_SIZE..BODY];
        put16(h, 0, self.framework.major);
        put16(h, 2, self.framework.minor);
        put16(h, 4, self.msgtype);
        put16(h, 6, self.message.major);
        put16(h, 8, self.message.minor);
        put16(h, 10, self.size);
        h[12..16].copy_from_slice(&self.status.to_le_bytes());
        h[16] = self.transaction;
        h[17] = self.flags;
        h[18] = 0;
        h[19] = 0;
        Ok(())
    }
}

/// Marks `msg` as a response with `status`.
pub fn set_response(msg: &mut [u8], status: u32) -> Result<(), IcError> {
    let mut h = Header::parse(msg)?;
    h.status = status;
    h.flags = FLAG_TRANSACTION | FLAG_RESPONSE;
    let total = msg.len();
    h.write(msg, total)
}

/// Writes a negotiation request offering `framework` and `message`
/// versions; returns its length.
pub fn encode_negotiate(
    msg: &mut [u8],
    transaction: u8,
    framework: &[Version],
    message: &[Version],
) -> Result<usize, IcError> {
    let n = framework.len() + message.len();
    if n > MAX_VERSIONS {
        return Err(IcError::TooManyVersions);
    }
    let total = BODY + 8 + 4 * n;
    let body = msg.get_mut(BODY..total).ok_or(IcError::Short)?;
    put16(body, 0, framework.len() as u16);
    put16(body, 2, message.len() as u16);
    body[4..8].fill(0);
    for (i, v) in framework.iter().chain(message.iter()).enumerate() {
        put16(body, 8 + 4 * i, v.major);
        put16(body, 10 + 4 * i, v.minor);
    }
    Header {
        framework: Version::new(0, 0),
        msgtype: MSGTYPE_NEGOTIATE,
        message: Version::new(0, 0),
        size: (8 + 4 * n) as u16,
        status: S_OK,
        transaction,
        flags: FLAG_TRANSACTION | FLAG_REQUEST,
    }
    .write(msg, total)?;
    Ok(total)
}

/// The versions listed in a negotiation message: (framework count, message
/// count), checked against the message's length.
fn negotiate_counts(msg: &[u8]) -> Result<(usize, usize), IcError> {
    let body = msg.get(BODY..BODY + 8).ok_or(IcError::Short)?;
    let (f, m) = (u16_at(body, 0) as usize, u16_at(body, 2) as usize);
    if f + m > MAX_VERSIONS {
        return Err(IcError::TooManyVersions);
    }
    if msg.len() < BODY + 8 + 4 * (f + m) {
        return Err(IcError::Short);
    }
    Ok((f, m))
}

fn version_at(msg: &[u8], i: usize) -> Version {
    let o = BODY + 8 + 4 * i;
    Version::new(u16_at(msg, o), u16_at(msg, o + 2))
}

/// Answers a negotiation request in place, as a guest: picks the first of
/// `framework` and of `message` that the host offers. Returns the chosen
/// pair, or `None` (counts set to zero) when there is none.
pub fn answer_negotiate(
    msg: &mut [u8],
    framework: &[Version],
    message: &[Version],
) -> Result<Option<(Version, Version)>, IcError> {
    let (f, m) = negotiate_counts(msg)?;
    let offered =
        |lo: usize, hi: usize, want: &Version| (lo..hi).any(|i| version_at(msg, i) == *want);
    let fw = framework.iter().find(|v| offered(0, f, v)).copied();
    let ms = message.iter().find(|v| offered(f, f + m, v)).copied();
    // The answer needs room for two versions.
    if msg.len() < BODY + 8 + 8 {
        return Err(IcError::Short);
    }
    let chosen = match (fw, ms) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    let (a, b) = chosen.unwrap_or((Version::new(0, 0), Version::new(0, 0)));
    let count = u16::from(chosen.is_some());
    put16(msg, BODY, count);
    put16(msg, BODY + 2, count);
    for (i, v) in [a, b].iter().enumerate() {
        put16(msg, BODY + 8 + 4 * i, v.major);
        put16(msg, BODY + 10 + 4 * i, v.minor);
    }
    let mut h = Header::parse(msg)?;
    h.size = 0x10;
    h.framework = a;
    h.message = b;
    let total = msg.len();
    h.write(msg, total)?;
    Ok(chosen)
}

/// Reads a guest's negotiation answer: the chosen pair, or `None`.
pub fn parse_negotiate_answer(msg: &[u8]) -> Result<Option<(Version, Version)>, IcError> {
    let (f, m) = negotiate_counts(msg)?;
    if f == 0 || m == 0 {
        return Ok(None);
    }
    Ok(Some((version_at(msg, 0), version_at(msg, 1))))
}

/// Writes a heartbeat request with sequence number `seq`; returns its length.
pub fn encode_heartbeat(
    msg: &mut [u8],
    transaction: u8,
    version: (Version, Version),
    seq: u64,
) -> Result<usize, IcError> {
    let body = msg.get_mut(BODY..HEARTBEAT_SIZE).ok_or(IcError::Short)?;
    body[..8].copy_from_slice(&seq.to_le_bytes());
    body[8..].fill(0);
    Header {
        framework: version.0,
        msgtype: MSGTYPE_HEARTBEAT,
        message: version.1,
        size: 40,
        status: S_OK,
        transaction,
        flags: FLAG_TRANSACTION | FLAG_REQUEST,
    }
    .write(msg, HEARTBEAT_SIZE)?;
    Ok(HEARTBEAT_SIZE)
}

/// The sequence number of a heartbeat message.
pub fn heartbeat_sequence(msg: &[u8]) -> Result<u64, IcError> {
    let b = msg.get(BODY..BODY + 8).ok_or(IcError::Short)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    Ok(u64::from_le_bytes(w))
}

/// Answers a heartbeat in place, as a guest: the sequence number plus one.
/// Returns the new sequence number.
pub fn answer_heartbeat(msg: &mut [u8]) -> Result<u64, IcError> {
    let seq = heartbeat_sequence(msg)?.wrapping_add(1);
    msg[BODY..BODY + 8].copy_from_slice(&seq.to_le_bytes());
    Ok(seq)
}
