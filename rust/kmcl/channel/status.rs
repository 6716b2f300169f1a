// SPDX-License-Identifier: GPL-2.0

//! The per-channel debugfs file `/sys/kernel/debug/kmcl/<id>-<name>`: state,
//! ring fill, outstanding work, quota stalls and signals.

use core::{
    ptr::NonNull,
    sync::atomic::Ordering, //
};

use kernel::{
    prelude::*,
    seq_file::SeqFile,
    seq_print,
    str::CString,
    sync::Arc, //
};

use super::Channel;
use crate::sys;

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
        let name = chan.with_friendly_name(|n| {
            let n = n.and_then(|n| n.to_str().ok()).unwrap_or("channel");
            CString::try_from_fmt(fmt!("{}-{}", chan.id(), n)).ok()
        })?;
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
pub(crate) unsafe extern "C" fn kmcl_status_show(m: *mut kernel::bindings::seq_file, data: *mut c_void) -> c_int {
    // SAFETY: the caller passes the seq_file being shown.
    let m = unsafe { SeqFile::from_raw(m) };
    // SAFETY: the file holds a reference to the channel until it is removed,
    // and removal waits for this callback to return.
    let chan = unsafe { &*data.cast::<Channel>() };
    chan.write_status(m);
    0
}

impl Channel {
    fn write_status(&self, m: &SeqFile) {
        let now = sys::jiffies();
        let (state, endpoint, fill, rx, tx, oldest, quota, ids) = {
            let g = self.inner.lock();
            (
                g.state,
                self.endpoint(),
                g.att.as_ref().map(|a| a.ring_fill()),
                (g.rx.outstanding, g.rx.in_use(), g.rx.slots(), g.rx.failed, g.rx.passive),
                g.tx.outstanding(),
                g.tx.oldest(now),
                g.rx.quota,
                (g.cfg.target_type, g.cfg.target_instance),
            )
        };
        let s = &self.stats;
        seq_print!(m, "endpoint: {:?}\nstate: {:?}\n", endpoint, state);
        seq_print!(m, "interface_type: {}\n", ids.0);
        if let Some(inst) = ids.1 {
            seq_print!(m, "interface_instance: {}\n", inst);
        }
        match fill {
            Some([(ou, os), (iu, is)]) => {
                seq_print!(m, "ring_out: {}/{} bytes\nring_in: {}/{} bytes\n", ou, os, iu, is)
            }
            None => seq_print!(m, "ring_out: -\nring_in: -\n"),
        }
        seq_print!(
            m,
            "incoming_outstanding: {}\nincoming_slots_in_use: {}/{}\nincoming_failed: {}\nincoming_passive: {}\n",
            rx.0,
            rx.1,
            rx.2,
            rx.3,
            rx.4
        );
        if quota == u32::MAX {
            seq_print!(m, "transaction_quota: none\n");
        } else {
            seq_print!(m, "transaction_quota: {}\n", quota);
        }
        seq_print!(
            m,
            "outgoing_in_flight: {}\noutgoing_queued: {}\noldest_transaction_jiffies: {}\n",
            tx.0,
            tx.1,
            oldest
        );
        let c = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        seq_print!(
            m,
            "packets_sent: {}\npackets_received: {}\ncompletions_sent: {}\ncompletions_received: {}\n",
            c(&s.packets_sent),
            c(&s.packets_received),
            c(&s.completions_sent),
            c(&s.completions_received)
        );
        seq_print!(
            m,
            "signals_sent: {}\ninterrupts: {}\nquota_stalls: {}\nring_full: {}\nrejected_completions: {}\nmalformed_packets: {}\n",
            c(&s.signals_sent),
            c(&s.interrupts),
            c(&s.quota_stalls),
            c(&s.ring_full),
            c(&s.rejected_completions),
            c(&s.malformed_packets)
        );
    }
}
