// SPDX-License-Identifier: GPL-2.0

//! Any bytes as a saved state taken back by a restoring server: the
//! decoder must never panic, and what it accepts must be consistent.

#![no_main]

use kmcl_wire::save::{self, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let complete = save::is_complete(data);
    let mut packets = 0u32;
    let mut announced = None;
    let r = save::parse(data, |rec| {
        match rec {
            Record::Channel(c) => announced = Some(c.packets),
            Record::Packet(p) => {
                assert!(p.wire.len() >= 16 && p.wire.len() % 8 == 0);
                packets += 1;
            }
            Record::End => {}
        }
        Ok(())
    });
    if r.is_ok() {
        assert_eq!(complete, Ok(true));
        assert_eq!(announced, Some(packets));
    }
    // Chunked copying of whatever it is never panics either.
    let mut pos = 0;
    let mut out = [0u8; 64];
    for _ in 0..16 {
        match save::copy_records(data, &mut pos, &mut out) {
            Ok(save::CopyStatus::MoreData { .. }) => {}
            _ => break,
        }
    }
});
