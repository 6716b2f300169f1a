// SPDX-License-Identifier: GPL-2.0

//! kmcl's drivers on the VMBus bus.
//!
//! At load, kmcl registers a driver named `kmcl` with no ids: it binds
//! nothing, and its registration tells whether the machine has a VMBus. The
//! drivers that bind devices are registered per interface type as client
//! channels target them; see [`crate::transport::hv::bus`].

use core::sync::atomic::{
    AtomicPtr,
    Ordering, //
};

use kernel::{
    device::{
        self,
        Core, //
    },
    device_id::IdArray,
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
};

use crate::{
    transport::hv::{
        bus::HvDevice,
        HvBus,
        LINUX_OPS, //
    },
    vmbus,
};

/// kmcl's VMBus driver, registered once per targeted interface type.
pub(crate) struct HvDriver;

/// A device bound to kmcl.
pub(crate) struct Bound {
    bus: Arc<HvBus>,
    dev: Arc<HvDevice>,
}

static ID_TABLE: IdArray<vmbus::DeviceId, (), 0> = IdArray::new([]);

impl vmbus::Driver for HvDriver {
    type IdInfo = ();
    type Data<'bound> = Bound;

    const ID_TABLE: &'static dyn vmbus::IdTable<()> = &ID_TABLE;

    fn probe<'bound>(
        dev: &'bound vmbus::Device<Core<'_>>,
        _id_info: Option<&'static ()>,
    ) -> impl PinInit<Bound, Error> + 'bound {
        let bus = default_bus().ok_or(ENODEV);
        bus.and_then(|bus| {
            if !bus.is_targeted(&dev.class_id()) {
                return Err(ENODEV);
            }
            let d = bus.probe(dev)?;
            dev_info!(
                dev.as_ref(),
                "bound offer {} of type {}\n",
                dev.instance_id(),
                dev.class_id()
            );
            Ok(Bound { bus, dev: d })
        })
    }

    fn unbind(_dev: &vmbus::Device<Core<'_>>, data: Pin<&Bound>) {
        data.bus.remove(&data.dev);
    }

    fn shutdown(_dev: &vmbus::Device<Core<'_>>, data: Pin<&Bound>) {
        // The channel closes as on removal; nothing opens it again.
        data.bus.remove(&data.dev);
    }

    fn suspend(_dev: &vmbus::Device<device::Bound>, data: Pin<&Bound>) -> Result {
        data.bus.suspend(&data.dev);
        Ok(())
    }

    fn resume(_dev: &vmbus::Device<device::Bound>, data: Pin<&Bound>) -> Result {
        data.bus.resume(&data.dev);
        Ok(())
    }
}

/// kmcl's VMBus, while the module is loaded on a machine that has one.
static BUS: AtomicPtr<HvBus> = AtomicPtr::new(core::ptr::null_mut());

/// The VMBus of client channels that name no bus; `None` without VMBus.
pub(crate) fn default_bus() -> Option<Arc<HvBus>> {
    let p = BUS.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: `BUS` holds a reference from `Arc::into_raw` until
    // `Transport::drop`, which runs at unload, when no channel is left to
    // call this.
    Some(unsafe { ArcBorrow::from_raw(p) }.into())
}

/// The registered hv transport.
pub(crate) struct Transport {
    _registration: vmbus::Registration<HvDriver>,
}

impl Transport {
    /// Registers kmcl's VMBus driver. Returns `None` where the machine has no
    /// VMBus, which leaves kmcl usable with the loopback transport alone.
    pub(crate) fn register(module: &'static ThisModule) -> Result<Option<Self>> {
        let registration = match vmbus::Registration::new(c"kmcl", module) {
            Ok(registration) => registration,
            Err(e) if e == ENODEV => return Ok(None),
            Err(e) => return Err(e),
        };
        let bus = HvBus::new(&LINUX_OPS, Some(module))?;
        let old = BUS.swap(Arc::into_raw(bus).cast_mut(), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: a reference stored by an earlier registration.
            drop(unsafe { Arc::from_raw(old) });
        }
        Ok(Some(Self {
            _registration: registration,
        }))
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        let p = BUS.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: the reference stored by `register`.
            let bus = unsafe { Arc::from_raw(p) };
            bus.shutdown();
        }
    }
}
