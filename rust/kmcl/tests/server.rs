// SPDX-License-Identifier: GPL-2.0

//! Server-side features: save and restore, and the status report.

use core::sync::atomic::{
    AtomicU32,
    AtomicUsize,
    Ordering, //
};

use kernel::{
    new_spinlock_irq,
    prelude::*,
    str::CString,
    sync::{
        Arc,
        SpinLockIrq, //
    },
};

use super::harness::{
    self,
    mode,
    wait_for,
    Done,
    Ev,
    Pair,
    Recorder, //
};
use crate::channel::{
    callbacks::SaveRestorePacket,
    outgoing::{
        Packet,
        SendFlags, //
    },
    save::{
        RestoreStatus,
        SaveStatus, //
    },
    Channel,
    Endpoint,
    State, //
};

/// Saves each packet's pointer as its driver state, and restores it.
#[pin_data]
struct PointerSaver {
    /// Buffer sizes of the save calls, in order.
    #[pin]
    calls: SpinLockIrq<KVec<usize>>,
    restored: AtomicU32,
    /// The pointer to save for every packet, instead of the packet's own.
    save_as: AtomicUsize,
}

impl PointerSaver {
    fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            try_pin_init!(PointerSaver {
                calls <- new_spinlock_irq!(KVec::with_capacity(64, GFP_KERNEL)?, "kmcl::tests::PointerSaver"),
                restored: AtomicU32::new(0),
                save_as: AtomicUsize::new(0),
            }),
            GFP_KERNEL,
        )
    }
}

impl SaveRestorePacket for PointerSaver {
    fn save_packet(
        &self,
        _channel: &Channel,
        packet: &Packet,
        buf: &mut [u8],
    ) -> Result<usize, usize> {
        let _ = self.calls.lock().push_within_capacity(buf.len());
        if buf.len() < 8 {
            return Err(8);
        }
        let ptr = match self.save_as.load(Ordering::Relaxed) {
            0 => packet.pointer(),
            p => p,
        };
        buf[..8].copy_from_slice(&(ptr as u64).to_le_bytes());
        Ok(8)
    }

    fn restore_packet(&self, _channel: &Channel, mut packet: Packet, state: &[u8]) -> Result {
        let b: [u8; 8] = state.try_into().map_err(|_| EINVAL)?;
        packet.set_pointer(u64::from_le_bytes(b) as usize);
        packet.set_completion_routine(harness::record_completion);
        self.restored.fetch_add(1, Ordering::Relaxed);
        packet.restore()
    }
}

/// Saves the paused `server` in chunks of `chunk` bytes.
fn save_in_chunks(server: &Channel, chunk: usize) -> Result<KVec<u8>> {
    let mut ctx = server.save_begin()?;
    let mut out = KVec::new();
    let mut buf = KVec::new();
    buf.resize(chunk, 0, GFP_KERNEL)?;
    loop {
        match server.save_continue(&mut ctx, &mut buf)? {
            SaveStatus::MoreData { filled } => out.extend_from_slice(&buf[..filled], GFP_KERNEL)?,
            SaveStatus::Complete { filled } => {
                out.extend_from_slice(&buf[..filled], GFP_KERNEL)?;
                break;
            }
            SaveStatus::BufferTooSmall { .. } => return Err(ENOSPC),
        }
    }
    server.save_end(ctx);
    Ok(out)
}

extern "C" {
    fn kmcl_debugfs_render(name: *const c_char, buf: *mut c_char, len: usize) -> isize;
}

/// A buffer that collects formatted text.
struct Text(KVec<u8>);

impl core::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0
            .extend_from_slice(s.as_bytes(), GFP_KERNEL)
            .map_err(|_| core::fmt::Error)
    }
}

