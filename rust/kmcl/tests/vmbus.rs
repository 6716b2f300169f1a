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
    fn kmcl_loads_without_vmbus() -> Result {
        assert!(crate::hv::Transport::register(&crate::THIS_MODULE)?.is_none());
        Ok(())
    }
}
