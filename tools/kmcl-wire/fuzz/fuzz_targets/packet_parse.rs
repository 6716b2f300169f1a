// SPDX-License-Identifier: GPL-2.0

//! Any bytes as a packet copied out of a ring: parsing must never panic,
//! and a packet it accepts must be consistent.

#![no_main]

use kmcl_wire::packet::{self, Kind, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_payload: 4096,
    max_ranges: 4,
    max_external_bytes: 64 * 4096,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = packet::parse(data, &LIMITS) {
        assert_eq!(p.desc.len8 as usize * 8, data.len());
        assert!(p.payload.len() <= LIMITS.max_payload as usize);
        assert_eq!(p.payload_offset + p.payload.len(), data.len());
        if let Kind::GpaDirect(ranges) = p.kind {
            let mut total = 0u64;
            let mut n = 0;
            for r in ranges.iter() {
                assert!(r.byte_count > 0 && r.byte_offset < 4096);
                assert_eq!(
                    r.pfn_count() as u64,
                    packet::pages_spanned(r.byte_offset, r.byte_count)
                );
                for i in 0..r.pfn_count() {
                    assert!(r.pfn(i).is_some());
                }
                total += u64::from(r.byte_count);
                n += 1;
            }
            assert_eq!(n, ranges.len());
            assert!(total <= u64::from(LIMITS.max_external_bytes));
        }
        if let Kind::XferPages(x) = p.kind {
            // Every counted range is there, inside the area before the payload.
            assert!(16 + 8 + 8 * x.len() <= p.payload_offset);
            assert_eq!(x.iter().count(), x.len());
            let widest = x.iter().map(|r| r.end()).max().unwrap_or(0);
            assert!(x.check_within(widest).is_ok());
            if widest > 0 {
                assert!(x.check_within(widest - 1).is_err());
            }
        }
    }
});
