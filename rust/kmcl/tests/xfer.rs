// SPDX-License-Identifier: GPL-2.0

//! Transfer-page packets (type 7): a client registers a receive buffer it
//! shared by GPADL, the peer sends packets that name byte ranges in it, the
//! driver reads them through [`IncomingPacket::transfer_pages`] and
//! completes them.
//!
//! `kmcl_xfer` runs on a loopback pair, where the server writes the buffer
//! through its mapping of the GPADL and sends with
//! [`Packet::send_transfer_pages`], or injects hostile packets raw.
//! `kmcl_hv_xfer` plays the host of an hv channel built in memory: its
//! packets reach kmcl through Linux's ring reader, and the completion goes
//! back through `vmbus_sendpacket()`.

use core::sync::atomic::Ordering;

use kernel::{
    alloc::KVVec,
    prelude::*,
    time::Delta, //
};

use super::{
    harness::{
        self,
        mode,
        settle,
        wait_for,
        Done,
        Pair,
        Recorder, //
    },
    hv_binding::{
        bus,
        opened,
        pages_buffer,
        Errors,
        LIMITS, //
    },
};
use crate::{
    channel::{
        gpadl::{
            Gpadl,
            GpadlMemory, //
        },
        incoming::IncomingPacket,
        outgoing::SendFlags,
        xfer::TransferRange,
        Channel,
        ChannelHandle, //
    },
    wire::packet::{
        self,
        Descriptor,
        Kind, //
    },
};

const PAGESET: u16 = 0xcafe;
const WAIT: SendFlags = SendFlags::WAIT_FOR_COMPLETION;
const NO_WAIT: Delta = Delta::from_millis(0);

/// A type-7 packet with a header announcing `count` ranges, then `ranges`
/// (byte count, byte offset), then `payload`.
fn xfer_raw(
    trans_id: u64,
    pageset_id: u16,
    count: u32,
    ranges: &[(u32, u32)],
    payload: &[u8],
) -> Result<KVec<u8>> {
    let off = 16 + 8 + 8 * ranges.len();
    let len = off + packet::align8(payload.len());
    let d = Descriptor {
        ty: packet::TYPE_DATA_XFER_PAGES,
        offset8: (off / 8) as u16,
        len8: (len / 8) as u16,
        flags: packet::FLAG_COMPLETION_REQUESTED,
        trans_id,
    };
    let mut v = KVec::with_capacity(len, GFP_KERNEL)?;
    v.extend_from_slice(&d.encode(), GFP_KERNEL)?;
    v.extend_from_slice(&pageset_id.to_le_bytes(), GFP_KERNEL)?;
    v.extend_from_slice(&[0, 0], GFP_KERNEL)?;
    v.extend_from_slice(&count.to_le_bytes(), GFP_KERNEL)?;
    for &(bc, bo) in ranges {
        v.extend_from_slice(&bc.to_le_bytes(), GFP_KERNEL)?;
        v.extend_from_slice(&bo.to_le_bytes(), GFP_KERNEL)?;
    }
    v.extend_from_slice(payload, GFP_KERNEL)?;
    v.resize(len, 0, GFP_KERNEL)?;
    Ok(v)
}

/// A buffer of `len` bytes, byte `i` being `i * 7 + seed`.
fn pattern(len: usize, seed: u8) -> Result<KVVec<u8>> {
    let mut b = KVVec::with_capacity(len, GFP_KERNEL)?;
    for i in 0..len {
        b.push((i as u8).wrapping_mul(7).wrapping_add(seed), GFP_KERNEL)?;
    }
    Ok(b)
}

/// Whether range `i` of `pkt` holds `want`, read both ways.
fn range_is(pkt: &IncomingPacket, i: usize, want: &[u8]) -> Result<bool> {
    let t = pkt.transfer_pages().ok_or(EINVAL)?;
    let mut got = KVec::from_elem(0u8, want.len() + 8, GFP_KERNEL)?;
    let n = t.copy_range(i, &mut got)?;
    let mut tail = [0u8; 3];
    let tail_ok = if want.len() >= 3 {
        t.read(i, want.len() - 3, &mut tail)?;
        tail == want[want.len() - 3..]
    } else {
        true
    };
    Ok(n == want.len() && got[..n] == *want && tail_ok)
}

