// SPDX-License-Identifier: GPL-2.0

//! Sub-channels over hv: hv_vmbus hands each sub-channel offer of an open
//! primary to the callback set with `vmbus_set_sc_create_callback()`, from
//! its offer work, in process context. kmcl sets that callback when it opens
//! a device's primary channel and clears it before the close.
//!
//! The callback finds the kmcl channel of the offer's primary in a registry
//! of open primaries (a primary enters it once open and leaves it before
//! its close), and hands the offer to the channel layer, which asks the
//! driver and opens the sub-channel with `vmbus_open()` before the callback
//! returns. hv_vmbus frees a sub-channel's `vmbus_channel` on its rescind
//! only while it is not open; an open one stays until kmcl's
//! `vmbus_close()`, which the primary's teardown runs before the primary's
//! own.

use core::ptr::NonNull;

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    bus::HvBus,
    HvEndpoint,
    Ops,
    Owner, //
};
use crate::{
    channel::Channel,
    transport::{
        Attachment,
        SubOffer, //
    },
    vmbus::ffi::VmbusChannel,
};

mod ffi {
    use crate::vmbus::ffi::VmbusChannel;

    extern "C" {
        pub(super) fn kmcl_hv_set_sc_callback(
            c: *mut VmbusChannel,
            cb: Option<unsafe extern "C" fn(*mut VmbusChannel)>,
        );
        pub(super) fn kmcl_hv_sc_primary(sc: *mut VmbusChannel) -> *mut VmbusChannel;
        pub(super) fn kmcl_hv_sc_index(sc: *mut VmbusChannel) -> u16;
        pub(super) fn kmcl_hv_channel_target_cpu(c: *mut VmbusChannel) -> u32;
    }
}

/// An open primary and its kmcl channel.
struct Primary {
    raw: usize,
    chan: Arc<Channel>,
}

kernel::sync::global_lock! {
    // SAFETY: `init` runs in kmcl's module init, before any channel opens.
    unsafe(uninit) static PRIMARIES: Mutex<KVec<Primary>> = KVec::new();
}

/// Makes the registry usable. Called once, from kmcl's module init.
pub(crate) fn init() {
    // SAFETY: called once, before any other use of `PRIMARIES`.
    unsafe { PRIMARIES.init() };
}

/// A sub-channel offer of hv_vmbus.
///
/// # Invariants
///
/// `chan` is a sub-channel `vmbus_channel` that hv_vmbus keeps at least
/// until the sc-create callback that handed it over returns, and, once
/// kmcl opened it, until kmcl closes it.
pub(crate) struct HvSubOffer {
    chan: NonNull<VmbusChannel>,
}

// SAFETY: the offer is only passed to hv_vmbus's functions, which take the
// channel's own locks.
unsafe impl Send for HvSubOffer {}
// SAFETY: as above.
unsafe impl Sync for HvSubOffer {}

/// What a sub-channel's endpoint owns: the context reference that
/// `vmbus_open()` got, and how to close.
pub(crate) struct SubLease {
    ops: &'static Ops,
    ctx: *const Channel,
}

/// Opens `primary`'s device channel for sub-channel offers: `raw` is open
/// by `chan`.
///
/// # Safety
///
/// `raw` is an open primary `vmbus_channel`, valid until
/// [`primary_closing`] is called for it.
pub(super) unsafe fn primary_opened(raw: *mut VmbusChannel, chan: &Channel) {
    let entry = Primary {
        raw: raw as usize,
        chan: chan.arc(),
    };
    if PRIMARIES.lock().push(entry, GFP_KERNEL).is_err() {
        pr_warn!(
            "channel {}: no memory to accept sub-channel offers\n",
            chan.id()
        );
        return;
    }
    // SAFETY: `raw` is valid, by the function's contract.
    unsafe { ffi::kmcl_hv_set_sc_callback(raw, Some(sc_created)) };
}

/// `raw`, a primary, is about to close: no more sub-channel offers. Its
/// sub-channels were closed already (the channel's teardown closes them
/// first).
///
/// # Safety
///
/// `raw` is the live primary passed to [`primary_opened`].
pub(super) unsafe fn primary_closing(raw: *mut VmbusChannel) {
    // SAFETY: `raw` is valid, by the function's contract.
    unsafe { ffi::kmcl_hv_set_sc_callback(raw, None) };
    let gone = {
        let mut g = PRIMARIES.lock();
        let pos = g.iter().position(|p| p.raw == raw as usize);
        pos.and_then(|i| g.remove(i).ok())
    };
    drop(gone);
}

