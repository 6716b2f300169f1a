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
//! - [`Adapter<T>`] implements [`driver::DriverLayout`] and
//!   [`driver::RegistrationOps`] for `struct hv_driver`, and a
//!   [`Registration`] holds a [`driver::Registration`]: the kernel's type
//!   owns the driver structure, registers it and unregisters it on drop.
//! - [`Device<Ctx>`] carries a [`device::DeviceContext`]. [`Driver::probe`],
//!   [`Driver::unbind`] and [`Driver::shutdown`] get a `&Device<Core>`: the
//!   driver core holds the device lock around them.
//! - The per-device data [`Driver::probe`] returns is stored with
//!   [`device::Device::set_drvdata`], borrowed in the other callbacks, and
//!   dropped by the driver core after unbind (the post-unbind callback that
//!   [`driver::Registration`] installs), as for every Rust bus.
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
//!   them. [`driver::Registration::new`] takes a `&'static CStr` name, and
//!   [`driver::RegistrationOps::register`] sees nothing of the registration
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

use core::{
    marker::PhantomData,
    mem::size_of,
    ptr::{
        addr_of,
        NonNull, //
    },
};

use kernel::{
    device,
    device_id::{
        IdArray,
        RawDeviceId,
        RawDeviceIdIndex, //
    },
    driver,
    error::{
        from_result,
        to_result, //
    },
    prelude::*,
    str::CString,
    sync::aref::AlwaysRefCounted,
    types::Opaque,
    ThisModule,
};

use crate::wire::guid::Guid;

/// Raw C declarations of the helper in `rust/helpers/vmbus.c`.
#[doc(hidden)]
pub mod ffi {
    use kernel::prelude::*;

    use crate::wire::guid::Guid;

    /// Bytes kmcl reserves for a `struct hv_driver`; `KMCL_HV_DRIVER_SIZE` in
    /// `vmbus.h`, which `vmbus.c` checks against the kernel's structure.
    pub const HV_DRIVER_SIZE: usize = 512;

    /// Offset of the `struct device_driver` in `struct hv_driver`;
    /// `KMCL_HV_DRIVER_DRIVER_OFFSET` in `vmbus.h`, checked by `vmbus.c`.
    pub const HV_DRIVER_DRIVER_OFFSET: usize = 40;

    /// Storage for a `struct hv_driver`, which only C reads and writes.
    ///
    /// `vmbus.c` asserts that the structure fits and is no more aligned.
    #[repr(C, align(8))]
    pub struct HvDriver {
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

    /// Opaque `struct vmbus_channel`.
    #[repr(C)]
    pub(crate) struct VmbusChannel {
        _opaque: [u8; 0],
    }

    /// Mirror of `struct hv_vmbus_device_id`; the helper asserts the layout.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct HvVmbusDeviceId {
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
        pub(crate) fn kmcl_hv_get_drvdata(dev: *mut HvDevice) -> *mut c_void;
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

/// A VMBus device id: the class (interface type) GUID a driver binds to.
///
/// # Invariants
///
/// The layout is that of `struct hv_vmbus_device_id`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(ffi::HvVmbusDeviceId);

impl DeviceId {
    /// A device id matching the interface type `class`.
    pub const fn new(class: Guid) -> Self {
        Self(ffi::HvVmbusDeviceId {
            guid: class.0,
            driver_data: 0,
        })
    }

