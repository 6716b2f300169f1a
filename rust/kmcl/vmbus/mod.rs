// SPDX-License-Identifier: GPL-2.0

//! Abstractions for the VMBus bus (`hv_vmbus`).
//!
//! C header: [`include/linux/hyperv.h`](srctree/include/linux/hyperv.h)
//!
//! A VMBus driver implements [`Driver`] and owns a [`Registration`] for as long
//! as it wants to be bound. The hv structures are reached through the small C
//! helper in `rust/helpers/vmbus.c`; see `Documentation/hv-bindings.rst` for
//! why kmcl uses a helper there instead of generated bindings.
//!
//! # What comes from `kernel::driver`
//!
//! The bus is built as the kernel's own buses (PCI, auxiliary, platform) are:
//!
//! - [`Adapter<T>`](registration::Adapter) implements [`kernel::driver::DriverLayout`] and
//!   [`kernel::driver::RegistrationOps`] for `struct hv_driver`, and a
//!   [`Registration`] holds a [`kernel::driver::Registration`]: the kernel's type
//!   owns the driver structure, registers it and unregisters it on drop.
//! - [`Device<Ctx>`] carries a [`kernel::device::DeviceContext`]. [`Driver::probe`],
//!   [`Driver::unbind`] and [`Driver::shutdown`] get a `&Device<Core>`: the
//!   driver core holds the device lock around them.
//! - The per-device data [`Driver::probe`] returns is stored with
//!   [`kernel::device::Device::set_drvdata`], borrowed in the other callbacks, and
//!   dropped by the driver core after unbind (the post-unbind callback that
//!   [`kernel::driver::Registration`] installs), as for every Rust bus.
//!
//! # What is kmcl's own, and why
//!
//! - The storage of `struct hv_driver` (`ffi::HvDriver`). The kernel crate
//!   has no bindings for `<linux/hyperv.h>`, so kmcl gives the structure a
//!   fixed-size, zeroed buffer that the C helper fills in; `vmbus.c` asserts
//!   at compile time that the structure fits and where its
//!   `struct device_driver` lies.
//! - Id tables built at run time ([`Registration::with_classes`]). kmcl
//!   learns the interface types it binds only when client channels target
//!   them. [`kernel::driver::Registration::new`] takes a `&'static CStr` name, and
//!   [`kernel::driver::RegistrationOps::register`] sees nothing of the registration
//!   but the driver structure, so a table and a name made at run time cannot
//!   reach it through the kernel's interface. kmcl keeps them next to the
//!   kernel's registration in one pinned allocation, whose adapter finds
//!   them there (see `ClassAdapter`). The kernel's registration still does
//!   the registering, the unregistering and the release of device data.
//! - `Option<&IdInfo>` in [`Driver::probe`]: an id given at run time (or
//!   through sysfs `new_id` or `driver_override`) carries no information, so
//!   a device can bind without an entry of [`Driver::ID_TABLE`].
//! - [`Driver::suspend`] and [`Driver::resume`]. They are callbacks of
//!   `struct hv_driver` that `hv_vmbus` runs in its hibernation (`noirq`)
//!   phases; the drivers of 7.3's Rust buses have no such callbacks. They
//!   run without the device lock, so they get a `&Device<Bound>`, not a
//!   `&Device<Core>`.
//! - [`kernel::driver::Adapter`] is not implemented: it finds match data in
//!   OF and ACPI tables, and VMBus devices have neither. VMBus ids are matched
//!   by `hv_vmbus` and looked up by class in [`Driver::ID_TABLE`].
use kernel::{
    device,
    prelude::*, //
};

use crate::wire::guid::Guid;

mod dev;
mod device_id;
mod registration;

pub(crate) use dev::{
    Channel,
    Device, //
};
pub(crate) use device_id::{
    DeviceId,
    IdTable, //
};
#[cfg(CONFIG_KUNIT)]
pub(crate) use registration::driver_ops;
pub(crate) use registration::Registration;

/// Raw C declarations of the helper in `rust/helpers/vmbus.c`.
#[doc(hidden)]
pub(crate) mod ffi {
    use kernel::prelude::*;

    use crate::wire::guid::Guid;

    /// Bytes kmcl reserves for a `struct hv_driver`; `KMCL_HV_DRIVER_SIZE` in
    /// `vmbus.h`, which `vmbus.c` checks against the kernel's structure.
    pub(crate) const HV_DRIVER_SIZE: usize = 512;

    /// Offset of the `struct device_driver` in `struct hv_driver`;
    /// `KMCL_HV_DRIVER_DRIVER_OFFSET` in `vmbus.h`, checked by `vmbus.c`.
    pub(crate) const HV_DRIVER_DRIVER_OFFSET: usize = 40;

    /// Storage for a `struct hv_driver`, which only C reads and writes.
    ///
    /// `vmbus.c` asserts that the structure fits and is no more aligned.
    #[repr(C, align(8))]
    pub(crate) struct HvDriver {
        _storage: [u8; HV_DRIVER_SIZE],
    }

