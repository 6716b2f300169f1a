// SPDX-License-Identifier: GPL-2.0

mod common;

use common::Rng;
use kmcl_wire::packet::{self, Descriptor, Kind, Limits, PacketError};
use kmcl_wire::xfer::{self, XferError, XferRange};

const LIMITS: Limits = Limits {
    max_payload: 512,
    max_ranges: 2,
    max_external_bytes: 3 * 4096,
};

/// A type-7 packet: header with `count`, then `ranges`, `slack` zero bytes,
/// then `payload`; `offset8` covers everything before the payload.
fn xfer_raw(
    id: u16,
    owns: u8,
    count: u32,
    ranges: &[(u32, u32)],
    slack: usize,
    payload: &[u8],
) -> Vec<u8> {
    let mut area = Vec::new();
    area.extend_from_slice(&id.to_le_bytes());
    area.push(owns);
    area.push(0);
    area.extend_from_slice(&count.to_le_bytes());
    for &(bc, bo) in ranges {
        area.extend_from_slice(&bc.to_le_bytes());
        area.extend_from_slice(&bo.to_le_bytes());
    }
    area.resize(area.len() + slack, 0);
    let off = 16 + area.len();
    assert_eq!(off % 8, 0);
    let len = off + packet::align8(payload.len());
    let d = Descriptor {
        ty: packet::TYPE_DATA_XFER_PAGES,
        offset8: (off / 8) as u16,
        len8: (len / 8) as u16,
        flags: packet::FLAG_COMPLETION_REQUESTED,
        trans_id: 0x77,
    };
    let mut v = d.encode().to_vec();
    v.extend_from_slice(&area);
    v.extend_from_slice(payload);
    v.resize(len, 0);
    v
}

#[test]
fn header_and_ranges_are_read_in_wire_order() {
    let p = xfer_raw(0xcafe, 1, 2, &[(100, 0), (60, 4000)], 0, b"nvsp msg");
    let pkt = packet::parse(&p, &LIMITS).unwrap();
    assert_eq!(pkt.desc.trans_id, 0x77);
    assert!(pkt.completion_requested());
    assert_eq!(pkt.payload, b"nvsp msg");
    let Kind::XferPages(x) = pkt.kind else {
        panic!("not a transfer-page packet: {:?}", pkt.kind);
    };
    assert_eq!((x.pageset_id, x.sender_owns_set, x.len()), (0xcafe, 1, 2));
    let got: Vec<XferRange> = x.iter().collect();
    assert_eq!(
        got,
        [
            XferRange {
                byte_count: 100,
                byte_offset: 0
            },
            XferRange {
                byte_count: 60,
                byte_offset: 4000
            }
        ]
    );
    assert_eq!(x.range(2), None);
    // The second range ends at 4060: inside 4060 bytes, not inside 4059.
    assert_eq!(x.check_within(4060), Ok(()));
    assert_eq!(
        x.check_within(4059),
        Err(XferError::OutsideBuffer { index: 1 })
    );
}

#[test]
fn a_header_shorter_than_stated_is_refused() {
    // offset8 = 2: no room for the 8-byte header at all.
    let mut p = Descriptor {
        ty: 7,
        offset8: 2,
        len8: 3,
        flags: 0,
        trans_id: 1,
    }
    .encode()
    .to_vec();
    p.extend_from_slice(&[0; 8]);
    assert_eq!(
        packet::parse(&p, &LIMITS),
        Err(PacketError::Xfer(XferError::ShortHeader))
    );
    assert_eq!(xfer::parse_header(&[0; 7]), Err(XferError::ShortHeader));
}

#[test]
fn a_count_that_overflows_the_packet_is_refused() {
    // Two ranges announced, one present.
    let p = xfer_raw(1, 0, 2, &[(8, 0)], 0, b"x");
    assert_eq!(
        packet::parse(&p, &LIMITS),
        Err(PacketError::Xfer(XferError::RangeCount(2)))
    );
    // A count whose byte size overflows any length.
    let p = xfer_raw(1, 0, u32::MAX, &[(8, 0)], 0, b"x");
    assert_eq!(
        packet::parse(&p, &LIMITS),
        Err(PacketError::Xfer(XferError::RangeCount(u32::MAX)))
    );
    // The ranges may not run into the payload: offset8 bounds them.
    let p = xfer_raw(1, 0, 3, &[(8, 0), (8, 8)], 0, &[0xff; 8]);
    assert!(packet::parse(&p, &LIMITS).is_err());
}

