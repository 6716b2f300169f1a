// SPDX-License-Identifier: GPL-2.0

//! Client channels on VMBus devices: binding, open, close, rescind,
//! hibernation, GPADLs and MMIO over the hv transport.
//!
//! The suites build `hv_device`s with their `vmbus_channel`s in memory
//! (`rust/helpers/hv_test.c`) and hand them to an [`HvBus`] as `hv_vmbus`
//! hands devices to kmcl's driver. The bus is kmcl's real code; what stands
//! in for Linux is the part that needs a host: `vmbus_open()` builds the
//! rings in memory instead of asking the host, `vmbus_establish_gpadl()`
//! counts instead of posting a message. Packets then flow through Linux's
//! ring code as on a real channel, and the channel callback runs in softirq
//! context as the tasklet runs it.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicU32,
        Ordering, //
    },
};

use kernel::{
    alloc::KVVec,
    device::Core,
    device_id::IdArray,
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    self,
    completion_bytes,
    inband,
    mode,
    wait_for,
    Done,
    Ev,
    Recorder, //
};
use crate::{
    channel::{
        outgoing::SendFlags,
        Channel,
        ChannelBuilder,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        hv::{
            HvBus,
            Ops, //
        },
        Bus,
    },
    vmbus::{
        self,
        ffi::{
            HvDevice as RawDevice,
            HvVmbusDeviceId,
            VmbusChannel, //
        },
    },
    wire::{
        guid::Guid,
        packet::{
            self,
            Kind,
            Limits, //
        },
        ring::{
            RingReader,
            RingWriter, //
        },
    },
};

mod ffi {
    use kernel::prelude::*;

    use crate::{
        transport::hv::{
            memory::VmbusGpadl,
            ChannelCallback, //
        },
        vmbus::ffi::{
            HvDevice,
            VmbusChannel, //
        },
        wire::guid::Guid,
    };

