// SPDX-License-Identifier: GPL-2.0

//! Memory shared with the host over the hv transport: GPADLs through
//! `vmbus_establish_gpadl()` / `vmbus_teardown_gpadl()`, buffers that kmcl
//! allocates for sharing through `vmbus_alloc_buffer()` /
//! `vmbus_establish_gpadl_caller_decrypted()` / `vmbus_free_buffer()`, and
//! MMIO space through `vmbus_allocate_mmio()`.
//!
//! In a confidential VM, establishing a GPADL over the driver's own memory
//! makes its pages visible to the host (decrypts them), and tearing it down
//! encrypts them again. `struct vmbus_gpadl` records whether the pages are
//! still decrypted. If they are after a teardown (or after a failed
//! establish), or the teardown failed, the host may still read and write
//! them: kmcl then never hands them back to the allocator, nor to the
//! driver, and leaks them on purpose.
//!
//! A [`SharedBuffer`] is host-visible from its allocation to its release:
//! `vmbus_alloc_buffer()` decrypts it in physically contiguous chunks, and
//! `vmbus_free_buffer()` encrypts each chunk again before freeing it, and
//! leaks a chunk whose re-encryption failed. kmcl frees it only through
//! `vmbus_free_buffer()`, and not at all once a teardown of its GPADL
//! failed.

use core::{
    ops::{
        Deref,
        DerefMut, //
    },
    ptr::NonNull,
    slice, //
};

use kernel::{
    page::PAGE_SIZE,
    prelude::*,
    sync::Arc, //
};

use super::bus::HvDevice;
use crate::{
    transport::memory::GpadlMemory,
    vmbus::ffi::VmbusChannel, //
};

/// The helper's functions for devices and shared memory.
pub(crate) mod ffi {
    use kernel::prelude::*;

    use super::VmbusGpadl;
    use crate::{
        transport::hv::ChannelCallback,
        vmbus::ffi::{
            HvDevice,
            VmbusChannel, //
        },
    };

    extern "C" {
        pub(crate) fn kmcl_hv_prepare_open(c: *mut VmbusChannel, max_pkt: u32, rqstor: u32);
        pub(crate) fn kmcl_hv_forget_settings(c: *mut VmbusChannel);
        pub(crate) fn kmcl_hv_open(
            c: *mut VmbusChannel,
            ring_pages: u32,
            cb: Option<ChannelCallback>,
            ctx: *mut c_void,
        ) -> c_int;
        pub(crate) fn kmcl_hv_close(c: *mut VmbusChannel);
        pub(crate) fn kmcl_hv_allocate_mmio(
            dev: *mut HvDevice,
            size: u64,
            start: *mut u64,
        ) -> c_int;
        pub(crate) fn kmcl_hv_free_mmio(start: u64, size: u64);
        pub(crate) fn kmcl_hv_gpadl_alloc() -> *mut VmbusGpadl;
        pub(crate) fn kmcl_hv_gpadl_free(g: *mut VmbusGpadl);
        pub(crate) fn kmcl_hv_gpadl_establish(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            size: u32,
            g: *mut VmbusGpadl,
        ) -> c_int;
        pub(crate) fn kmcl_hv_gpadl_establish_decrypted(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            size: u32,
            g: *mut VmbusGpadl,
        ) -> c_int;
        pub(crate) fn kmcl_hv_gpadl_teardown(c: *mut VmbusChannel, g: *mut VmbusGpadl) -> c_int;
        pub(crate) fn kmcl_hv_gpadl_mark_shared(g: *mut VmbusGpadl);
        pub(crate) fn kmcl_hv_alloc_buffer(
            c: *mut VmbusChannel,
            size: u32,
            chunks: *mut *mut c_void,
            chunk_cnt: *mut u32,
        ) -> *mut c_void;
        pub(crate) fn kmcl_hv_free_buffer(addr: *mut c_void, chunks: *mut c_void, chunk_cnt: u32);
        pub(crate) fn kmcl_hv_leak_buffer(addr: *mut c_void, chunks: *mut c_void);
        pub(crate) fn kmcl_hv_gpadl_handle(g: *const VmbusGpadl) -> u32;
        pub(crate) fn kmcl_hv_gpadl_decrypted(g: *const VmbusGpadl) -> bool;
        pub(crate) fn kmcl_hv_vmap_pages(pages: *mut *mut c_void, count: u32) -> *mut c_void;
        pub(crate) fn kmcl_hv_vunmap(addr: *mut c_void);
        pub(crate) fn kmcl_mark_not_leak(ptr: *const c_void);
    }
}

