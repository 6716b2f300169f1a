// SPDX-License-Identifier: GPL-2.0

//! Host benchmark of the ring core: packets written and read through a ring,
//! against the copy limit, a plain copy of the same bytes into a buffer and
//! out of it again, measured in turns; medians of 7. Run by `make bench`.

use std::{hint::black_box, ptr::NonNull, time::Instant};

use kmcl_wire::{
    packet,
    ring::{RingError, RingMemory, RingReader, RingWriter, CONTROL_SIZE},
};

const DATA: usize = 15 * 4096;

fn ring_mem(v: &mut [u64]) -> RingMemory {
    let base = v.as_mut_ptr().cast::<u8>();
    // SAFETY: `v` holds a control page and the data area and outlives the view.
    unsafe {
        RingMemory::new(
            NonNull::new(base).unwrap(),
            NonNull::new(base.add(CONTROL_SIZE)).unwrap(),
            DATA as u32,
        )
        .unwrap()
    }
}

/// Seconds per packet through the ring, writer filling, reader draining.
fn ring(size: usize, n: usize) -> f64 {
    let mut mem = vec![0u64; (CONTROL_SIZE + DATA) / 8];
    ring_mem(&mut mem).reset();
    let mut w = RingWriter::new(ring_mem(&mut mem)).unwrap();
    let mut r = RingReader::new(ring_mem(&mut mem)).unwrap();
    let d = packet::encode_simple(packet::TYPE_DATA_INBAND, 0, 1, size).unwrap();
    let mut pkt = d.encode().to_vec();
    pkt.resize(d.len8 as usize * 8, 0x5a);
    let mut buf = vec![0u8; pkt.len()];
    let (mut sent, mut got) = (0, 0);
    let t = Instant::now();
    while got < n {
        while sent < n {
            match w.write(&[&pkt]) {
                Ok(_) => sent += 1,
                Err(RingError::Full { .. }) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        while let Some(len) = r.read(&mut buf).unwrap() {
            black_box(&buf[..len]);
            got += 1;
        }
        let _ = r.commit();
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// Seconds per packet for the copy limit: the packet's bytes (descriptor,
/// payload, trailer) copied into a ring-sized buffer and out again, in the
/// same fill-then-drain pattern as the ring, with no ring logic.
fn copy(size: usize, n: usize) -> f64 {
    let len = packet::DESCRIPTOR_SIZE + packet::align8(size) + 8;
    let src = vec![0x5au8; len];
    let mut area = vec![0u8; DATA];
    let mut dst = vec![0u8; len];
    let per_fill = (DATA - 8) / len;
    let mut done = 0;
    let t = Instant::now();
    while done < n {
        let k = per_fill.min(n - done);
        for i in 0..k {
            area[i * len..(i + 1) * len].copy_from_slice(black_box(&src));
        }
        for i in 0..k {
            dst.copy_from_slice(&area[i * len..(i + 1) * len]);
            black_box(&dst);
        }
        done += k;
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    println!("size  ring_MB/s  copy_MB/s  ring/copy");
    for size in [64usize, 512, 4096] {
        let n = (200_000_000 / (size + 24)).min(2_000_000);
        // Ring and copy in turns, so that a change in the machine's load
        // shifts both alike.
        let (mut rs, mut cs) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            rs.push(ring(size, n));
            cs.push(copy(size, n));
        }
        let (r, c) = (median(rs), median(cs));
        let mbs = |s: f64| size as f64 / s / 1e6;
        println!(
            "{:>4}  {:>9.0}  {:>9.0}  {:>9.2}",
            size,
            mbs(r),
            mbs(c),
            c / r
        );
    }
}