    extern "C" {
        pub(super) fn kmcl_hv_test_channel_alloc(
            ty: *const Guid,
            instance: *const Guid,
            mmio_mb: u16,
        ) -> *mut VmbusChannel;
        pub(super) fn kmcl_hv_test_channel_free(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_device_new(c: *mut VmbusChannel) -> *mut HvDevice;
        pub(super) fn kmcl_hv_test_device_put(dev: *mut HvDevice);
        pub(super) fn kmcl_hv_test_set_errors(open: c_int, gpadl: c_int, reencrypt_fails: bool);
        pub(super) fn kmcl_hv_test_set_open_delay(ms: c_uint);
        pub(super) fn kmcl_hv_test_open(
            c: *mut VmbusChannel,
            ring_bytes: u32,
            cb: Option<ChannelCallback>,
            ctx: *mut c_void,
        ) -> c_int;
        pub(super) fn kmcl_hv_test_close(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_interrupt(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_open_params(
            c: *mut VmbusChannel,
            ring_datasize: *mut u32,
            max_pkt: *mut u32,
            rqstor: *mut u32,
            direct: *mut bool,
        );
        pub(super) fn kmcl_hv_test_set_rescind(c: *mut VmbusChannel);
        pub(super) fn kmcl_hv_test_has_callback(c: *mut VmbusChannel) -> bool;
        pub(super) fn kmcl_hv_test_gpadl_establish(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            size: u32,
            g: *mut VmbusGpadl,
        ) -> c_int;
        pub(super) fn kmcl_hv_test_gpadl_establish_decrypted(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            size: u32,
            g: *mut VmbusGpadl,
        ) -> c_int;
        pub(super) fn kmcl_hv_test_gpadl_teardown(
            c: *mut VmbusChannel,
            g: *mut VmbusGpadl,
        ) -> c_int;
        pub(super) fn kmcl_hv_get_drvdata(dev: *mut HvDevice) -> *mut c_void;
    }
}

/// The stand-ins for Linux's open, close and GPADL functions.
static TEST_OPS: Ops = Ops {
    open: ffi::kmcl_hv_test_open,
    close: ffi::kmcl_hv_test_close,
    gpadl_establish: ffi::kmcl_hv_test_gpadl_establish,
    gpadl_establish_decrypted: ffi::kmcl_hv_test_gpadl_establish_decrypted,
    gpadl_teardown: ffi::kmcl_hv_test_gpadl_teardown,
};

pub(super) const TYPE_A: Guid = Guid::from_str_const("6e0b5b0e-1c9d-4d1e-9f6b-3a2f0c5d7e11");
pub(super) const TYPE_B: Guid = Guid::from_str_const("2f1d7c3a-8b4e-4a5f-b6c7-d8e9f0a1b2c3");
pub(super) const INST_1: Guid = Guid::from_str_const("00000000-0000-0000-0000-00000000a001");
pub(super) const INST_2: Guid = Guid::from_str_const("00000000-0000-0000-0000-00000000a002");

pub(super) const RING_PAGES: u32 = 4;

/// Suspend and removal cycles of the tests that check a device's callbacks
/// return with its client settled. The recorder keeps 256 events, five a
/// cycle.
const SETTLE_CYCLES: usize = 40;

pub(super) const LIMITS: Limits = Limits {
    max_payload: 4096,
    max_ranges: 4,
    max_external_bytes: 16 * 4096,
};

/// A device as `hv_vmbus` would create it for an offer.
///
/// # Invariants
///
/// `chan` and `dev` come from the test helpers and are freed only in `drop`.
pub(super) struct TestDevice {
    chan: NonNull<VmbusChannel>,
    dev: NonNull<RawDevice>,
    /// The bus that probed it; removes it before it is freed.
    bound: Option<(Arc<HvBus>, Arc<crate::transport::hv::bus::HvDevice>)>,
}

impl TestDevice {
    fn new(class: Guid, instance: Guid, mmio_mb: u16) -> Result<Self> {
        // SAFETY: plain constructors; null on failure.
        let chan =
            NonNull::new(unsafe { ffi::kmcl_hv_test_channel_alloc(&class, &instance, mmio_mb) })
                .ok_or(ENOMEM)?;
        // SAFETY: `chan` is a live test channel.
        let Some(dev) = NonNull::new(unsafe { ffi::kmcl_hv_test_device_new(chan.as_ptr()) }) else {
            // SAFETY: `chan` is unused.
            unsafe { ffi::kmcl_hv_test_channel_free(chan.as_ptr()) };
            return Err(ENOMEM);
        };
        Ok(Self {
            chan,
            dev,
            bound: None,
        })
    }

    /// Offers the device to `bus`, as `hv_vmbus` probes kmcl's driver.
    pub(super) fn probe_on(
        &mut self,
        bus: &Arc<HvBus>,
    ) -> Result<Arc<crate::transport::hv::bus::HvDevice>> {
        let d = bus.probe(self.device())?;
        self.bound = Some((bus.clone(), d.clone()));
        Ok(d)
    }

    pub(super) fn device(&self) -> &vmbus::Device {
        // SAFETY: `dev` lives as long as `self`.
        unsafe { vmbus::Device::from_raw(self.dev.as_ptr()) }
    }

    pub(super) fn raw(&self) -> *mut VmbusChannel {
        self.chan.as_ptr()
    }

    /// The host's ends of the open channel's rings.
    pub(super) fn host(&self) -> Result<Host> {
        // SAFETY: `chan` is live; the rings live until the channel closes,
        // and every test drops its `Host` before closing.
        let ring = |inbound| unsafe { super::hv_interop::ring_of(self.raw(), inbound) };
        Ok(Host {
            reader: RingReader::new(ring(false)?).map_err(|_| EIO)?,
            writer: RingWriter::new(ring(true)?).map_err(|_| EIO)?,
            chan: self.chan,
        })
    }

    /// `(ring data bytes, max_pkt_size, rqstor_size, HV_CALL_DIRECT)`.
    pub(super) fn open_params(&self) -> (u32, u32, u32, bool) {
        let (mut a, mut b, mut c, mut d) = (0, 0, 0, false);
        // SAFETY: `chan` is live; the out-pointers are valid.
        unsafe { ffi::kmcl_hv_test_open_params(self.raw(), &mut a, &mut b, &mut c, &mut d) };
        (a, b, c, d)
    }

    /// Whether a channel callback is set, as `vmbus_open()` sets it.
    pub(super) fn has_callback(&self) -> bool {
        // SAFETY: `chan` is live.
        unsafe { ffi::kmcl_hv_test_has_callback(self.raw()) }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open_params().0 != 0
    }

    /// The host rescinds the offer: Linux sets the flag first.
    pub(super) fn rescind(&self) {
        // SAFETY: `chan` is live.
        unsafe { ffi::kmcl_hv_test_set_rescind(self.raw()) }
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        // As the driver core does before a device goes: its removal closes
        // a client still on it (a no-op if the test removed it already).
        if let Some((bus, d)) = self.bound.take() {
            bus.remove(&d);
        }
        // SAFETY: by the invariant; the device is removed and its channel
        // closed.
        unsafe {
            ffi::kmcl_hv_test_device_put(self.dev.as_ptr());
            ffi::kmcl_hv_test_channel_free(self.chan.as_ptr());
        }
    }
}

/// The host's side of an open test device.
pub(super) struct Host {
    pub(super) reader: RingReader,
    pub(super) writer: RingWriter,
    chan: NonNull<VmbusChannel>,
}

impl Host {
    /// Writes a packet and interrupts the guest: the callback runs as in the
    /// channel's tasklet.
    pub(super) fn send(&mut self, bytes: &[u8]) -> Result {
        let _ = self.writer.write(&[bytes]).map_err(|_| EIO)?;
        // SAFETY: the channel is open while a `Host` exists.
        unsafe { ffi::kmcl_hv_test_interrupt(self.chan.as_ptr()) };
        Ok(())
    }

    /// Interrupts the guest without writing anything.
    pub(super) fn interrupt(&self) {
        // SAFETY: the channel is open while a `Host` exists.
        unsafe { ffi::kmcl_hv_test_interrupt(self.chan.as_ptr()) };
    }

    /// The next packet the guest sent, waiting up to two seconds.
    pub(super) fn next(&mut self) -> Result<KVec<u8>> {
        let mut buf = KVec::from_elem(0u8, 8192, GFP_KERNEL)?;
        let mut n = None;
        if !wait_for(2000, || {
            n = self.reader.read(&mut buf).ok().flatten();
            n.is_some()
        }) {
            return Err(ETIMEDOUT);
        }
        buf.truncate(n.ok_or(EIO)?);
        let _ = self.reader.commit();
        Ok(buf)
    }
}

/// Resets the stand-ins' error knobs when a test ends.
pub(super) struct Errors;

impl Errors {
    pub(super) fn set(open: Error, gpadl: Option<Error>, reencrypt_fails: bool) -> Self {
        // SAFETY: plain setter.
        unsafe {
            ffi::kmcl_hv_test_set_errors(
                open.to_errno(),
                gpadl.map_or(0, |e| e.to_errno()),
                reencrypt_fails,
            )
        };
        Errors
    }

    pub(super) fn none(reencrypt_fails: bool) -> Self {
        // SAFETY: plain setter.
        unsafe { ffi::kmcl_hv_test_set_errors(0, 0, reencrypt_fails) };
        Errors
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        // SAFETY: plain setters.
        unsafe {
            ffi::kmcl_hv_test_set_errors(0, 0, false);
            ffi::kmcl_hv_test_set_open_delay(0);
        }
    }
}

/// Makes every open take `ms` milliseconds until the guard is dropped.
fn slow_open(ms: u32) -> Errors {
    // SAFETY: plain setter.
    unsafe { ffi::kmcl_hv_test_set_open_delay(ms) };
    Errors
}

pub(super) fn bus() -> Result<Arc<HvBus>> {
    HvBus::new(&TEST_OPS, None)
}

/// A builder for a client with a recorder, targeting `class` (and
/// `instance`) on `bus`, to which a test may add settings.
pub(super) fn client_builder(
    bus: &Arc<HvBus>,
    class: Guid,
    instance: Option<Guid>,
) -> Result<(ChannelBuilder, Arc<Recorder>)> {
    let rec = Recorder::new()?;
    let b = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
        .process_packet_callbacks(rec.clone())
        .state_change_callbacks(rec.clone())
        .vmbus_handle(Bus::Hv(bus.clone()))
        .target_pnp(class, instance)
        .ring_buffer_page_count(RING_PAGES);
    Ok((b, rec))
}

/// A client with a recorder, targeting `class` (and `instance`) on `bus`.
pub(super) fn client(
    bus: &Arc<HvBus>,
    class: Guid,
    instance: Option<Guid>,
) -> Result<(ChannelHandle, Arc<Recorder>)> {
    let (b, rec) = client_builder(bus, class, instance)?;
    Ok((b.build()?, rec))
}

/// A device of `class` and `instance`, offered to `bus`.
pub(super) fn offer(
    bus: &Arc<HvBus>,
    class: Guid,
    instance: Guid,
    mmio_mb: u16,
) -> Result<(TestDevice, Arc<crate::transport::hv::bus::HvDevice>)> {
    let mut dev = TestDevice::new(class, instance, mmio_mb)?;
    let d = dev.probe_on(bus)?;
    Ok((dev, d))
}

/// A client opened on a device offered beforehand.
pub(super) fn opened(
    bus: &Arc<HvBus>,
) -> Result<(
    ChannelHandle,
    Arc<Recorder>,
    TestDevice,
    Arc<crate::transport::hv::bus::HvDevice>,
)> {
    let (dev, d) = offer(bus, TYPE_A, INST_1, 0)?;
    let (mut h, rec) = client(bus, TYPE_A, None)?;
    h.enable()?;
    h.wait_for_state(State::Started, Delta::from_millis(2000))?;
    Ok((h, rec, dev, d))
}

/// A page-aligned buffer of `pages` pages.
pub(super) fn pages_buffer(pages: usize) -> Result<KVVec<u8>> {
    let mut b = KVVec::with_capacity(pages * 4096, GFP_KERNEL)?;
    b.resize(pages * 4096, 0x5a, GFP_KERNEL)?;
    Ok(b)
}

// ---- The probe glue, on a device built in memory. ----

static GLUE_INFO: AtomicU32 = AtomicU32::new(0);
static GLUE_REMOVED: AtomicU32 = AtomicU32::new(0);

struct Glue;

struct GlueData(Guid);

static GLUE_TABLE: IdArray<vmbus::DeviceId, u32, 1> =
    IdArray::new([(vmbus::DeviceId::new(TYPE_A), &41)]);

impl vmbus::Driver for Glue {
    type IdInfo = u32;
    type Data<'bound> = GlueData;
    const ID_TABLE: &'static dyn vmbus::IdTable<u32> = &GLUE_TABLE;

    fn probe<'bound>(
        dev: &'bound vmbus::Device<Core<'_>>,
        info: Option<&'static u32>,
    ) -> impl PinInit<GlueData, Error> + 'bound {
        GLUE_INFO.store(info.copied().unwrap_or(0) + 1, Ordering::Relaxed);
        Ok::<_, Error>(GlueData(dev.instance_id()))
    }

    fn unbind(dev: &vmbus::Device<Core<'_>>, data: Pin<&GlueData>) {
        if data.0 == dev.instance_id() {
            GLUE_REMOVED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn drvdata(dev: &TestDevice) -> *mut c_void {
    // SAFETY: `dev` is live.
    unsafe { ffi::kmcl_hv_get_drvdata(dev.dev.as_ptr()) }
}

#[kunit_tests(kmcl_hv_interop_binding)]
mod tests {
    use super::*;

    #[test]
    fn probe_glue_hands_the_device_and_id_info_to_the_driver() -> Result {
        let dev = TestDevice::new(TYPE_A, INST_1, 0)?;
        let ops = vmbus::driver_ops::<Glue>();
        GLUE_INFO.store(0, Ordering::Relaxed);
        GLUE_REMOVED.store(0, Ordering::Relaxed);
        // A static id: its information reaches probe.
        let id = HvVmbusDeviceId {
            guid: TYPE_A.0,
            driver_data: 0,
        };
        // SAFETY: a live device and a valid id, as `hv_vmbus` calls it.
        assert_eq!(unsafe { (ops.probe)(dev.dev.as_ptr(), &id) }, 0);
        assert_eq!(GLUE_INFO.load(Ordering::Relaxed), 42);
        assert!(!drvdata(&dev).is_null());
        // SAFETY: the device was bound by the probe above.
        unsafe { (ops.remove)(dev.dev.as_ptr()) };
        assert_eq!(GLUE_REMOVED.load(Ordering::Relaxed), 1);
        assert!(drvdata(&dev).is_null());
        // An id given at run time carries no information.
        let id = HvVmbusDeviceId {
            guid: TYPE_B.0,
            driver_data: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { (ops.probe)(dev.dev.as_ptr(), &id) }, 0);
        assert_eq!(GLUE_INFO.load(Ordering::Relaxed), 1);
        // SAFETY: as above.
        unsafe { (ops.remove)(dev.dev.as_ptr()) };
        assert_eq!(GLUE_REMOVED.load(Ordering::Relaxed), 2);
        Ok(())
    }

    #[test]
    fn kmcl_driver_probe_without_vmbus_is_enodev() -> Result {
        let dev = TestDevice::new(TYPE_A, INST_1, 0)?;
        let ops = vmbus::driver_ops::<crate::hv::HvDriver>();
        let id = HvVmbusDeviceId {
            guid: TYPE_A.0,
            driver_data: 0,
        };
        // SAFETY: a live device and a valid id.
        let r = unsafe { (ops.probe)(dev.dev.as_ptr(), &id) };
        assert_eq!(r, ENODEV.to_errno());
        assert!(drvdata(&dev).is_null());
        Ok(())
    }

    #[test]
    fn client_without_a_bus_on_a_machine_without_vmbus_is_enodev() -> Result {
        let rec = Recorder::new()?;
        let mut h = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .process_packet_callbacks(rec.clone())
            .target_pnp(TYPE_A, None)
            .build()?;
        assert!(matches!(h.enable(), Err(e) if e == ENODEV));
        assert_eq!(h.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn client_opens_a_device_offered_before_enable() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        assert!(wait_for(2000, || rec.count(Ev::PostStarted) == 1));
        assert_eq!(
            rec.states().as_slice(),
            &[Ev::Opened, Ev::Started, Ev::PostStarted]
        );
        let (datasize, max_pkt, rqstor, direct) = dev.open_params();
        // RingBufferPageCount, control page included, per direction.
        assert_eq!(datasize, (RING_PAGES - 1) * 4096);
        // MaximumPacketSize (default 4096) plus descriptor and ranges.
        // No more than the ring holds, which Linux may copy when a host lies.
        assert!(max_pkt > 4096 && max_pkt <= datasize);
        // Two requestor slots per transaction slot of the channel.
        assert!(rqstor >= 2 * crate::channel::DEFAULT_PACKET_POOL);
        assert!(direct);
        h.disable()?;
        assert!(!dev.is_open());
        // The channel goes back with hv_vmbus's settings for the next driver.
        assert_eq!(dev.open_params(), (0, 0, 0, false));
        assert!(!dev.has_callback());
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn packets_flow_both_ways_on_a_bound_device() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        // Host to guest: through the hv reader in the channel callback.
        rec.mode.store(mode::ECHO, Ordering::Relaxed);
        host.send(&inband(0x31, 1, b"ping over vmbus")?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        // The callback ran in softirq context, as the tasklet.
        assert_eq!(rec.in_softirq.load(Ordering::Relaxed), 1);
        let p = host.next()?;
        let pk = packet::parse(&p, &LIMITS).map_err(|_| EIO)?;
        assert_eq!(pk.kind, Kind::Completion);
        assert_eq!(pk.desc.trans_id, 0x31);
        assert_eq!(pk.payload, b"ping over vmbus\0");
        // Guest to host, with a completion through the requestor.
        let done = Done::new()?;
        harness::send_recorded(&h, b"request", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        let p = host.next()?;
        let wire = packet::parse(&p, &LIMITS).map_err(|_| EIO)?.desc.trans_id;
        host.send(&completion_bytes(wire, b"ok"))?;
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn client_waits_for_an_offer_made_after_enable() -> Result {
        let bus = bus()?;
        let (mut h, rec) = client(&bus, TYPE_A, None)?;
        h.enable()?;
        harness::settle(20);
        assert_eq!(h.state(), State::Enabled);
        // A device of another type does not satisfy it.
        let (other, o) = offer(&bus, TYPE_B, INST_1, 0)?;
        harness::settle(20);
        assert_eq!(h.state(), State::Enabled);
        let (dev, d) = offer(&bus, TYPE_A, INST_2, 0)?;
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert_eq!(rec.count(Ev::Opened), 1);
        assert!(dev.is_open() && !other.is_open());
        h.disable()?;
        bus.remove(&d);
        bus.remove(&o);
        Ok(())
    }

    #[test]
    fn target_instance_picks_the_device() -> Result {
        let bus = bus()?;
        let (one, d1) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (two, d2) = offer(&bus, TYPE_A, INST_2, 0)?;
        let (mut h, _rec) = client(&bus, TYPE_A, Some(INST_2))?;
        h.enable()?;
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert!(two.is_open() && !one.is_open());
        assert_eq!(h.interface_ids(), (TYPE_A, Some(INST_2)));
        h.disable()?;
        bus.remove(&d1);
        bus.remove(&d2);
        Ok(())
    }

    #[test]
    fn open_failure_is_reported_as_pnp_failure() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (mut h, rec) = client(&bus, TYPE_A, None)?;
        {
            let _e = Errors::set(EIO, None, false);
            h.enable()?;
            assert!(wait_for(2000, || rec.count(Ev::PnpFailure) == 1));
        }
        assert_eq!(h.state(), State::Enabled);
        assert_eq!(rec.count(Ev::Opened), 0);
        assert!(!dev.is_open());
        // The failed open left its callback set; kmcl reset it.
        assert!(!dev.has_callback());
        // Offered again (as after a resume), the device opens.
        bus.resume(&d);
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert_eq!(rec.count(Ev::PnpFailure), 1);
        h.disable()?;
        assert_eq!(h.state(), State::Disabled);
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn disable_during_the_open_is_no_pnp_failure() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (mut h, rec) = client(&bus, TYPE_A, None)?;
        let _slow = slow_open(200);
        h.enable()?;
        // The open is under way (the callback is set first).
        assert!(wait_for(2000, || dev.has_callback()));
        h.disable()?;
        assert_eq!(h.state(), State::Disabled);
        assert_eq!(rec.count(Ev::PnpFailure), 0);
        assert_eq!(rec.count(Ev::Opened), 0);
        assert!(!dev.is_open() && !dev.has_callback());
        drop(_slow);
        // The device is free for the next Enable.
        h.enable()?;
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn removal_during_the_open_closes_once_the_open_returns() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (mut h, rec) = client(&bus, TYPE_A, None)?;
        let _slow = slow_open(200);
        h.enable()?;
        assert!(wait_for(2000, || dev.has_callback()));
        // Linux removes the device while the open waits for the host.
        dev.rescind();
        bus.remove(&d);
        assert!(!dev.is_open() && !dev.has_callback());
        assert!(wait_for(2000, || h.state() == State::Disabled));
        // It opened, then closed: Closed pairs with Opened, no PnpFailure.
        assert_eq!(rec.count(Ev::Opened), rec.count(Ev::Closed));
        assert_eq!(rec.count(Ev::PnpFailure), 0);
        assert!(matches!(h.packet_allocate(), Err(e) if e == ENODEV));
        Ok(())
    }

    #[test]
    fn disable_frees_the_device_for_the_next_client() -> Result {
        let bus = bus()?;
        let (h, _rec, dev, d) = opened(&bus)?;
        let (mut second, rec2) = client(&bus, TYPE_A, None)?;
        second.enable()?;
        harness::settle(20);
        // One device, one user.
        assert_eq!(second.state(), State::Enabled);
        h.disable()?;
        second.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert_eq!(rec2.count(Ev::Opened), 1);
        assert!(dev.is_open());
        second.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn rescind_cancels_sends_once_closes_and_refuses_calls() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        let done = Done::new()?;
        harness::send_recorded(&h, b"never answered", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        let mut host = dev.host()?;
        let _ = host.next()?;
        // Linux sets the flag, then removes the device.
        dev.rescind();
        // Sends into a rescinded channel fail at once.
        assert!(matches!(harness::send(&h, b"late", false), Err(e) if e == ENODEV));
        bus.remove(&d);
        assert!(!dev.is_open());
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        assert_eq!(done.removed.load(Ordering::Relaxed), 1);
        assert_eq!(rec.count(Ev::Suspend), 1);
        assert_eq!(rec.count(Ev::Closed), 1);
        assert_eq!(h.state(), State::Disabled);
        // Every call afterwards is refused with ENODEV.
        assert!(matches!(h.packet_allocate(), Err(e) if e == ENODEV));
        let mut resp = [0u8; 8];
        assert!(
            matches!(h.send_synchronous_request(b"x", SendFlags::WAIT_FOR_COMPLETION, &mut resp, None), Err(e) if e == ENODEV)
        );
        assert!(matches!(h.mmio_space(), Err(e) if e == ENODEV));
        assert_eq!(done.count.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn hibernation_suspends_closes_and_reopens() -> Result {
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        bus.suspend(&d);
        assert!(!dev.is_open());
        assert_eq!(rec.count(Ev::Suspend), 1);
        assert_eq!(rec.count(Ev::Closed), 1);
        assert_eq!(h.state(), State::Enabled);
        bus.resume(&d);
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert_eq!(rec.count(Ev::Opened), 2);
        assert!(dev.is_open());
        // Traffic flows on the reopened rings.
        let mut host = dev.host()?;
        host.send(&inband(7, 0, b"after resume")?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn suspend_returns_with_the_client_enabled_and_waiting() -> Result {
        // `hv_vmbus` hibernates the bus once its drivers' suspend callbacks
        // return: kmcl's must return with the client settled, not in the
        // middle of its teardown. The window is narrow; cycles widen it.
        let bus = bus()?;
        let (h, rec, dev, d) = opened(&bus)?;
        for cycle in 1..=SETTLE_CYCLES {
            bus.suspend(&d);
            assert_eq!(h.state(), State::Enabled);
            assert_eq!(rec.count(Ev::Closed), cycle);
            assert!(!dev.is_open());
            bus.resume(&d);
            h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        }
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn removal_returns_with_the_client_disabled() -> Result {
        // As for suspend: the device's removal returns with the client
        // torn down, Disabled.
        let bus = bus()?;
        for _ in 0..SETTLE_CYCLES {
            let (h, rec, dev, d) = opened(&bus)?;
            bus.remove(&d);
            assert_eq!(h.state(), State::Disabled);
            assert_eq!(rec.count(Ev::Closed), 1);
            assert!(!dev.is_open());
        }
        Ok(())
    }

    #[test]
    fn a_suspend_during_a_failing_open_leaves_no_reconnect_behind() -> Result {
        // A suspend that comes while Opened runs, and an Opened that fails:
        // the rollback closes the device, the suspend's teardown finds
        // nothing open. The next open's rescind must still disable the
        // client, not leave it waiting as after a hibernation.
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (mut h, rec) = client(&bus, TYPE_A, None)?;
        rec.opened_error
            .store(EIO.to_errno().abs(), Ordering::Relaxed);
        rec.opened_sleep_ms.store(200, Ordering::Relaxed);
        h.enable()?;
        assert!(wait_for(2000, || rec.count(Ev::Opened) == 1));
        bus.suspend(&d);
        assert_eq!(rec.count(Ev::PnpFailure), 1);
        assert_eq!(h.state(), State::Enabled);
        rec.opened_error.store(0, Ordering::Relaxed);
        rec.opened_sleep_ms.store(0, Ordering::Relaxed);
        bus.resume(&d);
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert!(dev.is_open());
        bus.remove(&d);
        assert_eq!(h.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn a_stale_peer_close_does_not_close_the_next_connection() -> Result {
        // A peer close raised for a connection that is gone (a suspend
        // during a failing open) can still be pending when a resume lets
        // the client connect again, so that one pass of the control work
        // sees both. The close must not take the new connection down.
        let bus = bus()?;
        let (mut h, _rec) = client(&bus, TYPE_A, None)?;
        h.enable()?;
        assert_eq!(h.state(), State::Enabled);
        let (dev, d) = {
            let hold = h.hold_lifecycle();
            h.peer_closed();
            let offered = offer(&bus, TYPE_A, INST_1, 0);
            drop(hold);
            offered?
        };
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        harness::settle(50);
        assert_eq!(h.state(), State::Started);
        assert!(dev.is_open());
        bus.remove(&d);
        assert_eq!(h.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn late_completion_of_a_timed_out_request_never_completes_another() -> Result {
        let bus = bus()?;
        let (h, _rec, dev, d) = opened(&bus)?;
        let mut host = dev.host()?;
        let mut resp = [0u8; 16];
        let r = h.send_synchronous_request(
            b"slow",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(20)),
        );
        assert!(matches!(r, Err(e) if e == ETIMEDOUT));
        let p = host.next()?;
        let late = packet::parse(&p, &LIMITS).map_err(|_| EIO)?.desc.trans_id;
        // The next request gets a wire id of its own: the requestor keeps
        // the abandoned one until the host answers it.
        let done = Done::new()?;
        harness::send_recorded(&h, b"next", SendFlags::WAIT_FOR_COMPLETION, &done)?;
        let p = host.next()?;
        let next = packet::parse(&p, &LIMITS).map_err(|_| EIO)?.desc.trans_id;
        assert_ne!(next, late);
        // The late answer is refused and completes nothing.
        host.send(&completion_bytes(late, b"late"))?;
        assert!(wait_for(2000, || h
            .stats
            .rejected_completions
            .load(Ordering::Relaxed)
            == 1));
        assert_eq!(done.count.load(Ordering::Relaxed), 0);
        host.send(&completion_bytes(next, b"mine"))?;
        assert!(wait_for(2000, || done.ok.load(Ordering::Relaxed) == 1));
        // It carries its own answer, not the late one.
        assert_eq!(
            done.resp_head.load(Ordering::Relaxed),
            u64::from_le_bytes(*b"mine\0\0\0\0")
        );
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn gpadl_over_hv_is_established_and_returned_on_delete() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let g = h.create_gpadl_from_buffer(pages_buffer(2)?, crate::channel::GpadlFlags::NONE)?;
        assert_ne!(g.id(), 0);
        let mem = h.delete_gpadl(g).map_err(|(e, _)| e)?;
        assert!(
            matches!(mem, Some(crate::channel::gpadl::GpadlMemory::Buffer(ref b)) if b.len() == 8192)
        );
        // Linux shares whole pages only.
        let mut odd = KVVec::with_capacity(100, GFP_KERNEL)?;
        odd.resize(100, 0, GFP_KERNEL)?;
        assert!(
            matches!(h.create_gpadl_from_buffer(odd, crate::channel::GpadlFlags::NONE), Err(e) if e == EINVAL)
        );
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn gpadl_the_host_may_still_see_is_never_freed() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(true);
        let g = h.create_gpadl_from_buffer(pages_buffer(1)?, crate::channel::GpadlFlags::NONE)?;
        // Re-encryption failed: the memory is neither freed nor returned.
        assert!(matches!(h.delete_gpadl(g), Ok(None)));
        // A failed establish that left the pages shared keeps them too.
        let _e = Errors::set(EIO, Some(EIO), true);
        assert!(
            matches!(h.create_gpadl_from_buffer(pages_buffer(1)?, crate::channel::GpadlFlags::NONE), Err(e) if e == EIO)
        );
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn gpadl_left_past_closed_is_torn_down_at_close() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let g = h.create_gpadl_from_buffer(pages_buffer(1)?, crate::channel::GpadlFlags::NONE)?;
        h.disable()?;
        // kmcl tore it down before the close; the memory comes back.
        assert!(matches!(h.delete_gpadl(g), Ok(Some(_))));
        assert!(
            matches!(h.create_gpadl_from_buffer(pages_buffer(1)?, crate::channel::GpadlFlags::NONE), Err(e) if e == ENODEV)
        );
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn mmio_comes_from_vmbus_allocate_mmio() -> Result {
        let bus = bus()?;
        // The offer asks for 2 MiB; off Hyper-V Linux has no MMIO ranges
        // for VMBus, so its allocator refuses.
        let (_dev, d) = offer(&bus, TYPE_A, INST_1, 2)?;
        let (mut h, _rec) = client(&bus, TYPE_A, None)?;
        h.enable()?;
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert!(matches!(h.mmio_space(), Err(e) if e == ENXIO));
        h.disable()?;
        bus.remove(&d);
        // An offer without MMIO has none to give.
        let (h, _rec, _dev, d) = opened(&bus)?;
        assert!(matches!(h.mmio_space(), Err(e) if e == ENOENT));
        assert!(h.set_interrupt_latency(100).is_ok());
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn pipe_client_over_hv_is_refused_and_binds_nothing() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (b, _rec) = client_builder(&bus, TYPE_A, None)?;
        let mut h = b.flags(crate::channel::ChannelFlags::IS_PIPE).build()?;
        assert!(matches!(h.enable(), Err(e) if e == EOPNOTSUPP));
        assert_eq!(h.state(), State::Disabled);
        assert!(!bus.is_targeted(&TYPE_A));
        assert!(!dev.is_open());
        drop(h);
        // Without the flag the same client opens.
        let (b, _rec) = client_builder(&bus, TYPE_A, None)?;
        let mut h = b.flags(crate::channel::ChannelFlags::NONE).build()?;
        h.enable()?;
        assert!(bus.is_targeted(&TYPE_A));
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        h.disable()?;
        assert!(!bus.is_targeted(&TYPE_A));
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn removal_of_an_unused_device_returns_at_once() -> Result {
        let bus = bus()?;
        let (_dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        bus.remove(&d);
        // A client enabled afterwards finds nothing.
        let (mut h, _rec) = client(&bus, TYPE_A, None)?;
        h.enable()?;
        harness::settle(20);
        assert_eq!(h.state(), State::Enabled);
        h.disable()?;
        Ok(())
    }
}
