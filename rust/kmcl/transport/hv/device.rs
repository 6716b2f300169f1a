// SPDX-License-Identifier: GPL-2.0

//! A VMBus device bound to kmcl, and the memory state of its open channel.

use core::ptr::NonNull;

use kernel::{
    new_mutex,
    prelude::*,
    sync::{
        Arc,
        Mutex, //
    },
};

use super::Ops;
use crate::{
    vmbus::{
        self,
        ffi::{
            HvDevice as RawDevice,
            VmbusChannel, //
        },
    },
    wire::guid::Guid,
};

/// A VMBus device bound to kmcl: one offer of the host.
///
/// # Invariants
///
/// Until the bus has run [`HvBus::remove`] for it, `raw` and `chan` point to
/// the live `hv_device` and its primary channel. After that kmcl does not
/// touch them: every user goes through [`HvDevice::memory`], whose `open`
/// flag is cleared before the device goes.
#[pin_data]
pub(crate) struct HvDevice {
    pub(super) raw: NonNull<RawDevice>,
    pub(super) chan: NonNull<VmbusChannel>,
    pub(super) class: Guid,
    pub(super) instance: Guid,
    pub(super) mmio_bytes: u64,
    pub(crate) ops: &'static Ops,
    /// Memory shared with the host while the channel is open.
    #[pin]
    pub(crate) memory: Mutex<DeviceMemory>,
}

// SAFETY: the device is only reached through `hv_vmbus`'s functions, which
// take its locks; kmcl's own state in it is under `memory`.
unsafe impl Send for HvDevice {}
// SAFETY: as above.
unsafe impl Sync for HvDevice {}

/// GPADLs and MMIO of an open device channel, torn down before it closes.
pub(crate) struct DeviceMemory {
    /// The channel is open: GPADLs may be created.
    pub(crate) open: bool,
    /// Live GPADLs (`struct vmbus_gpadl` addresses).
    pub(crate) gpadls: KVec<usize>,
    /// The MMIO range allocated for the channel's user, if any.
    pub(crate) mmio_start: Option<u64>,
    /// Counts the opens: a request made for one open is refused on another.
    pub(crate) epoch: u64,
}

impl HvDevice {
    pub(super) fn new(dev: &vmbus::Device, ops: &'static Ops) -> Result<Arc<Self>> {
        let chan = dev.channel().ok_or(ENODEV)?;
        let raw = NonNull::new(dev.as_raw()).ok_or(EINVAL)?;
        let chan = NonNull::new(chan.as_raw()).ok_or(EINVAL)?;
        Arc::pin_init(
            try_pin_init!(HvDevice {
                raw,
                chan,
                class: dev.class_id(),
                instance: dev.instance_id(),
                mmio_bytes: u64::from(dev.offer_mmio_megabytes()) << 20,
                ops,
                memory <- new_mutex!(DeviceMemory {
                    open: false,
                    gpadls: KVec::new(),
                    mmio_start: None,
                    epoch: 0,
                }, "kmcl::HvDevice::memory"),
            }),
            GFP_KERNEL,
        )
    }

    /// The device's primary channel. Valid while `memory.open` is set.
    pub(crate) fn channel(&self) -> *mut VmbusChannel {
        self.chan.as_ptr()
    }

    /// The `hv_device`. Valid while `memory.open` is set.
    pub(crate) fn raw(&self) -> *mut RawDevice {
        self.raw.as_ptr()
    }

    /// Bytes of MMIO space the host's offer asks for.
    pub(crate) fn mmio_bytes(&self) -> u64 {
        self.mmio_bytes
    }

    pub(super) fn matches(&self, class: &Guid, instance: &Option<Guid>) -> bool {
        self.class == *class && instance.is_none_or(|i| i == self.instance)
    }

    /// Whether the host rescinded the offer; its removal follows. Valid
    /// while the device is on the bus.
    pub(super) fn rescinded(&self) -> bool {
        // SAFETY: the channel lives until the device's removal returns,
        // which takes it off the bus first.
        unsafe { vmbus::Channel::from_raw(self.chan.as_ptr()) }.is_rescinded()
    }

    /// Tears down what the driver left shared, before the channel closes.
    pub(super) fn release_memory(&self) {
        let mut m = self.memory.lock();
        m.open = false;
        for g in core::mem::take(&mut m.gpadls) {
            pr_warn!(
                "device {}: a GPADL outlived the channel's Closed; torn down at close\n",
                self.instance
            );
            super::memory::teardown_gpadl(self, g as *mut _);
        }
        if let Some(start) = m.mmio_start.take() {
            super::memory::free_mmio(self, start);
        }
    }
}
