// SPDX-License-Identifier: GPL-2.0

mod common;

use std::collections::VecDeque;

use common::{Rng, TestRing};
use kmcl_wire::{
    packet::{self, Descriptor, Limits},
    ring::{RingError, RingReader, RingWriter, TRAILER_SIZE},
};

fn inband(trans_id: u64, payload: &[u8]) -> Vec<u8> {
    let d = packet::encode_simple(packet::TYPE_DATA_INBAND, 0, trans_id, payload.len()).unwrap();
    let mut v = d.encode().to_vec();
    v.extend_from_slice(payload);
    v.resize(packet::DESCRIPTOR_SIZE + packet::align8(payload.len()), 0);
    v
}

const LIMITS: Limits = Limits {
    max_payload: 4096,
    max_ranges: 4,
    max_external_bytes: 1 << 20,
};

#[test]
fn write_then_read_round_trips_payload_and_trailer() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let pkt = inband(7, b"hello, vmbus");
    assert!(w.write(&[&pkt]).unwrap().signal);
    let mut buf = [0u8; 256];
    let n = r.read(&mut buf).unwrap().unwrap();
    assert_eq!(n, pkt.len());
    let p = packet::parse(&buf[..n], &LIMITS).unwrap();
    assert_eq!(p.desc.trans_id, 7);
    assert_eq!(&p.payload[..12], b"hello, vmbus");
    // The trailer holds the start index shifted by 32.
    let mem = ring.mem();
    let [write, ..] = mem.snapshot();
    assert_eq!(write as usize, pkt.len() + 8);
    assert_eq!(r.read(&mut buf).unwrap(), None);
}

#[test]
fn signals_only_on_empty_to_non_empty() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let pkt = inband(1, &[0xaa; 24]);
    assert!(w.write(&[&pkt]).unwrap().signal);
    assert!(!w.write(&[&pkt]).unwrap().signal, "ring was not empty");
    let mut buf = [0u8; 64];
    r.read(&mut buf).unwrap().unwrap();
    r.read(&mut buf).unwrap().unwrap();
    // Read privately but not yet published: the writer still sees a non-empty ring.
    assert!(!w.write(&[&pkt]).unwrap().signal);
    r.read(&mut buf).unwrap().unwrap();
    let _ = r.commit();
    assert!(w.write(&[&pkt]).unwrap().signal, "published empty ring");
}

#[test]
fn no_signal_while_reader_masks_interrupts() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let r = RingReader::new(ring.mem()).unwrap();
    r.begin_read();
    assert!(!w.write(&[&inband(1, &[1; 8])]).unwrap().signal);
    // Data that arrived while masked is reported by end_read.
    assert!(r.end_read().unwrap());
}

#[test]
fn never_fills_completely() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    // Each packet: 16 + 40 + 8 trailer = 64 bytes; 4096 / 64 = 64, but the last
    // one would fill the ring exactly and must be refused.
    let pkt = inband(1, &[3; 40]);
    let mut n = 0;
    loop {
        match w.write(&[&pkt]) {
            Ok(_) => n += 1,
            Err(RingError::Full { needed }) => {
                // The packet's size: the reader signals once more is free.
                assert_eq!(needed, 64);
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(n, 63);
    assert_eq!(w.free().unwrap(), 64);
}

#[test]
fn wraps_around_the_end() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..500u64 {
        let payload: Vec<u8> = (0..(i % 300) as usize)
            .map(|b| (b as u8) ^ (i as u8))
            .collect();
        let pkt = inband(i, &payload);
        let _ = w.write(&[&pkt]).unwrap();
        let n = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], &pkt[..]);
        let _ = r.commit();
    }
}

#[test]
fn two_part_packets_land_whole_at_every_offset_across_the_end() {
    const SIZE: usize = 4096;
    let ring = TestRing::new(SIZE);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let mut buf = vec![0u8; SIZE];
    let (mut desc_split, mut trailer_last, mut payload_split) = (false, false, false);
    // Footprints of 24 to 280 bytes in steps of 8 move the start across
    // every offset: descriptors split at the end of the data area, trailers
    // in its last word, payloads split anywhere.
    for i in 0..1500u64 {
        let len = ((i * 8) % 264) as usize;
        let payload: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8)).collect();
        let d = packet::encode_simple(packet::TYPE_DATA_INBAND, 0, i, len)
            .unwrap()
            .encode();
        let [start, ..] = ring.mem().snapshot();
        let start = start as usize;
        let _ = w.write(&[&d, &payload]).unwrap();
        let n = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(n, 16 + len);
        assert_eq!(&buf[..16], &d[..], "packet {i} at {start}");
        assert_eq!(&buf[16..n], &payload[..], "packet {i} at {start}");
        let trailer = (start + 16 + len) % SIZE;
        assert_eq!(
            ring.data_word(trailer),
            (start as u64) << 32,
            "packet {i} at {start}"
        );
        let _ = r.commit();
        desc_split |= start == SIZE - 8;
        trailer_last |= trailer == SIZE - 8;
        payload_split |= start + 16 < SIZE && start + 16 + len > SIZE;
    }
    assert!(desc_split && trailer_last && payload_split);
}

