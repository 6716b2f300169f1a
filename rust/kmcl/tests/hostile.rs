// SPDX-License-Identifier: GPL-2.0

//! A hostile peer: the server end of a loopback pair writes whatever it likes
//! into the client's incoming ring, corrupts indices, plays with the flow
//! control fields, forges completions, stops reading, and goes away at bad
//! moments. The client must refuse, stop or fail with an error, finish every
//! request exactly once, and never crash, hang or leak.

use core::sync::atomic::{
    AtomicBool,
    Ordering, //
};

use kernel::{
    page::Page,
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    self,
    completion_bytes,
    mode,
    settle,
    wait_for,
    Done,
    Ev,
    Pair, //
};
use crate::{
    channel::{
        incoming::IncomingPacket,
        outgoing::{
            ExternalRange,
            Mdl,
            SendFlags, //
        },
        Endpoint,
        State, //
    },
    sys,
    wire::packet::{
        self,
        Descriptor,
        RangeSpec, //
    },
};

const WAIT: SendFlags = SendFlags::WAIT_FOR_COMPLETION;

/// Which ring field to corrupt.
const WRITE_INDEX: usize = 0;
const READ_INDEX: usize = 1;
const INTERRUPT_MASK: usize = 2;
const PENDING_SEND_SZ: usize = 3;

/// A packet made of a descriptor and `body`, as raw bytes.
pub(super) fn raw(ty: u16, offset8: u16, len8: u16, flags: u16, body: &[u8]) -> KVec<u8> {
    let d = Descriptor {
        ty,
        offset8,
        len8,
        flags,
        trans_id: 0x42,
    };
    let mut v = KVec::new();
    let _ = v.extend_from_slice(&d.encode(), GFP_KERNEL);
    let _ = v.extend_from_slice(body, GFP_KERNEL);
    let _ = v.resize(packet::align8(v.len()), 0, GFP_KERNEL);
    v
}

/// A GPA-direct packet with the given range count and ranges
/// (byte count, byte offset, number of pfns).
pub(super) fn gpa(count: u32, ranges: &[(u32, u32, usize)]) -> KVec<u8> {
    let mut body = KVec::new();
    let _ = body.extend_from_slice(&0u32.to_le_bytes(), GFP_KERNEL);
    let _ = body.extend_from_slice(&count.to_le_bytes(), GFP_KERNEL);
    for &(bc, bo, n) in ranges {
        let _ = body.extend_from_slice(&bc.to_le_bytes(), GFP_KERNEL);
        let _ = body.extend_from_slice(&bo.to_le_bytes(), GFP_KERNEL);
        for _ in 0..n {
            let _ = body.extend_from_slice(&1u64.to_le_bytes(), GFP_KERNEL);
        }
    }
    let off8 = ((16 + body.len()) / 8) as u16;
    raw(packet::TYPE_DATA_GPA_DIRECT, off8, off8 + 1, 0, &{
        let mut b = body;
        let _ = b.extend_from_slice(&[0u8; 8], GFP_KERNEL);
        b
    })
}

/// Whether the client's incoming queue stopped, with the malformed packet
/// counted and nothing delivered.
fn refused(p: &Pair) -> bool {
    wait_for(2000, || {
        p.client.rxc.failed() && p.client.stats.malformed_packets.load(Ordering::Relaxed) == 1
    }) && p.crec.received.load(Ordering::Relaxed) == 0
}

/// Injects `bytes` from the server into the client's ring and checks that
/// the client refused them and stopped its queue.
fn expect_refused(bytes: &[u8]) -> Result<bool> {
    let p = Pair::connected()?;
    p.server.inject_raw(bytes)?;
    let ok = refused(&p);
    // A stopped queue still tears down cleanly.
    p.client.disable()?;
    Ok(ok)
}

/// Corrupts `field` of the ring that `writer` writes, signals the client,
/// and checks that the client stopped its queue.
fn expect_index_refused(value: u32) -> Result<bool> {
    let p = Pair::connected()?;
    harness::send(&p.server, b"valid", false)?;
    // Outside the test function a failed assertion would panic the kernel.
    if !wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 1) {
        return Ok(false);
    }
    let conn = p.client.loopback_connection().ok_or(ENODEV)?;
    let mem = conn.ring_memory(Endpoint::Server).ok_or(EINVAL)?;
    mem.poke_control(WRITE_INDEX, value);
    p.client.interrupt();
    let ok = wait_for(2000, || {
        p.client.rxc.failed() && p.client.stats.malformed_packets.load(Ordering::Relaxed) == 1
    }) && p.crec.received.load(Ordering::Relaxed) == 1;
    p.client.disable()?;
    Ok(ok)
}

