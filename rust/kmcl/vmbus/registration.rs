// SPDX-License-Identifier: GPL-2.0

//! Registering a VMBus driver: the adapter to `kernel::driver`, and
//! registrations with id tables made at run time.

use core::{
    marker::PhantomData,
    mem::size_of,
    ptr::addr_of, //
};

use kernel::{
    device, driver,
    error::{
        from_result,
        to_result, //
    },
    prelude::*,
    str::CString,
    types::Opaque,
    ThisModule,
};

use crate::wire::guid::Guid;

use super::{
    ffi,
    Device,
    DeviceId,
    Driver, //
};

/// The adapter between `hv_vmbus` and driver type `T`, registered with the
/// static [`Driver::ID_TABLE`].
///
/// A driver may also be registered directly with
/// `kernel::driver::Registration<Adapter<T>>`.
pub(crate) struct Adapter<T: Driver>(PhantomData<T>);

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
    /// As [`Adapter::remove_callback`](super::Adapter::remove_callback).
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

/// What a [`Registration`](super::Registration) owns; dropping it unregisters the driver.
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
pub(crate) struct Registration<T: Driver> {
    _kind: Kind<T>,
}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` under `name`.
    ///
    /// Fails with `ENODEV` where the machine has no VMBus.
    pub(crate) fn new(name: &'static CStr, module: &'static ThisModule) -> Result<Self> {
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
    pub(crate) fn with_classes(
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
