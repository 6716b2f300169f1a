// SPDX-License-Identifier: GPL-2.0

//! VMBus device ids and id tables.

use kernel::device_id::{
    IdArray,
    RawDeviceId,
    RawDeviceIdIndex, //
};

use crate::wire::guid::Guid;

use super::ffi;

/// A VMBus device id: the class (interface type) GUID a driver binds to.
///
/// # Invariants
///
/// The layout is that of `struct hv_vmbus_device_id`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct DeviceId(pub(super) ffi::HvVmbusDeviceId);

impl DeviceId {
    /// A device id matching the interface type `class`.
    pub(crate) const fn new(class: Guid) -> Self {
        Self(ffi::HvVmbusDeviceId {
            guid: class.0,
            driver_data: 0,
        })
    }

    /// The interface type this id matches.
    pub(crate) const fn class(&self) -> Guid {
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
pub(crate) trait IdTable<U: 'static>: Sync {
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
