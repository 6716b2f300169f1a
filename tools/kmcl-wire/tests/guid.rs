// SPDX-License-Identifier: GPL-2.0

use kmcl_wire::guid::{Guid, ParseGuidError};

// The heartbeat integration service's interface type, as Hyper-V offers it.
const HEARTBEAT: &str = "57164f39-9115-4e78-ab55-382f3bd5422d";

#[test]
fn parse_stores_guid_t_byte_order() {
    let g = Guid::parse(HEARTBEAT).unwrap();
    assert_eq!(
        g.0,
        [
            0x39, 0x4f, 0x16, 0x57, 0x15, 0x91, 0x78, 0x4e, 0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5,
            0x42, 0x2d
        ]
    );
}

#[test]
fn display_round_trips() {
    let g = Guid::parse(HEARTBEAT).unwrap();
    assert_eq!(format!("{g}"), HEARTBEAT);
    let upper = HEARTBEAT.to_uppercase();
    assert_eq!(Guid::parse(&upper).unwrap(), g);
    let braced = format!("{{{HEARTBEAT}}}");
    assert_eq!(Guid::parse(&braced).unwrap(), g);
}

#[test]
fn rejects_malformed_text() {
    assert_eq!(Guid::parse(""), Err(ParseGuidError::Length));
    assert_eq!(Guid::parse(&HEARTBEAT[..35]), Err(ParseGuidError::Length));
    let mut s = HEARTBEAT.to_string();
    s.replace_range(8..9, "x");
    assert_eq!(Guid::parse(&s), Err(ParseGuidError::Dash(8)));
    let mut s = HEARTBEAT.to_string();
    s.replace_range(30..31, "g");
    assert_eq!(Guid::parse(&s), Err(ParseGuidError::Digit(30)));
    assert_eq!(
        Guid::parse(&format!("{{{HEARTBEAT})")),
        Err(ParseGuidError::Length)
    );
}

#[test]
fn null_guid() {
    assert!(Guid::NULL.is_null());
    assert!(Guid::parse("00000000-0000-0000-0000-000000000000")
        .unwrap()
        .is_null());
    assert!(!Guid::parse(HEARTBEAT).unwrap().is_null());
}

#[test]
fn const_parse_matches_runtime_parse() {
    const G: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");
    assert_eq!(G, Guid::parse(HEARTBEAT).unwrap());
}
