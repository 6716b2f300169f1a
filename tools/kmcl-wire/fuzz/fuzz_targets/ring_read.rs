// SPDX-License-Identifier: GPL-2.0

//! Any control page and data area as a ring written by a hostile peer:
//! reading must never panic or read out of bounds, and whatever it returns
//! must lie within the buffer given.

#![no_main]

use std::ptr::NonNull;

use kmcl_wire::{
    packet::{self, Limits},
    ring::{RingMemory, RingReader, RingWriter, CONTROL_SIZE},
};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_payload: 2048,
    max_ranges: 4,
    max_external_bytes: 16 * 4096,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    // 16 bytes of control fields, then the data area (a multiple of 8).
    let size = ((data.len() - 16) / 8 * 8).clamp(8, 8192);
    let mut control = vec![0u64; CONTROL_SIZE / 8];
    let mut area = vec![0u64; size / 8];
    let c = control.as_mut_ptr().cast::<u8>();
    // SAFETY: both vectors outlive the ring views below and are not resized.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), c, 16);
        let n = (data.len() - 16).min(size);
        std::ptr::copy_nonoverlapping(data[16..].as_ptr(), area.as_mut_ptr().cast::<u8>(), n);
    }
    let d = area.as_mut_ptr().cast::<u8>();
    // SAFETY: as above; every view is dropped before the vectors.
    let mem = || unsafe {
        RingMemory::new(
            NonNull::new(c).unwrap(),
            NonNull::new(d).unwrap(),
            size as u32,
        )
        .unwrap()
    };
    let buflen = 16 + (data[0] as usize) * 16;
    let mut buf = vec![0u8; buflen];
    if let Ok(mut r) = RingReader::new(mem()) {
        for _ in 0..64 {
            match r.read(&mut buf) {
                Ok(Some(n)) => {
                    assert!(n <= buf.len() && n % 8 == 0 && n >= 16);
                    let _ = packet::parse(&buf[..n], &LIMITS);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = r.commit();
        let _ = r.end_read();
    }
    // The writer against the same hostile indices.
    if let Ok(mut w) = RingWriter::new(mem()) {
        let pkt = [0u8; 24];
        for _ in 0..8 {
            if w.write(&[&pkt]).is_err() {
                break;
            }
        }
        let _ = w.free();
    }
});