    /// The interface type this id matches.
    pub const fn class(&self) -> Guid {
        Guid(self.0.guid)
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of the mirror of
// `struct hv_vmbus_device_id` and adds no invariants.
unsafe impl RawDeviceId for DeviceId {
    type RawType = ffi::HvVmbusDeviceId;
}

// SAFETY: `DRIVER_DATA_OFFSET` is the offset of the `driver_data` field.
unsafe impl RawDeviceIdIndex for DeviceId {
    const DRIVER_DATA_OFFSET: usize = core::mem::offset_of!(ffi::HvVmbusDeviceId, driver_data);
}

/// A table of VMBus device ids with per-id driver information.
///
/// `hv_vmbus` walks it until the all-zero sentinel that [`IdArray`] appends.
pub trait IdTable<U: 'static>: Sync {
    /// The ids, without the sentinel.
    fn ids(&self) -> &[DeviceId];
    /// The driver information of entry `index`.
    fn info(&self, index: usize) -> Option<&'static U>;
    /// Pointer to the first raw entry, for `struct hv_driver::id_table`.
    fn as_ptr(&self) -> *const ffi::HvVmbusDeviceId;

    /// The entry that matches `class`, and its driver information.
    fn lookup(&self, class: &Guid) -> Option<(usize, &'static U)> {
        let index = self.ids().iter().position(|id| id.class() == *class)?;
        Some((index, self.info(index)?))
    }
}

impl<U: Sync + 'static, const N: usize> IdTable<U> for IdArray<DeviceId, U, N> {
    fn ids(&self) -> &[DeviceId] {
        let first = kernel::device_id::IdTable::<DeviceId, U>::as_ptr(self).cast::<DeviceId>();
        // SAFETY: `IdArray` starts with `N` initialised raw ids, and `DeviceId` is a
        // transparent wrapper of the raw id type.
        unsafe { core::slice::from_raw_parts(first, N) }
    }

    fn info(&self, index: usize) -> Option<&'static U> {
        let id = self.ids().get(index)?;
        // SAFETY: every entry of an `IdArray<_, U, _>` built by `IdArray::new` carries a
        // `&'static U` at `DRIVER_DATA_OFFSET`.
        Some(unsafe { id.info_unchecked::<U>() })
    }

    fn as_ptr(&self) -> *const ffi::HvVmbusDeviceId {
        kernel::device_id::IdTable::<DeviceId, U>::as_ptr(self)
    }
}

/// Declares a static VMBus id table, with its alias for modpost.
#[macro_export]
macro_rules! vmbus_device_table {
    ($($tt:tt)*) => {
        ::kernel::module_device_table!("vmbus", $crate::vmbus::DeviceId, $($tt)*);
    };
}

/// A VMBus device (`struct hv_device`).
///
/// `Ctx` is the [`device::DeviceContext`] of the reference, as for the
/// kernel's own buses: [`device::Core`] in [`Driver::probe`],
/// [`Driver::unbind`] and [`Driver::shutdown`], [`device::Bound`] in
/// [`Driver::suspend`] and [`Driver::resume`], [`device::Normal`] elsewhere.
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

/// The VMBus driver trait.
///
/// A driver names the interface types it binds in [`Driver::ID_TABLE`] and
/// creates its per-device data in [`Driver::probe`]. The data lives until the
/// device is unbound: [`Driver::unbind`] gets it last, and the driver core
/// drops it right after.
pub trait Driver: Send + Sync + 'static {
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

/// The adapter between `hv_vmbus` and driver type `T`, registered with the
/// static [`Driver::ID_TABLE`].
///
/// A driver may also be registered directly with
/// `kernel::driver::Registration<Adapter<T>>`.
pub struct Adapter<T: Driver>(PhantomData<T>);

// SAFETY:
// - `ffi::HvDriver` is `repr(C)` storage for a `struct hv_driver`.
// - `T::Data` is the type the callbacks below store as device data.
// - `vmbus.c` asserts that the `struct device_driver` of `struct hv_driver`
//   lies at `HV_DRIVER_DRIVER_OFFSET`.
unsafe impl<T: Driver> driver::DriverLayout for Adapter<T> {
    type DriverType = ffi::HvDriver;
    type DriverData<'bound> = T::Data<'bound>;
    const DEVICE_DRIVER_OFFSET: usize = ffi::HV_DRIVER_DRIVER_OFFSET;
}

// SAFETY: `unregister` unregisters what `register` registered, and is only
// called after it succeeded.
unsafe impl<T: Driver> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        drv: &Opaque<ffi::HvDriver>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        // SAFETY: `drv` stays pinned until `unregister` by the caller's
        // promise; the name and the id table are `'static`.
        unsafe { Self::register_with(drv, name.as_char_ptr(), T::ID_TABLE.as_ptr(), module) }
    }

    unsafe fn unregister(drv: &Opaque<ffi::HvDriver>) {
        // SAFETY: `drv` was registered by `register`, by the caller's promise.
        unsafe { ffi::kmcl_vmbus_driver_unregister(drv.get()) }
    }
}