/// Whether the client stopped its queue on a malformed packet, counted it,
/// and delivered nothing.
fn refused(chan: &Channel, rec: &Recorder) -> bool {
    wait_for(2000, || {
        chan.rxc.failed() && chan.counters().malformed_packets == 1
    }) && rec.received.load(Ordering::Relaxed) == 0
}

/// A loopback pair whose client holds its packets, with a receive buffer
/// of `len` bytes (pattern seed 1) registered under [`PAGESET`]; returns
/// the GPADL id.
fn registered_pair(len: usize) -> Result<(Pair, u32)> {
    let p = Pair::connected()?;
    p.crec.mode.store(mode::HOLD, Ordering::Relaxed);
    let g = p
        .client
        .create_gpadl_from_buffer(pattern(len, 1)?, crate::channel::GpadlFlags::NONE)?;
    let id = g.id();
    p.client
        .register_receive_buffer(PAGESET, g)
        .map_err(|(e, _)| e)?;
    Ok((p, id))
}

/// Injects `bytes` from the server of a registered pair and checks that the
/// client refused them.
fn expect_refused(bytes: &[u8]) -> Result<bool> {
    let (p, _) = registered_pair(4096)?;
    p.server.inject_raw(bytes)?;
    let ok = refused(&p.client, &p.crec);
    // Were it delivered after all, it would hold the teardown.
    p.crec.release_held();
    // A stopped queue still tears down, the registered buffer with it.
    p.client.disable()?;
    Ok(ok)
}

/// The GPADL handed back by an unregister, deleted; whether its memory
/// came back.
fn delete(chan: &ChannelHandle, g: Gpadl) -> bool {
    matches!(chan.delete_gpadl(g), Ok(Some(GpadlMemory::Buffer(_))))
}

/// The bus, client, recorder and device of [`hv_registered`].
type HvClient = (
    kernel::sync::Arc<crate::transport::hv::HvBus>,
    ChannelHandle,
    kernel::sync::Arc<Recorder>,
    super::hv_binding::TestDevice,
    kernel::sync::Arc<crate::transport::hv::bus::HvDevice>,
);

/// A client on an hv channel built in memory, holding its packets,
/// with two pages (pattern seed 3) registered under [`PAGESET`].
fn hv_registered() -> Result<HvClient> {
    let bus = bus()?;
    let (h, rec, dev, d) = opened(&bus)?;
    rec.mode.store(mode::HOLD, Ordering::Relaxed);
    let mut buf = pages_buffer(2)?;
    let pat = pattern(8192, 3)?;
    if buf.len() != pat.len() {
        return Err(EINVAL);
    }
    // Byte by byte: no panic path (a length mismatch's) for objtool to
    // follow into the next function.
    for (d, s) in buf.iter_mut().zip(pat.iter()) {
        *d = *s;
    }
    let g = h.create_gpadl_from_buffer(buf, crate::channel::GpadlFlags::NONE)?;
    h.register_receive_buffer(PAGESET, g).map_err(|(e, _)| e)?;
    Ok((bus, h, rec, dev, d))
}

/// A client driver that shares and registers its receive buffer in
/// Opened, as a netvsc-like driver does before any data can arrive, and
/// then fails Opened if told to.
struct RegisterInOpened {
    fail: core::sync::atomic::AtomicBool,
    registered: core::sync::atomic::AtomicI32,
}

impl crate::channel::callbacks::StateChange for RegisterInOpened {
    fn opened(&self, channel: &Channel) -> Result {
        let r = channel
            .create_gpadl_from_buffer(pattern(4096, 5)?, crate::channel::GpadlFlags::NONE)
            .and_then(|g| {
                channel
                    .register_receive_buffer(PAGESET, g)
                    .map_err(|(e, _)| e)
            });
        self.registered
            .store(r.err().map_or(1, |e| e.to_errno()), Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(EIO);
        }
        Ok(())
    }
}

/// A server driver that keeps its mapping of the client's receive buffer
/// until its own Closed, as a VSP that sends into it for the channel's
/// life does.
#[pin_data]
struct MapUntilClosed {
    #[pin]
    mapping: kernel::sync::SpinLockIrq<Option<crate::channel::gpadl::GpadlMapping>>,
}

impl crate::channel::callbacks::StateChange for MapUntilClosed {
    fn closed(&self, _channel: &Channel) {
        let m = self.mapping.lock().take();
        drop(m);
    }
}

#[kunit_tests(kmcl_xfer)]
mod tests {
    use super::*;