#[test]
fn zero_ranges_and_slack_before_the_payload_are_accepted() {
    let p = xfer_raw(9, 0, 0, &[], 0, b"");
    let Kind::XferPages(x) = packet::parse(&p, &LIMITS).unwrap().kind else {
        panic!("not a transfer-page packet");
    };
    assert!(x.is_empty());
    assert_eq!(x.check_within(0), Ok(()));
    // Linux's netvsc accepts an offset8 beyond the last range; so does kmcl,
    // and the slack is neither a range nor payload.
    let p = xfer_raw(9, 0, 1, &[(4, 4)], 16, b"pay");
    let pkt = packet::parse(&p, &LIMITS).unwrap();
    let Kind::XferPages(x) = pkt.kind else {
        panic!("not a transfer-page packet");
    };
    assert_eq!(x.len(), 1);
    assert_eq!(&pkt.payload[..3], b"pay");
}

#[test]
fn ranges_at_the_end_of_u32_do_not_wrap() {
    let p = xfer_raw(1, 0, 1, &[(u32::MAX, u32::MAX)], 0, b"");
    let Kind::XferPages(x) = packet::parse(&p, &LIMITS).unwrap().kind else {
        panic!("not a transfer-page packet");
    };
    assert_eq!(
        x.check_within(u64::from(u32::MAX)),
        Err(XferError::OutsideBuffer { index: 0 })
    );
    assert_eq!(x.check_within(2 * u64::from(u32::MAX)), Ok(()));
}

#[test]
fn encode_round_trips_through_parse() {
    let ranges = [
        XferRange {
            byte_count: 1500,
            byte_offset: 0,
        },
        XferRange {
            byte_count: 64,
            byte_offset: 8192,
        },
    ];
    let mut out = vec![0u8; 256];
    let off = xfer::encode(&mut out, 1, 0x1234, 0xcafe, true, &ranges, 5).unwrap();
    assert_eq!(off, 16 + 8 + 16);
    out[off..off + 5].copy_from_slice(b"hello");
    let len = off + 8;
    let pkt = packet::parse(&out[..len], &LIMITS).unwrap();
    assert_eq!(&pkt.payload[..5], b"hello");
    assert_eq!(pkt.desc.trans_id, 0x1234);
    let Kind::XferPages(x) = pkt.kind else {
        panic!("not a transfer-page packet");
    };
    assert_eq!((x.pageset_id, x.sender_owns_set), (0xcafe, 1));
    assert_eq!(x.iter().collect::<Vec<_>>(), ranges);
    // Too small a buffer is refused, never written past.
    assert_eq!(
        xfer::encode(&mut out[..40], 0, 1, 1, false, &ranges, 5),
        None
    );
}

/// Fuzz-style: random bytes behind a type-7 descriptor never panic the
/// parser, and what it accepts is consistent with the bytes.
#[test]
fn random_type7_packets_parse_consistently() {
    let mut rng = Rng::new(7);
    for _ in 0..20000 {
        let area_len = rng.below(12) as usize * 8;
        let payload_len = rng.below(5) as usize * 8;
        let mut area: Vec<u8> = (0..area_len).map(|_| rng.next() as u8).collect();
        if area_len >= 8 && rng.below(2) == 0 {
            // A plausible count, sometimes one too many.
            let fit = ((area_len - 8) / 8) as u32;
            let count = fit.saturating_sub(rng.below(2) as u32) + rng.below(2) as u32;
            area[4..8].copy_from_slice(&count.to_le_bytes());
        }
        let off = 16 + area_len;
        let len = off + payload_len;
        let d = Descriptor {
            ty: 7,
            offset8: (off / 8) as u16,
            len8: (len / 8) as u16,
            flags: 0,
            trans_id: rng.next(),
        };
        let mut p = d.encode().to_vec();
        p.extend_from_slice(&area);
        p.resize(len, 0xaa);
        match packet::parse(&p, &LIMITS) {
            Ok(pkt) => {
                let Kind::XferPages(x) = pkt.kind else {
                    panic!("type 7 parsed as {:?}", pkt.kind);
                };
                assert!(area_len >= 8);
                let count = u32::from_le_bytes([area[4], area[5], area[6], area[7]]) as usize;
                assert_eq!(x.len(), count);
                assert!(8 + 8 * count <= area_len);
                for (i, r) in x.iter().enumerate() {
                    let at = 8 + 8 * i;
                    assert_eq!(r.byte_count.to_le_bytes(), area[at..at + 4]);
                    assert_eq!(r.byte_offset.to_le_bytes(), area[at + 4..at + 8]);
                    assert!(x.check_within(r.end()).is_ok() || x.iter().any(|o| o.end() > r.end()));
                }
            }
            Err(PacketError::Xfer(XferError::ShortHeader)) => assert!(area_len < 8),
            Err(PacketError::Xfer(XferError::RangeCount(c))) => {
                assert!(8 + 8 * c as u64 > area_len as u64)
            }
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
}
