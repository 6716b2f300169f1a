// SPDX-License-Identifier: GPL-2.0

//! A bound VMBus device and its primary channel.

use core::{
    marker::PhantomData,
    ptr::NonNull, //
};

use kernel::{
    device,
    sync::aref::AlwaysRefCounted,
    types::Opaque, //
};

use crate::wire::guid::Guid;

use super::ffi;

/// A VMBus device (`struct hv_device`).
///
/// `Ctx` is the [`device::DeviceContext`] of the reference, as for the
/// kernel's own buses: [`device::Core`] in [`Driver::probe`](super::Driver::probe),
/// [`Driver::unbind`](super::Driver::unbind) and [`Driver::shutdown`](super::Driver::shutdown), [`device::Bound`] in
/// [`Driver::suspend`](super::Driver::suspend) and [`Driver::resume`](super::Driver::resume), [`device::Normal`] elsewhere.
///
/// # Invariants
///
/// A `&Device<Ctx>` always points to a live `struct hv_device` whose embedded
/// `struct device` has a non-zero reference count for the lifetime of the
/// borrow, and the guarantees of `Ctx` hold for that lifetime.
#[repr(transparent)]
pub struct Device<Ctx: device::DeviceContext = device::Normal>(
    Opaque<ffi::HvDevice>,
    PhantomData<Ctx>,
);

impl<Ctx: device::DeviceContext> Device<Ctx> {
    /// Borrows a `Device` from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a live `struct hv_device` that stays alive for `'a`,
    /// and the guarantees of `Ctx` must hold for `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut ffi::HvDevice) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper; validity is the caller's promise.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_raw(&self) -> *mut ffi::HvDevice {
        self.0.get()
    }

    /// MMIO space the host's offer asks for, in MiB.
    pub fn offer_mmio_megabytes(&self) -> u32 {
        // SAFETY: `self` is a live `hv_device` by the type invariant.
        unsafe { ffi::kmcl_hv_device_offer_mmio_mb(self.as_raw()) }
    }

    /// The interface type (class) GUID of the offer this device represents.
    pub fn class_id(&self) -> Guid {
        self.ids().0
    }

    /// The interface instance GUID of the offer this device represents.
    pub fn instance_id(&self) -> Guid {
        self.ids().1
    }

    fn ids(&self) -> (Guid, Guid) {
        let mut ty = Guid::NULL;
        let mut instance = Guid::NULL;
        // SAFETY: `self` is a live `hv_device` by the type invariant; the helper
        // writes 16 bytes to each of two valid locations.
        unsafe { ffi::kmcl_hv_device_ids(self.as_raw(), &mut ty, &mut instance) };
        (ty, instance)
    }

    /// The primary channel of the device.
    pub fn channel(&self) -> Option<&Channel> {
        // SAFETY: `self` is a live `hv_device` by the type invariant.
        let chan = unsafe { ffi::kmcl_hv_device_channel(self.as_raw()) };
        // SAFETY: the primary channel lives at least as long as the device.
        NonNull::new(chan).map(|c| unsafe { Channel::from_raw(c.as_ptr()) })
    }
}

// SAFETY: `Device` is a transparent wrapper of a type that does not depend on
// its context argument.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

impl<Ctx: device::DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: `self` is a live `hv_device` by the type invariant.
        let dev = unsafe { ffi::kmcl_hv_device_dev(self.as_raw()) };
        // SAFETY: the embedded `struct device` lives as long as the `hv_device`;
        // its reference count is non-zero and `Ctx` holds while `self` is
        // borrowed, by the type invariant.
        unsafe { device::Device::from_raw(dev.cast()) }
    }
}

// SAFETY: the reference count of a `hv_device` is that of its embedded
// `struct device`, which `device::Device` counts.
unsafe impl AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        let dev: &device::Device = self.as_ref();
        dev.inc_ref();
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: `obj` is a live device by the caller's promise.
        let dev = unsafe { ffi::kmcl_hv_device_dev(obj.as_ptr().cast()) };
        // SAFETY: `dev` is non-null (embedded in a live device), and the caller
        // gives up the reference it held.
        unsafe { device::Device::dec_ref(NonNull::new_unchecked(dev.cast())) };
    }
}

// SAFETY: what a `Device` offers reads fields `hv_vmbus` sets before the
// device is added, or reads them with `READ_ONCE`; its reference count may be
// dropped from any thread, as that of any `struct device`.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

/// A VMBus channel (`struct vmbus_channel`) owned by `hv_vmbus`.
///
/// # Invariants
///
/// A `&Channel` always points to a live `struct vmbus_channel`.
#[repr(transparent)]
pub struct Channel(ffi::VmbusChannel);

impl Channel {
    /// Borrows a `Channel` from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a live `struct vmbus_channel` that stays alive for `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut ffi::VmbusChannel) -> &'a Self {
        // SAFETY: `Channel` is a transparent wrapper; validity is the caller's promise.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_raw(&self) -> *mut ffi::VmbusChannel {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    /// The interface type and instance GUIDs of the channel's offer.
    pub fn offer_ids(&self) -> (Guid, Guid) {
        let mut ty = Guid::NULL;
        let mut instance = Guid::NULL;
        // SAFETY: `self` is live by the type invariant; both out-pointers are valid.
        unsafe { ffi::kmcl_vmbus_channel_offer_ids(self.as_raw(), &mut ty, &mut instance) };
        (ty, instance)
    }

    /// Whether the host has rescinded the channel.
    pub fn is_rescinded(&self) -> bool {
        // SAFETY: `self` is live by the type invariant.
        unsafe { ffi::kmcl_vmbus_channel_rescinded(self.as_raw()) }
    }
}
