// SPDX-License-Identifier: GPL-2.0

//! The hv transport: kmcl's driver on the VMBus bus.
//!
//! kmcl registers one `hv_driver`, named `kmcl`. Its static id table is empty:
//! the interface types it binds are those that client channels target, which
//! are only known at run time.

use kernel::{
    device_id::IdArray,
    prelude::*, //
};

use crate::vmbus;

/// kmcl's VMBus driver.
pub(crate) struct HvDriver;

/// Per-device state of a bound VMBus device.
pub(crate) struct HvDeviceData;

static ID_TABLE: IdArray<vmbus::DeviceId, (), 0> = IdArray::new([]);

impl vmbus::Driver for HvDriver {
    type IdInfo = ();
    type Data = HvDeviceData;

    const ID_TABLE: &'static dyn vmbus::IdTable<()> = &ID_TABLE;

    fn probe(dev: &vmbus::Device, _id_info: &'static ()) -> impl PinInit<HvDeviceData, Error> {
        dev_info!(dev.as_ref(), "bound offer of class {}\n", dev.class_id());
        Ok::<_, Error>(HvDeviceData)
    }
}

/// The registered hv transport.
pub(crate) struct Transport {
    _registration: vmbus::Registration<HvDriver>,
}

impl Transport {
    /// Registers kmcl's VMBus driver. Returns `None` where the machine has no
    /// VMBus, which leaves kmcl usable with the loopback transport alone.
    pub(crate) fn register(module: &'static ThisModule) -> Result<Option<Self>> {
        match vmbus::Registration::new(c"kmcl", module) {
            Ok(registration) => Ok(Some(Self {
                _registration: registration,
            })),
            Err(e) if e == ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }
}
