// SPDX-License-Identifier: GPL-2.0

//! Binding: how client channels find and open their VMBus devices.
//!
//! `hv_vmbus` creates one `hv_device` per offer of the host and binds it to
//! the driver whose id table holds the offer's interface type. kmcl learns
//! the interface types it must bind only when a client channel is enabled
//! (`TargetPnp`), so it registers one `hv_driver` per targeted type, named
//! `kmcl-<type>`, with a one-entry id table built at run time:
//!
//! - The first Enable of a client targeting a type registers its driver; the
//!   driver core then probes every unbound device of that type, present or
//!   offered later. When the last client targeting the type goes back to
//!   Disabled, the driver is unregistered (from kmcl's workqueue, so that
//!   no channel ever waits on the driver core) and the devices are unbound.
//! - A probed device is recorded here. A client whose target it matches
//!   (type, and instance if the client named one) opens its channel with
//!   `vmbus_open()`, from the client's process-context work; a failure is
//!   reported to the driver as PnpFailure.
//! - Removal (rescind, unbind) and suspend close the client's side: the
//!   channel sees its peer gone, runs Suspend and Closed, and the device's
//!   `vmbus_channel` is closed before `remove` or `suspend` returns, with
//!   the client's teardown over: Disabled after a removal, Enabled and
//!   waiting after a suspend. After a suspend the client waits for the
//!   device's resume and then opens again.
//!
//! Dynamic ids on one kmcl driver have no in-kernel interface in 7.3 (only
//! sysfs `new_id`). Documentation/hv-transport.rst discusses the choice.

