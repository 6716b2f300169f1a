// SPDX-License-Identifier: GPL-2.0

//! The VMBus bus abstraction: id tables and behaviour without VMBus.

use kernel::{
    device::Core,
    device_id::IdArray,
    prelude::*,
    str::CString, //
};

use crate::{
    vmbus::{
        self,
        DeviceId,
        IdTable, //
    },
    wire::guid::Guid,
};

const HEARTBEAT: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");
const SHUTDOWN: Guid = Guid::from_str_const("0e0b6031-5213-4934-818b-38d90ced39db");
const KVP: Guid = Guid::from_str_const("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6");

static TABLE: IdArray<DeviceId, u32, 2> = IdArray::new([
    (DeviceId::new(HEARTBEAT), &10),
    (DeviceId::new(SHUTDOWN), &20),
]);

mod ffi {
    use crate::wire::guid::Guid;

    extern "C" {
        pub(super) fn kmcl_hv_test_last_registration(
            name: *mut u8,
            len: u32,
            ids: *mut Guid,
            max: u32,
        ) -> u32;
    }
}

/// The name, and the number and first four entries of the id table, that
/// the last registration handed to `hv_vmbus`.
fn last_registration() -> ([u8; 64], u32, [Guid; 4]) {
    let mut name = [0u8; 64];
    let mut ids = [Guid::NULL; 4];
    // SAFETY: both buffers are valid for the lengths given.
    let n =
        unsafe { ffi::kmcl_hv_test_last_registration(name.as_mut_ptr(), 64, ids.as_mut_ptr(), 4) };
    (name, n, ids)
}

/// Whether the NUL-terminated `name` is `expected`.
fn name_is(name: &[u8; 64], expected: &CStr) -> bool {
    name.split(|b| *b == 0).next() == Some(expected.to_bytes())
}

/// A driver that must never be probed: the VM has no VMBus.
struct NeverProbed;

impl vmbus::Driver for NeverProbed {
    type IdInfo = u32;
    type Data<'bound> = ();
    const ID_TABLE: &'static dyn IdTable<u32> = &TABLE;

    fn probe<'bound>(
        _dev: &'bound vmbus::Device<Core<'_>>,
        _info: Option<&'static u32>,
    ) -> impl PinInit<(), Error> + 'bound {
        Err::<(), _>(EINVAL)
    }
}

#[kunit_tests(kmcl_vmbus)]
mod tests {
    use super::*;

    #[test]
    fn id_table_matches_class_and_returns_its_info() {
        assert_eq!(TABLE.lookup(&HEARTBEAT), Some((0, &10)));
        assert_eq!(TABLE.lookup(&SHUTDOWN), Some((1, &20)));
    }

    #[test]
    fn id_table_rejects_unknown_and_null_class() {
        assert_eq!(TABLE.lookup(&KVP), None);
        assert_eq!(TABLE.lookup(&Guid::NULL), None);
    }

    #[test]
    fn id_table_is_zero_terminated_for_hv_vmbus() {
        let ids = TABLE.ids();
        assert_eq!(ids.len(), 2);
        // SAFETY: an `IdArray` of two ids is followed by its zeroed sentinel.
        let sentinel = unsafe { &*TABLE.as_ptr().add(2) };
        assert!(Guid(sentinel.guid).is_null());
        assert_eq!(sentinel.driver_data, 0);
        assert_eq!(core::mem::size_of::<DeviceId>(), 24);
    }

    #[test]
    fn registration_without_vmbus_is_enodev() {
        let r = vmbus::Registration::<NeverProbed>::new(c"kmcl_test", &crate::THIS_MODULE);
        assert!(matches!(r, Err(e) if e == ENODEV));
        // A second attempt behaves the same: the first left nothing behind.
        let r = vmbus::Registration::<NeverProbed>::new(c"kmcl_test", &crate::THIS_MODULE);
        assert!(matches!(r, Err(e) if e == ENODEV));
    }

    #[test]
    fn registration_with_classes_without_vmbus_is_enodev() -> Result {
        // The table and the name made at run time are freed with the failed
        // registration (kmemleak checks), and nothing is left registered.
        for _ in 0..2 {
            let name = CString::try_from_fmt(fmt!("kmcl_test-{}", HEARTBEAT))?;
            let r = vmbus::Registration::<NeverProbed>::with_classes(
                name,
                &[HEARTBEAT, KVP],
                &crate::THIS_MODULE,
            );
            assert!(matches!(r, Err(e) if e == ENODEV));
        }
        let name = CString::try_from_fmt(fmt!("kmcl_test"))?;
        let r = vmbus::Registration::<NeverProbed>::with_classes(name, &[], &crate::THIS_MODULE);
        assert!(matches!(r, Err(e) if e == EINVAL));
        Ok(())
    }

    #[test]
    fn registrations_hand_their_table_and_name_to_hv_vmbus() -> Result {
        // A table and a name made at run time reach the driver structure
        // from beside the kernel's registration.
        let name = CString::try_from_fmt(fmt!("kmcl_test-{}", KVP))?;
        let expected = CString::try_from_fmt(fmt!("kmcl_test-{}", KVP))?;
        let r = vmbus::Registration::<NeverProbed>::with_classes(
            name,
            &[KVP, HEARTBEAT],
            &crate::THIS_MODULE,
        );
        assert!(matches!(r, Err(e) if e == ENODEV));
        let (name, n, ids) = last_registration();
        assert!(name_is(&name, &expected));
        assert_eq!(n, 2);
        assert!(ids[0] == KVP && ids[1] == HEARTBEAT);
        // The static table and name.
        let r = vmbus::Registration::<NeverProbed>::new(c"kmcl_test", &crate::THIS_MODULE);
        assert!(matches!(r, Err(e) if e == ENODEV));
        let (name, n, ids) = last_registration();
        assert!(name_is(&name, c"kmcl_test"));
        assert_eq!(n, 2);
        assert!(ids[0] == HEARTBEAT && ids[1] == SHUTDOWN);
        Ok(())
    }

    #[test]
    fn kmcl_loads_without_vmbus() -> Result {
        assert!(crate::hv::Transport::register(&crate::THIS_MODULE)?.is_none());
        Ok(())
    }
}
