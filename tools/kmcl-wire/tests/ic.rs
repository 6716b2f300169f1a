// SPDX-License-Identifier: GPL-2.0

use kmcl_wire::ic::{self, Header, IcError, Version};

const V30: Version = Version::new(3, 0);
const V10: Version = Version::new(1, 0);

#[test]
fn negotiation_picks_the_best_common_versions() {
    let mut m = [0u8; 128];
    let n = ic::encode_negotiate(&mut m, 7, &[V10, V30], &[Version::new(4, 0), V30, V10]).unwrap();
    let msg = &mut m[..n];
    let got = ic::answer_negotiate(msg, &ic::FRAMEWORK_VERSIONS, &ic::HEARTBEAT_VERSIONS).unwrap();
    assert_eq!(got, Some((V30, V30)));
    assert_eq!(ic::parse_negotiate_answer(msg).unwrap(), Some((V30, V30)));
    let h = Header::parse(msg).unwrap();
    assert_eq!(h.size, 0x10);
    assert_eq!(h.transaction, 7);
}

#[test]
fn negotiation_falls_back_and_fails_cleanly() {
    let mut m = [0u8; 128];
    let n = ic::encode_negotiate(&mut m, 1, &[V10], &[V10]).unwrap();
    assert_eq!(
        ic::answer_negotiate(
            &mut m[..n],
            &ic::FRAMEWORK_VERSIONS,
            &ic::HEARTBEAT_VERSIONS
        ),
        Ok(Some((V10, V10)))
    );
    let n = ic::encode_negotiate(&mut m, 1, &[V30], &[Version::new(9, 9)]).unwrap();
    assert_eq!(
        ic::answer_negotiate(
            &mut m[..n],
            &ic::FRAMEWORK_VERSIONS,
            &ic::HEARTBEAT_VERSIONS
        ),
        Ok(None)
    );
    assert_eq!(ic::parse_negotiate_answer(&m[..n]), Ok(None));
}

#[test]
fn heartbeat_answer_increments_the_sequence() {
    let mut m = [0u8; ic::HEARTBEAT_SIZE];
    ic::encode_heartbeat(&mut m, 3, (V30, V30), 41).unwrap();
    assert_eq!(ic::answer_heartbeat(&mut m), Ok(42));
    ic::set_response(&mut m, ic::S_OK).unwrap();
    let h = Header::parse(&m).unwrap();
    assert_eq!(h.flags, ic::FLAG_TRANSACTION | ic::FLAG_RESPONSE);
    assert_eq!(h.msgtype, ic::MSGTYPE_HEARTBEAT);
    assert_eq!(ic::heartbeat_sequence(&m), Ok(42));
}

#[test]
fn malformed_messages_are_refused() {
    assert_eq!(Header::parse(&[0; 27]), Err(IcError::Short));
    let mut m = [0u8; 64];
    let n = ic::encode_negotiate(&mut m, 1, &[V30], &[V30]).unwrap();
    // Counts that promise more versions than the message holds.
    m[ic::BODY] = 9;
    assert_eq!(
        ic::answer_negotiate(
            &mut m[..n],
            &ic::FRAMEWORK_VERSIONS,
            &ic::HEARTBEAT_VERSIONS
        ),
        Err(IcError::Short)
    );
    m[ic::BODY] = 200;
    assert_eq!(
        ic::parse_negotiate_answer(&m[..n]),
        Err(IcError::TooManyVersions)
    );
    assert_eq!(ic::answer_heartbeat(&mut [0u8; 30]), Err(IcError::Short));
}