/// Memory that kmcl allocated for sharing with the host, behind a GPADL
/// made with [`Channel::create_gpadl_shared`] over the hv transport.
///
/// In a confidential VM the memory is visible to the host (decrypted) for
/// as long as the buffer lives, even after its GPADL was deleted: keep in
/// it only what the host may see. Dropping the buffer encrypts it again and
/// frees it; memory whose encryption fails is never freed.
///
/// [`Channel::create_gpadl_shared`]: crate::Channel::create_gpadl_shared
///
/// # Invariants
///
/// `addr` maps `len` bytes, whole kernel pages, that `kmcl_hv_alloc_buffer`
/// allocated together with `chunks` (`chunk_cnt` entries, or null). The
/// buffer owns them: they are released once, by `kmcl_hv_free_buffer` in
/// `drop`, or kept forever by `SharedBuffer::leak`.
pub struct SharedBuffer {
    addr: NonNull<u8>,
    len: usize,
    chunks: *mut c_void,
    chunk_cnt: u32,
}

// SAFETY: the buffer is plain memory owned by the value; nothing in it is
// tied to a thread.
unsafe impl Send for SharedBuffer {}
// SAFETY: `&SharedBuffer` only reads the memory.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// `len` bytes, rounded up to whole pages, allocated for `chan`'s host
    /// by `vmbus_alloc_buffer()`, zeroed.
    ///
    /// # Safety
    ///
    /// `chan` is an open channel (`vmbus_alloc_buffer()` reads its target
    /// CPU and whether its host may see all guest memory).
    unsafe fn alloc(chan: *mut VmbusChannel, len: usize) -> Result<Self> {
        let len = len
            .checked_next_multiple_of(PAGE_SIZE)
            .filter(|&l| l != 0)
            .ok_or(EINVAL)?;
        let size = u32::try_from(len).map_err(|_| EINVAL)?;
        let mut chunks = core::ptr::null_mut();
        let mut chunk_cnt = 0;
        // SAFETY: `chan` is open (the caller's contract); the out-pointers
        // are valid.
        let addr = unsafe { ffi::kmcl_hv_alloc_buffer(chan, size, &mut chunks, &mut chunk_cnt) };
        let addr = NonNull::new(addr.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: `addr` maps `size` bytes allocated with `chunks`.
        Ok(Self {
            addr,
            len,
            chunks,
            chunk_cnt,
        })
    }

    fn ptr(&self) -> *mut c_void {
        self.addr.as_ptr().cast()
    }

    /// Keeps memory the host may still see out of the allocator for good.
    fn leak(self) {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: by the type invariant; the buffer is never freed now.
        unsafe { ffi::kmcl_hv_leak_buffer(this.ptr(), this.chunks) };
    }
}

/// The memory: whole pages, zeroed at allocation.
impl Deref for SharedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: by the type invariant `addr` maps `len` bytes owned by
        // `self`, initialised (zeroed) at allocation.
        unsafe { slice::from_raw_parts(self.addr.as_ptr(), self.len) }
    }
}

impl DerefMut for SharedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { slice::from_raw_parts_mut(self.addr.as_ptr(), self.len) }
    }
}

impl Drop for SharedBuffer {
    #[inline(never)]
    fn drop(&mut self) {
        // SAFETY: by the type invariant, the buffer's one release.
        unsafe { ffi::kmcl_hv_free_buffer(self.ptr(), self.chunks, self.chunk_cnt) };
    }
}

/// Opaque `struct vmbus_gpadl`.
#[repr(C)]
pub(crate) struct VmbusGpadl {
    _opaque: [u8; 0],
}

/// A GPADL established on a bound device.
///
/// # Invariants
///
/// `g` was allocated by `kmcl_hv_gpadl_alloc` and is freed only in
/// [`HvGpadl::delete`]; `vmap`, if set, maps the GPADL's pages.
pub(crate) struct HvGpadl {
    dev: Arc<HvDevice>,
    g: NonNull<VmbusGpadl>,
    vmap: Option<NonNull<c_void>>,
}

// SAFETY: the GPADL is only reached under the device's memory lock.
unsafe impl Send for HvGpadl {}
// SAFETY: `&HvGpadl` exposes nothing.
unsafe impl Sync for HvGpadl {}

/// Whether the host may still see `g`'s pages.
fn decrypted(g: NonNull<VmbusGpadl>) -> bool {
    // SAFETY: `g` is a live `vmbus_gpadl`.
    unsafe { ffi::kmcl_hv_gpadl_decrypted(g.as_ptr()) }
}

