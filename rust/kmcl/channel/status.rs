// SPDX-License-Identifier: GPL-2.0

//! What a channel shows of itself: its counters ([`Counters`]) and the
//! per-channel debugfs file `/sys/kernel/debug/kmcl/<id>-<name>` (state,
//! ring fill, outstanding work, quota stalls and signals), published when
//! the channel is enabled through its handle.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicU64,
        Ordering, //
    },
};

use kernel::{
    prelude::*,
    seq_file::SeqFile,
    seq_print,
    str::CString,
    sync::Arc, //
};

use super::{
    Channel,
    ChannelHandle, //
};
use crate::{
    sys,
    transport::{
        RecvLink,
        SendLink, //
    },
};

mod ffi {
    use kernel::prelude::*;

    extern "C" {
        pub(super) fn kmcl_debugfs_add(name: *const c_char, data: *mut c_void) -> *mut c_void;
        pub(super) fn kmcl_debugfs_remove(d: *mut c_void);
    }
}

/// A channel's debugfs file; removed when dropped.
///
/// # Invariants
///
/// `dentry` is the file created with `data` = `Arc::into_raw(chan)`; the
/// reference is given back after the file is removed.
pub(crate) struct StatusFile {
    dentry: NonNull<c_void>,
    chan: *const Channel,
}

// SAFETY: the handle only removes the file and drops an `Arc<Channel>`, both
// allowed from any thread.
unsafe impl Send for StatusFile {}
// SAFETY: `&StatusFile` exposes nothing.
unsafe impl Sync for StatusFile {}

impl StatusFile {
    pub(crate) fn new(chan: Arc<Channel>) -> Option<Self> {
        let fname = chan.friendly_name();
        let n = match fname.as_str() {
            "" => "channel",
            n => n,
        };
        let name = CString::try_from_fmt(fmt!("{}-{}", chan.id(), n)).ok()?;
        let raw = Arc::into_raw(chan);
        // SAFETY: `name` is NUL-terminated; `raw` stays valid until `drop`.
        let d = unsafe { ffi::kmcl_debugfs_add(name.as_char_ptr(), raw.cast_mut().cast()) };
        match NonNull::new(d) {
            Some(dentry) => Some(Self { dentry, chan: raw }),
            None => {
                // SAFETY: `raw` came from `Arc::into_raw` above and was not shared.
                drop(unsafe { Arc::from_raw(raw) });
                None
            }
        }
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        // SAFETY: by the invariant `dentry` is ours; after removal no reader
        // can reach `chan`, so the reference can be dropped.
        unsafe {
            ffi::kmcl_debugfs_remove(self.dentry.as_ptr());
            drop(Arc::from_raw(self.chan));
        }
    }
}

/// The seq_file show callback of a status file.
///
/// # Safety
///
/// `m` is a live seq_file and `data` the `Channel` pointer the file was made with.
#[no_mangle]
pub(crate) unsafe extern "C" fn kmcl_status_show(
    m: *mut kernel::bindings::seq_file,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the caller passes the seq_file being shown.
    let m = unsafe { SeqFile::from_raw(m) };
    // SAFETY: the file holds a reference to the channel until it is removed,
    // and removal waits for this callback to return.
    let chan = unsafe { &*data.cast::<Channel>() };
    chan.write_status_seq(m);
    0
}

/// Sends formatted text to a seq_file.
struct SeqWriter<'a>(&'a SeqFile);

impl core::fmt::Write for SeqWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        seq_print!(self.0, "{}", s);
        Ok(())
    }
}

impl Channel {
    fn write_status_seq(&self, m: &SeqFile) {
        let _ = self.write_status(&mut SeqWriter(m));
    }

