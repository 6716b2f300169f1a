// SPDX-License-Identifier: GPL-2.0

use kmcl_wire::pipe::{self, PipeError};

/// A header of `ty` and `size`, then `carried` bytes of 0xab.
fn raw(ty: u32, size: u32, carried: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.resize(8 + carried, 0xab);
    v
}

#[test]
fn encode_writes_type_data_and_the_size() {
    let h = pipe::encode(13).unwrap();
    assert_eq!(&h[..4], &1u32.to_le_bytes());
    assert_eq!(&h[4..], &13u32.to_le_bytes());
    assert_eq!(pipe::parse(&raw(1, 13, 16)), Ok(13));
}

#[test]
fn encode_refuses_a_length_beyond_u32() {
    assert_eq!(
        pipe::encode(u32::MAX as usize),
        Some(raw(1, u32::MAX, 0)[..8].try_into().unwrap())
    );
    assert_eq!(pipe::encode(u32::MAX as usize + 1), None);
}

#[test]
fn parse_accepts_every_size_within_the_padding() {
    for carried in (0..64).step_by(8) {
        for size in 0..=carried as u32 {
            let r = pipe::parse(&raw(1, size, carried));
            if carried - size as usize >= 8 {
                assert!(
                    matches!(r, Err(PipeError::Size { .. })),
                    "{size} in {carried}"
                );
            } else {
                assert_eq!(r, Ok(size as usize), "{size} in {carried}");
            }
        }
    }
}

#[test]
fn parse_refuses_a_size_beyond_the_packet() {
    assert_eq!(
        pipe::parse(&raw(1, 17, 16)),
        Err(PipeError::Size {
            header: 17,
            carried: 16
        })
    );
    assert!(matches!(
        pipe::parse(&raw(1, u32::MAX, 16)),
        Err(PipeError::Size { .. })
    ));
}

#[test]
fn parse_refuses_unknown_types_and_short_data() {
    for ty in [0, 2, 3, 4, 7, u32::MAX] {
        assert_eq!(pipe::parse(&raw(ty, 0, 0)), Err(PipeError::UnknownType(ty)));
    }
    for n in 0..8 {
        assert_eq!(pipe::parse(&vec![1u8; n]), Err(PipeError::Short));
    }
}