/// A page with every byte set to `fill`.
fn filled_page(fill: u8) -> Result<Page> {
    let pg = Page::alloc_page(GFP_KERNEL)?;
    let bytes = [fill; 256];
    for i in 0..kernel::page::PAGE_SIZE / bytes.len() {
        // SAFETY: 256 bytes inside the page, which nothing else uses yet.
        unsafe { pg.write_raw(bytes.as_ptr(), i * bytes.len(), bytes.len())? };
    }
    Ok(pg)
}

/// An MDL of `len` bytes from offset 0 over pages filled with `fill`,
/// `fill + 1`, ...
fn filled_mdl(fill: u8, len: u32) -> Result<Mdl> {
    let mut pages = KVec::new();
    let n = (len as usize).div_ceil(kernel::page::PAGE_SIZE);
    for i in 0..n {
        pages.push(filled_page(fill + i as u8)?, GFP_KERNEL)?;
    }
    Mdl::from_pages(pages, 0, len)
}

/// A GPA-direct packet asking for a completion, with transaction id
/// `trans_id`, `ranges` and `payload`, as raw bytes.
fn gpa_packet(trans_id: u64, ranges: &[RangeSpec<'_>], payload: &[u8]) -> Result<KVec<u8>> {
    let mut v = KVec::from_elem(0u8, 512 + packet::align8(payload.len()), GFP_KERNEL)?;
    let off = packet::encode_gpa_direct(
        &mut v,
        packet::FLAG_COMPLETION_REQUESTED,
        trans_id,
        ranges,
        payload.len(),
    )
    .ok_or(EINVAL)?;
    v[off..off + payload.len()].copy_from_slice(payload);
    v.truncate(off + packet::align8(payload.len()));
    Ok(v)
}

/// Reads the external data of `pkt` both ways: what `copy_to` returns, what
/// `for_each_chunk` returns, and how many bytes the latter handed out.
fn read_external(pkt: &IncomingPacket, dst: &mut [u8]) -> (Result<usize>, Result, usize) {
    let Some(ext) = pkt.external_data() else {
        return (Err(EINVAL), Err(EINVAL), 0);
    };
    let copied = ext.copy_to(dst);
    let mut seen = 0usize;
    let chunks = ext.for_each_chunk(|b| seen += b.len());
    (copied, chunks, seen)
}

#[kunit_tests(kmcl_hostile)]
mod tests {
    use super::*;

    #[test]
    fn offset_beyond_length_is_refused() -> Result {
        assert!(expect_refused(&raw(6, 4, 3, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn offset_inside_the_descriptor_is_refused() -> Result {
        assert!(expect_refused(&raw(6, 1, 3, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn zero_offset_is_refused() -> Result {
        assert!(expect_refused(&raw(6, 0, 3, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn zero_length_is_refused() -> Result {
        assert!(expect_refused(&raw(6, 2, 0, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn length_beyond_the_data_in_the_ring_is_refused() -> Result {
        assert!(expect_refused(&raw(6, 2, 200, 0, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn payload_beyond_the_maximum_packet_size_is_refused() -> Result {
        // The default maximum is 4096; this payload is 4104 bytes.
        let body = KVec::from_elem(0u8, 4104, GFP_KERNEL)?;
        assert!(expect_refused(&raw(6, 2, 2 + 4104 / 8, 0, &body))?);
        Ok(())
    }

    #[test]
    fn unknown_type_is_refused() -> Result {
        assert!(expect_refused(&raw(5, 2, 3, 0, &[0; 8]))?);
        assert!(expect_refused(&raw(
            packet::TYPE_DATA_XFER_PAGES,
            2,
            3,
            0,
            &[0; 8]
        ))?);
        Ok(())
    }

    #[test]
    fn unknown_flag_bits_are_refused() -> Result {
        assert!(expect_refused(&raw(6, 2, 3, 0x8000, &[0; 8]))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_zero_ranges_is_refused() -> Result {
        assert!(expect_refused(&gpa(0, &[]))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_an_overflowing_range_count_is_refused() -> Result {
        assert!(expect_refused(&gpa(u32::MAX, &[(16, 0, 1)]))?);
        assert!(expect_refused(&gpa(2, &[(16, 0, 1)]))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_a_large_byte_offset_is_refused() -> Result {
        assert!(expect_refused(&gpa(1, &[(16, 0x1000, 2)]))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_a_zero_byte_count_is_refused() -> Result {
        assert!(expect_refused(&gpa(1, &[(0, 0, 0)]))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_too_many_ranges_is_refused() -> Result {
        // The default chain length is 4.
        let r = [(16, 0, 1); 5];
        assert!(expect_refused(&gpa(5, &r))?);
        Ok(())
    }

    #[test]
    fn gpa_direct_with_a_huge_byte_count_is_refused() -> Result {
        // More pages than the packet carries pfns for.
        assert!(expect_refused(&gpa(1, &[(u32::MAX, 0, 1)]))?);
        Ok(())
    }

    #[test]
    fn oversized_completion_is_refused() -> Result {
        let payload = KVec::from_elem(0u8, 4104, GFP_KERNEL)?;
        assert!(expect_refused(&completion_bytes(0x1_0000_0001, &payload))?);
        Ok(())
    }

    #[test]
    fn write_index_beyond_the_ring_stops_the_queue() -> Result {
        assert!(expect_index_refused(15 * 4096)?);
        assert!(expect_index_refused(u32::MAX)?);
        Ok(())
    }

    #[test]
    fn unaligned_write_index_stops_the_queue() -> Result {
        assert!(expect_index_refused(36)?);
        Ok(())
    }

    #[test]
    fn corrupt_read_index_fails_sends_with_eio() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        let conn = p.client.loopback_connection().ok_or(ENODEV)?;
        let mem = conn.ring_memory(Endpoint::Client).ok_or(EINVAL)?;
        for bad in [u32::MAX, 15 * 4096, 12] {
            mem.poke_control(READ_INDEX, bad);
            let pkt = harness::recorded_packet(&p.client, &done)?;
            match pkt.send(b"x", SendFlags::NONE) {
                Err(e) => assert_eq!(e.error, EIO),
                Ok(()) => return Err(EINVAL),
            }
            let mut resp = [0u8; 8];
            assert_eq!(
                p.client.send_synchronous_request(
                    b"y",
                    WAIT,
                    &mut resp,
                    Some(Delta::from_millis(100))
                ),
                Err(EIO)
            );
        }
        // Nothing was sent, so no routine ran.
        assert_eq!(done.count.load(Ordering::Relaxed), 0);
        mem.poke_control(READ_INDEX, 0);
        Ok(())
    }

    #[test]
    fn descriptor_rewritten_during_the_copy_never_crashes() -> Result {
        let p = Pair::connected()?;
        let conn = p.client.loopback_connection().ok_or(ENODEV)?;
        let stop = Arc::new(AtomicBool::new(false), GFP_KERNEL)?;
        let s2 = stop.clone();
        let c2 = conn.clone();
        // A second writer flips the first descriptor's length behind the
        // reader's back while the server keeps sending.
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            if let Some(mem) = c2.ring_memory(Endpoint::Server) {
                let mut flip = false;
                while !s2.load(Ordering::Relaxed) {
                    let len8: u16 = if flip { 3 } else { 0x7fff };
                    let d = Descriptor {
                        ty: 6,
                        offset8: 2,
                        len8,
                        flags: 0,
                        trans_id: 1,
                    };
                    mem.poke_data(0, &d.encode());
                    flip = !flip;
                }
            }
        })?;
        for i in 0..200u64 {
            if harness::send(&p.server, &i.to_le_bytes(), false).is_err() {
                break;
            }
        }
        settle(50);
        stop.store(true, Ordering::Relaxed);
        settle(10);
        // Either the packets passed checks whole, or the queue stopped; the
        // channel still closes cleanly.
        let failed = p.client.rxc.failed();
        let got = p.crec.received.load(Ordering::Relaxed);
        assert!(failed || got > 0);
        p.client.disable()?;
        assert_eq!(p.client.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn bogus_pending_send_sizes_do_not_break_the_channel() -> Result {
        let p = Pair::connected()?;
        let conn = p.client.loopback_connection().ok_or(ENODEV)?;
        // The server is the writer of the ring the client reads.
        let mem = conn.ring_memory(Endpoint::Server).ok_or(EINVAL)?;
        let signals = || p.client.stats.signals_sent.load(Ordering::Relaxed);
        // Each size, then one packet the client reads before the next size:
        // a read signals only a size that the free space can exceed (the
        // data area is 15 pages), so only 15 pages less one byte does.
        for (received, (bogus, signalled)) in (1u32..).zip([
            (0u32, 0u64),
            (15 * 4096 - 1, 1),
            (15 * 4096, 0),
            (u32::MAX, 0),
        ]) {
            mem.poke_control(PENDING_SEND_SZ, bogus);
            let before = signals();
            harness::send(&p.server, b"ping", false)?;
            assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == received));
            // The signal follows the drain pass that delivered the packet.
            assert!(wait_for(2000, || signals() >= before + signalled));
            settle(20);
            assert_eq!(signals(), before + signalled);
        }
        assert!(!p.client.rxc.failed());
        Ok(())
    }

    #[test]
    fn interrupt_mask_held_by_the_peer_only_suppresses_signals() -> Result {
        let p = Pair::connected()?;
        let conn = p.client.loopback_connection().ok_or(ENODEV)?;
        // The server is the reader of the client's ring and holds the mask.
        let mem = conn.ring_memory(Endpoint::Client).ok_or(EINVAL)?;
        mem.poke_control(INTERRUPT_MASK, 1);
        let before = p.client.stats.signals_sent.load(Ordering::Relaxed);
        harness::send(&p.client, b"quiet", false)?;
        settle(20);
        assert_eq!(p.client.stats.signals_sent.load(Ordering::Relaxed), before);
        // The data is there; the next interrupt delivers it.
        p.server.interrupt();
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        Ok(())
    }

    #[test]
    fn interrupt_storm_delivers_nothing_extra() -> Result {
        let p = Pair::connected()?;
        harness::send(&p.server, b"one", false)?;
        assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 1));
        for _ in 0..5000 {
            p.client.interrupt();
        }
        settle(50);
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 1);
        assert!(!p.client.rxc.failed());
        Ok(())
    }

    #[test]
    fn completions_with_bad_ids_are_refused_and_counted() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        harness::send_recorded(&p.client, b"req", WAIT, &done)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let id = p.srec.st.lock().held[0].transaction_id();
        for bad in [0, u64::MAX, id ^ (1 << 32), id + 1, id | 0xffff_0000] {
            p.server.inject_raw(&completion_bytes(bad, b"forged"))?;
        }
        assert!(wait_for(2000, || p
            .client
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 5));
        p.srec.take_held().ok_or(EINVAL)?.complete(b"real")?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        // Replayed after the real one: refused too; finished exactly once.
        p.server.inject_raw(&completion_bytes(id, b"replay"))?;
        assert!(wait_for(2000, || p
            .client
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 6));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn peer_that_stops_reading_cannot_hang_senders() -> Result {
        let done = Done::new()?;
        let mut p = Pair::new(|e, b| {
            if e == Endpoint::Client {
                b.ring_buffer_page_count(2)
            } else {
                b
            }
        })?;
        p.up()?;
        p.server.pause()?;
        // Fill the ring and the send queue: sends queue, then fail with
        // EBUSY or ENOMEM once every slot and packet object is taken.
        let mut refused = false;
        for _ in 0..1000 {
            match harness::send_recorded(&p.client, &[0u8; 512], SendFlags::NONE, &done) {
                Ok(()) => {}
                Err(e) => {
                    assert!(e == EBUSY || e == ENOMEM);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
        let mut resp = [0u8; 8];
        assert_eq!(
            p.client
                .send_synchronous_request(b"x", WAIT, &mut resp, Some(Delta::from_millis(50))),
            Err(ETIMEDOUT)
        );
        // Disable finishes everything queued, once each.
        let started = done.count.load(Ordering::Relaxed);
        p.client.disable()?;
        let total = done.count.load(Ordering::Relaxed);
        assert_eq!(total - started, done.cancelled.load(Ordering::Relaxed));
        Ok(())
    }

    #[test]
    fn close_during_open_leaves_no_channel_half_open() -> Result {
        let mut p = Pair::plain()?;
        p.server.enable()?;
        p.client.enable()?;
        // Withdraw the offer while the client may be opening.
        p.server.disable()?;
        assert!(wait_for(3000, || matches!(
            p.client.state(),
            State::Disabled | State::Enabled
        )));
        settle(20);
        assert!(matches!(p.client.state(), State::Disabled | State::Enabled));
        assert_eq!(p.crec.count(Ev::Opened), p.crec.count(Ev::Closed));
        Ok(())
    }

    #[test]
    fn close_with_requests_in_flight_finishes_each_once() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        for _ in 0..8 {
            harness::send_recorded(&p.client, b"req", WAIT, &done)?;
        }
        assert!(wait_for(2000, || p.srec.held() == 8));
        while let Some(pkt) = p.srec.take_held() {
            pkt.fail();
        }
        p.server.disable()?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 8));
        settle(20);
        assert_eq!(done.count.load(Ordering::Relaxed), 8);
        assert_eq!(done.removed.load(Ordering::Relaxed), 8);
        Ok(())
    }

    #[test]
    fn close_before_gpadl_creation_is_enodev() -> Result {
        let p = Pair::connected()?;
        p.server.disable()?;
        assert!(wait_for(2000, || p.client.state() == State::Disabled));
        let mut b = kernel::alloc::KVVec::new();
        b.resize(4096, 0, GFP_KERNEL)?;
        assert!(
            matches!(p.client.create_gpadl_from_buffer(b, crate::channel::GpadlFlags::NONE), Err(e) if e == ENODEV)
        );
        Ok(())
    }

    #[test]
    fn gpadl_outlives_the_server_until_deleted() -> Result {
        let p = Pair::connected()?;
        let mut b = kernel::alloc::KVVec::new();
        b.resize(4096, 7, GFP_KERNEL)?;
        let g = p
            .client
            .create_gpadl_from_buffer(b, crate::channel::GpadlFlags::NONE)?;
        let m = p.server.map_gpadl(g.id())?;
        // The server goes away with the GPADL still mapped; the mapping
        // object keeps the memory reachable until it is dropped.
        let srv = p.server.arc();
        let closed = Arc::new(AtomicBool::new(false), GFP_KERNEL)?;
        let c2 = closed.clone();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let _ = srv.disable();
            c2.store(true, Ordering::Relaxed);
        })?;
        assert!(wait_for(2000, || closed.load(Ordering::Relaxed)));
        let mut x = [0u8; 4];
        m.read(0, &mut x)?;
        assert_eq!(x, [7; 4]);
        drop(m);
        assert!(matches!(p.client.delete_gpadl(g), Ok(Some(_))));
        Ok(())
    }

    #[test]
    fn close_during_save_is_harmless() -> Result {
        let p = Pair::connected()?;
        p.server.pause()?;
        let ctx = p.server.save_begin()?;
        // The client goes away in the middle of the save.
        p.client.disable()?;
        assert!(wait_for(2000, || p.server.state() == State::Enabled));
        p.server.save_end(ctx);
        p.server.disable()?;
        assert_eq!(p.server.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn more_packets_than_slots_are_delivered_as_slots_free() -> Result {
        let mut p = Pair::new(|_, b| b.incoming_slots(4))?;
        p.up()?;
        p.crec.mode.store(mode::HOLD, Ordering::Relaxed);
        for i in 0..12u64 {
            harness::send(&p.server, &i.to_le_bytes(), false)?;
        }
        assert!(wait_for(2000, || p.crec.held() == 4));
        settle(20);
        assert_eq!(p.crec.held(), 4);
        p.crec.mode.store(mode::EMPTY, Ordering::Relaxed);
        p.crec.release_held();
        assert!(wait_for(3000, || p.crec.received.load(Ordering::Relaxed) == 12));
        // In order, none lost.
        let heads = p.crec.heads();
        for (i, h) in heads.iter().enumerate() {
            assert_eq!(*h, i as u64);
        }
        Ok(())
    }

    #[test]
    fn failed_client_open_is_reported_once_and_sends_fail() -> Result {
        let mut p = Pair::plain()?;
        p.crec
            .opened_error
            .store(-(EPROTO.to_errno()), Ordering::Relaxed);
        p.server.enable()?;
        p.client.enable()?;
        assert!(wait_for(3000, || p.crec.count(Ev::PnpFailure) == 1));
        settle(30);
        assert_eq!(p.crec.count(Ev::PnpFailure), 1);
        assert_eq!(p.crec.count(Ev::Started), 0);
        assert_eq!(harness::send(&p.client, b"x", false), Err(EINVAL));
        Ok(())
    }
    #[test]
    fn external_pfns_the_sender_does_not_own_cannot_be_read() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        // A page the client keeps to itself, named by number only.
        let secret = filled_page(0x5a)?;
        let pfn = [sys::page_to_pfn(&secret)];
        let range = ExternalRange {
            byte_count: 64,
            byte_offset: 100,
            pfns: &pfn,
        };
        let pkt = harness::recorded_packet(&p.client, &done)?;
        pkt.send_with_external_pfns(b"raw", &[range], WAIT)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let held = p.srec.take_held().ok_or(EINVAL)?;
        // The numbers are visible; the bytes are not.
        let r = held
            .external_data()
            .ok_or(EINVAL)?
            .ranges()
            .next()
            .ok_or(EINVAL)?;
        assert_eq!(
            (r.byte_count, r.byte_offset, r.pfn(0)),
            (64, 100, Some(pfn[0]))
        );
        let mut buf = [0u8; 64];
        let (copied, chunks, seen) = read_external(&held, &mut buf);
        assert_eq!(copied, Err(EACCES));
        assert_eq!(chunks, Err(EACCES));
        assert_eq!(seen, 0);
        assert!(buf.iter().all(|b| *b == 0));
        held.complete(&[])?;
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        Ok(())
    }

    #[test]
    fn forged_gpa_ranges_read_nothing_the_sender_did_not_pass() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.crec.mode.store(mode::HOLD, Ordering::Relaxed);
        // The server lends one page to the client, for real.
        let pkt = harness::recorded_packet(&p.server, &done)?;
        pkt.send_with_external_mdl(b"lent", filled_mdl(0x11, 64)?, WAIT)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.crec.held() == 1));
        let real = p.crec.take_held().ok_or(EINVAL)?;
        // Then it writes packets of its own: one under the same transaction
        // id naming another page, one naming page frame 1.
        let other = filled_page(0x22)?;
        let pfn = [sys::page_to_pfn(&other)];
        let range = RangeSpec {
            byte_count: 64,
            byte_offset: 0,
            pfns: &pfn,
        };
        p.server
            .inject_raw(&gpa_packet(real.transaction_id(), &[range], b"forged")?)?;
        p.server.inject_raw(&gpa(1, &[(16, 0, 1)]))?;
        assert!(wait_for(2000, || p.crec.held() == 2));
        let mut buf = [0u8; 64];
        while let Some(forged) = p.crec.take_held() {
            let (copied, chunks, seen) = read_external(&forged, &mut buf);
            assert_eq!(copied, Err(EACCES));
            assert_eq!(chunks, Err(EACCES));
            assert_eq!(seen, 0);
            forged.fail();
        }
        assert!(buf.iter().all(|b| *b == 0));
        // The real packet reads its own page.
        let (copied, chunks, seen) = read_external(&real, &mut buf);
        assert_eq!((copied, chunks, seen), (Ok(64), Ok(()), 64));
        assert!(buf.iter().all(|b| *b == 0x11));
        real.complete(&[])?;
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        Ok(())
    }

    #[test]
    fn external_data_read_after_the_senders_disable_is_refused() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let pkt = harness::recorded_packet(&p.client, &done)?;
        pkt.send_with_external_mdl(b"mdl", filled_mdl(0x30, 5000)?, WAIT)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let held = p.srec.take_held().ok_or(EINVAL)?;
        let mut buf = KVec::from_elem(0u8, 5000, GFP_KERNEL)?;
        assert_eq!(read_external(&held, &mut buf), (Ok(5000), Ok(()), 5000));
        // The sender goes away: its packet finishes and the routine frees
        // the pages. The receiver still holds its packet.
        p.client.disable()?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        buf.fill(0);
        let (copied, chunks, seen) = read_external(&held, &mut buf);
        assert_eq!(copied, Err(EACCES));
        assert_eq!(chunks, Err(EACCES));
        assert_eq!(seen, 0);
        assert!(buf.iter().all(|b| *b == 0));
        let _ = held.complete(&[]);
        Ok(())
    }

    #[test]
    fn senders_disable_during_a_chunked_read_stops_it() -> Result {
        let done = Done::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let pkt = harness::recorded_packet(&p.client, &done)?;
        pkt.send_with_external_mdl(b"mdl", filled_mdl(0x40, 5000)?, WAIT)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let held = p.srec.take_held().ok_or(EINVAL)?;
        let mut seen = 0usize;
        let mut calls = 0u32;
        let mut disabled = Ok(());
        let r = held.external_data().ok_or(EINVAL)?.for_each_chunk(|b| {
            if calls == 0 {
                // The sender is disabled between two pieces of the read.
                disabled = p.client.disable();
            }
            calls += 1;
            seen += b.len();
        });
        assert_eq!(disabled, Ok(()));
        assert_eq!(r, Err(EACCES));
        assert!(seen > 0 && seen < 5000);
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        let _ = held.complete(&[]);
        Ok(())
    }
}
