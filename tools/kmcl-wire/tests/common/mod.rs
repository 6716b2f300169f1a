// SPDX-License-Identifier: GPL-2.0

//! Ring memory for host tests.

#![allow(dead_code)]

use core::ptr::NonNull;

use kmcl_wire::ring::{RingMemory, CONTROL_SIZE};

/// A control page and a data area, owned by the test.
pub struct TestRing {
    control: Vec<u64>,
    data: Vec<u64>,
}

impl TestRing {
    pub fn new(data_size: usize) -> Self {
        let r = Self {
            control: vec![0; CONTROL_SIZE / 8],
            data: vec![0; data_size / 8],
        };
        r.mem().reset();
        r
    }

    /// A view of the memory; valid while `self` lives.
    pub fn mem(&self) -> RingMemory {
        let c = NonNull::new(self.control.as_ptr() as *mut u8).unwrap();
        let d = NonNull::new(self.data.as_ptr() as *mut u8).unwrap();
        // SAFETY: both vectors outlive every use in the tests and are never resized.
        unsafe { RingMemory::new(c, d, (self.data.len() * 8) as u32).unwrap() }
    }

    /// The 8-byte word at data offset `off` (a multiple of 8).
    pub fn data_word(&self, off: usize) -> u64 {
        // SAFETY: in bounds of the vector, which nothing writes meanwhile.
        unsafe { core::ptr::read_volatile(self.data.as_ptr().add(off / 8)) }
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