/// Keeps memory the host may still see out of the allocator for good.
fn quarantine(mem: GpadlMemory) {
    pr_err!("GPADL memory could not be made private again; leaking it\n");
    let (ptr, cap) = match mem {
        GpadlMemory::Buffer(b) => {
            let (ptr, _, cap) = b.into_raw_parts();
            (ptr.cast::<c_void>().cast_const(), cap)
        }
        GpadlMemory::Pages(p) => {
            let (ptr, _, cap) = p.into_raw_parts();
            (ptr.cast::<c_void>().cast_const(), cap)
        }
        GpadlMemory::Shared(b) => {
            b.leak();
            return;
        }
    };
    if cap != 0 {
        // SAFETY: `ptr` is the start of a live allocation, never freed now.
        unsafe { ffi::kmcl_mark_not_leak(ptr) };
    }
}

/// The address and size `vmbus_establish_gpadl()` is given for `mem`, and
/// the mapping made for it, if any.
fn map(mem: &GpadlMemory) -> Result<(*mut c_void, u32, Option<NonNull<c_void>>)> {
    match mem {
        GpadlMemory::Buffer(b) => {
            // Linux shares whole kernel pages: the buffer must be made of
            // them.
            if b.is_empty() || b.as_ptr() as usize % PAGE_SIZE != 0 || b.len() % PAGE_SIZE != 0 {
                return Err(EINVAL);
            }
            let size = u32::try_from(b.len()).map_err(|_| EINVAL)?;
            Ok((b.as_ptr().cast_mut().cast(), size, None))
        }
        GpadlMemory::Pages(pages) => {
            let count = u32::try_from(pages.len()).map_err(|_| EINVAL)?;
            let size = count.checked_mul(PAGE_SIZE as u32).ok_or(EINVAL)?;
            if count == 0 {
                return Err(EINVAL);
            }
            let mut raw = KVec::with_capacity(pages.len(), GFP_KERNEL)?;
            for p in pages.iter() {
                raw.push(p.as_ptr().cast::<c_void>(), GFP_KERNEL)?;
            }
            // SAFETY: `raw` holds `count` valid pages, owned by `mem`.
            let va = unsafe { ffi::kmcl_hv_vmap_pages(raw.as_mut_ptr(), count) };
            let va = NonNull::new(va).ok_or(ENOMEM)?;
            Ok((va.as_ptr(), size, Some(va)))
        }
        GpadlMemory::Shared(b) => {
            let size = u32::try_from(b.len()).map_err(|_| EINVAL)?;
            Ok((b.ptr(), size, None))
        }
    }
}

fn unmap(vmap: Option<NonNull<c_void>>) {
    if let Some(va) = vmap {
        // SAFETY: `va` came from `kmcl_hv_vmap_pages` and is unmapped once.
        unsafe { ffi::kmcl_hv_vunmap(va.as_ptr()) };
    }
}

impl HvGpadl {
    /// Establishes a GPADL over `mem` on `dev`'s open channel, if it is
    /// still open `epoch`; returns once the host has it. On failure, `mem` comes back, unless the host may
    /// still see it.
    pub(crate) fn establish(
        dev: &Arc<HvDevice>,
        epoch: u64,
        mem: GpadlMemory,
    ) -> core::result::Result<(Self, u32, GpadlMemory), (Error, Option<GpadlMemory>)> {
        let (va, size, vmap) = match map(&mem) {
            Ok(m) => m,
            Err(e) => return Err((e, Some(mem))),
        };
        // SAFETY: a plain allocation.
        let Some(g) = NonNull::new(unsafe { ffi::kmcl_hv_gpadl_alloc() }) else {
            unmap(vmap);
            return Err((ENOMEM, Some(mem)));
        };
        let fail = |e: Error, mem: GpadlMemory| {
            let mem = if decrypted(g) {
                quarantine(mem);
                None
            } else {
                Some(mem)
            };
            unmap(vmap);
            // SAFETY: `g` is not registered anywhere.
            unsafe { ffi::kmcl_hv_gpadl_free(g.as_ptr()) };
            Err((e, mem))
        };
        let mut m = dev.memory.lock();
        // Closed, or reopened for another client since the caller looked.
        if !m.open || m.epoch != epoch {
            drop(m);
            return fail(ENODEV, mem);
        }
        if let Err(e) = m.gpadls.reserve(1, GFP_KERNEL) {
            drop(m);
            return fail(e.into(), mem);
        }
        // A buffer of `vmbus_alloc_buffer()` is host-visible already: Linux
        // must not decrypt it again, nor encrypt it at the teardown.
        let establish = match mem {
            GpadlMemory::Shared(_) => dev.ops.gpadl_establish_decrypted,
            _ => dev.ops.gpadl_establish,
        };
        // SAFETY: the channel is open while `open` is set under this lock;
        // `va` maps `size` bytes of `mem`, which outlives the GPADL.
        let r = unsafe { establish(dev.channel(), va, size, g.as_ptr()) };
        if let Err(e) = kernel::error::to_result(r) {
            drop(m);
            return fail(e, mem);
        }
        // Cannot fail: room was reserved above.
        let _ = m.gpadls.push_within_capacity(g.as_ptr() as usize);
        drop(m);
        // SAFETY: `g` is live.
        let handle = unsafe { ffi::kmcl_hv_gpadl_handle(g.as_ptr()) };
        // INVARIANT: `g` is from `kmcl_hv_gpadl_alloc`; `vmap` maps `mem`.
        Ok((
            Self {
                dev: dev.clone(),
                g,
                vmap,
            },
            handle,
            mem,
        ))
    }

