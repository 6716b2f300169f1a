// SPDX-License-Identifier: GPL-2.0

//! kmcl's ring code against Linux's own VMBus ring code.
//!
//! A `vmbus_channel` is built in memory (`rust/helpers/hv_test.c`) and
//! driven by `vmbus_sendpacket_getid()`, the `hv_pkt_iter_*()` functions and
//! the requestor, as `hv_vmbus` drives a real channel. The test plays the
//! Hyper-V host on the other end of the same rings with kmcl's
//! `RingReader`/`RingWriter` and packet parser. Byte for byte, both sides
//! must agree on the ring format, the signalling rules and flow control.

use core::ptr::NonNull;

use core::sync::atomic::{
    AtomicI32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    self,
    completion_bytes,
    inband,
    mode,
    wait_for,
    Done,
    Ev,
    Holder,
    Recorder, //
};
use crate::channel::{
    outgoing::SendFlags,
    Channel,
    ChannelHandle,
    Endpoint,
    State, //
};
use crate::wire::{
    packet::{
        self,
        Descriptor,
        Kind,
        Limits, //
    },
    ring::{
        RingError,
        RingMemory,
        RingReader,
        RingWriter, //
    },
};

/// The test channel's own helpers; the ring functions are the transport's.
mod ffi {
    use kernel::prelude::*;

    use crate::vmbus::ffi::VmbusChannel;

    pub(super) use crate::transport::hv::ffi::{
        kmcl_hv_recv,
        kmcl_hv_recv_close,
        kmcl_hv_request_addr,
        kmcl_hv_sendpacket, //
    };

    extern "C" {
        pub(super) fn kmcl_hv_test_channel_new(
            pages: u32,
            max_pkt: u32,
            rqstor: u32,
        ) -> *mut VmbusChannel;
        pub(super) fn kmcl_hv_test_channel_free(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_ring(
            c: *mut VmbusChannel,
            inbound: c_int,
            control: *mut *mut c_void,
            data: *mut *mut c_void,
            size: *mut u32,
        );
        pub(super) fn kmcl_hv_test_sig_events(c: *mut VmbusChannel) -> u64;
        /// Linux's iterator: `hv_pkt_iter_first()`, a copy of the packet,
        /// `__hv_pkt_iter_next()` (in `rust/helpers/vmbus.c`).
        pub(super) fn kmcl_hv_recvpacket(c: *mut VmbusChannel, buf: *mut c_void, len: u32)
            -> c_int;
        pub(super) fn kmcl_hv_test_pkt_buffer(
            c: *mut VmbusChannel,
            buf: *mut *mut c_void,
            size: *mut u32,
        );
    }
}

impl Channel {
    /// Opens the channel on a `vmbus_channel` that is open already, in the
    /// caller's thread; the interop suites put kmcl on channels they built,
    /// without a device.
    ///
    /// # Safety
    ///
    /// As [`HvEndpoint::new`](crate::transport::hv::HvEndpoint::new) with
    /// `Owner::Raw(release)`.
    pub(crate) unsafe fn open_on_hv(
        &self,
        chan: NonNull<crate::vmbus::ffi::VmbusChannel>,
        release: Option<crate::transport::hv::Release>,
    ) -> Result {
        self.open_attached(|| {
            // SAFETY: the caller's promise.
            let ep = unsafe {
                crate::transport::hv::HvEndpoint::new(
                    chan,
                    crate::transport::hv::Owner::Raw(release),
                )
            };
            crate::transport::Attachment::Hv(ep)
        })
    }
}

const RING_PAGES: u32 = 4;
const DATA_SIZE: u32 = (RING_PAGES - 1) * 4096;
const MAX_PKT: u32 = 4096;
pub(super) const RQSTOR: u32 = 16;
const RQST_ERROR: u64 = u64::MAX - 1;

const LIMITS: Limits = Limits {
    max_payload: MAX_PKT,
    max_ranges: 4,
    max_external_bytes: 16 * 4096,
};

/// A view of the guest-to-host ring (`inbound == false`) or the
/// host-to-guest one of a test-built channel.
///
/// # Safety
///
/// `c` must be a live test-built channel with rings, which outlive the view.
pub(super) unsafe fn ring_of(
    c: *mut crate::vmbus::ffi::VmbusChannel,
    inbound: bool,
) -> Result<RingMemory> {
    let (mut control, mut data, mut size) = (core::ptr::null_mut(), core::ptr::null_mut(), 0u32);
    // SAFETY: `c` is live by the caller's promise; the out-pointers are valid.
    unsafe { ffi::kmcl_hv_test_ring(c, inbound.into(), &mut control, &mut data, &mut size) };
    // SAFETY: the rings outlive the view by the caller's promise.
    unsafe {
        RingMemory::new(
            NonNull::new(control.cast()).ok_or(ENODEV)?,
            NonNull::new(data.cast()).ok_or(ENODEV)?,
            size,
        )
    }
    .ok_or(EINVAL)
}

/// A test-built channel; freed on drop.
///
/// # Invariants
///
/// `c` comes from `kmcl_hv_test_channel_new` and is freed only in `drop`.
pub(super) struct TestChannel {
    c: *mut crate::vmbus::ffi::VmbusChannel,
}

impl TestChannel {
    pub(super) fn new() -> Result<Self> {
        // SAFETY: a plain constructor; null on failure.
        let c = unsafe { ffi::kmcl_hv_test_channel_new(RING_PAGES, MAX_PKT, RQSTOR) };
        if c.is_null() {
            return Err(ENOMEM);
        }
        Ok(Self { c })
    }