/// The sc-create callback: hv_vmbus offers a sub-channel of a primary kmcl
/// opened.
///
/// # Safety
///
/// `sc` is a sub-channel offer, valid for the duration of the call, whose
/// `primary_channel` is set.
unsafe extern "C" fn sc_created(sc: *mut VmbusChannel) {
    let Some(chan) = NonNull::new(sc) else {
        return;
    };
    // SAFETY: `sc` is valid for this call.
    let (primary, index) = unsafe { (ffi::kmcl_hv_sc_primary(sc), ffi::kmcl_hv_sc_index(sc)) };
    let found = PRIMARIES
        .lock()
        .iter()
        .find(|p| p.raw == primary as usize)
        .map(|p| p.chan.clone());
    let Some(primary) = found else {
        // Closed meanwhile: the offer stays unopened.
        return;
    };
    if index == 0 {
        return;
    }
    // INVARIANT: hv_vmbus frees no offer before this callback returns, and
    // no open one before its close.
    let offer = SubOffer::Hv(HvSubOffer { chan });
    if let Err(e) = primary.subchannel_offered(offer, index) {
        pr_info!(
            "channel {}: sub-channel {} not opened ({:?})\n",
            primary.id(),
            index,
            e
        );
    }
}

impl HvBus {
    /// Opens a client sub-channel on the offer it was handed: `Ok(true)`
    /// once attached. `ENODEV` when its offer is gone (taken by an earlier
    /// open, or the offer callback returned).
    pub(crate) fn open_sub(&self, chan: &Channel) -> Result<bool> {
        let Some(SubOffer::Hv(offer)) = chan.take_subchannel_offer() else {
            return Err(ENODEV);
        };
        let raw = offer.chan.as_ptr();
        let p = chan.hv_open_params();
        let ctx = Arc::into_raw(chan.arc());
        // SAFETY: the offer is valid (its invariant) and not open.
        unsafe { super::memory::ffi::kmcl_hv_prepare_open(raw, p.max_pkt, p.rqstor) };
        // SAFETY: as above; `ctx` stays a valid channel reference until the
        // lease takes it back after the close.
        let r = unsafe {
            (self.ops.open)(
                raw,
                p.ring_pages,
                Some(super::bus::on_channel_callback),
                ctx.cast_mut().cast(),
            )
        };
        if let Err(e) = kernel::error::to_result(r) {
            // SAFETY: closing after a failed open only resets the callback.
            unsafe {
                (self.ops.close)(raw);
                super::memory::ffi::kmcl_hv_forget_settings(raw);
            }
            // SAFETY: no callback runs with `ctx` any more.
            drop(unsafe { Arc::from_raw(ctx) });
            return Err(e);
        }
        let lease = SubLease { ops: self.ops, ctx };
        // SAFETY: the sub-channel is open; hv_vmbus keeps it until the
        // lease's close (the offer's invariant).
        let ep = unsafe { HvEndpoint::new(offer.chan, Owner::Sub(lease)) };
        if let Err((_, att)) = chan.attach_or_return(Attachment::Hv(ep)) {
            // Disabled meanwhile.
            att.close(chan);
            return Ok(false);
        }
        Ok(true)
    }
}

impl SubLease {
    /// Closes the sub-channel `raw` that this lease opened.
    pub(super) fn close(self, raw: *mut VmbusChannel) {
        // SAFETY: `raw` is open by this lease; after the close Linux runs no
        // callback with `ctx`, and the channel gets hv_vmbus's settings back.
        unsafe {
            (self.ops.close)(raw);
            super::memory::ffi::kmcl_hv_forget_settings(raw);
        }
        // SAFETY: `ctx` came from `Arc::into_raw` in `open_sub`.
        drop(unsafe { Arc::from_raw(self.ctx) });
    }
}

/// The CPU the host interrupts for the open channel `raw`.
///
/// # Safety
///
/// `raw` is an open `vmbus_channel`.
pub(super) unsafe fn target_cpu(raw: *mut VmbusChannel) -> u32 {
    // SAFETY: by the function's contract.
    unsafe { ffi::kmcl_hv_channel_target_cpu(raw) }
}