    /// Allocates `len` bytes (whole pages) with `vmbus_alloc_buffer()` and
    /// establishes a GPADL over them on `dev`'s channel, if it is still
    /// open `epoch`. On failure the buffer is freed, unless the host may
    /// still see it.
    pub(crate) fn allocate(
        dev: &Arc<HvDevice>,
        epoch: u64,
        len: usize,
    ) -> core::result::Result<(Self, u32, GpadlMemory), (Error, Option<GpadlMemory>)> {
        let buf = {
            let m = dev.memory.lock();
            if !m.open || m.epoch != epoch {
                return Err((ENODEV, None));
            }
            // SAFETY: the channel is open while `open` is set under this
            // lock.
            unsafe { SharedBuffer::alloc(dev.channel(), len) }.map_err(|e| (e, None))?
        };
        Self::establish(dev, epoch, GpadlMemory::Shared(buf))
    }

    /// Tears the GPADL down (unless the channel's close did already) and
    /// hands `mem` back, unless the host may still see it.
    pub(crate) fn delete(self, mem: Option<GpadlMemory>) -> Option<GpadlMemory> {
        kernel::task::might_sleep();
        let mut m = self.dev.memory.lock();
        let key = self.g.as_ptr() as usize;
        if let Some(pos) = m.gpadls.iter().position(|&g| g == key) {
            let _ = m.gpadls.remove(pos);
            teardown_gpadl(&self.dev, self.g.as_ptr());
        }
        drop(m);
        let mem = match mem {
            Some(mem) if decrypted(self.g) => {
                quarantine(mem);
                None
            }
            mem => mem,
        };
        unmap(self.vmap);
        // SAFETY: the GPADL is torn down and no longer listed: last use.
        unsafe { ffi::kmcl_hv_gpadl_free(self.g.as_ptr()) };
        mem
    }
}

/// `vmbus_teardown_gpadl()` on `dev`'s channel, which is open: called with
/// the device's memory lock held. After a failure the host may still map
/// the pages: they are marked as still shared, and never freed.
pub(crate) fn teardown_gpadl(dev: &HvDevice, g: *mut VmbusGpadl) {
    // SAFETY: the caller holds the memory lock with the channel open, and
    // `g` is a GPADL established on it.
    let r = unsafe { (dev.ops.gpadl_teardown)(dev.channel(), g) };
    if r != 0 {
        pr_warn!("GPADL teardown failed ({})\n", r);
        // SAFETY: `g` is a live `vmbus_gpadl`.
        unsafe { ffi::kmcl_hv_gpadl_mark_shared(g) };
    }
}

/// The MMIO range for `dev`'s channel, if it is still open `epoch`:
/// allocated on first use from the ranges Hyper-V gave the VMBus, sized by
/// the host's offer.
pub(crate) fn mmio(dev: &HvDevice, epoch: u64) -> Result<(u64, u64)> {
    let size = dev.mmio_bytes();
    let mut m = dev.memory.lock();
    if !m.open || m.epoch != epoch {
        return Err(ENODEV);
    }
    if let Some(start) = m.mmio_start {
        return Ok((start, size));
    }
    if size == 0 {
        return Err(ENOENT);
    }
    let mut start = 0u64;
    // SAFETY: the device is live while its channel is open.
    kernel::error::to_result(unsafe { ffi::kmcl_hv_allocate_mmio(dev.raw(), size, &mut start) })?;
    m.mmio_start = Some(start);
    Ok((start, size))
}

/// Gives back the MMIO range at `start`.
pub(crate) fn free_mmio(dev: &HvDevice, start: u64) {
    // SAFETY: `start` was allocated by `mmio` with this size, once.
    unsafe { ffi::kmcl_hv_free_mmio(start, dev.mmio_bytes()) };
}