    /// The guest-to-host ring (`inbound == false`) or the host-to-guest one.
    fn ring(&self, inbound: bool) -> Result<RingMemory> {
        // SAFETY: `c` is live by the invariant and has rings; the views a
        // test makes are dropped before `self`.
        unsafe { ring_of(self.c, inbound) }
    }

    /// `vmbus_sendpacket_getid()`: returns the transaction id on the wire.
    fn send(&self, data: &[u8], requestid: u64, ty: u16, flags: u32) -> Result<u64> {
        let mut buf = KVec::new();
        buf.extend_from_slice(data, GFP_KERNEL)?;
        let mut id = 0u64;
        // SAFETY: `c` is live; `buf` holds `len` bytes; `id` is writable.
        let r = unsafe {
            ffi::kmcl_hv_sendpacket(
                self.c,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
                requestid,
                &mut id,
                ty,
                flags,
            )
        };
        kernel::error::to_result(r)?;
        Ok(id)
    }

    /// The next packet, as the hv transport receives it.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        // SAFETY: `c` is live; `buf` is writable for its length.
        let n = unsafe { ffi::kmcl_hv_recv(self.c, buf.as_mut_ptr().cast(), buf.len() as u32) };
        kernel::error::to_result(n.min(0))?;
        Ok((n > 0).then_some(n as usize))
    }

    /// The next packet through Linux's `hv_pkt_iter_first()` /
    /// `__hv_pkt_iter_next()`.
    fn recv_linux(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        // SAFETY: `c` is live; `buf` is writable for its length.
        let n =
            unsafe { ffi::kmcl_hv_recvpacket(self.c, buf.as_mut_ptr().cast(), buf.len() as u32) };
        kernel::error::to_result(n.min(0))?;
        Ok((n > 0).then_some(n as usize))
    }

    fn recv_close(&self) {
        // SAFETY: `c` is live.
        unsafe { ffi::kmcl_hv_recv_close(self.c) }
    }

    fn sig_events(&self) -> u64 {
        // SAFETY: `c` is live.
        unsafe { ffi::kmcl_hv_test_sig_events(self.c) }
    }

    /// Fills Linux's packet buffer of the channel with `byte`; returns
    /// whether it still holds nothing else.
    fn pkt_buffer_is(&self, byte: u8, fill: bool) -> bool {
        let (mut buf, mut size) = (core::ptr::null_mut(), 0u32);
        // SAFETY: `c` is live; the out-pointers are valid.
        unsafe { ffi::kmcl_hv_test_pkt_buffer(self.c, &mut buf, &mut size) };
        if buf.is_null() {
            return false;
        }
        // SAFETY: the packet buffer is `size` bytes, allocated with the
        // channel and used by nothing while the test runs no receive.
        let b = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), size as usize) };
        if fill {
            b.fill(byte);
        }
        b.iter().all(|&x| x == byte)
    }

    fn request_addr(&self, id: u64) -> u64 {
        // SAFETY: `c` is live.
        unsafe { ffi::kmcl_hv_request_addr(self.c, id, u64::MAX) }
    }
}