#[test]
fn pending_send_size_signals_on_crossing_only() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let pkt = inband(1, &[3; 40]); // 64 bytes with trailer
    while w.write(&[&pkt]).is_ok() {}
    let big = inband(2, &[4; 232]); // 248 + 8 = 256 bytes: needs more than 256 free
    let Err(RingError::Full { needed }) = w.write(&[&big]) else {
        panic!("ring should be full");
    };
    w.set_pending_send_size(needed);
    let mut buf = [0u8; 128];
    let mut signals = vec![];
    for _ in 0..6 {
        r.read(&mut buf).unwrap().unwrap();
        signals.push(r.commit());
    }
    // free: 64 -> 128 -> 192 -> 256 (no room yet) -> 320 (room) -> 384 -> 448
    assert_eq!(signals, [false, false, false, true, false, false]);
    w.set_pending_send_size(0);
    let _ = w.write(&[&big]).unwrap();
}

/// Bytes a packet with `payload` bytes takes in the ring: descriptor,
/// payload padded to 8 bytes, trailer.
fn footprint(payload: usize) -> u32 {
    (packet::DESCRIPTOR_SIZE + packet::align8(payload)) as u32 + TRAILER_SIZE
}

/// What a writer that waits for room stores as its pending send size.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// The size the packet takes in the ring, trailer included, as Linux's
    /// and OpenVMM's writers store it.
    Exact,
    /// What kmcl's writer reports in `RingError::Full`.
    Kmcl,
}

/// A writer waiting for room, and the reader that makes it.
#[derive(Debug)]
struct Wait {
    /// Size of the data area.
    ring: usize,
    /// Empty packets written and read first, to move the indices off zero.
    skew: usize,
    /// Payload of the packets that fill the ring and that the reader reads.
    small: usize,
    /// Payload of the packet the writer waits to write.
    big: usize,
    /// Packets the reader reads before each commit.
    per_commit: usize,
    pending: Pending,
}

/// One commit of the reader while the writer waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    /// Free bytes after the commit.
    free: u32,
    /// The commit signalled the writer.
    signal: bool,
    /// The waiting write then went in.
    wrote: bool,
}

impl Wait {
    /// Fills the ring with small packets, has the writer store its pending
    /// send size for the big one, then reads; after every commit the writer
    /// tries the big packet, until it goes in. Returns what each commit did.
    fn run(&self) -> Vec<Step> {
        let ring = TestRing::new(self.ring);
        let mut w = RingWriter::new(ring.mem()).unwrap();
        let mut r = RingReader::new(ring.mem()).unwrap();
        let mut buf = vec![0u8; self.ring];
        for _ in 0..self.skew {
            let _ = w.write(&[&inband(0, &[])]).unwrap();
            r.read(&mut buf).unwrap().unwrap();
            assert!(!r.commit(), "{self:?}: no writer is waiting");
        }
        let small = inband(1, &vec![0x11; self.small]);
        let big = inband(2, &vec![0x22; self.big]);
        while w.write(&[&small]).is_ok() {}
        let needed = match w.write(&[&big]) {
            Err(RingError::Full { needed }) => needed,
            other => panic!("{self:?}: the big packet should not fit: {other:?}"),
        };
        w.set_pending_send_size(match self.pending {
            Pending::Exact => footprint(self.big),
            Pending::Kmcl => needed,
        });
        let mut steps = vec![];
        loop {
            for _ in 0..self.per_commit {
                if r.read(&mut buf).unwrap().is_none() {
                    break;
                }
            }
            let signal = r.commit();
            let free = w.free().unwrap();
            let wrote = match w.write(&[&big]) {
                Ok(_) => true,
                Err(RingError::Full { .. }) => false,
                Err(e) => panic!("{self:?}: {e:?}"),
            };
            steps.push(Step {
                free,
                signal,
                wrote,
            });
            if wrote {
                return steps;
            }
        }
    }

    /// Runs and checks that the writer was signalled at the commit that let
    /// its write in, and at no other.
    fn check(&self) {
        let steps = self.run();
        assert!(
            steps.iter().all(|s| s.signal == s.wrote),
            "{self:?}: signalled at the wrong commit: {steps:?}"
        );
    }
}

fn step(free: u32, signal: bool, wrote: bool) -> Step {
    Step {
        free,
        signal,
        wrote,
    }
}

/// A writer that stores the exact size of its packet, as Linux's and
/// OpenVMM's do, is signalled when the free space exceeds that size: a read
/// that frees exactly that much leaves no room (the ring never fills
/// completely), so it must not signal, and the next read must.
#[test]
fn exact_pending_send_size_is_signalled_when_the_write_fits() {
    let wait = Wait {
        ring: 4096,
        skew: 0,
        small: 40, // 64 bytes in the ring
        big: 232,  // 256 bytes in the ring
        per_commit: 1,
        pending: Pending::Exact,
    };
    assert_eq!(
        wait.run(),
        [
            step(128, false, false),
            step(192, false, false),
            step(256, false, false),
            step(320, true, true),
        ]
    );
}