    #[test]
    fn server_sends_ranges_the_client_reads_in_its_buffer() -> Result {
        // Before the pair: its sends' routines write here until it is gone.
        let done = Done::new()?;
        let (p, id) = registered_pair(8192)?;
        let m = p.server.map_gpadl(id)?;
        // The server writes two ranges (one across a page boundary, one
        // ending at the buffer's last byte), then names them.
        let a = pattern(300, 0x40)?;
        let b = pattern(100, 0x90)?;
        m.write(4000, &a)?;
        m.write(8092, &b)?;
        let ranges = [
            TransferRange {
                byte_count: 300,
                byte_offset: 4000,
            },
            TransferRange {
                byte_count: 100,
                byte_offset: 8092,
            },
        ];
        harness::recorded_packet(&p.server, &done)?
            .send_transfer_pages(&m, PAGESET, &ranges, b"rndis hdr", WAIT)
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.crec.held() == 1));
        let pkt = p.crec.take_held().ok_or(EINVAL)?;
        assert!(harness::padded_eq(pkt.data(), b"rndis hdr"));
        assert_eq!(pkt.flags(), 0);
        assert!(pkt.external_data().is_none());
        {
            let t = pkt.transfer_pages().ok_or(EINVAL)?;
            assert_eq!((t.pageset_id(), t.len()), (PAGESET, 2));
            assert_eq!(t.range(0), Some(ranges[0]));
            assert_eq!(t.range(2), None);
            // Nothing past a range's end, nothing of a range it lacks.
            let mut one = [0u8; 1];
            assert!(matches!(t.read(0, 300, &mut one), Err(e) if e == EINVAL));
            assert!(matches!(t.read(2, 0, &mut one), Err(e) if e == EINVAL));
            let mut short = [0u8; 99];
            assert!(matches!(t.copy_range(1, &mut short), Err(e) if e == EOVERFLOW));
        }
        assert!(range_is(&pkt, 0, &a)?);
        assert!(range_is(&pkt, 1, &b)?);
        pkt.complete(b"consumed")?;
        // The completion comes back to the server's transaction.
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        assert_eq!(
            done.resp_head.load(Ordering::Relaxed),
            u64::from_le_bytes(*b"consumed")
        );
        assert_eq!(p.client.counters().completions_sent, 1);
        drop(m);
        let g = p
            .client
            .unregister_receive_buffer(PAGESET, Delta::from_millis(1000))?;
        assert!(delete(&p.client, g));
        Ok(())
    }

    #[test]
    fn completion_carries_the_packet_transaction_id() -> Result {
        // Before the pair: its sends' routines write here until it is gone.
        let done = Done::new()?;
        let (p, id) = registered_pair(4096)?;
        // A send of the server whose id the client must echo: the server
        // matches the completion to its transaction only by that id.
        let m = p.server.map_gpadl(id)?;
        harness::recorded_packet(&p.server, &done)?
            .send_transfer_pages(
                &m,
                PAGESET,
                &[TransferRange {
                    byte_count: 8,
                    byte_offset: 0,
                }],
                b"",
                WAIT,
            )
            .map_err(|e| e.error)?;
        assert!(wait_for(2000, || p.crec.held() == 1));
        let pkt = p.crec.take_held().ok_or(EINVAL)?;
        assert!(pkt.completion_requested());
        let id = pkt.transaction_id();
        assert_ne!(id, 0);
        pkt.complete(&id.to_le_bytes())?;
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        assert_eq!(done.resp_head.load(Ordering::Relaxed), id);
        assert_eq!(p.server.counters().rejected_completions, 0);
        drop(m);
        Ok(())
    }

    #[test]
    fn range_outside_the_buffer_is_refused() -> Result {
        // Ends one byte past the 4096-byte buffer.
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET,
            1,
            &[(97, 4000)],
            b""
        )?)?);
        // Starts past it.
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET,
            1,
            &[(1, 4096)],
            b""
        )?)?);
        // Wraps a 32-bit sum back into the buffer.
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET,
            2,
            &[(16, 0), (2, u32::MAX)],
            b""
        )?)?);
        Ok(())
    }

    #[test]
    fn unknown_pageset_id_is_refused() -> Result {
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET + 1,
            1,
            &[(16, 0)],
            b""
        )?)?);
        // A client that registered nothing refuses any id.
        let p = Pair::connected()?;
        p.server
            .inject_raw(&xfer_raw(1, PAGESET, 1, &[(16, 0)], b"")?)?;
        assert!(refused(&p.client, &p.crec));
        Ok(())
    }

    #[test]
    fn overflowing_count_and_short_header_are_refused() -> Result {
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET,
            2,
            &[(16, 0)],
            b"pay"
        )?)?);
        assert!(expect_refused(&xfer_raw(
            1,
            PAGESET,
            u32::MAX,
            &[(16, 0)],
            b""
        )?)?);
        // offset8 leaves no room for the header.
        let mut short = KVec::new();
        short.extend_from_slice(
            &Descriptor {
                ty: packet::TYPE_DATA_XFER_PAGES,
                offset8: 2,
                len8: 3,
                flags: 1,
                trans_id: 1,
            }
            .encode(),
            GFP_KERNEL,
        )?;
        short.extend_from_slice(&[0xfe, 0xca, 0, 0, 0, 0, 0, 0], GFP_KERNEL)?;
        assert!(expect_refused(&short)?);
        Ok(())
    }

    #[test]
    fn unregister_waits_for_the_packet_that_holds_the_buffer() -> Result {
        let (p, _) = registered_pair(4096)?;
        p.server
            .inject_raw(&xfer_raw(5, PAGESET, 1, &[(64, 128)], b"")?)?;
        assert!(wait_for(2000, || p.crec.held() == 1));
        let pkt = p.crec.take_held().ok_or(EINVAL)?;
        // The buffer is not handed back (to be deleted) under the packet.
        let r = p
            .client
            .unregister_receive_buffer(PAGESET, Delta::from_millis(50));
        assert!(matches!(r, Err(e) if e == ETIMEDOUT));
        // The packet still reads it.
        assert!(range_is(&pkt, 0, &pattern(4096, 1)?[128..192])?);
        // Once it is finished, from another thread, the waiting call returns.
        let chan = p.client.arc();
        let tx = kernel::sync::Arc::new(core::sync::atomic::AtomicI32::new(1), GFP_KERNEL)?;
        let tx2 = tx.clone();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let r = chan.unregister_receive_buffer(PAGESET, Delta::from_millis(5000));
            let v = match r {
                Ok(g) => {
                    let ok = matches!(chan.delete_gpadl(g), Ok(Some(GpadlMemory::Buffer(_))));
                    if ok {
                        0
                    } else {
                        -1
                    }
                }
                Err(e) => e.to_errno(),
            };
            tx2.store(v, Ordering::Relaxed);
        })?;
        settle(30);
        assert_eq!(tx.load(Ordering::Relaxed), 1);
        pkt.complete(&[])?;
        assert!(wait_for(2000, || tx.load(Ordering::Relaxed) == 0));
        Ok(())
    }

    #[test]
    fn teardown_drops_a_deferred_transfer_page_packet() -> Result {
        let (p, _) = registered_pair(4096)?;
        p.crec.mode.store(mode::DEFER_SLOW, Ordering::Relaxed);
        p.crec.defer_sleep_ms.store(200, Ordering::Relaxed);
        // An in-band packet first: its redelivery sleeps in process
        // context, so the transfer-page packet after it stays in the
        // deferred queue, holding the receive buffer.
        harness::send(&p.server, b"first", false)?;
        assert!(wait_for(2000, || p
            .crec
            .redelivering
            .load(Ordering::Relaxed)
            == 1));
        p.server
            .inject_raw(&xfer_raw(5, PAGESET, 1, &[(64, 128)], b"")?)?;
        // Delivered once in softirq context and deferred: three calls.
        assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 3));
        // The teardown drops the deferred packet and its hold on the
        // buffer, then deletes the buffer left registered.
        p.client.disable()?;
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 3);
        assert_eq!(p.crec.late_calls.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn unregistered_id_is_refused_afterwards() -> Result {
        let (p, _) = registered_pair(4096)?;
        let g = p.client.unregister_receive_buffer(PAGESET, NO_WAIT)?;
        assert!(delete(&p.client, g));
        assert!(matches!(
            p.client.unregister_receive_buffer(PAGESET, NO_WAIT),
            Err(e) if e == ENOENT
        ));
        p.server
            .inject_raw(&xfer_raw(1, PAGESET, 1, &[(16, 0)], b"")?)?;
        assert!(refused(&p.client, &p.crec));
        Ok(())
    }

    #[test]
    fn registration_refuses_duplicates_and_servers_and_returns_the_gpadl() -> Result {
        let (p, _) = registered_pair(4096)?;
        let g = p
            .client
            .create_gpadl_from_buffer(pattern(4096, 2)?, crate::channel::GpadlFlags::NONE)?;
        let g = match p.client.register_receive_buffer(PAGESET, g) {
            Err((e, g)) if e == EEXIST => g,
            _ => return Err(EINVAL),
        };
        // Another id is fine.
        p.client
            .register_receive_buffer(PAGESET + 1, g)
            .map_err(|(e, _)| e)?;
        let g = p.client.unregister_receive_buffer(PAGESET + 1, NO_WAIT)?;
        let id = g.id();
        let g = match p.server.register_receive_buffer(PAGESET + 2, g) {
            Err((e, g)) if e == EINVAL => g,
            _ => return Err(EINVAL),
        };
        assert_eq!(g.id(), id);
        assert!(delete(&p.client, g));
        Ok(())
    }

    #[test]
    fn server_send_refuses_ranges_outside_its_mapping_and_clients() -> Result {
        let (p, id) = registered_pair(4096)?;
        let m = p.server.map_gpadl(id)?;
        let past = [TransferRange {
            byte_count: 2,
            byte_offset: 4095,
        }];
        let r = p
            .server
            .packet_allocate()?
            .send_transfer_pages(&m, PAGESET, &past, b"", WAIT);
        assert!(matches!(r, Err(ref e) if e.error == EINVAL));
        let ok = [TransferRange {
            byte_count: 1,
            byte_offset: 4095,
        }];
        let r = p
            .client
            .packet_allocate()?
            .send_transfer_pages(&m, PAGESET, &ok, b"", WAIT);
        assert!(matches!(r, Err(ref e) if e.error == EINVAL));
        settle(20);
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        drop(m);
        Ok(())
    }

    #[test]
    fn many_packets_arrive_in_order_with_their_bytes() -> Result {
        const N: u32 = 200;
        // Before the pair: its sends' routines write here until it is gone.
        let done = Done::new()?;
        let (p, id) = registered_pair(16384)?;
        let m = p.server.map_gpadl(id)?;
        p.crec.mode.store(mode::HOLD, Ordering::Relaxed);
        let mut seen = 0u32;
        let mut sent = 0u32;
        while seen < N {
            while sent < N && sent < seen + 32 {
                // Each packet names 64 bytes at its own spot, written first.
                let at = (sent % 256) * 64;
                m.write(at as usize, &[sent as u8; 64])?;
                harness::recorded_packet(&p.server, &done)?
                    .send_transfer_pages(
                        &m,
                        PAGESET,
                        &[TransferRange {
                            byte_count: 64,
                            byte_offset: at,
                        }],
                        &sent.to_le_bytes(),
                        WAIT,
                    )
                    .map_err(|e| e.error)?;
                sent += 1;
            }
            if !wait_for(2000, || p.crec.held() > 0) {
                return Err(ETIMEDOUT);
            }
            while let Some(pkt) = p.crec.take_held() {
                let mut head = [0u8; 4];
                head.copy_from_slice(&pkt.data()[..4]);
                assert_eq!(u32::from_le_bytes(head), seen);
                assert!(range_is(&pkt, 0, &[seen as u8; 64])?);
                pkt.complete(&[])?;
                seen += 1;
            }
        }
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == N));
        assert_eq!(p.client.counters().malformed_packets, 0);
        drop(m);
        Ok(())
    }

    #[test]
    fn buffer_registered_in_opened_is_used_or_undone_with_the_open() -> Result {
        let bus = crate::transport::loopback::LoopbackBus::new()?;
        let (srec, crec) = (Recorder::new()?, Recorder::new()?);
        let drv = kernel::sync::Arc::new(
            RegisterInOpened {
                fail: core::sync::atomic::AtomicBool::new(true),
                registered: core::sync::atomic::AtomicI32::new(0),
            },
            GFP_KERNEL,
        )?;
        let mut server = harness::channel(&bus, crate::channel::Endpoint::Server, &srec)?;
        let mut client = harness::builder(&bus, crate::channel::Endpoint::Client, &crec)
            .state_change_callbacks(drv.clone())
            .build()?;
        crec.mode.store(mode::HOLD, Ordering::Relaxed);
        server.enable()?;
        // Opened registers, then fails: the open is rolled back and the
        // registration with it.
        client.enable()?;
        assert!(wait_for(2000, || drv.registered.load(Ordering::Relaxed) != 0));
        settle(30);
        assert_eq!(drv.registered.load(Ordering::Relaxed), 1);
        assert_eq!(client.rx.lock().xfer.len(), 0);
        client.disable()?;
        // Opened registers and succeeds: the first packet finds the buffer.
        drv.fail.store(false, Ordering::Relaxed);
        drv.registered.store(0, Ordering::Relaxed);
        client.enable()?;
        client.wait_for_state(crate::channel::State::Started, Delta::from_millis(2000))?;
        assert_eq!(drv.registered.load(Ordering::Relaxed), 1);
        assert!(wait_for(2000, || server.state() == crate::channel::State::Started));
        server.inject_raw(&xfer_raw(3, PAGESET, 1, &[(8, 4088)], b"")?)?;
        assert!(wait_for(2000, || crec.held() == 1));
        let pkt = crec.take_held().ok_or(EINVAL)?;
        assert!(range_is(&pkt, 0, &pattern(4096, 5)?[4088..])?);
        pkt.complete(&[])?;
        client.disable()?;
        server.disable()?;
        assert_eq!(client.counters().malformed_packets, 0);
        Ok(())
    }

    #[test]
    fn client_close_with_a_registered_buffer_the_server_maps_does_not_hang() -> Result {
        let bus = crate::transport::loopback::LoopbackBus::new()?;
        let (srec, crec) = (Recorder::new()?, Recorder::new()?);
        let drv = kernel::sync::Arc::pin_init(
            pin_init!(MapUntilClosed {
                mapping <- kernel::new_spinlock_irq!(None, "kmcl::tests::xfer::mapping"),
            }),
            GFP_KERNEL,
        )?;
        let mut server = harness::builder(&bus, crate::channel::Endpoint::Server, &srec)
            .state_change_callbacks(drv.clone())
            .build()?;
        let mut client = harness::channel(&bus, crate::channel::Endpoint::Client, &crec)?;
        server.enable()?;
        client.enable()?;
        client.wait_for_state(crate::channel::State::Started, Delta::from_millis(2000))?;
        let g =
            client.create_gpadl_from_buffer(pattern(4096, 1)?, crate::channel::GpadlFlags::NONE)?;
        let id = g.id();
        client
            .register_receive_buffer(PAGESET, g)
            .map_err(|(e, _)| e)?;
        assert!(wait_for(2000, || server.state() == crate::channel::State::Started));
        *drv.mapping.lock() = Some(server.map_gpadl(id)?);
        // The close deletes the buffer only after the connection closed, so
        // the server's Closed can unmap it; Disable returns.
        let chan = client.arc();
        let done = kernel::sync::Arc::new(core::sync::atomic::AtomicBool::new(false), GFP_KERNEL)?;
        let done2 = done.clone();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let _ = chan.disable();
            done2.store(true, Ordering::Relaxed);
        })?;
        let ok = wait_for(3000, || done.load(Ordering::Relaxed));
        // Unstick it, should it hang, before reporting.
        drop(drv.mapping.lock().take());
        assert!(wait_for(3000, || done.load(Ordering::Relaxed)));
        assert!(ok);
        assert_eq!(client.rx.lock().xfer.len(), 0);
        server.disable()?;
        Ok(())
    }

    #[test]
    fn close_waits_for_the_packet_then_deletes_a_buffer_left_registered() -> Result {
        let (p, _) = registered_pair(4096)?;
        p.server
            .inject_raw(&xfer_raw(1, PAGESET, 1, &[(16, 32)], b"")?)?;
        assert!(wait_for(2000, || p.crec.held() == 1));
        let pkt = p.crec.take_held().ok_or(EINVAL)?;
        let chan = p.client.arc();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let _ = chan.disable();
        })?;
        settle(30);
        // The teardown waits for the packet, which still reads its buffer.
        assert_eq!(p.client.state(), crate::channel::State::Closing);
        assert_eq!(p.client.rx.lock().xfer.len(), 1);
        assert!(range_is(&pkt, 0, &pattern(4096, 1)?[32..48])?);
        pkt.complete(&[])?;
        assert!(wait_for(2000, || p.client.state() == crate::channel::State::Disabled));
        // Left registered past Closed: unregistered and deleted by kmcl.
        assert_eq!(p.client.rx.lock().xfer.len(), 0);
        assert_eq!(p.client.counters().malformed_packets, 0);
        crate::sys::flush_work();
        Ok(())
    }
}