impl TestChannel {
    /// Hands the channel to a kmcl channel, which frees it when it closes.
    pub(super) fn open(self, chan: &Channel) -> Result<HostSide> {
        let out = self.ring(false)?;
        let inb = self.ring(true)?;
        let raw = NonNull::new(self.c).ok_or(EINVAL)?;
        core::mem::forget(self);
        // SAFETY: `raw` is a test-built channel with rings, packet buffer and
        // requestor; `kmcl_hv_test_channel_free` ends its life, once.
        unsafe { chan.open_on_hv(raw, Some(ffi::kmcl_hv_test_channel_free)) }?;
        Ok(HostSide {
            reader: RingReader::new(out).map_err(|_| EIO)?,
            writer: RingWriter::new(inb).map_err(|_| EIO)?,
        })
    }
}

/// The host's ends of an hv channel that a kmcl channel owns. Valid until
/// that channel is disabled.
pub(super) struct HostSide {
    reader: RingReader,
    writer: RingWriter,
}

impl HostSide {
    /// Reads the next packet the guest sent.
    fn next(&mut self) -> Result<KVec<u8>> {
        let mut buf = KVec::from_elem(0u8, 8192, GFP_KERNEL)?;
        let n = self.reader.read(&mut buf).map_err(|_| EIO)?.ok_or(ENOENT)?;
        buf.truncate(n);
        let _ = self.reader.commit();
        Ok(buf)
    }

    /// Writes a packet to the guest and interrupts it, as the host does.
    pub(super) fn send(&mut self, chan: &Channel, bytes: &[u8]) -> Result {
        let _ = self.writer.write(&[bytes]).map_err(|_| EIO)?;
        chan.interrupt();
        Ok(())
    }

    fn outbound_pending(&self) -> u32 {
        self.reader.memory().snapshot()[3]
    }
}

/// A client channel with a recorder, open on a test-built hv channel.
fn hv_client() -> Result<(ChannelHandle, Arc<Recorder>, HostSide)> {
    let rec = Recorder::new()?;
    let h = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
        .process_packet_callbacks(rec.clone())
        .state_change_callbacks(rec.clone())
        .packet_pool_size(u32::from(RQSTOR as u16) * 4)
        .build()?;
    let host = TestChannel::new()?.open(&h)?;
    Ok((h, rec, host))
}

impl Drop for TestChannel {
    fn drop(&mut self) {
        // SAFETY: by the invariant, `c` is live and freed only here.
        unsafe { ffi::kmcl_hv_test_channel_free(self.c) }
    }
}

const VM_PKT_DATA_INBAND: u16 = 6;
const VM_PKT_COMP: u16 = 11;
const COMPLETION_REQUESTED: u32 = 1;

#[kunit_tests(kmcl_hv_interop)]
mod tests {
    use super::*;

