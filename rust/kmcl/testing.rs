// SPDX-License-Identifier: GPL-2.0

//! Test-only entry points for modules built on kmcl: the benchmark of
//! `make bench` puts the API on a `vmbus_channel` it built in memory, as
//! kmcl's own hv interop suites do. Built only with `CONFIG_KUNIT`, like
//! those suites; no driver may use it.

use core::ptr::NonNull;

use kernel::prelude::*;

use crate::channel::Channel;

pub use crate::vmbus::ffi::VmbusChannel;

/// The ring format alone, for measuring kmcl's ring code without a channel.
pub mod ring {
    pub use crate::wire::ring::{
        RingError,
        RingMemory,
        RingReader,
        RingWriter,
        CONTROL_SIZE, //
    };
}

/// Packet descriptors, for writing packets into a [`ring`] by hand.
pub mod packet {
    pub use crate::wire::packet::{
        align8,
        encode_simple,
        Descriptor,
        DESCRIPTOR_SIZE,
        TYPE_COMPLETION,
        TYPE_DATA_INBAND, //
    };
}

/// Frees a `vmbus_channel` the caller built, when the kmcl channel on it
/// closes.
pub type Release = unsafe extern "C" fn(*mut VmbusChannel);

/// Opens `channel` on `raw`, a `vmbus_channel` that is open already (rings,
/// packet buffer and requestor set up, no channel callback): the
/// preallocations of an Enable, then Opened, Started and PostStarted, in the
/// caller's thread. The channel must be configured and not enabled.
///
/// Nothing calls kmcl when the host writes to the ring: the caller does, with
/// [`host_interrupt`].
///
/// # Safety
///
/// `raw` must stay valid and open until the kmcl channel is disabled, which
/// calls `release` (when given) on it, once; nothing else may use its rings'
/// guest ends meanwhile.
pub unsafe fn open_on_hv(
    channel: &Channel,
    raw: NonNull<VmbusChannel>,
    release: Option<Release>,
) -> Result {
    // SAFETY: the caller's promise is the one `open_on_hv` asks for.
    unsafe { channel.open_on_hv(raw, release) }
}

/// The host's interrupt on a channel opened with [`open_on_hv`]: what the
/// channel callback of `vmbus_open()` does in hv_vmbus's tasklet (flush the
/// send queue, drain the ring). Call it with bottom halves disabled, where
/// that tasklet would run.
pub fn host_interrupt(channel: &Channel) {
    channel.on_host_interrupt();
}