    /// Writes the channel's status, as its debugfs file shows it.
    ///
    /// Context: any context.
    pub fn write_status(&self, w: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let now = sys::jiffies();
        let (state, endpoint, fill, rx, tx, oldest, quota, ids) = {
            // One moment for all three: the locks nest in their order.
            let g = self.inner.lock();
            let r = self.rx.lock();
            let t = self.tx.lock();
            // A drain holds the receive half of the link while it runs.
            let fill = (
                t.link.as_ref().map(|w| w.fill()),
                r.link.as_ref().map(|rd| rd.fill()),
                r.delivering,
            );
            (
                g.state,
                self.endpoint(),
                fill,
                (
                    self.rxc.outstanding(),
                    r.in_use(),
                    r.slots(),
                    self.rxc.failed(),
                    r.passive,
                ),
                t.outstanding(),
                t.oldest(now),
                self.rxc.quota.load(core::sync::atomic::Ordering::Relaxed),
                (g.cfg.target_type, g.cfg.target_instance),
            )
        };
        let s = &self.stats;
        writeln!(w, "endpoint: {:?}", endpoint)?;
        writeln!(w, "state: {:?}", state)?;
        writeln!(w, "interface_type: {}", ids.0)?;
        if let Some(inst) = ids.1 {
            writeln!(w, "interface_instance: {}", inst)?;
        }
        match fill.0 {
            Some((used, size)) => writeln!(w, "ring_out: {}/{} bytes", used, size)?,
            None => writeln!(w, "ring_out: -")?,
        }
        match fill {
            (_, Some((used, size)), _) => writeln!(w, "ring_in: {}/{} bytes", used, size)?,
            (Some(_), None, true) => writeln!(w, "ring_in: being drained")?,
            _ => writeln!(w, "ring_in: -")?,
        }
        writeln!(w, "incoming_outstanding: {}", rx.0)?;
        writeln!(w, "incoming_slots_in_use: {}/{}", rx.1, rx.2)?;
        writeln!(w, "incoming_failed: {}", rx.3)?;
        writeln!(w, "incoming_passive: {}", rx.4)?;
        if quota == u32::MAX {
            writeln!(w, "transaction_quota: none")?;
        } else {
            writeln!(w, "transaction_quota: {}", quota)?;
        }
        writeln!(w, "outgoing_in_flight: {}", tx.0)?;
        writeln!(w, "outgoing_queued: {}", tx.1)?;
        writeln!(w, "oldest_transaction_jiffies: {}", oldest)?;
        let c = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (name, v) in [
            ("packets_sent", &s.packets_sent),
            ("packets_received", &s.packets_received),
            ("completions_sent", &s.completions_sent),
            ("completions_received", &s.completions_received),
            ("signals_sent", &s.signals_sent),
            ("interrupts", &s.interrupts),
            ("quota_stalls", &s.quota_stalls),
            ("ring_full", &s.ring_full),
            ("rejected_completions", &s.rejected_completions),
            ("malformed_packets", &s.malformed_packets),
        ] {
            writeln!(w, "{}: {}", name, c(v))?;
        }
        Ok(())
    }
}

/// Counters shown in debugfs.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) packets_received: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) completions_received: AtomicU64,
    pub(crate) completions_sent: AtomicU64,
    pub(crate) signals_sent: AtomicU64,
    pub(crate) interrupts: AtomicU64,
    pub(crate) quota_stalls: AtomicU64,
    pub(crate) ring_full: AtomicU64,
    pub(crate) rejected_completions: AtomicU64,
    pub(crate) malformed_packets: AtomicU64,
}

/// A channel's counters, read at one moment (`Channel::counters`). Each is
/// counted since the channel was allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data packets delivered to ProcessPacket.
    pub packets_received: u64,
    /// Packets written to the ring (sends, in-band replies).
    pub packets_sent: u64,
    /// Completion packets received for this channel's transactions.
    pub completions_received: u64,
    /// Completion packets sent for the peer's transactions.
    pub completions_sent: u64,
    /// Signals sent to the peer.
    pub signals_sent: u64,
    /// Interrupts from the peer.
    pub interrupts: u64,
    /// Times delivery stalled on the quota or on incoming slots.
    pub quota_stalls: u64,
    /// Times a write found the ring full.
    pub ring_full: u64,
    /// Completions refused as unknown, stale or duplicate.
    pub rejected_completions: u64,
    /// Packets from the peer refused as malformed (each stops the queue).
    pub malformed_packets: u64,
}

impl Channel {
    /// The channel's counters.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn counters(&self) -> Counters {
        let c = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            packets_received: get(&c.packets_received),
            packets_sent: get(&c.packets_sent),
            completions_received: get(&c.completions_received),
            completions_sent: get(&c.completions_sent),
            signals_sent: get(&c.signals_sent),
            interrupts: get(&c.interrupts),
            quota_stalls: get(&c.quota_stalls),
            ring_full: get(&c.ring_full),
            rejected_completions: get(&c.rejected_completions),
            malformed_packets: get(&c.malformed_packets),
        }
    }
}

/// Status of the channel for observability; see [`StatusFile`].
fn attach_status(handle: &mut ChannelHandle) {
    if handle.status.is_none() {
        *handle.status = StatusFile::new(Arc::clone(&handle.chan));
    }
}

impl ChannelHandle {
    /// Enables the channel and publishes its debugfs status, see
    /// [`Channel::enable`].
    ///
    /// Context: process context only, as [`Channel::enable`], whose refusals it
    /// shares; it also creates the debugfs file.
    #[doc(alias = "VmbChannelEnable")]
    pub fn enable(&mut self) -> Result {
        self.chan.enable()?;
        attach_status(self);
        Ok(())
    }
}