    #[test]
    fn linux_send_is_read_by_kmcl() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        let id = ch.send(b"from linux", 0x77, VM_PKT_DATA_INBAND, 0)?;
        assert_eq!(id, 0x77);
        let mut buf = [0u8; 256];
        let n = host.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
        let p = packet::parse(&buf[..n], &LIMITS).map_err(|_| EIO)?;
        assert_eq!(p.kind, Kind::InBand);
        assert_eq!(p.desc.trans_id, 0x77);
        assert_eq!(&p.payload[..10], b"from linux");
        assert_eq!(p.payload.len(), 16);
        Ok(())
    }

    #[test]
    fn linux_requestor_ids_requests_that_want_a_completion() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        let a = ch.send(b"one", 0xaaaa, VM_PKT_DATA_INBAND, COMPLETION_REQUESTED)?;
        let b = ch.send(b"two", 0xbbbb, VM_PKT_DATA_INBAND, COMPLETION_REQUESTED)?;
        // The requestor hands out small ids (never 0) and remembers ours.
        assert_eq!((a, b), (1, 2));
        let mut buf = [0u8; 64];
        for want in [a, b] {
            let n = host.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
            let p = packet::parse(&buf[..n], &LIMITS).map_err(|_| EIO)?;
            assert!(p.completion_requested());
            assert_eq!(p.desc.trans_id, want);
        }
        assert_eq!(ch.request_addr(a), 0xaaaa);
        Ok(())
    }

    #[test]
    fn linux_requestor_refuses_forged_and_duplicate_ids() -> Result {
        let ch = TestChannel::new()?;
        let id = ch.send(b"req", 0x1234, VM_PKT_DATA_INBAND, COMPLETION_REQUESTED)?;
        assert_eq!(ch.request_addr(0), RQST_ERROR);
        assert_eq!(ch.request_addr(u64::from(RQSTOR) + 5), RQST_ERROR);
        assert_eq!(ch.request_addr(id + 1), RQST_ERROR);
        assert_eq!(ch.request_addr(id), 0x1234);
        // Completed once; a replay is refused.
        assert_eq!(ch.request_addr(id), RQST_ERROR);
        Ok(())
    }

    #[test]
    fn linux_completion_packet_is_parsed_by_kmcl() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        ch.send(b"done", 0x5555_0000_0001, VM_PKT_COMP, 0)?;
        let mut buf = [0u8; 64];
        let n = host.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
        let p = packet::parse(&buf[..n], &LIMITS).map_err(|_| EIO)?;
        assert_eq!(p.kind, Kind::Completion);
        assert_eq!(p.desc.trans_id, 0x5555_0000_0001);
        Ok(())
    }

    #[test]
    fn kmcl_writes_are_read_by_hv_pkt_iter() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let pkt = inband(9, 1, b"from the host")?;
        let _ = host.write(&[&pkt]).map_err(|_| EIO)?;
        let mut buf = [0u8; 256];
        let n = ch.recv_linux(&mut buf)?.ok_or(EIO)?;
        assert_eq!(&buf[..n], &pkt[..]);
        assert_eq!(ch.recv_linux(&mut buf)?, None);
        Ok(())
    }

    #[test]
    fn kmcl_receive_copies_each_packet_out_of_the_ring_once() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let first = inband(1, 0, &[0x11; 64])?;
        let second = inband(2, 0, &[0x22; 64])?;
        let _ = host.write(&[&first]).map_err(|_| EIO)?;
        let _ = host.write(&[&second]).map_err(|_| EIO)?;
        assert!(ch.pkt_buffer_is(0xee, true));
        let mut buf = [0u8; 256];
        let n = ch.recv(&mut buf)?.ok_or(EIO)?;
        assert_eq!(&buf[..n], &first[..]);
        // Straight into kmcl's buffer: neither this packet nor the next
        // (hv_pkt_iter's look-ahead) went through Linux's packet buffer.
        assert!(ch.pkt_buffer_is(0xee, false));
        let n = ch.recv(&mut buf)?.ok_or(EIO)?;
        assert_eq!(&buf[..n], &second[..]);
        assert!(ch.pkt_buffer_is(0xee, false));
        assert_eq!(ch.recv(&mut buf)?, None);
        ch.recv_close();
        assert_eq!(host.free().map_err(|_| EIO)?, DATA_SIZE);
        Ok(())
    }

    #[test]
    fn both_sides_agree_across_the_wrap() -> Result {
        let ch = TestChannel::new()?;
        let mut host_w = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let mut host_r = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        let mut buf = KVec::from_elem(0u8, 4096, GFP_KERNEL)?;
        // Enough traffic to wrap both 12 KiB rings several times.
        for i in 0..200u64 {
            let len = (i as usize * 37) % 1500;
            let payload = KVec::from_elem((i % 251) as u8, len, GFP_KERNEL)?;
            // Host to guest: kmcl writes, Linux reads, and so does the hv
            // transport, in turns.
            let pkt = inband(i, 0, &payload)?;
            let _ = host_w.write(&[&pkt]).map_err(|_| EIO)?;
            let n = if i % 2 == 0 {
                ch.recv_linux(&mut buf)?
            } else {
                ch.recv(&mut buf)?
            }
            .ok_or(EIO)?;
            assert_eq!(&buf[..n], &pkt[..]);
            ch.recv_close();
            // Guest to host: Linux writes, kmcl reads.
            let id = ch.send(&payload, i, VM_PKT_DATA_INBAND, 0)?;
            assert_eq!(id, i);
            let n = host_r.read(&mut buf).map_err(|_| EIO)?.ok_or(EIO)?;
            let p = packet::parse(&buf[..n], &LIMITS).map_err(|_| EIO)?;
            assert_eq!(&p.payload[..len], &payload[..]);
            let _ = host_r.commit();
        }
        Ok(())
    }

    #[test]
    fn hv_pkt_iter_close_returns_space_to_the_kmcl_writer() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let pkt = inband(1, 0, &[0u8; 1000])?;
        let mut written = 0;
        while host.write(&[&pkt]).is_ok() {
            written += 1;
        }
        assert!(written > 5);
        let before = host.free().map_err(|_| EIO)?;
        let mut buf = KVec::from_elem(0u8, 2048, GFP_KERNEL)?;
        // Read without closing: the read index is private to Linux until
        // hv_pkt_iter_close() publishes it.
        for _ in 0..3 {
            ch.recv(&mut buf)?.ok_or(EIO)?;
        }
        assert_eq!(host.free().map_err(|_| EIO)?, before);
        ch.recv_close();
        assert_eq!(
            host.free().map_err(|_| EIO)?,
            before + 3 * (pkt.len() as u32 + 8)
        );
        Ok(())
    }

    #[test]
    fn linux_never_fills_the_ring_completely_either() -> Result {
        let ch = TestChannel::new()?;
        let host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        let payload = [0u8; 488]; // 16 + 488 + 8 = 512 bytes a packet
        let mut n = 0u32;
        loop {
            match ch.send(&payload, 0, VM_PKT_DATA_INBAND, 0) {
                Ok(_) => n += 1,
                Err(e) => {
                    assert_eq!(e, EAGAIN);
                    break;
                }
            }
        }
        // 12 KiB holds 24 such packets exactly; one must stay unwritten.
        assert_eq!(n, DATA_SIZE / 512 - 1);
        assert_eq!(host.available().map_err(|_| EIO)?, n * 512);
        Ok(())
    }

    #[test]
    fn linux_signals_on_empty_to_non_empty_only() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        let s0 = ch.sig_events();
        ch.send(b"first", 0, VM_PKT_DATA_INBAND, 0)?;
        assert_eq!(ch.sig_events(), s0 + 1);
        ch.send(b"second", 0, VM_PKT_DATA_INBAND, 0)?;
        assert_eq!(ch.sig_events(), s0 + 1);
        // The host drains and publishes: the next write signals again.
        let mut buf = [0u8; 64];
        while host.read(&mut buf).map_err(|_| EIO)?.is_some() {}
        let _ = host.commit();
        ch.send(b"third", 0, VM_PKT_DATA_INBAND, 0)?;
        assert_eq!(ch.sig_events(), s0 + 2);
        Ok(())
    }

    #[test]
    fn linux_respects_the_kmcl_interrupt_mask() -> Result {
        let ch = TestChannel::new()?;
        let host = RingReader::new(ch.ring(false)?).map_err(|_| EIO)?;
        host.begin_read();
        let s0 = ch.sig_events();
        ch.send(b"masked", 0, VM_PKT_DATA_INBAND, 0)?;
        assert_eq!(ch.sig_events(), s0);
        // Unmasking reports the data that came meanwhile.
        assert_eq!(host.end_read(), Ok(true));
        Ok(())
    }

    #[test]
    fn kmcl_writer_signals_as_linux_expects() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let pkt = inband(1, 0, b"x")?;
        assert!(host.write(&[&pkt]).map_err(|_| EIO)?.signal);
        assert!(!host.write(&[&pkt]).map_err(|_| EIO)?.signal);
        let mut buf = [0u8; 64];
        while ch.recv(&mut buf)?.is_some() {}
        ch.recv_close();
        assert!(host.write(&[&pkt]).map_err(|_| EIO)?.signal);
        Ok(())
    }

    #[test]
    fn linux_reader_signals_the_kmcl_writer_on_pending_send_size() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let pkt = inband(1, 0, &[0u8; 1000])?;
        let needed = loop {
            match host.write(&[&pkt]) {
                Ok(_) => {}
                Err(RingError::Full { needed }) => break needed,
                Err(_) => return Err(EIO),
            }
        };
        host.set_pending_send_size(needed);
        let s0 = ch.sig_events();
        let mut buf = KVec::from_elem(0u8, 2048, GFP_KERNEL)?;
        ch.recv(&mut buf)?.ok_or(EIO)?;
        ch.recv_close();
        // Reading one packet made room for it: Linux signalled the host.
        assert_eq!(ch.sig_events(), s0 + 1);
        host.set_pending_send_size(0);
        let _ = host.write(&[&pkt]).map_err(|_| EIO)?;
        Ok(())
    }

    #[test]
    fn linux_reader_signals_the_kmcl_writer_exactly_when_its_write_fits() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let small = inband(1, 0, &[0u8; 40])?; // 64 bytes with the trailer
        let big = inband(2, 0, &[0u8; 232])?; // 256 bytes with the trailer
        while host.write(&[&small]).is_ok() {}
        let Err(RingError::Full { needed }) = host.write(&[&big]) else {
            return Err(EIO);
        };
        host.set_pending_send_size(needed);
        let mut buf = [0u8; 128];
        // Free space after each read: 128, 192, 256 (exactly the packet:
        // still no room, so no signal), 320 (room: one signal).
        for expect in [false, false, false, true] {
            let s0 = ch.sig_events();
            ch.recv(&mut buf)?.ok_or(EIO)?;
            ch.recv_close();
            assert_eq!(ch.sig_events() - s0, u64::from(expect));
            assert_eq!(host.write(&[&big]).is_ok(), expect);
        }
        host.set_pending_send_size(0);
        Ok(())
    }

    #[test]
    fn malformed_lengths_are_refused_on_both_paths() -> Result {
        let ch = TestChannel::new()?;
        let mut host = RingWriter::new(ch.ring(true)?).map_err(|_| EIO)?;
        let mut pkt = inband(1, 0, &[0u8; 16])?;
        let mut d = Descriptor::decode(pkt[..16].try_into().map_err(|_| EINVAL)?);
        d.len8 = 1000;
        pkt[..16].copy_from_slice(&d.encode());
        let _ = host.write(&[&pkt]).map_err(|_| EIO)?;
        // kmcl's reader refuses a length beyond what is in the ring, and so
        // does the hv transport's read, where hv_pkt_iter_first() would clamp
        // the length to what is there and hand the packet on.
        let mut reader = RingReader::new(ch.ring(true)?).map_err(|_| EIO)?;
        let mut buf = KVec::from_elem(0u8, 8192, GFP_KERNEL)?;
        assert_eq!(reader.read(&mut buf), Err(RingError::BadPacket));
        assert!(matches!(ch.recv(&mut buf), Err(e) if e == EBADMSG));
        Ok(())
    }

    // ---- The kmcl API over the hv transport. ----

    #[test]
    fn api_receives_host_packets_over_hv() -> Result {
        let (ch, rec, mut host) = hv_client()?;
        assert_eq!(ch.state(), State::Started);
        for i in 1..=3u64 {
            host.send(&ch, &inband(0, 0, &i.to_le_bytes())?)?;
        }
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 3));
        let heads = rec.heads();
        assert_eq!(&heads[..], &[1, 2, 3]);
        assert_eq!(rec.in_softirq.load(Ordering::Relaxed), 3);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_host_interrupt_during_a_drain_is_not_lost() -> Result {
        // A drain runs in kmcl's softirq work on one CPU while the host's
        // interrupt runs the channel callback on another: the callback finds
        // the ring being drained and leaves; the drain must look again.
        let holder = Arc::new(Holder::default(), GFP_KERNEL)?;
        let h = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .process_packet_callbacks(holder.clone())
            .build()?;
        let mut host = TestChannel::new()?.open(&h)?;
        let mut hits = 0;
        for i in 0..40u64 {
            let before = holder.received.load(Ordering::Relaxed);
            holder.sent.store(false, Ordering::Relaxed);
            holder.armed.store(true, Ordering::Relaxed);
            host.send(&h, &inband(0, 0, &(2 * i).to_le_bytes())?)?;
            // Asleep here, this thread wakes on the other CPU while the
            // drain is held on this one.
            if !wait_for(200, || holder.holding.load(Ordering::Acquire)) {
                continue;
            }
            let _ = host
                .writer
                .write(&[&inband(0, 0, &(2 * i + 1).to_le_bytes())?])
                .map_err(|_| EIO)?;
            crate::sys::with_bh_disabled(|| h.on_host_interrupt());
            holder.sent.store(true, Ordering::Release);
            // Counted only when the drain was still held after the interrupt.
            let held = holder.holding.load(Ordering::Acquire);
            // Both packets arrive, with no further interrupt.
            assert!(wait_for(500, || {
                holder.received.load(Ordering::Relaxed) == before + 2
            }));
            if held {
                hits += 1;
                if hits == 5 {
                    break;
                }
            }
        }
        assert!(hits > 0);
        h.disable()?;
        Ok(())
    }

    #[test]
    fn api_sends_reach_the_host_through_vmbus_sendpacket() -> Result {
        let (ch, _rec, mut host) = hv_client()?;
        harness::send(&ch, b"oneway", false)?;
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert_eq!(pk.kind, Kind::InBand);
        assert!(!pk.completion_requested());
        assert!(harness::padded_eq(pk.payload, b"oneway"));
        harness::send(&ch, b"request", true)?;
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert!(pk.completion_requested());
        // The requestor's id, not kmcl's generation-tagged one.
        assert_eq!(pk.desc.trans_id, 1);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_completion_is_matched_through_the_requestor() -> Result {
        let done = Done::new()?;
        let (ch, _rec, mut host) = hv_client()?;
        harness::send_recorded(&ch, b"question", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        let p = host.next()?;
        let wire = packet::parse(&p, &LIMITS).map_err(|_| EIO)?.desc.trans_id;
        host.send(&ch, &completion_bytes(wire, b"answer!!"))?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        assert_eq!(done.ok.load(Ordering::Relaxed), 1);
        assert_eq!(
            done.resp_head.load(Ordering::Relaxed),
            u64::from_le_bytes(*b"answer!!")
        );
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_refuses_forged_and_replayed_wire_ids() -> Result {
        let done = Done::new()?;
        let (ch, _rec, mut host) = hv_client()?;
        harness::send_recorded(&ch, b"q", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        let p = host.next()?;
        let wire = packet::parse(&p, &LIMITS).map_err(|_| EIO)?.desc.trans_id;
        for bad in [0, wire + 1, u64::from(RQSTOR) + 3] {
            host.send(&ch, &completion_bytes(bad, b""))?;
        }
        assert!(wait_for(2000, || ch
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 3));
        host.send(&ch, &completion_bytes(wire, b""))?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        host.send(&ch, &completion_bytes(wire, b""))?;
        assert!(wait_for(2000, || ch
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 4));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_completes_host_requests() -> Result {
        let (ch, rec, mut host) = hv_client()?;
        rec.mode.store(mode::ECHO, Ordering::Relaxed);
        host.send(&ch, &inband(0x99, 1, b"echo me!")?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        let mut got = None;
        assert!(wait_for(2000, || {
            got = host.next().ok();
            got.is_some()
        }));
        let p = got.ok_or(EIO)?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert_eq!(pk.kind, Kind::Completion);
        assert_eq!(pk.desc.trans_id, 0x99);
        assert_eq!(pk.payload, b"echo me!");
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_queues_on_a_full_ring_and_resumes_on_interrupt() -> Result {
        let done = Done::new()?;
        let (ch, _rec, mut host) = hv_client()?;
        let mut buf = [0u8; 1000];
        let mut sent = 0u64;
        while ch.stats.ring_full.load(Ordering::Relaxed) == 0 && sent < 40 {
            sent += 1;
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            harness::send_recorded(&ch, &buf, SendFlags::NONE, &done)?;
        }
        // Three more go to the send queue behind the full ring.
        for _ in 0..3 {
            sent += 1;
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            harness::send_recorded(&ch, &buf, SendFlags::NONE, &done)?;
        }
        // The size the queued packet takes in the ring, as Linux's writers
        // store it: 16 + 1000 + 8 bytes.
        assert_eq!(host.outbound_pending(), 1024);
        let mut seen = 0u64;
        while seen < sent {
            match host.next() {
                Ok(p) => {
                    let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
                    let mut h = [0u8; 8];
                    h.copy_from_slice(&pk.payload[..8]);
                    seen += 1;
                    assert_eq!(u64::from_le_bytes(h), seen);
                }
                // Drained: the host interrupts the guest for the space.
                Err(_) => {
                    ch.interrupt();
                    kernel::time::delay::fsleep(Delta::from_millis(2));
                }
            }
        }
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == sent as u32));
        assert!(done.order.1.load(Ordering::Relaxed));
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_refuses_a_packet_linux_would_clamp() -> Result {
        let (ch, rec, mut host) = hv_client()?;
        let mut pkt = inband(0, 0, &[0u8; 16])?;
        let mut d = Descriptor::decode(pkt[..16].try_into().map_err(|_| EINVAL)?);
        d.len8 = 1000;
        pkt[..16].copy_from_slice(&d.encode());
        host.send(&ch, &pkt)?;
        assert!(wait_for(2000, || ch.rxc.failed()));
        assert_eq!(rec.received.load(Ordering::Relaxed), 0);
        assert_eq!(ch.stats.malformed_packets.load(Ordering::Relaxed), 1);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_synchronous_request_over_hv() -> Result {
        let (ch, _rec, mut host) = hv_client()?;
        let result = Arc::new(AtomicI32::new(i32::MIN), GFP_KERNEL)?;
        let (c2, r2) = (ch.arc(), result.clone());
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let mut resp = [0u8; 8];
            let r = c2.send_synchronous_request(
                b"sync",
                SendFlags::WAIT_FOR_COMPLETION,
                &mut resp,
                Some(Delta::from_millis(5000)),
            );
            r2.store(
                match r {
                    Ok(n) if resp[..n] == *b"synced!!" => n as i32,
                    Ok(_) => -1000,
                    Err(e) => e.to_errno(),
                },
                Ordering::Relaxed,
            );
        })?;
        let mut req = None;
        assert!(wait_for(2000, || {
            req = host.next().ok();
            req.is_some()
        }));
        let wire = packet::parse(&req.ok_or(EIO)?, &LIMITS)
            .map_err(|_| EIO)?
            .desc
            .trans_id;
        host.send(&ch, &completion_bytes(wire, b"synced!!"))?;
        assert!(wait_for(3000, || result.load(Ordering::Relaxed) != i32::MIN));
        assert_eq!(result.load(Ordering::Relaxed), 8);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_disable_cancels_outstanding_sends_once() -> Result {
        let done = Done::new()?;
        let (ch, rec, _host) = hv_client()?;
        for _ in 0..2 {
            harness::send_recorded(
                &ch,
                b"never answered",
                SendFlags::WAIT_FOR_COMPLETION,
                &done,
            )?;
        }
        ch.disable()?;
        assert_eq!(done.count.load(Ordering::Relaxed), 2);
        assert_eq!(done.cancelled.load(Ordering::Relaxed), 2);
        assert_eq!(rec.count(Ev::Closed), 1);
        Ok(())
    }

    #[test]
    fn api_external_pfns_reach_the_host_as_gpa_direct() -> Result {
        let done = Done::new()?;
        let (ch, _rec, mut host) = hv_client()?;
        let pfns = [0x1234u64, 0x1235];
        let range = crate::channel::outgoing::ExternalRange {
            byte_count: 5000,
            byte_offset: 96,
            pfns: &pfns,
        };
        let pkt = harness::recorded_packet(&ch, &done)?;
        pkt.send_with_external_pfns(b"gpa", &[range], SendFlags::WAIT_FOR_COMPLETION)
            .map_err(|e| e.error)?;
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        let Kind::GpaDirect(ranges) = pk.kind else {
            return Err(EINVAL);
        };
        assert!(pk.completion_requested());
        assert!(harness::padded_eq(pk.payload, b"gpa"));
        let r = ranges.iter().next().ok_or(EINVAL)?;
        assert_eq!((r.byte_count, r.byte_offset, r.pfn_count()), (5000, 96, 2));
        assert_eq!((r.pfn(0), r.pfn(1)), (Some(0x1234), Some(0x1235)));
        host.send(&ch, &completion_bytes(pk.desc.trans_id, b""))?;
        assert!(wait_for(2000, || done.count.load(Ordering::Relaxed) == 1));
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn api_zero_timeout_send_over_hv_takes_any_size() -> Result {
        let (ch, _rec, mut host) = hv_client()?;
        let data = KVec::from_elem(0x5au8, 1001, GFP_KERNEL)?;
        let r = crate::sys::with_bh_disabled(|| {
            ch.send_synchronous_request(
                &data,
                SendFlags::NONE,
                &mut [],
                Some(Delta::from_millis(0)),
            )
        });
        assert_eq!(r, Ok(0));
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert!(harness::padded_eq(pk.payload, &data));
        ch.disable()?;
        Ok(())
    }
}
