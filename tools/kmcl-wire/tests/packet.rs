// SPDX-License-Identifier: GPL-2.0

use kmcl_wire::packet::{self, Descriptor, Kind, Limits, PacketError, RangeSpec};

const LIMITS: Limits = Limits {
    max_payload: 512,
    max_ranges: 2,
    max_external_bytes: 3 * 4096,
};

fn raw(ty: u16, offset8: u16, len8: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let d = Descriptor {
        ty,
        offset8,
        len8,
        flags,
        trans_id: 9,
    };
    let mut v = d.encode().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn descriptor_encoding_is_little_endian() {
    let d = Descriptor {
        ty: 6,
        offset8: 2,
        len8: 3,
        flags: 1,
        trans_id: 0x0102030405060708,
    };
    let b = d.encode();
    assert_eq!(b, [6, 0, 2, 0, 3, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(Descriptor::decode(&b), d);
}

#[test]
fn inband_payload_excludes_the_descriptor() {
    let p = raw(6, 2, 3, 1, b"abcdefgh");
    let pkt = packet::parse(&p, &LIMITS).unwrap();
    assert_eq!(pkt.kind, Kind::InBand);
    assert_eq!(pkt.payload, b"abcdefgh");
    assert!(pkt.completion_requested());
}

#[test]
fn malformed_descriptors_are_refused() {
    assert_eq!(packet::parse(&[0; 8], &LIMITS), Err(PacketError::Length));
    assert_eq!(
        packet::parse(&raw(6, 2, 0, 0, &[]), &LIMITS),
        Err(PacketError::Length)
    );
    assert_eq!(
        packet::parse(&raw(6, 2, 3, 0, &[0; 16]), &LIMITS),
        Err(PacketError::Length)
    );
    assert_eq!(
        packet::parse(&raw(6, 1, 3, 0, &[0; 8]), &LIMITS),
        Err(PacketError::Offset)
    );
    assert_eq!(
        packet::parse(&raw(6, 0, 3, 0, &[0; 8]), &LIMITS),
        Err(PacketError::Offset)
    );
    assert_eq!(
        packet::parse(&raw(6, 4, 3, 0, &[0; 8]), &LIMITS),
        Err(PacketError::Offset)
    );
    assert_eq!(
        packet::parse(&raw(5, 2, 3, 0, &[0; 8]), &LIMITS),
        Err(PacketError::UnknownType(5))
    );
    assert_eq!(
        packet::parse(&raw(6, 2, 3, 2, &[0; 8]), &LIMITS),
        Err(PacketError::UnknownFlags(2))
    );
    let big = vec![0u8; 520];
    assert_eq!(
        packet::parse(&raw(6, 2, 67, 0, &big), &LIMITS),
        Err(PacketError::TooLarge)
    );
}

#[test]
fn gpa_direct_round_trip() {
    let pfns_a = [0x1000u64, 0x1001];
    let pfns_b = [0x2000u64];
    let ranges = [
        RangeSpec {
            byte_count: 5000,
            byte_offset: 100,
            pfns: &pfns_a,
        },
        RangeSpec {
            byte_count: 16,
            byte_offset: 4000,
            pfns: &pfns_b,
        },
    ];
    let mut buf = [0u8; 256];
    let off = packet::encode_gpa_direct(&mut buf, 1, 44, &ranges, 8).unwrap();
    buf[off..off + 8].copy_from_slice(b"payload!");
    let len = off + 8;
    let pkt = packet::parse(&buf[..len], &LIMITS).unwrap();
    let Kind::GpaDirect(r) = pkt.kind else {
        panic!("not gpa direct")
    };
    assert_eq!(pkt.payload, b"payload!");
    let v: Vec<_> = r.iter().collect();
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].byte_count, v[0].byte_offset, v[0].pfn_count()),
        (5000, 100, 2)
    );
    assert_eq!(v[0].pfn(1), Some(0x1001));
    assert_eq!(
        (v[1].byte_count, v[1].byte_offset, v[1].pfn(0)),
        (16, 4000, Some(0x2000))
    );
}

fn gpa(count: u32, ranges: &[(u32, u32, usize)]) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&count.to_le_bytes());
    for &(bc, bo, n) in ranges {
        body.extend_from_slice(&bc.to_le_bytes());
        body.extend_from_slice(&bo.to_le_bytes());
        body.extend(std::iter::repeat(0u8).take(8 * n));
    }
    let off8 = (16 + body.len()) / 8;
    raw(9, off8 as u16, off8 as u16, 0, &body)
}

#[test]
fn bad_gpa_ranges_are_refused() {
    assert!(packet::parse(&gpa(1, &[(10, 0, 1)]), &LIMITS).is_ok());
    assert_eq!(
        packet::parse(&gpa(0, &[]), &LIMITS),
        Err(PacketError::BadRanges)
    );
    assert_eq!(
        packet::parse(&gpa(2, &[(10, 0, 1)]), &LIMITS),
        Err(PacketError::BadRanges)
    );
    assert_eq!(
        packet::parse(&gpa(u32::MAX, &[(10, 0, 1)]), &LIMITS),
        Err(PacketError::TooMuchExternalData)
    );
    assert_eq!(
        packet::parse(&gpa(1, &[(0, 0, 0)]), &LIMITS),
        Err(PacketError::BadRanges)
    );
    assert_eq!(
        packet::parse(&gpa(1, &[(10, 0x1000, 2)]), &LIMITS),
        Err(PacketError::BadRanges)
    );
    assert_eq!(
        packet::parse(&gpa(1, &[(10, 0, 2)]), &LIMITS),
        Err(PacketError::BadRanges),
        "slack"
    );
    assert_eq!(
        packet::parse(&gpa(1, &[(u32::MAX, 0, 1)]), &LIMITS),
        Err(PacketError::BadRanges)
    );
    assert_eq!(
        packet::parse(&gpa(1, &[(4 * 4096, 0, 4)]), &LIMITS),
        Err(PacketError::TooMuchExternalData)
    );
}

#[test]
fn encode_refuses_inconsistent_ranges() {
    let mut buf = [0u8; 128];
    let one = [1u64];
    assert!(packet::encode_gpa_direct(&mut buf, 0, 1, &[], 0).is_none());
    let r = RangeSpec {
        byte_count: 5000,
        byte_offset: 0,
        pfns: &one,
    };
    assert!(packet::encode_gpa_direct(&mut buf, 0, 1, &[r], 0).is_none());
    let r = RangeSpec {
        byte_count: 0,
        byte_offset: 0,
        pfns: &[],
    };
    assert!(packet::encode_gpa_direct(&mut buf, 0, 1, &[r], 0).is_none());
}