impl Text {
    fn has(&self, needle: &str) -> bool {
        self.0.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

#[kunit_tests(kmcl_server)]
mod tests {
    use super::*;

    #[test]
    fn save_continue_reports_too_small_and_partial_buffers() -> Result {
        let p = Pair::connected()?;
        assert!(matches!(p.server.save_begin(), Err(e) if e == EINVAL));
        p.server.pause()?;
        let mut ctx = p.server.save_begin()?;
        let mut tiny = [0u8; 8];
        assert_eq!(
            p.server.save_continue(&mut ctx, &mut tiny)?,
            SaveStatus::BufferTooSmall { required: 16 }
        );
        // The header fits, the channel record behind it does not.
        let mut small = [0u8; 40];
        assert_eq!(
            p.server.save_continue(&mut ctx, &mut small)?,
            SaveStatus::MoreData { filled: 16 }
        );
        let mut rest = [0u8; 256];
        assert!(matches!(
            p.server.save_continue(&mut ctx, &mut rest)?,
            SaveStatus::Complete { .. }
        ));
        p.server.save_end(ctx);
        // Resuming abandons the save: the client sees nothing.
        p.server.start()?;
        assert_eq!(p.client.state(), State::Started);
        Ok(())
    }

    #[test]
    fn restore_refuses_bad_states_and_wrong_channels() -> Result {
        let p = Pair::connected()?;
        let rec = Recorder::new()?;
        let s2 = harness::channel(&p.bus, Endpoint::Server, &rec)?;
        assert_eq!(
            s2.restore_from_buffer(b"KMCLSAVE"),
            Ok(RestoreStatus::MoreProcessingRequired)
        );
        let s3 = harness::channel(&p.bus, Endpoint::Server, &rec)?;
        let mut junk = [0u8; 64];
        junk[..8].copy_from_slice(b"NOTSAVED");
        assert_eq!(s3.restore_from_buffer(&junk), Err(EINVAL));
        // Only a Disabled server restores.
        assert_eq!(p.server.restore_from_buffer(&junk), Err(EINVAL));
        assert_eq!(p.client.restore_from_buffer(&junk), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn save_restore_round_trip_finishes_packets_in_flight() -> Result {
        let done_old = Done::new()?;
        let done_new = Done::new()?;
        let saver = PointerSaver::new()?;
        let mut p = Pair::new(|e, b| {
            if e == Endpoint::Server {
                b.save_restore_packet_callbacks(saver.clone())
            } else {
                b
            }
        })?;
        p.up()?;
        // Three requests from the server, held by the client.
        p.crec.mode.store(mode::HOLD, Ordering::Relaxed);
        for i in 0..3u64 {
            let pkt = harness::recorded_packet(&p.server, &done_old)?;
            pkt.send(&(100 + i).to_le_bytes(), SendFlags::WAIT_FOR_COMPLETION)
                .map_err(|e| e.error)?;
        }
        assert!(wait_for(2000, || p.crec.held() == 3));
        // The restored instance records into `done_new`.
        saver
            .save_as
            .store(Done::cookie(&done_new), Ordering::Relaxed);
        p.server.pause()?;
        let state = save_in_chunks(&p.server, 64)?;
        // Two calls per packet: size query, then save.
        assert_eq!(&saver.calls.lock()[..], &[0, 8, 0, 8, 0, 8]);
        p.server.disable()?;
        // The old instance's packet objects finished, once each.
        assert_eq!(done_old.cancelled.load(Ordering::Relaxed), 3);
        assert_eq!(done_old.count.load(Ordering::Relaxed), 3);
        // The client noticed nothing.
        assert_eq!(p.client.state(), State::Started);
        assert_eq!(p.crec.count(Ev::Suspend), 0);

        let rec = Recorder::new()?;
        let mut s2 = harness::builder(&p.bus, Endpoint::Server, &rec)
            .save_restore_packet_callbacks(saver.clone())
            .build()?;
        let mut status = RestoreStatus::MoreProcessingRequired;
        for chunk in state.chunks(10) {
            status = s2.restore_from_buffer(chunk)?;
        }
        assert_eq!(status, RestoreStatus::Complete);
        s2.enable()?;
        assert!(wait_for(2000, || s2.state() == State::Started));
        assert_eq!(saver.restored.load(Ordering::Relaxed), 3);
        // The client answers now; the restored packets finish.
        p.crec.release_held();
        assert!(wait_for(2000, || done_new.count.load(Ordering::Relaxed) == 3));
        assert_eq!(done_new.ok.load(Ordering::Relaxed), 3);
        // And traffic flows to the new instance.
        harness::send(&p.client, b"to s2", false)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        p.client.disable()?;
        s2.disable()?;
        Ok(())
    }

    #[test]
    fn status_reports_state_ring_and_counters() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        p.server.set_transaction_quota(1)?;
        harness::send(&p.client, b"one", false)?;
        harness::send(&p.client, b"two", false)?;
        assert!(wait_for(2000, || p
            .server
            .stats
            .quota_stalls
            .load(Ordering::Relaxed)
            == 1));
        let mut t = Text(KVec::new());
        p.server.write_status(&mut t).map_err(|_| ENOMEM)?;
        assert!(t.has("endpoint: Server\n"));
        assert!(t.has("state: Started\n"));
        assert!(t.has("transaction_quota: 1\n"));
        assert!(t.has("incoming_outstanding: 1\n"));
        assert!(t.has("quota_stalls: 1\n"));
        assert!(t.has("packets_received: 1\n"));
        // One packet (16 + 8 + 8 bytes) is still in the client-to-server ring.
        assert!(t.has("ring_in: 32/61440 bytes\n"));
        let mut c = Text(KVec::new());
        p.client.write_status(&mut c).map_err(|_| ENOMEM)?;
        assert!(c.has("packets_sent: 2\n"));
        assert!(c.has("signals_sent: "));
        assert!(c.has("interface_instance: a7f3c6a1-1c2d-4e5f-8a9b-0c1d2e3f4a5b\n"));
        Ok(())
    }

    #[test]
    fn status_is_readable_in_debugfs() -> Result {
        let p = Pair::connected()?;
        harness::send(&p.client, b"debugfs", false)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        let name = CString::try_from_fmt(fmt!("{}-channel", p.server.id()))?;
        let mut buf = [0u8; 2048];
        // SAFETY: `name` is NUL-terminated and `buf` is writable for its length.
        let n =
            unsafe { kmcl_debugfs_render(name.as_char_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0);
        let mut v = KVec::new();
        v.extend_from_slice(&buf[..n.max(0) as usize], GFP_KERNEL)?;
        let t = Text(v);
        assert!(t.has("endpoint: Server\n"));
        assert!(t.has("packets_received: 1\n"));
        // The file goes away with the channel.
        drop(p);
        // SAFETY: as above.
        let n =
            unsafe { kmcl_debugfs_render(name.as_char_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, ENOENT.to_errno() as isize);
        Ok(())
    }
}
