// SPDX-License-Identifier: GPL-2.0

//! Abstractions for the VMBus bus (`hv_vmbus`).
//!
//! C header: [`include/linux/hyperv.h`](srctree/include/linux/hyperv.h)
//!
//! A VMBus driver implements [`Driver`] and owns a [`Registration`] for as long
//! as it wants to be bound. The hv structures are reached through the small C
//! helper in `rust/helpers/vmbus.c`; see `Documentation/hv-bindings.rst` for
//! why kmcl uses a helper there instead of generated bindings.

use core::{
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    ptr::NonNull,
};

use kernel::{
    device,
    device_id::{
        IdArray,
        RawDeviceId,
        RawDeviceIdIndex, //
    },
    error::{
        from_result,
        to_result, //
    },
    prelude::*,
    str::CString,
    types::ForeignOwnable,
    ThisModule,
};

use crate::wire::guid::Guid;

/// Raw C declarations of the helper in `rust/helpers/vmbus.c`.
#[doc(hidden)]
pub mod ffi {
    use kernel::prelude::*;

    use crate::wire::guid::Guid;

    /// Opaque `struct hv_driver`.
    #[repr(C)]
    pub(crate) struct HvDriver {
        _opaque: [u8; 0],
    }

    /// Opaque `struct hv_device`.
    #[repr(C)]
    pub(crate) struct HvDevice {
        _opaque: [u8; 0],
    }

    /// Opaque `struct vmbus_channel`.
    #[repr(C)]
    pub struct VmbusChannel {
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

    /// Mirror of the helper's `struct kmcl_vmbus_driver_ops`.
    #[repr(C)]
    pub(crate) struct DriverOps {
        pub(crate) probe: unsafe extern "C" fn(*mut HvDevice, *const HvVmbusDeviceId) -> c_int,
        pub(crate) remove: unsafe extern "C" fn(*mut HvDevice),
        pub(crate) shutdown: unsafe extern "C" fn(*mut HvDevice),
        pub(crate) suspend: unsafe extern "C" fn(*mut HvDevice) -> c_int,
        pub(crate) resume: unsafe extern "C" fn(*mut HvDevice) -> c_int,
    }