#[kunit_tests(kmcl_hv_xfer)]
mod hv_tests {
    use super::*;

    #[test]
    fn host_packet_is_read_and_completed_through_linux_rings() -> Result {
        let _e = Errors::none(false);
        let (bus, h, rec, dev, d) = hv_registered()?;
        let mut host = dev.host()?;
        host.send(&xfer_raw(
            0x1234_5678_9abc,
            PAGESET,
            2,
            &[(1500, 0), (700, 4000)],
            b"nvsp",
        )?)?;
        assert!(wait_for(2000, || rec.held() == 1));
        let pkt = rec.take_held().ok_or(EINVAL)?;
        let pat = pattern(8192, 3)?;
        assert!(range_is(&pkt, 0, &pat[..1500])?);
        assert!(range_is(&pkt, 1, &pat[4000..4700])?);
        assert!(harness::padded_eq(pkt.data(), b"nvsp"));
        pkt.complete(b"ack")?;
        // Written by vmbus_sendpacket() with the packet's transaction id.
        let c = host.next()?;
        let pk = packet::parse(&c, &LIMITS).map_err(|_| EIO)?;
        assert_eq!(
            (pk.kind, pk.desc.trans_id),
            (Kind::Completion, 0x1234_5678_9abc)
        );
        assert!(harness::padded_eq(pk.payload, b"ack"));
        let g = h.unregister_receive_buffer(PAGESET, NO_WAIT)?;
        assert!(matches!(h.delete_gpadl(g), Ok(Some(_))));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn host_ranges_outside_the_buffer_are_refused() -> Result {
        let _e = Errors::none(false);
        for ranges in [&[(1, 8192)][..], &[(8, 0), (4097, 4096)], &[(2, u32::MAX)]] {
            let (bus, h, rec, dev, d) = hv_registered()?;
            let mut host = dev.host()?;
            host.send(&xfer_raw(7, PAGESET, ranges.len() as u32, ranges, b"")?)?;
            let ok = refused(&h, &rec);
            rec.release_held();
            h.disable()?;
            bus.remove(&d);
            assert!(ok);
        }
        Ok(())
    }

    #[test]
    fn host_unknown_ids_and_bad_counts_are_refused() -> Result {
        let _e = Errors::none(false);
        let bad: [KVec<u8>; 3] = [
            xfer_raw(7, 0xbeef, 1, &[(8, 0)], b"")?,
            xfer_raw(7, PAGESET, 3, &[(8, 0)], b"payload")?,
            xfer_raw(7, PAGESET, u32::MAX, &[], b"")?,
        ];
        for bytes in bad.iter() {
            let (bus, h, rec, dev, d) = hv_registered()?;
            let mut host = dev.host()?;
            host.send(bytes)?;
            let ok = refused(&h, &rec);
            rec.release_held();
            h.disable()?;
            bus.remove(&d);
            assert!(ok);
        }
        Ok(())
    }

    #[test]
    fn rescind_with_a_packet_in_flight_keeps_the_buffer_until_it_finishes() -> Result {
        let _e = Errors::none(false);
        let (bus, h, rec, dev, d) = hv_registered()?;
        let mut host = dev.host()?;
        host.send(&xfer_raw(9, PAGESET, 1, &[(32, 100)], b"")?)?;
        assert!(wait_for(2000, || rec.held() == 1));
        let pkt = rec.take_held().ok_or(EINVAL)?;
        // The host goes away; the teardown waits for the packet, which still
        // reads its buffer meanwhile.
        let (dev_ptr, d2, bus2) = (core::ptr::from_ref(&dev) as usize, d.clone(), bus.clone());
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            // SAFETY: the test flushes this work before `dev` goes away.
            let dev = unsafe { &*(dev_ptr as *const super::super::hv_binding::TestDevice) };
            dev.rescind();
            bus2.remove(&d2);
        })?;
        settle(30);
        assert!(range_is(&pkt, 0, &pattern(8192, 3)?[100..132])?);
        let _ = pkt.complete(&[]);
        assert!(wait_for(2000, || h.state() == crate::channel::State::Disabled));
        crate::sys::flush_work();
        assert_eq!(h.rx.lock().xfer.len(), 0);
        Ok(())
    }
}
