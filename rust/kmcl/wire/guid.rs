// SPDX-License-Identifier: GPL-2.0

//! Globally unique identifiers as VMBus uses them.
//!
//! A [`Guid`] holds the 16 bytes of a C `guid_t` in memory order: the first
//! three fields of the textual form are stored little-endian, the last two as
//! written. That is the order in which VMBus offers carry interface type and
//! instance ids, and in which `struct hv_vmbus_device_id` stores them.

use core::fmt;

/// A GUID in `guid_t` byte order.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

/// Why a string is not a GUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseGuidError {
    /// The string is not 36 characters long.
    Length,
    /// A dash is missing or misplaced (0-based byte position).
    Dash(usize),
    /// A character is not a hexadecimal digit (0-based byte position).
    Digit(usize),
}

/// Positions of the 32 hex digits of the canonical text form, in text order.
const DIGIT_POS: [usize; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35,
];

/// For each byte of the text form's big-endian reading, its index in `guid_t` order.
const BYTE_ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Guid {
    /// The all-zero GUID, which VMBus uses for "none".
    pub const NULL: Guid = Guid([0; 16]);

    /// Parses the canonical form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    /// (either case), optionally enclosed in braces.
    pub const fn parse(s: &str) -> Result<Guid, ParseGuidError> {
        let mut b = s.as_bytes();
        if b.len() == 38 && b[0] == b'{' && b[37] == b'}' {
            b = b.split_at(1).1.split_at(36).0;
        }
        if b.len() != 36 {
            return Err(ParseGuidError::Length);
        }
        let dashes = [8usize, 13, 18, 23];
        let mut i = 0;
        while i < dashes.len() {
            if b[dashes[i]] != b'-' {
                return Err(ParseGuidError::Dash(dashes[i]));
            }
            i += 1;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        while n < 16 {
            let hi_pos = DIGIT_POS[2 * n];
            let lo_pos = DIGIT_POS[2 * n + 1];
            let hi = match hex_value(b[hi_pos]) {
                Some(v) => v,
                None => return Err(ParseGuidError::Digit(hi_pos)),
            };
            let lo = match hex_value(b[lo_pos]) {
                Some(v) => v,
                None => return Err(ParseGuidError::Digit(lo_pos)),
            };
            out[BYTE_ORDER[n]] = (hi << 4) | lo;
            n += 1;
        }
        Ok(Guid(out))
    }

    /// Parses a GUID in a constant context; a malformed literal fails the build.
    pub const fn from_str_const(s: &str) -> Guid {
        match Self::parse(s) {
            Ok(g) => g,
            Err(_) => panic!("malformed GUID literal"),
        }
    }

    /// Returns `true` for the all-zero GUID.
    pub const fn is_null(&self) -> bool {
        let mut i = 0;
        while i < 16 {
            if self.0[i] != 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The bytes in `guid_t` order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &idx) in BYTE_ORDER.iter().enumerate() {
            if matches!(n, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{:02x}", self.0[idx])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}