    extern "C" {
        pub(crate) fn kmcl_vmbus_driver_alloc(
            name: *const c_char,
            ids: *const HvVmbusDeviceId,
            ops: *const DriverOps,
        ) -> *mut HvDriver;
        pub(crate) fn kmcl_vmbus_driver_free(drv: *mut HvDriver);
        pub(crate) fn kmcl_vmbus_driver_register(
            drv: *mut HvDriver,
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
/// # Invariants
///
/// A `&Device` always points to a live `struct hv_device` whose driver core
/// reference is held for the lifetime of the borrow.
#[repr(transparent)]
pub struct Device(ffi::HvDevice);

impl Device {
    /// Borrows a `Device` from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a live `struct hv_device` that stays alive for `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut ffi::HvDevice) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper; validity is the caller's promise.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_raw(&self) -> *mut ffi::HvDevice {
        core::ptr::from_ref(self).cast_mut().cast()
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

impl AsRef<device::Device> for Device {
    fn as_ref(&self) -> &device::Device {
        // SAFETY: `self` is a live `hv_device` by the type invariant.
        let dev = unsafe { ffi::kmcl_hv_device_dev(self.as_raw()) };
        // SAFETY: the embedded `struct device` lives as long as the `hv_device`, and
        // its reference count is non-zero while `self` is borrowed.
        unsafe { device::Device::from_raw(dev.cast()) }
    }
}

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
/// device is removed, when it is handed back to [`Driver::remove`].
pub trait Driver: Send + Sync + 'static {
    /// Driver information attached to each id of the table.
    type IdInfo: Sync + 'static;

    /// Per-device data.
    type Data: Send + Sync + 'static;

    /// The interface types this driver binds.
    const ID_TABLE: &'static dyn IdTable<Self::IdInfo>;

    /// Binds a device. `id_info` is the information of the entry of
    /// [`Driver::ID_TABLE`] that matched; `None` when the device matched an
    /// id given at run time ([`Registration::with_classes`], or sysfs
    /// `new_id`), which carries none.
    fn probe(
        dev: &Device,
        id_info: Option<&'static Self::IdInfo>,
    ) -> impl PinInit<Self::Data, Error>;

    /// Unbinds a device; `data` is dropped afterwards.
    fn remove(dev: &Device, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }

    /// The system is shutting down.
    fn shutdown(dev: &Device, data: Pin<&Self::Data>) {
        let _ = (dev, data);
    }

    /// The system is entering hibernation.
    fn suspend(dev: &Device, data: Pin<&Self::Data>) -> Result {
        let _ = (dev, data);
        Ok(())
    }

    /// The system is back from hibernation.
    fn resume(dev: &Device, data: Pin<&Self::Data>) -> Result {
        let _ = (dev, data);
        Ok(())
    }
}

/// The C callbacks of driver type `T`.
struct Adapter<T: Driver>(PhantomData<T>);

impl<T: Driver> Adapter<T> {
    const OPS: ffi::DriverOps = ffi::DriverOps {
        probe: Self::probe_callback,
        remove: Self::remove_callback,
        shutdown: Self::shutdown_callback,
        suspend: Self::suspend_callback,
        resume: Self::resume_callback,
    };

    /// # Safety
    ///
    /// Called by `hv_vmbus` with a live device and an entry of `T::ID_TABLE`.
    unsafe extern "C" fn probe_callback(
        dev: *mut ffi::HvDevice,
        id: *const ffi::HvVmbusDeviceId,
    ) -> c_int {
        // SAFETY: the bus passes a device that is live for the whole callback.
        let device = unsafe { Device::from_raw(dev) };
        from_result(|| {
            // SAFETY: `id` is an entry of the id table `hv_vmbus` matched, static
            // or given at run time; either is a `hv_vmbus_device_id`. It is null
            // only if the bus matched no id, which it does not probe.
            let class = Guid(unsafe { id.as_ref() }.ok_or(ENODEV)?.guid);
            let info = T::ID_TABLE.lookup(&class).map(|(_, info)| info);
            let data = KBox::pin_init(T::probe(device, info), GFP_KERNEL)?;
            // SAFETY: `dev` is live; the pointer is taken back in `remove_callback`.
            unsafe { ffi::kmcl_hv_set_drvdata(dev, data.into_foreign()) };
            Ok(0)
        })
    }

    /// Borrows the data that `probe_callback` stored.
    ///
    /// # Safety
    ///
    /// `dev` must be live and bound to this driver by a successful probe.
    unsafe fn data<'a>(dev: *mut ffi::HvDevice) -> Pin<&'a T::Data> {
        // SAFETY: the caller promises a successful probe, which stored a
        // `Pin<KBox<T::Data>>`; it is only taken back in `remove_callback`.
        unsafe { <Pin<KBox<T::Data>> as ForeignOwnable>::borrow(ffi::kmcl_hv_get_drvdata(dev)) }
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` once for a device bound by a successful probe.
    unsafe extern "C" fn remove_callback(dev: *mut ffi::HvDevice) {
        // SAFETY: the bus passes a live device bound by a successful probe.
        let (device, data) = unsafe { (Device::from_raw(dev), Self::data(dev)) };
        T::remove(device, data);
        // SAFETY: the pointer was stored by `probe_callback` from `into_foreign`, and
        // this is the last use of it.
        drop(unsafe {
            <Pin<KBox<T::Data>> as ForeignOwnable>::from_foreign(ffi::kmcl_hv_get_drvdata(dev))
        });
        // SAFETY: `dev` is live.
        unsafe { ffi::kmcl_hv_set_drvdata(dev, core::ptr::null_mut()) };
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe.
    unsafe extern "C" fn shutdown_callback(dev: *mut ffi::HvDevice) {
        // SAFETY: the bus passes a live device bound by a successful probe.
        let (device, data) = unsafe { (Device::from_raw(dev), Self::data(dev)) };
        T::shutdown(device, data);
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe.
    unsafe extern "C" fn suspend_callback(dev: *mut ffi::HvDevice) -> c_int {
        // SAFETY: the bus passes a live device bound by a successful probe.
        let (device, data) = unsafe { (Device::from_raw(dev), Self::data(dev)) };
        from_result(|| T::suspend(device, data).map(|()| 0))
    }

    /// # Safety
    ///
    /// Called by `hv_vmbus` for a device bound by a successful probe.
    unsafe extern "C" fn resume_callback(dev: *mut ffi::HvDevice) -> c_int {
        // SAFETY: the bus passes a live device bound by a successful probe.
        let (device, data) = unsafe { (Device::from_raw(dev), Self::data(dev)) };
        from_result(|| T::resume(device, data).map(|()| 0))
    }
}

/// The C callbacks of driver type `T`, for the KUnit suites to call as
/// `hv_vmbus` would.
#[cfg(CONFIG_KUNIT)]
pub(crate) fn driver_ops<T: Driver>() -> &'static ffi::DriverOps {
    &Adapter::<T>::OPS
}

/// A registered VMBus driver; unregistered when dropped.
///
/// # Invariants
///
/// `drv` was allocated by `kmcl_vmbus_driver_alloc` and registered with
/// `hv_vmbus`; it stays registered until `drop`.
pub struct Registration<T: Driver> {
    drv: NonNull<ffi::HvDriver>,
    /// The id table and name of a registration made at run time; `drv`
    /// points into both.
    _ids: KVec<ffi::HvVmbusDeviceId>,
    _name: Option<CString>,
    _t: PhantomData<T>,
    _pin: PhantomPinned,
}

// SAFETY: the registration is only a handle to a driver object that `hv_vmbus`
// synchronises; it may be dropped from any thread.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: `&Registration` exposes nothing.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` under `name`.
    ///
    /// Fails with `ENODEV` where the machine has no VMBus.
    pub fn new(name: &'static CStr, module: &'static ThisModule) -> Result<Self> {
        // SAFETY: `name` and the id table are `'static`.
        unsafe {
            Self::register(
                name.as_char_ptr(),
                T::ID_TABLE.as_ptr(),
                KVec::new(),
                None,
                module,
            )
        }
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
        let (name_ptr, ids_ptr) = (name.as_char_ptr(), ids.as_ptr());
        // SAFETY: the name and the table are moved into the registration,
        // which keeps them until the driver is unregistered; moving a `KVec`
        // or a `CString` does not move their heap buffers.
        unsafe { Self::register(name_ptr, ids_ptr, ids, Some(name), module) }
    }

    /// # Safety
    ///
    /// `name` and `ids` must stay valid until the registration is dropped.
    unsafe fn register(
        name: *const c_char,
        ids: *const ffi::HvVmbusDeviceId,
        own_ids: KVec<ffi::HvVmbusDeviceId>,
        own_name: Option<CString>,
        module: &'static ThisModule,
    ) -> Result<Self> {
        let ops: &'static ffi::DriverOps = &Adapter::<T>::OPS;
        // SAFETY: `name` and `ids` outlive the driver by the caller's promise;
        // `ops` is `'static`.
        let drv = unsafe { ffi::kmcl_vmbus_driver_alloc(name, ids, ops) };
        let drv = NonNull::new(drv).ok_or(ENOMEM)?;
        // SAFETY: `drv` is a fresh driver object; `module` is `'static` and
        // `name` outlives the registration.
        let ret = to_result(unsafe {
            ffi::kmcl_vmbus_driver_register(drv.as_ptr(), module.as_ptr().cast(), name)
        });
        if let Err(e) = ret {
            // SAFETY: registration failed, so nothing references `drv`.
            unsafe { ffi::kmcl_vmbus_driver_free(drv.as_ptr()) };
            return Err(e);
        }
        // INVARIANT: `drv` is allocated and registered.
        Ok(Self {
            drv,
            _ids: own_ids,
            _name: own_name,
            _t: PhantomData,
            _pin: PhantomPinned,
        })
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `drv` is registered; unregistering unbinds
        // every device, after which nothing references it and it can be freed.
        unsafe {
            ffi::kmcl_vmbus_driver_unregister(self.drv.as_ptr());
            ffi::kmcl_vmbus_driver_free(self.drv.as_ptr());
        }
    }
}