use kernel::{
    new_condvar, new_mutex,
    prelude::*,
    str::CString,
    sync::{
        Arc,
        ArcBorrow,
        CondVar,
        Mutex, //
    },
    workqueue::{
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
    ThisModule,
};

pub(crate) use super::device::HvDevice;
use super::{
    HvEndpoint,
    Ops,
    Owner, //
};
use crate::{channel::Channel, sys, transport::Attachment, vmbus, wire::guid::Guid};

/// A device and who uses it.
struct Entry {
    dev: Arc<HvDevice>,
    /// The client whose channel is open (or opening) on the device.
    user: Option<Arc<Channel>>,
    /// Removed: never opened again.
    gone: bool,
    /// Suspended for hibernation until resume.
    suspended: bool,
}

impl Entry {
    /// Free for a client of `class` (and `instance`).
    fn available_for(&self, class: &Guid, instance: &Option<Guid>) -> bool {
        !self.gone
            && !self.suspended
            && self.user.is_none()
            && self.dev.matches(class, instance)
            && !self.dev.rescinded()
    }
}

/// The driver registered for an interface type.
struct Class {
    class: Guid,
    /// Unregistered when the entry is dropped.
    _registration: vmbus::Registration<crate::hv::HvDriver>,
}

struct Inner {
    devices: KVec<Entry>,
    /// Enabled clients without a device.
    waiting: KVec<Arc<Channel>>,
    /// Per interface type, the clients (Enabled or further) targeting it.
    targets: KVec<(Guid, u32)>,
}

impl Inner {
    /// The entry of `dev`, if it is on the bus.
    fn entry(&mut self, dev: &Arc<HvDevice>) -> Option<&mut Entry> {
        self.devices.iter_mut().find(|e| Arc::ptr_eq(&e.dev, dev))
    }
}

/// A VMBus as client channels see it: the devices bound to kmcl.
///
/// kmcl has one, over `hv_vmbus`, on machines with a VMBus; it is the bus
/// of every client channel that names none. The KUnit suites make their
/// own, with stand-ins for `vmbus_open()` and friends, and feed it devices
/// they build.
#[pin_data]
pub struct HvBus {
    pub(super) ops: &'static Ops,
    /// Registers a driver per targeted type; `None` on a bus fed by hand.
    module: Option<&'static ThisModule>,
    #[pin]
    classes: Mutex<KVec<Class>>,
    #[pin]
    inner: Mutex<Inner>,
    #[pin]
    cond: CondVar,
    #[pin]
    release_work: Work<HvBus>,
}

impl_has_work! {
    impl HasWork<Self> for HvBus { self.release_work }
}

/// An open device channel, held by the channel's attachment.
pub(crate) struct Lease {
    bus: Arc<HvBus>,
    pub(crate) dev: Arc<HvDevice>,
    /// The reference to the client that `vmbus_open()` got as its callback
    /// context; taken back after `vmbus_close()`.
    ctx: *const Channel,
    /// The open this lease is for ([`DeviceMemory::epoch`]).
    pub(crate) epoch: u64,
}

impl HvBus {
    /// A bus whose devices are opened through `ops`. With `module`, it
    /// registers a driver for every type a client targets.
    pub(crate) fn new(ops: &'static Ops, module: Option<&'static ThisModule>) -> Result<Arc<Self>> {
        Arc::pin_init(
            try_pin_init!(HvBus {
                ops,
                module,
                classes <- new_mutex!(KVec::new(), "kmcl::HvBus::classes"),
                inner <- new_mutex!(Inner {
                    devices: KVec::new(),
                    waiting: KVec::new(),
                    targets: KVec::new(),
                }, "kmcl::HvBus::inner"),
                cond <- new_condvar!("kmcl::HvBus::cond"),
                release_work <- new_work!("kmcl::HvBus::release_work"),
            }),
            GFP_KERNEL,
        )
    }

    fn arc(&self) -> Arc<Self> {
        // SAFETY: every `HvBus` is created by `HvBus::new` inside an `Arc`,
        // and `&self` proves the count is non-zero for this borrow.
        unsafe { ArcBorrow::from_raw(core::ptr::from_ref(self)) }.into()
    }

    // ---- The client side. ----

    /// A client was enabled: bind its interface type and wait for a device.
    /// Pipe channels (hv_sock's offers, opened with a pipe mode) are not
    /// supported: `EOPNOTSUPP`.
    pub(crate) fn add_client(&self, chan: &Channel) -> Result {
        if chan.flags().contains(crate::channel::ChannelFlags::IS_PIPE) {
            return Err(EOPNOTSUPP);
        }
        // A sub-channel opens the offer it was handed, binding nothing.
        if chan.is_subchannel() {
            return Ok(());
        }
        let (class, _) = chan.interface_ids();
        self.hold_class(class)?;
        let mut g = self.inner.lock();
        if let Err(e) = g.waiting.push(chan.arc(), GFP_KERNEL) {
            drop(g);
            self.release_class(class);
            return Err(e.into());
        }
        Ok(())
    }

    /// A client stops looking for a device (Disable).
    pub(crate) fn withdraw(&self, chan: &Channel) {
        let mut g = self.inner.lock();
        g.waiting.retain(|c| !core::ptr::eq(&**c, chan));
    }

    /// A client is Disabled again: let go of its interface type.
    pub(crate) fn remove_client(&self, chan: &Channel) {
        self.withdraw(chan);
        if chan.is_subchannel() {
            return;
        }
        self.release_class(chan.interface_ids().0);
    }

    /// A client waits for a device again: after its device was suspended
    /// (`look`), or after an open or its Opened callback failed. With
    /// `look`, a device free already (it resumed meanwhile) is looked at
    /// once; after a failure the client waits for the next offer, so that a
    /// device that keeps failing is not retried in a loop.
    pub(crate) fn wait_again(&self, chan: &Channel, look: bool) {
        // A sub-channel's offer is gone once tried: it waits for nothing.
        if chan.is_subchannel() {
            return;
        }
        let (class, instance) = chan.interface_ids();
        let mut g = self.inner.lock();
        if !g.waiting.iter().any(|c| core::ptr::eq(&**c, chan))
            && g.waiting.push(chan.arc(), GFP_KERNEL).is_err()
        {
            // Out of memory: the client stays Enabled without a device
            // until it is disabled and enabled again.
            pr_warn!(
                "client channel {}: cannot wait for a device (out of memory)\n",
                chan.id()
            );
        }
        if look && g.devices.iter().any(|e| e.available_for(&class, &instance)) {
            chan.post_connect();
        }
    }

    /// Opens a device for a waiting client: `Ok(true)` when attached,
    /// `Ok(false)` when no device is free for it. An error is the open's,
    /// for PnpFailure; the client then keeps waiting.
    pub(crate) fn connect(&self, chan: &Channel) -> Result<bool> {
        if chan.is_subchannel() {
            return self.open_sub(chan);
        }
        let (class, instance) = chan.interface_ids();
        let dev = {
            let mut g = self.inner.lock();
            let Some(pos) = g.waiting.iter().position(|c| core::ptr::eq(&**c, chan)) else {
                // Disabled meanwhile.
                return Ok(false);
            };
            let Some(e) = g
                .devices
                .iter_mut()
                .find(|e| e.available_for(&class, &instance))
            else {
                return Ok(false);
            };
            e.user = Some(chan.arc());
            let dev = e.dev.clone();
            let _ = g.waiting.remove(pos);
            dev
        };
        match self.open(chan, &dev) {
            Ok(attached) => Ok(attached),
            Err(e) => {
                // An open that failed because the device is going away
                // (rescind, hibernation) is no PnP failure.
                let leaving = dev.rescinded() || self.leaving(&dev).is_some();
                self.user_gone(&dev);
                self.wait_again(chan, false);
                if leaving {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Whether `dev` is leaving the bus: `Some(true)` when suspended,
    /// `Some(false)` when removed (or gone already), `None` otherwise.
    fn leaving(&self, dev: &Arc<HvDevice>) -> Option<bool> {
        match self.inner.lock().entry(dev) {
            Some(e) if e.suspended => Some(true),
            Some(e) if !e.gone => None,
            _ => Some(false),
        }
    }

    /// Opens `dev` for `chan`: `Ok(false)` if the channel was disabled
    /// meanwhile (the device is closed again and free).
    fn open(&self, chan: &Channel, dev: &Arc<HvDevice>) -> Result<bool> {
        let p = chan.hv_open_params();
        let ctx = Arc::into_raw(chan.arc());
        // SAFETY: the device is bound and its channel closed and unused.
        unsafe { super::memory::ffi::kmcl_hv_prepare_open(dev.channel(), p.max_pkt, p.rqstor) };
        // SAFETY: as above; `ctx` stays a valid channel reference until it
        // is taken back after the close.
        let r = unsafe {
            (self.ops.open)(
                dev.channel(),
                p.ring_pages,
                Some(on_channel_callback),
                ctx.cast_mut().cast(),
            )
        };
        if let Err(e) = kernel::error::to_result(r) {
            // A failed `vmbus_open()` leaves the callback and `ctx` set;
            // closing resets them before `ctx` is dropped.
            // SAFETY: the channel is not open; closing it only resets the
            // callback and waits for a tasklet that might still run it.
            unsafe {
                (self.ops.close)(dev.channel());
                super::memory::ffi::kmcl_hv_forget_settings(dev.channel());
            }
            // SAFETY: no callback runs with `ctx` any more.
            drop(unsafe { Arc::from_raw(ctx) });
            pr_info!(
                "device {}: open of the channel failed ({:?})\n",
                dev.instance,
                e
            );
            return Err(e);
        }
        let epoch = {
            let mut m = dev.memory.lock();
            m.open = true;
            m.epoch += 1;
            m.epoch
        };
        let lease = Lease {
            bus: self.arc(),
            dev: dev.clone(),
            ctx,
            epoch,
        };
        // SAFETY: the channel is open, and stays valid until the lease's
        // close: the device is not removed before its user lets go.
        let ep = unsafe { HvEndpoint::new(dev.chan, Owner::Device(lease)) };
        if let Err((_, att)) = chan.attach_or_return(Attachment::Hv(ep)) {
            // Disabled meanwhile: not a PnP failure. Closing hands the
            // device back.
            att.close(chan);
            return Ok(false);
        }
        // SAFETY: the channel is open; the lease's close calls
        // `primary_closing` before it closes it.
        unsafe { super::subchannel::primary_opened(dev.channel(), chan) };
        // Removed or suspended while it opened: `evict` found no attachment
        // to close, so close it now; `evict` waits for that.
        if let Some(suspend) = self.leaving(dev) {
            chan.transport_lost(suspend);
        }
        Ok(true)
    }

    /// The lease's channel closes (its attachment is dropped).
    pub(crate) fn close(lease: Lease) {
        let Lease { bus, dev, ctx, .. } = lease;
        // SAFETY: the channel is open by the lease and was registered when
        // it opened.
        unsafe { super::subchannel::primary_closing(dev.channel()) };
        dev.release_memory();
        // SAFETY: the channel is open by the lease; after the close Linux
        // runs no more callbacks with `ctx`. The next driver gets the
        // channel's settings as `hv_vmbus` offered it.
        unsafe {
            (dev.ops.close)(dev.channel());
            super::memory::ffi::kmcl_hv_forget_settings(dev.channel());
        }
        // SAFETY: `ctx` came from `Arc::into_raw` in `open`.
        drop(unsafe { Arc::from_raw(ctx) });
        bus.user_gone(&dev);
    }

    fn user_gone(&self, dev: &Arc<HvDevice>) {
        let announce = {
            let mut g = self.inner.lock();
            match g.entry(dev) {
                Some(e) => {
                    e.user = None;
                    !e.gone && !e.suspended
                }
                None => false,
            }
        };
        self.cond.notify_all();
        if announce {
            self.announce(dev);
        }
    }

    /// Tells the clients waiting for `dev`'s type that it is free.
    fn announce(&self, dev: &HvDevice) {
        let g = self.inner.lock();
        if dev.rescinded() {
            return;
        }
        for c in g.waiting.iter() {
            let (class, instance) = c.interface_ids();
            if dev.matches(&class, &instance) {
                c.post_connect();
            }
        }
    }

    // ---- The device side: `hv_vmbus` probes, removes, suspends. ----

    /// Records a device bound to kmcl and offers it to waiting clients.
    pub(crate) fn probe(&self, dev: &vmbus::Device) -> Result<Arc<HvDevice>> {
        let d = HvDevice::new(dev, self.ops)?;
        self.inner.lock().devices.push(
            Entry {
                dev: d.clone(),
                user: None,
                gone: false,
                suspended: false,
            },
            GFP_KERNEL,
        )?;
        self.announce(&d);
        Ok(d)
    }

    /// Closes the client's side of `dev`, and waits until it has and the
    /// client has settled: Enabled again after a suspend, Disabled after a
    /// removal (or wherever a Disable that raced took it).
    fn evict(&self, dev: &Arc<HvDevice>, suspend: bool) {
        let user = {
            let mut g = self.inner.lock();
            let Some(e) = g.entry(dev) else {
                return;
            };
            if suspend {
                e.suspended = true;
            } else {
                e.gone = true;
            }
            e.user.clone()
        };
        let Some(chan) = user else {
            return;
        };
        // Still opening: `open` sees the flag set above and closes it.
        let _ = chan.transport_lost(suspend);
        {
            let mut g = self.inner.lock();
            while g.entry(dev).is_some_and(|e| e.user.is_some()) {
                self.cond.wait(&mut g);
            }
        }
        // The lease is given back from inside the client's teardown, after
        // Closed and `vmbus_close()` but before the channel leaves Closing
        // and, after a suspend, waits for the device again. Returning here
        // would let `hv_vmbus` hibernate (or free the device) while that
        // tail still runs: a resume then finds the client neither open nor
        // waiting, and the driver sees it Closing. The teardown runs as one
        // lifecycle step of the channel: wait for it to end.
        chan.wait_lifecycle_idle();
    }

    /// The device goes away (rescind, unbind, driver unregistered). Returns
    /// once its channel is closed.
    pub(crate) fn remove(&self, dev: &Arc<HvDevice>) {
        self.evict(dev, false);
        let mut g = self.inner.lock();
        g.devices.retain(|e| !Arc::ptr_eq(&e.dev, dev));
    }

    /// Hibernation: the client's side closes (Suspend, Closed) and waits.
    pub(crate) fn suspend(&self, dev: &Arc<HvDevice>) {
        self.evict(dev, true);
    }

    /// Back from hibernation: the waiting client opens the device again.
    pub(crate) fn resume(&self, dev: &Arc<HvDevice>) {
        {
            let mut g = self.inner.lock();
            if let Some(e) = g.entry(dev) {
                e.suspended = false;
            }
        }
        self.announce(dev);
    }

    // ---- Drivers per interface type. ----

    /// Whether an enabled client targets `class`. kmcl's drivers bind only
    /// such devices, whatever sysfs `new_id` or `driver_override` say.
    ///
    /// Runs in probe, which the registration in [`HvBus::hold_class`]
    /// triggers with the `classes` lock held: the counts live under `inner`.
    pub(crate) fn is_targeted(&self, class: &Guid) -> bool {
        self.inner
            .lock()
            .targets
            .iter()
            .any(|t| t.0 == *class && t.1 > 0)
    }

    /// Counts a client of `class`; returns the new count.
    fn count_target(&self, class: Guid, up: bool) -> Result<u32> {
        let mut g = self.inner.lock();
        let pos = match g.targets.iter().position(|t| t.0 == class) {
            Some(pos) => pos,
            None if up => {
                g.targets.push((class, 0), GFP_KERNEL)?;
                g.targets.len() - 1
            }
            None => return Ok(0),
        };
        let t = &mut g.targets[pos];
        t.1 = if up { t.1 + 1 } else { t.1.saturating_sub(1) };
        let n = t.1;
        if n == 0 {
            let _ = g.targets.remove(pos);
        }
        Ok(n)
    }

    fn hold_class(&self, class: Guid) -> Result {
        let mut g = self.classes.lock();
        // Counted first: the registration below probes at once.
        self.count_target(class, true)?;
        if self.module.is_none() || g.iter().any(|c| c.class == class) {
            return Ok(());
        }
        let registered = (|| {
            let module = self.module.ok_or(EINVAL)?;
            let name = CString::try_from_fmt(fmt!("kmcl-{}", class))?;
            let registration = vmbus::Registration::with_classes(name, &[class], module)?;
            g.push(
                Class {
                    class,
                    _registration: registration,
                },
                GFP_KERNEL,
            )?;
            Ok(())
        })();
        if registered.is_err() {
            let _ = self.count_target(class, false);
        }
        registered
    }

    fn release_class(&self, class: Guid) {
        if matches!(self.count_target(class, false), Ok(0)) && self.module.is_some() {
            // Unregistering removes the type's devices, which waits for
            // their users: never do it from a channel's own thread.
            let _ = sys::wq().enqueue(self.arc());
        }
    }

    /// Unregisters the drivers of types no client targets any more.
    fn unregister_idle(&self) {
        let mut g = self.classes.lock();
        let mut i = 0;
        while i < g.len() {
            if self.is_targeted(&g[i].class) {
                i += 1;
                continue;
            }
            // The driver core removes the type's devices; kmcl's remove
            // runs for each, under this lock, which keeps a new Enable of
            // the type from registering it again meanwhile. No client uses
            // them, so the removals do not wait.
            let c = g.remove(i);
            drop(c);
        }
    }

    /// Unregisters every driver; at module unload, when no client is left.
    pub(crate) fn shutdown(&self) {
        let regs = {
            let mut g = self.classes.lock();
            core::mem::take(&mut *g)
        };
        drop(regs);
    }
}

impl WorkItem for HvBus {
    type Pointer = Arc<HvBus>;

    fn run(this: Arc<HvBus>) {
        this.unregister_idle();
    }
}

/// The channel callback `vmbus_open()` was given: runs in the channel's
/// tasklet when the host signals, drains the ring and flushes sends.
///
/// # Safety
///
/// `ctx` is the channel reference given to `vmbus_open()`, which is kept
/// until after `vmbus_close()`.
pub(super) unsafe extern "C" fn on_channel_callback(ctx: *mut c_void) {
    // SAFETY: by the function's safety contract, `ctx` is a live `Arc`.
    let chan = unsafe { ArcBorrow::<Channel>::from_raw(ctx.cast_const().cast()) };
    chan.on_host_interrupt();
}
