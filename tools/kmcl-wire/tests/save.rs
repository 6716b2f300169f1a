// SPDX-License-Identifier: GPL-2.0

use kmcl_wire::{
    guid::Guid,
    save::{self, kind, ChannelRecord, CopyStatus, PacketRecord, Record, SaveError},
};

fn state(packets: &[(u64, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut v = save::header().to_vec();
    let ch = ChannelRecord {
        interface_type: Guid([1; 16]),
        interface_instance: Guid([2; 16]),
        token: 77,
        packets: packets.len() as u32,
    };
    let mut push = |k: u32, parts: &[&[u8]]| {
        let body: usize = parts.iter().map(|p| p.len()).sum();
        let at = v.len();
        v.resize(at + save::record_size(body), 0xee);
        save::encode_record(&mut v[at..], k, parts).unwrap();
    };
    push(kind::CHANNEL, &[&ch.encode()]);
    for (id, wire, drv) in packets {
        let fixed = PacketRecord::encode_fixed(*id, wire.len(), drv.len());
        push(kind::PACKET, &[&fixed, wire, drv]);
    }
    push(kind::END, &[]);
    v
}

fn sample() -> Vec<u8> {
    state(&[
        (0x1_0000_0001, vec![6; 24], vec![9, 9, 9]),
        (0x1_0000_0002, vec![7; 16], vec![]),
    ])
}

#[test]
fn round_trip() {
    let s = sample();
    assert_eq!(save::is_complete(&s), Ok(true));
    let mut seen = vec![];
    save::parse(&s, |r| {
        seen.push(format!("{r:?}"));
        if let Record::Packet(p) = r {
            assert!(p.wire.len() % 8 == 0);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[0].contains("token: 77"));
    assert!(seen[1].contains("driver: [9, 9, 9]"));
}

#[test]
fn chunks_are_whole_records() {
    let s = sample();
    let mut pos = 0;
    // Nothing fits: the header alone needs 16 bytes.
    assert_eq!(
        save::copy_records(&s, &mut pos, &mut [0; 8]),
        Err(SaveError::TooSmall { required: 16 })
    );
    let mut out = vec![];
    let mut buf = [0u8; 70];
    loop {
        match save::copy_records(&s, &mut pos, &mut buf) {
            Ok(CopyStatus::MoreData { filled }) => out.extend_from_slice(&buf[..filled]),
            Ok(CopyStatus::Complete { filled }) => {
                out.extend_from_slice(&buf[..filled]);
                break;
            }
            Err(SaveError::TooSmall { required }) => panic!("record of {required} bytes"),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(out, s);
}

#[test]
fn incomplete_state_asks_for_more() {
    let s = sample();
    for cut in [0, 5, 16, 20, s.len() - 1] {
        assert_eq!(save::is_complete(&s[..cut]), Ok(false), "cut at {cut}");
    }
}

#[test]
fn garbage_is_refused_before_it_is_complete() {
    assert_eq!(save::is_complete(b"NOTSAVED"), Err(SaveError::Header));
    assert_eq!(save::is_complete(b"KMCL"), Ok(false));
    let mut s = sample();
    s[16] = 9; // the first record's kind
    assert_eq!(save::is_complete(&s[..24]), Err(SaveError::Kind(9)));
    let mut s = sample();
    s[8] = 7; // version
    assert_eq!(save::is_complete(&s[..16]), Err(SaveError::Header));
}

#[test]
fn malformed_states_are_refused() {
    let s = sample();
    let ok = |b: &[u8]| save::parse(b, |_| Ok(()));
    let mut bad = s.clone();
    bad[0] = b'X';
    assert_eq!(ok(&bad), Err(SaveError::Header));
    let mut bad = s.clone();
    bad[8] = 2; // version
    assert_eq!(ok(&bad), Err(SaveError::Header));
    // The channel record announces one packet more than follow.
    let mut bad = s.clone();
    bad[16 + 8 + 40] = 3;
    assert_eq!(ok(&bad), Err(SaveError::Kind(kind::END)));
    // A packet record whose lengths disagree with its body.
    let mut bad = s.clone();
    let pkt = 16 + save::record_size(ChannelRecord::SIZE);
    bad[pkt + 8 + 8] = 200;
    assert_eq!(ok(&bad), Err(SaveError::Length));
    // A body length beyond the limit.
    let mut bad = s.clone();
    bad[pkt + 4..pkt + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(ok(&bad), Err(SaveError::Length));
    // Bytes after the end.
    let mut bad = s.clone();
    bad.extend_from_slice(&[0; 8]);
    assert_eq!(ok(&bad), Err(SaveError::Trailing));
    // Non-zero padding.
    let mut bad = s.clone();
    let pad_at = pkt + 8 + 16 + 24 + 3;
    bad[pad_at] = 1;
    assert_eq!(ok(&bad), Err(SaveError::Length));
    // Truncated anywhere: never a panic, never success.
    for cut in 0..s.len() {
        assert!(ok(&s[..cut]).is_err());
    }
}
