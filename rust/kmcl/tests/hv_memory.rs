// SPDX-License-Identifier: GPL-2.0

//! What the hv transport allocates to share with the host: the ring block
//! of `vmbus_open()`, and buffers behind GPADLs.
//!
//! On the devices of `hv_binding.rs`, built in memory: kmcl's sizing and
//! Linux's own `vmbus_alloc_ring()` / `vmbus_free_ring()` allocate and free
//! the rings (only the host's `vmbus_connect_ring()` is replaced), and
//! Linux's `vmbus_alloc_buffer()` / `vmbus_free_buffer()` the shared
//! buffers; the GPADL messages are stand-ins that count. Allocation
//! failures are injected in kmcl's C helper (`rust/helpers/vmbus.c`, built
//! with `CONFIG_KUNIT` only), which also counts the shared buffers alive.

use core::sync::atomic::{
    AtomicI32,
    AtomicU32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::{
    harness::{
        wait_for,
        Pair,
        Recorder, //
    },
    hv_binding::{
        bus,
        offer,
        opened,
        pages_buffer,
        Errors,
        TestDevice,
        INST_1,
        TYPE_A, //
    },
};
use crate::{
    channel::{
        callbacks::StateChange,
        gpadl::{
            GpadlBytes,
            GpadlMemory, //
        },
        Channel,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        hv::HvBus,
        Bus, //
    },
};

mod ffi {
    use kernel::prelude::*;

    use crate::vmbus::ffi::VmbusChannel;

    extern "C" {
        pub(super) fn kmcl_hv_test_fail_allocs(rings: c_int, buffers: c_int);
        pub(super) fn kmcl_hv_test_buffers_alive() -> c_int;
        pub(super) fn kmcl_hv_test_ring_block(
            c: *mut VmbusChannel,
            pages: *mut u32,
            send: *mut u32,
        );
        pub(super) fn kmcl_hv_test_decrypted_gpadl_stats(last_size: *mut u32) -> u32;
        pub(super) fn kmcl_hv_test_set_teardown_error(err: c_int);
    }
}

/// Injected failures, cleared when the guard is dropped.
struct Faults;

impl Faults {
    /// The next `rings` ring allocations and `buffers` shared buffer
    /// allocations fail with `ENOMEM`.
    fn allocs(rings: i32, buffers: i32) -> Self {
        // SAFETY: plain setter.
        unsafe { ffi::kmcl_hv_test_fail_allocs(rings, buffers) };
        Faults
    }

    /// Every GPADL teardown fails with `err`.
    fn teardown(err: Error) -> Self {
        // SAFETY: plain setter.
        unsafe { ffi::kmcl_hv_test_set_teardown_error(err.to_errno()) };
        Faults
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        // SAFETY: plain setters.
        unsafe {
            ffi::kmcl_hv_test_fail_allocs(0, 0);
            ffi::kmcl_hv_test_set_teardown_error(0);
        }
    }
}

/// Shared buffers allocated by kmcl and not freed (leaked ones included).
fn buffers_alive() -> i32 {
    // SAFETY: plain getter.
    unsafe { ffi::kmcl_hv_test_buffers_alive() }
}

/// Caller-decrypted GPADLs established so far, and the last one's size.
fn decrypted_gpadls() -> (u32, u32) {
    let mut size = 0;
    // SAFETY: plain getter; the out-pointer is valid.
    let n = unsafe { ffi::kmcl_hv_test_decrypted_gpadl_stats(&mut size) };
    (n, size)
}

/// The ring block `vmbus_alloc_ring()` recorded in the device's channel:
/// its pages (0 when none is allocated) and where the receive ring starts.
fn ring_block(dev: &TestDevice) -> (u32, u32) {
    let (mut pages, mut send) = (0, 0);
    // SAFETY: the channel is live; the out-pointers are valid.
    unsafe { ffi::kmcl_hv_test_ring_block(dev.raw(), &mut pages, &mut send) };
    (pages, send)
}

/// The errors PnpFailure reported.
struct PnpLog {
    count: AtomicU32,
    last: AtomicI32,
}

impl StateChange for PnpLog {
    fn pnp_failure(&self, _channel: &Channel, error: Error) {
        self.last.store(error.to_errno(), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl PnpLog {
    fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    fn last(&self) -> i32 {
        self.last.load(Ordering::Relaxed)
    }
}

/// A client of `TYPE_A` on `bus` with `ring_pages` per direction.
fn client(bus: &Arc<HvBus>, ring_pages: u32) -> Result<(ChannelHandle, Arc<PnpLog>)> {
    let log = Arc::new(
        PnpLog {
            count: AtomicU32::new(0),
            last: AtomicI32::new(0),
        },
        GFP_KERNEL,
    )?;
    let h = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
        .process_packet_callbacks(Recorder::new()?)
        .state_change_callbacks(log.clone())
        .vmbus_handle(Bus::Hv(bus.clone()))
        .target_pnp(TYPE_A, None)
        .ring_buffer_page_count(ring_pages)
        .build()?;
    Ok((h, log))
}

#[kunit_tests(kmcl_hv_memory)]
mod tests {
    use super::*;

    #[test]
    fn ring_count_not_a_power_of_two_is_rounded_up_to_fill_the_block() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        for (asked, per_ring) in [(5u32, 8u32), (4, 4), (2, 2)] {
            let (mut h, log) = client(&bus, asked)?;
            h.enable()?;
            h.wait_for_state(State::Started, Delta::from_millis(2000))?;
            assert_eq!(log.count(), 0);
            // One block for both rings, a power of two pages, none unused.
            assert_eq!(ring_block(&dev), (2 * per_ring, per_ring));
            assert_eq!(dev.open_params().0, (per_ring - 1) * 4096);
            h.disable()?;
            // vmbus_free_ring() gave the block back.
            assert_eq!(ring_block(&dev), (0, 0));
        }
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn ring_beyond_the_largest_block_is_refused_as_pnp_failure() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        // 2 x 4 MiB: beyond MAX_PAGE_ORDER, which the page allocator would
        // refuse with a warning.
        let (mut h, log) = client(&bus, 1024)?;
        h.enable()?;
        assert!(wait_for(2000, || log.count() == 1));
        assert_eq!(log.last(), EINVAL.to_errno());
        assert_eq!(h.state(), State::Enabled);
        assert!(!dev.is_open() && !dev.has_callback());
        assert_eq!(ring_block(&dev), (0, 0));
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn failed_ring_allocation_is_pnp_failure_enomem_and_enable_works_again() -> Result {
        let bus = bus()?;
        let (dev, d) = offer(&bus, TYPE_A, INST_1, 0)?;
        let (mut h, log) = client(&bus, 4)?;
        {
            let _f = Faults::allocs(1, 0);
            h.enable()?;
            assert!(wait_for(2000, || log.count() == 1));
        }
        assert_eq!(log.last(), ENOMEM.to_errno());
        // Nothing left open or allocated; the client waits, Enabled.
        assert_eq!(h.state(), State::Enabled);
        assert!(!dev.is_open() && !dev.has_callback());
        assert_eq!(ring_block(&dev), (0, 0));
        // Disabled and enabled again, it opens the device.
        h.disable()?;
        assert_eq!(h.state(), State::Disabled);
        h.enable()?;
        h.wait_for_state(State::Started, Delta::from_millis(2000))?;
        assert_eq!(ring_block(&dev), (8, 4));
        assert_eq!(log.count(), 1);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn shared_gpadl_comes_from_vmbus_alloc_buffer_established_caller_decrypted() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let alive = buffers_alive();
        let (n, _) = decrypted_gpadls();
        assert!(
            matches!(h.create_gpadl_shared(0, crate::channel::GpadlFlags::NONE), Err(e) if e == EINVAL)
        );
        let mut g = h.create_gpadl_shared(10000, crate::channel::GpadlFlags::NONE)?;
        assert_ne!(g.id(), 0);
        assert_eq!(buffers_alive(), alive + 1);
        // Whole pages, shared as a buffer the caller decrypted.
        assert_eq!(decrypted_gpadls(), (n + 1, 3 * 4096));
        match g.memory() {
            Some(GpadlBytes::Shared(mut b)) => {
                assert_eq!(b.len(), 3 * 4096);
                let mut page = [0xffu8; 4096];
                for pos in (0..3 * 4096).step_by(4096) {
                    b.read(pos, &mut page)?;
                    assert!(page.iter().all(|&x| x == 0));
                }
                // Past the end: refused, nothing copied.
                assert_eq!(b.read(3 * 4096 - 4, &mut [0u8; 5]), Err(EINVAL));
                assert_eq!(b.write(usize::MAX, b"x"), Err(EINVAL));
                b.write(4096, b"guest")?;
                let mut back = [0u8; 5];
                b.read(4096, &mut back)?;
                assert_eq!(&back, b"guest");
            }
            _ => return Err(EINVAL),
        }
        let mem = h.delete_gpadl(g).map_err(|(e, _)| e)?;
        match mem {
            Some(GpadlMemory::Shared(ref b)) => assert_eq!(&b[4096..4101], b"guest"),
            _ => return Err(EINVAL),
        }
        // The buffer is freed when the driver drops it, not before.
        assert_eq!(buffers_alive(), alive + 1);
        drop(mem);
        assert_eq!(buffers_alive(), alive);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn shared_gpadl_whose_allocation_fails_is_enomem_and_establishes_nothing() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let alive = buffers_alive();
        let (n, _) = decrypted_gpadls();
        {
            let _f = Faults::allocs(0, 1);
            assert!(
                matches!(h.create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE), Err(e) if e == ENOMEM)
            );
            assert_eq!(decrypted_gpadls().0, n);
            assert_eq!(buffers_alive(), alive);
            // One failure only: the next allocation succeeds.
            let g = h.create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE)?;
            drop(h.delete_gpadl(g));
        }
        assert_eq!(buffers_alive(), alive);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn shared_gpadl_whose_establish_fails_frees_its_buffer() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let alive = buffers_alive();
        {
            let _e = Errors::set(EIO, Some(EIO), false);
            assert!(
                matches!(h.create_gpadl_shared(2 * 4096, crate::channel::GpadlFlags::NONE), Err(e) if e == EIO)
            );
        }
        assert_eq!(buffers_alive(), alive);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn gpadl_whose_teardown_failed_is_never_freed() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let alive = buffers_alive();
        let shared = h.create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE)?;
        let own = h.create_gpadl_from_buffer(pages_buffer(1)?, crate::channel::GpadlFlags::NONE)?;
        {
            let _f = Faults::teardown(EIO);
            // The host may still map them: neither returned nor freed.
            assert!(matches!(h.delete_gpadl(shared), Ok(None)));
            assert!(matches!(h.delete_gpadl(own), Ok(None)));
        }
        // Kept for good (kmemleak is told).
        assert_eq!(buffers_alive(), alive + 1);
        h.disable()?;
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn shared_gpadl_left_past_closed_is_torn_down_and_its_buffer_returned() -> Result {
        let bus = bus()?;
        let (h, _rec, _dev, d) = opened(&bus)?;
        let _e = Errors::none(false);
        let alive = buffers_alive();
        let g = h.create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE)?;
        h.disable()?;
        let mem = h.delete_gpadl(g).map_err(|(e, _)| e)?;
        assert!(matches!(mem, Some(GpadlMemory::Shared(ref b)) if b.len() == 4096));
        drop(mem);
        assert_eq!(buffers_alive(), alive);
        // No channel, no allocation.
        assert!(
            matches!(h.create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE), Err(e) if e == ENODEV)
        );
        assert_eq!(buffers_alive(), alive);
        bus.remove(&d);
        Ok(())
    }

    #[test]
    fn shared_gpadl_on_loopback_is_a_zeroed_buffer_the_server_maps() -> Result {
        let p = Pair::connected()?;
        let alive = buffers_alive();
        let g = p
            .client
            .create_gpadl_shared(5000, crate::channel::GpadlFlags::NONE)?;
        // Not a buffer of hv_vmbus.
        assert_eq!(buffers_alive(), alive);
        let m = p.server.map_gpadl(g.id())?;
        assert_eq!(m.len(), 2 * 4096);
        let mut b = [0xffu8; 8];
        m.read(8184, &mut b)?;
        assert_eq!(b, [0; 8]);
        m.write(10, b"srv")?;
        drop(m);
        match p.client.delete_gpadl(g) {
            Ok(Some(GpadlMemory::Buffer(b))) => assert_eq!(&b[10..13], b"srv"),
            _ => return Err(EINVAL),
        }
        Ok(())
    }
}