/// As above with a size between two reads: free goes from 256 to 320 across
/// a pending send size of 264.
#[test]
fn exact_pending_send_size_between_reads_is_signalled_when_the_write_fits() {
    let wait = Wait {
        ring: 4096,
        skew: 0,
        small: 40,
        big: 240, // 264 bytes in the ring
        per_commit: 1,
        pending: Pending::Exact,
    };
    assert_eq!(
        wait.run(),
        [
            step(128, false, false),
            step(192, false, false),
            step(256, false, false),
            step(320, true, true),
        ]
    );
}

/// Every packet size, read size, batch and ring offset, for a writer that
/// stores its exact size and for kmcl's own writer: each is signalled at
/// the commit that lets its write in, never earlier, never silently.
#[test]
fn pending_send_size_is_signalled_exactly_when_the_write_fits() {
    for pending in [Pending::Exact, Pending::Kmcl] {
        for skew in [0, 7, 100] {
            for small in [0, 8, 40, 96] {
                for per_commit in [1, 3] {
                    let mut big = small;
                    while footprint(big) <= 1536 {
                        Wait {
                            ring: 4096,
                            skew,
                            small,
                            big,
                            per_commit,
                            pending,
                        }
                        .check();
                        big += 8;
                    }
                }
            }
        }
    }
}

#[test]
fn bogus_pending_send_size_never_signals() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let mut buf = [0u8; 128];
    for bogus in [0, 4097, u32::MAX] {
        w.set_pending_send_size(bogus);
        let _ = w.write(&[&inband(1, &[0; 8])]).unwrap();
        r.read(&mut buf).unwrap().unwrap();
        assert!(!r.commit(), "pending {bogus}");
    }
}

#[test]
fn bad_indices_fail_closed() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let _ = w.write(&[&inband(1, &[0; 8])]).unwrap();
    let mem = ring.mem();
    let mut buf = [0u8; 128];
    for bad in [4096, 4097, 12, u32::MAX] {
        mem.poke_control(0, bad);
        assert_eq!(
            r.read(&mut buf),
            Err(RingError::BadIndex),
            "write index {bad}"
        );
        mem.poke_control(1, bad);
        assert_eq!(
            w.write(&[&inband(1, &[0; 8])]),
            Err(RingError::BadIndex),
            "read index {bad}"
        );
    }
    // Nothing moved: restoring the indices makes the packet readable again.
    mem.poke_control(0, 32);
    mem.poke_control(1, 0);
    assert_eq!(r.read(&mut buf), Ok(Some(24)));
}

#[test]
fn descriptor_longer_than_available_is_refused() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let mut pkt = inband(1, &[0; 8]);
    let mut d = Descriptor::decode(pkt[..16].try_into().unwrap());
    d.len8 = 100;
    pkt[..16].copy_from_slice(&d.encode());
    let _ = w.write(&[&pkt]).unwrap();
    let mut buf = [0u8; 2048];
    assert_eq!(r.read(&mut buf), Err(RingError::BadPacket));
    assert_eq!(
        r.read(&mut buf),
        Err(RingError::BadPacket),
        "still refused, nothing skipped"
    );
}

#[test]
fn packet_larger_than_buffer_is_refused_without_advancing() {
    let ring = TestRing::new(4096);
    let mut w = RingWriter::new(ring.mem()).unwrap();
    let mut r = RingReader::new(ring.mem()).unwrap();
    let _ = w.write(&[&inband(1, &[0; 100])]).unwrap();
    let mut small = [0u8; 64];
    assert_eq!(r.read(&mut small), Err(RingError::TooLarge { len: 120 }));
    let mut big = [0u8; 128];
    assert_eq!(r.read(&mut big), Ok(Some(120)));
}

/// A model check: random writes and reads against a queue of expected packets.
#[test]
fn random_traffic_matches_a_fifo_model() {
    for seed in 1..=20 {
        let mut rng = Rng::new(seed);
        let ring = TestRing::new(8192);
        let mut w = RingWriter::new(ring.mem()).unwrap();
        let mut r = RingReader::new(ring.mem()).unwrap();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut buf = vec![0u8; 8192];
        let mut id = 0u64;
        for _ in 0..5000 {
            if rng.below(2) == 0 {
                let len = rng.below(1500) as usize;
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                id += 1;
                let pkt = inband(id, &payload);
                match w.write(&[&pkt]) {
                    Ok(_) => model.push_back(pkt),
                    Err(RingError::Full { .. }) => {}
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            } else {
                match r.read(&mut buf).unwrap() {
                    Some(n) => {
                        let want = model.pop_front().expect("read more than written");
                        assert_eq!(&buf[..n], &want[..], "seed {seed}");
                    }
                    None => assert!(model.is_empty(), "seed {seed}: lost packets"),
                }
                if rng.below(3) == 0 {
                    let _ = r.commit();
                }
            }
        }
    }
}