impl<T: Driver> Adapter<T> {
    const OPS: ffi::DriverOps = ffi::DriverOps {
        probe: Self::probe_callback,
        remove: Self::remove_callback,
        shutdown: Self::shutdown_callback,
        suspend: Self::suspend_callback,
        resume: Self::resume_callback,
    };

    /// Fills in the `struct hv_driver` and registers it with `hv_vmbus`.
    ///
    /// # Safety
    ///
    /// `drv` must stay pinned, and `name` and `ids` valid, until the driver is
    /// unregistered.
    unsafe fn register_with(
        drv: &Opaque<ffi::HvDriver>,
        name: *const c_char,
        ids: *const ffi::HvVmbusDeviceId,
        module: &'static ThisModule,
    ) -> Result {
        let ops: &'static ffi::DriverOps = &Self::OPS;
        // SAFETY: `drv` is a zeroed `struct hv_driver` that stays put, and
        // `name` and `ids` outlive its registration, by the caller's promise;
        // `ops` and `module` are `'static`.
        to_result(unsafe {
            ffi::kmcl_vmbus_driver_register(drv.get(), name, ids, ops, module.as_ptr().cast(), name)
        })
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` with a live device, under its device lock, and an
    /// id it matched (or null).
    unsafe extern "C" fn probe_callback(
        dev: *mut ffi::HvDevice,
        id: *const ffi::HvVmbusDeviceId,
    ) -> c_int {
        // SAFETY: the bus passes a device that is live, and locked, for the
        // whole callback.
        let dev = unsafe { Device::<device::CoreInternal<'_>>::from_raw(dev) };
        from_result(|| {
            // SAFETY: `id` is an entry of the id table `hv_vmbus` matched, static
            // or given at run time; either is a `hv_vmbus_device_id`. It is null
            // only if the bus matched no id, which it does not probe.
            let class = Guid(unsafe { id.as_ref() }.ok_or(ENODEV)?.guid);
            let info = T::ID_TABLE.lookup(&class).map(|(_, info)| info);
            dev.as_ref().set_drvdata(T::probe(dev, info))?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` once for a device bound by a successful probe,
    /// under its device lock.
    unsafe extern "C" fn remove_callback(dev: *mut ffi::HvDevice) {
        // SAFETY: the bus passes a live, locked device.
        let dev = unsafe { Device::<device::CoreInternal<'_>>::from_raw(dev) };
        // SAFETY: a successful probe stored a `T::Data`; the driver core drops
        // it only after this callback.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::unbind(dev, data);
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe, under
    /// its device lock.
    unsafe extern "C" fn shutdown_callback(dev: *mut ffi::HvDevice) {
        // SAFETY: the bus passes a live, locked device.
        let dev = unsafe { Device::<device::CoreInternal<'_>>::from_raw(dev) };
        // SAFETY: a successful probe stored a `T::Data`; it stays while bound.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::shutdown(dev, data);
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe, which
    /// stays bound for the whole callback.
    unsafe extern "C" fn suspend_callback(dev: *mut ffi::HvDevice) -> c_int {
        // SAFETY: the bus passes a live device that stays bound meanwhile.
        let dev = unsafe { Device::<device::BoundInternal>::from_raw(dev) };
        // SAFETY: a successful probe stored a `T::Data`; it stays while bound.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        from_result(|| T::suspend(dev, data).map(|()| 0))
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe, which
    /// stays bound for the whole callback.
    unsafe extern "C" fn resume_callback(dev: *mut ffi::HvDevice) -> c_int {
        // SAFETY: the bus passes a live device that stays bound meanwhile.
        let dev = unsafe { Device::<device::BoundInternal>::from_raw(dev) };
        // SAFETY: a successful probe stored a `T::Data`; it stays while bound.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        from_result(|| T::resume(dev, data).map(|()| 0))
    }

    /// Unbinds as the driver core does: the remove callback, then the release
    /// of the device data that `driver::Registration`'s post-unbind callback
    /// performs.
    ///
    /// # Safety
    ///
    /// As [`Adapter::remove_callback`].
    #[cfg(CONFIG_KUNIT)]
    unsafe extern "C" fn unbind_callbacks(dev: *mut ffi::HvDevice) {
        // SAFETY: the caller's promise is that of `remove_callback`.
        unsafe { Self::remove_callback(dev) };
        // SAFETY: `dev` is live.
        let data = unsafe { ffi::kmcl_hv_get_drvdata(dev) };
        // SAFETY: `dev` is live.
        unsafe { ffi::kmcl_hv_set_drvdata(dev, core::ptr::null_mut()) };
        if !data.is_null() {
            // SAFETY: `device::Device::set_drvdata` stored the data of the
            // probe as a `Pin<KBox<T::Data>>` from `into_foreign`, the type
            // `drvdata_borrow` borrows it as; this is its last use.
            drop(unsafe {
                <Pin<KBox<T::Data<'_>>> as kernel::types::ForeignOwnable>::from_foreign(data)
            });
        }
    }

    /// What the driver core calls, with its unbinding in `remove`.
    #[cfg(CONFIG_KUNIT)]
    const UNBINDING_OPS: ffi::DriverOps = ffi::DriverOps {
        remove: Self::unbind_callbacks,
        ..Self::OPS
    };
}

/// The C callbacks of driver type `T`, for the KUnit suites to call as
/// `hv_vmbus` and the driver core would: `remove` also releases the device
/// data, as the driver core does after the remove callback.
#[cfg(CONFIG_KUNIT)]
pub(crate) fn driver_ops<T: Driver>() -> &'static ffi::DriverOps {
    &Adapter::<T>::UNBINDING_OPS
}

/// The adapter of a registration whose id table and name are made at run
/// time: they live in the [`ClassRegistration`] around the kernel's
/// registration, where `register` finds them.
///
/// Private: the only [`driver::Registration`] of this adapter is the `reg`
/// field of a [`ClassRegistration`], which `register` relies on.
struct ClassAdapter<T: Driver>(PhantomData<T>);

// SAFETY: as for `Adapter<T>`, whose layout and data this shares.
unsafe impl<T: Driver> driver::DriverLayout for ClassAdapter<T> {
    type DriverType = ffi::HvDriver;
    type DriverData<'bound> = T::Data<'bound>;
    const DEVICE_DRIVER_OFFSET: usize = ffi::HV_DRIVER_DRIVER_OFFSET;
}

// SAFETY: `unregister` unregisters what `register` registered, and is only
// called after it succeeded.
unsafe impl<T: Driver> driver::RegistrationOps for ClassAdapter<T> {
    /// Registers with the table and name of the enclosing
    /// [`ClassRegistration`]; the static `_name` is not used.
    unsafe fn register(
        drv: &Opaque<ffi::HvDriver>,
        _name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        // `driver::Registration` has no field beside its driver structure,
        // which therefore lies at its start.
        const {
            assert!(
                size_of::<driver::Registration<ClassAdapter<T>>>()
                    == size_of::<Opaque<ffi::HvDriver>>()
            )
        };
        let outer = drv.get().cast::<ClassRegistration<T>>();
        // SAFETY: this adapter is private, and its only `driver::Registration`
        // is the `reg` field of a `ClassRegistration`: the first field of a
        // `repr(C)` struct, whose driver structure `drv` lies at its start
        // (assertion above), so `outer` is that `ClassRegistration`. Its
        // initialiser sets `ids` and `name` before it initialises `reg`, whose
        // registration calls this; they are dropped only after `reg` is
        // unregistered.
        let (ids, name) = unsafe { (&*addr_of!((*outer).ids), &*addr_of!((*outer).name)) };
        // SAFETY: `drv` stays pinned until `unregister` by the caller's
        // promise; `ids` and `name` outlive the registration (above), and
        // moving their owners does not move their heap buffers.
        unsafe { Adapter::<T>::register_with(drv, name.as_char_ptr(), ids.as_ptr(), module) }
    }

    unsafe fn unregister(drv: &Opaque<ffi::HvDriver>) {
        // SAFETY: `drv` was registered by `register`, by the caller's promise.
        unsafe { ffi::kmcl_vmbus_driver_unregister(drv.get()) }
    }
}

/// A driver registration with an id table and a name made at run time.
///
/// # Invariants
///
/// `ids` ends with the all-zero entry; `ids` and `name` are set before `reg`
/// is initialised and, as fields after it, dropped after it unregisters.
#[pin_data]
#[repr(C)]
struct ClassRegistration<T: Driver> {
    /// First: [`ClassAdapter::register`] finds the other fields from it.
    #[pin]
    reg: driver::Registration<ClassAdapter<T>>,
    ids: KVec<ffi::HvVmbusDeviceId>,
    name: CString,
}

/// What a [`Registration`] owns; dropping it unregisters the driver.
enum Kind<T: Driver> {
    /// With [`Driver::ID_TABLE`].
    Static {
        _reg: Pin<KBox<driver::Registration<Adapter<T>>>>,
    },
    /// With a table made at run time.
    Classes {
        _reg: Pin<KBox<ClassRegistration<T>>>,
    },
}

/// A registered VMBus driver; unregistered when dropped.
///
/// It holds a [`driver::Registration`], which registers the driver and, on
/// drop, unregisters it (unbinding every device).
pub struct Registration<T: Driver> {
    _kind: Kind<T>,
}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` under `name`.
    ///
    /// Fails with `ENODEV` where the machine has no VMBus.
    pub fn new(name: &'static CStr, module: &'static ThisModule) -> Result<Self> {
        let reg = KBox::pin_init(driver::Registration::new(name, module), GFP_KERNEL)?;
        Ok(Self {
            _kind: Kind::Static { _reg: reg },
        })
    }

    /// Registers driver `T` under `name` for the interface types `classes`,
    /// known only at run time, in place of [`Driver::ID_TABLE`]. Such
    /// devices are probed with no id information.
    ///
    /// Fails with `ENODEV` where the machine has no VMBus, and with `EBUSY`
    /// if a driver of that name is registered already.
    pub fn with_classes(
        name: CString,
        classes: &[Guid],
        module: &'static ThisModule,
    ) -> Result<Self> {
        if classes.is_empty() {
            return Err(EINVAL);
        }
        let mut ids = KVec::with_capacity(classes.len() + 1, GFP_KERNEL)?;
        for class in classes {
            ids.push(DeviceId::new(*class).0, GFP_KERNEL)?;
        }
        // `hv_vmbus` stops at the all-zero entry.
        ids.push(DeviceId::new(Guid::NULL).0, GFP_KERNEL)?;
        // INVARIANT: the initialiser sets `ids` and `name` before `reg`.
        let reg = KBox::pin_init(
            try_pin_init!(ClassRegistration {
                ids,
                name,
                reg <- driver::Registration::new(c"", module),
            }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _kind: Kind::Classes { _reg: reg },
        })
    }
}