    impl Default for HvDriver {
        /// A zeroed `struct hv_driver`, as a static C driver starts.
        fn default() -> Self {
            Self {
                _storage: [0; HV_DRIVER_SIZE],
            }
        }
    }

    /// Opaque `struct hv_device`.
    #[repr(C)]
    pub(crate) struct HvDevice {
        _opaque: [u8; 0],
    }

    /// Opaque `struct vmbus_channel`. Public for `kmcl::testing`, which
    /// exists only with `CONFIG_KUNIT`.
    #[repr(C)]
    #[cfg_attr(not(CONFIG_KUNIT), allow(unreachable_pub))]
    pub struct VmbusChannel {
        _opaque: [u8; 0],
    }

    /// Mirror of `struct hv_vmbus_device_id`; the helper asserts the layout.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct HvVmbusDeviceId {
        /// The class GUID in `guid_t` order.
        pub guid: [u8; 16],
        /// Driver information; kmcl stores a `&'static IdInfo` here.
        pub driver_data: usize,
    }

    /// Mirror of the helper's `struct kmcl_vmbus_driver_ops`: the callbacks
    /// the helper puts in a `struct hv_driver`.
    #[repr(C)]
    pub(crate) struct DriverOps {
        pub(crate) probe: unsafe extern "C" fn(*mut HvDevice, *const HvVmbusDeviceId) -> c_int,
        pub(crate) remove: unsafe extern "C" fn(*mut HvDevice),
        pub(crate) shutdown: unsafe extern "C" fn(*mut HvDevice),
        pub(crate) suspend: unsafe extern "C" fn(*mut HvDevice) -> c_int,
        pub(crate) resume: unsafe extern "C" fn(*mut HvDevice) -> c_int,
    }

    extern "C" {
        pub(crate) fn kmcl_vmbus_driver_register(
            drv: *mut HvDriver,
            name: *const c_char,
            ids: *const HvVmbusDeviceId,
            ops: *const DriverOps,
            owner: *mut c_void,
            mod_name: *const c_char,
        ) -> c_int;
        pub(crate) fn kmcl_vmbus_driver_unregister(drv: *mut HvDriver);
        // The driver core keeps device data itself; only the suites'
        // stand-in for its unbind reaches it directly.
        #[cfg(CONFIG_KUNIT)]
        pub(crate) fn kmcl_hv_get_drvdata(dev: *mut HvDevice) -> *mut c_void;
        #[cfg(CONFIG_KUNIT)]
        pub(crate) fn kmcl_hv_set_drvdata(dev: *mut HvDevice, data: *mut c_void);
        pub(crate) fn kmcl_hv_device_dev(dev: *mut HvDevice) -> *mut c_void;
        pub(crate) fn kmcl_hv_device_channel(dev: *mut HvDevice) -> *mut VmbusChannel;
        pub(crate) fn kmcl_hv_device_ids(dev: *mut HvDevice, ty: *mut Guid, instance: *mut Guid);
        pub(crate) fn kmcl_vmbus_channel_offer_ids(
            chan: *mut VmbusChannel,
            ty: *mut Guid,
            instance: *mut Guid,
        );
        pub(crate) fn kmcl_vmbus_channel_rescinded(chan: *mut VmbusChannel) -> bool;
        pub(crate) fn kmcl_hv_device_offer_mmio_mb(dev: *mut HvDevice) -> u32;
    }
}
// The kernel formats through its own `Display`; forward to the one of `wire`,
// which the host build shares.
impl kernel::fmt::Display for Guid {
    fn fmt(&self, f: &mut kernel::fmt::Formatter<'_>) -> kernel::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

/// The VMBus driver trait.
///
/// A driver names the interface types it binds in [`Driver::ID_TABLE`] and
/// creates its per-device data in [`Driver::probe`]. The data lives until the
/// device is unbound: [`Driver::unbind`] gets it last, and the driver core
/// drops it right after.
pub(crate) trait Driver: Send + Sync + 'static {
    /// Driver information attached to each id of the table.
    type IdInfo: Sync + 'static;

    /// Per-device data.
    type Data<'bound>: Send + Sync + 'bound;

    /// The interface types this driver binds.
    const ID_TABLE: &'static dyn IdTable<Self::IdInfo>;

    /// Binds a device. `id_info` is the information of the entry of
    /// [`Driver::ID_TABLE`] that matched; `None` when the device matched an
    /// id given at run time ([`Registration::with_classes`], or sysfs
    /// `new_id`), which carries none.
    fn probe<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        id_info: Option<&'static Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound;

    /// Unbinds a device (removal, rescind, unregistration); `this` is dropped
    /// when it returns.
    fn unbind<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The system is shutting down.
    fn shutdown<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The system is entering hibernation.
    fn suspend<'bound>(
        dev: &'bound Device<device::Bound>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }

    /// The system is back from hibernation.
    fn resume<'bound>(
        dev: &'bound Device<device::Bound>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }
}
