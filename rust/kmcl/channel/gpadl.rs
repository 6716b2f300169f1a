// SPDX-License-Identifier: GPL-2.0

//! GPADLs: memory a client shares with the server by page frame numbers.
//!
//! A client creates a GPADL from a buffer or pages once the channel is open
//! (usually in Opened) and must delete it before the channel closes (in
//! Closed at the latest). Creation returns after the server side has
//! registered it. A server maps a GPADL by its id, one mapping at a time;
//! deleting blocks while the server has it mapped.

use kernel::{
    alloc::KVVec,
    page::Page,
    prelude::*, //
};

use super::{
    Channel,
    GpadlFlags, //
};
pub use crate::transport::memory::GpadlMemory;
use crate::transport::memory::{
    GpadlBacking,
    GpadlView,
    MemoryPeer,
    Mmio, //
};

/// The bytes of a GPADL's memory while it is shared (`Gpadl::memory`).
/// A view, not the memory: the host (or a loopback server) may map the
/// memory until the GPADL is deleted, so nothing here can free, grow,
/// shrink or replace it.
pub enum GpadlBytes<'a> {
    /// A virtually contiguous buffer ([`GpadlMemory::Buffer`]).
    Buffer(SharedBytes<'a>),
    /// Pages ([`GpadlMemory::Pages`]).
    Pages(&'a [Page]),
    /// A buffer kmcl allocated for sharing ([`GpadlMemory::Shared`]).
    Shared(SharedBytes<'a>),
}

/// Bytes shared with the peer, read and written by copy.
///
/// The peer may read and write them at any time while the GPADL exists,
/// so no Rust reference to them is ever formed: a `&[u8]` or `&mut [u8]`
/// would promise that nothing else changes them. [`SharedBytes::read`] and
/// [`SharedBytes::write`] copy, as a driver in C copies to and from such a
/// buffer; bytes the peer changes during a copy come out as either value.
///
/// # Invariants
///
/// `ptr` is valid for reads and writes of `len` bytes for `'a`, which
/// borrows the [`Gpadl`] (mutably) that owns the memory; every byte of it
/// is initialised. Within this process only this value and the peer's
/// copies reach those bytes while it lives.
pub struct SharedBytes<'a> {
    ptr: core::ptr::NonNull<u8>,
    len: usize,
    _gpadl: core::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> SharedBytes<'a> {
    fn new(bytes: &'a mut [u8]) -> Self {
        // INVARIANT: from a unique borrow of the memory for `'a`, which the
        // GPADL owns and keeps initialised.
        Self {
            len: bytes.len(),
            ptr: core::ptr::NonNull::from(bytes).cast(),
            _gpadl: core::marker::PhantomData,
        }
    }

    /// The length in bytes.
    ///
    /// Context: any context.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    ///
    /// Context: any context.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the bytes at `pos` into `dst`; `EINVAL` (nothing copied) if
    /// they run past the end.
    ///
    /// Context: any context.
    #[inline]
    pub fn read(&self, pos: usize, dst: &mut [u8]) -> Result {
        if pos.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(EINVAL);
        }
        // SAFETY: `pos + dst.len() <= len`, so the source is within the
        // bytes `ptr` is valid for (type invariant); `dst` is a distinct
        // buffer of the caller, and any byte is a valid `u8`.
        unsafe {
            core::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(pos), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// Copies `src` into the bytes at `pos`; `EINVAL` (nothing copied) if
    /// it runs past the end.
    ///
    /// Context: any context.
    #[inline]
    pub fn write(&mut self, pos: usize, src: &[u8]) -> Result {
        if pos.checked_add(src.len()).is_none_or(|end| end > self.len) {
            return Err(EINVAL);
        }
        // SAFETY: as in `read`, the destination within the bytes `ptr` is
        // valid for writes, and `src` a distinct buffer of the caller.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(pos), src.len())
        };
        Ok(())
    }
}

// SAFETY: `SharedBytes` is a copying view of memory a `Gpadl` owns, with no
// thread affinity.
unsafe impl Send for SharedBytes<'_> {}

/// A GPADL created by a client. Dropping it deletes it (blocking): drop it
/// in process context only, or delete it with [`Channel::delete_gpadl`],
/// which refuses atomic context.
///
/// # Examples
///
/// A buffer shared with the peer, filled, its id announced, and taken back:
///
/// ```
/// use kernel::{alloc::KVVec, prelude::*};
/// use kmcl::{Channel, GpadlBytes, GpadlFlags, SendFlags};
///
/// fn share(channel: &Channel) -> Result {
///     let mut buf = KVVec::new();
///     buf.extend_from_slice(&[0u8; 8192], GFP_KERNEL)?;
///     let mut gpadl = channel.create_gpadl_from_buffer(buf, GpadlFlags::NONE)?;
///     if let Some(GpadlBytes::Buffer(mut bytes)) = gpadl.memory() {
///         bytes.write(0, b"kmcl")?;
///     }
///     let id = gpadl.id().to_le_bytes();
///     channel
///         .packet_allocate()?
///         .send(&id, SendFlags::WAIT_FOR_COMPLETION)
///         .map_err(|e| e.error)?;
///     // Back to this driver once the peer no longer maps it.
///     let _buffer = channel.delete_gpadl(gpadl).map_err(|(e, _)| e)?;
///     Ok(())
/// }
/// ```
pub struct Gpadl {
    id: u32,
    backing: Option<GpadlBacking>,
    mem: Option<GpadlMemory>,
}

impl Gpadl {
    /// The GPADL id the server maps it by.
    ///
    /// Context: any context.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The memory, for the client to read and write while it is shared:
    /// its bytes, never the memory itself, which stays the GPADL's until
    /// [`Channel::delete_gpadl`] hands it back. `None` once the memory was
    /// handed back.
    ///
    /// Context: any context.
    pub fn memory(&mut self) -> Option<GpadlBytes<'_>> {
        Some(match self.mem.as_mut()? {
            GpadlMemory::Buffer(b) => GpadlBytes::Buffer(SharedBytes::new(b.as_mut_slice())),
            GpadlMemory::Pages(p) => GpadlBytes::Pages(p.as_slice()),
            GpadlMemory::Shared(b) => GpadlBytes::Shared(SharedBytes::new(b)),
        })
    }

    /// The memory, inside kmcl.
    pub(crate) fn memory_ref(&self) -> Option<&GpadlMemory> {
        self.mem.as_ref()
    }

    fn delete_inner(&mut self) -> Option<GpadlMemory> {
        kernel::task::might_sleep();
        match self.backing.take() {
            Some(b) => b.delete(self.mem.take()),
            None => self.mem.take(),
        }
    }
}

impl Drop for Gpadl {
    fn drop(&mut self) {
        let _ = self.delete_inner();
    }
}

/// A server's mapping of a client's GPADL. Dropping it unmaps.
pub struct GpadlMapping(GpadlView);

impl GpadlMapping {
    /// The GPADL id.
    ///
    /// Context: any context.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Length of the shared memory in bytes.
    ///
    /// Context: any context.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty (never, for a mapped GPADL).
    ///
    /// Context: any context.
    // Inlined in the caller: calls only exported functions, so it needs
    // no export of its own.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads shared memory at `pos` into `dst`.
    ///
    /// Context: any context.
    pub fn read(&self, pos: usize, dst: &mut [u8]) -> Result {
        self.0.read(pos, dst)
    }

    /// Writes `src` into shared memory at `pos`.
    ///
    /// Context: any context.
    pub fn write(&self, pos: usize, src: &[u8]) -> Result {
        self.0.write(pos, src)
    }
}

impl Channel {
    /// What the open channel shares memory through; `ENODEV` once the peer
    /// is gone or before the channel opened.
    fn peer(&self) -> Result<MemoryPeer> {
        let g = self.inner.lock();
        if g.peer_gone {
            return Err(ENODEV);
        }
        g.att.as_ref().ok_or(ENODEV)?.memory_peer()
    }

    /// Creates a GPADL over `buffer` (`VmbChannelCreateGpadlFromBuffer`);
    /// returns once the server side has it. `flags`: [`GpadlFlags`].
    /// Over the hv transport the buffer must be whole pages (page-aligned,
    /// a multiple of 4 KiB long), as Linux shares pages; `EINVAL` otherwise.
    ///
    /// Context: process context only (`might_sleep()` is checked): a
    /// state callback (usually Opened) included; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context.
    #[doc(alias = "VmbChannelCreateGpadlFromBuffer")]
    pub fn create_gpadl_from_buffer(&self, buffer: KVVec<u8>, flags: GpadlFlags) -> Result<Gpadl> {
        self.create_gpadl(GpadlMemory::Buffer(buffer), flags)
    }

    /// Creates a GPADL over `pages` (`VmbChannelCreateGpadlFromMdl`).
    ///
    /// Context: process context only (`might_sleep()` is checked): a
    /// state callback (usually Opened) included; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context.
    #[doc(alias = "VmbChannelCreateGpadlFromMdl")]
    pub fn create_gpadl_from_pages(&self, pages: KVec<Page>, flags: GpadlFlags) -> Result<Gpadl> {
        self.create_gpadl(GpadlMemory::Pages(pages), flags)
    }

    /// Allocates `len` bytes, rounded up to whole pages and zeroed, and
    /// shares them as a GPADL; returns once the server side has it.
    /// `flags`: [`GpadlFlags`].
    ///
    /// Over the hv transport the memory comes from `vmbus_alloc_buffer()`
    /// and is shared with `vmbus_establish_gpadl_caller_decrypted()`: in a
    /// confidential VM it is decrypted once, in large physically contiguous
    /// chunks, rather than page by page as the other creators' memory is.
    /// The GPADL's memory is then a [`GpadlMemory::Shared`], which stays
    /// host-visible until it is dropped. On loopback it is a
    /// [`GpadlMemory::Buffer`]. `EINVAL` for `len` 0, `ENOMEM` when the
    /// memory cannot be had.
    ///
    /// Context: process context only (`might_sleep()` is checked): a
    /// state callback (usually Opened) included; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context.
    pub fn create_gpadl_shared(&self, len: usize, flags: GpadlFlags) -> Result<Gpadl> {
        self.check_may_sleep("create_gpadl_shared")?;
        kernel::task::might_sleep();
        self.check_gpadl_creation(flags)?;
        let (backing, id, mem) = self.peer()?.allocate_gpadl(len).map_err(|(e, _)| e)?;
        Ok(Gpadl {
            id,
            backing: Some(backing),
            mem: Some(mem),
        })
    }

    fn check_gpadl_creation(&self, flags: GpadlFlags) -> Result {
        // `READ_ONLY` is a hint that neither transport needs: the loopback
        // server maps what it maps, a Hyper-V host ignores it.
        let _ = flags;
        if self.endpoint() != super::Endpoint::Client {
            return Err(EINVAL);
        }
        Ok(())
    }

    fn create_gpadl(&self, mem: GpadlMemory, flags: GpadlFlags) -> Result<Gpadl> {
        self.check_may_sleep("create_gpadl")?;
        kernel::task::might_sleep();
        self.check_gpadl_creation(flags)?;
        let (backing, id, mem) = self.peer()?.create_gpadl(mem).map_err(|(e, _)| e)?;
        Ok(Gpadl {
            id,
            backing: Some(backing),
            mem: Some(mem),
        })
    }

    /// Deletes a GPADL (`VmbChannelDeleteGpadl`) and returns its memory,
    /// if the GPADL kept any. Blocks while the server has it mapped.
    ///
    /// Context: process context only (`might_sleep()` is checked); in
    /// atomic context the GPADL is handed back, still shared, with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK).
    #[doc(alias = "VmbChannelDeleteGpadl")]
    pub fn delete_gpadl(
        &self,
        mut gpadl: Gpadl,
    ) -> core::result::Result<Option<GpadlMemory>, (Error, Gpadl)> {
        if let Err(e) = self.check_may_sleep("delete_gpadl") {
            return Err((e, gpadl));
        }
        Ok(gpadl.delete_inner())
    }

    /// Maps the client's GPADL `id` (`VmbChannelMapGpadl`). Server only; one
    /// mapping per GPADL at a time (`EBUSY`); `ENOENT` for an unknown or
    /// deleted id.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelMapGpadl")]
    pub fn map_gpadl(&self, id: u32) -> Result<GpadlMapping> {
        if self.endpoint() != super::Endpoint::Server {
            return Err(EINVAL);
        }
        self.peer()?.map_gpadl(id).map(GpadlMapping)
    }

    /// Unmaps a GPADL (`VmbChannelUnmapGpadl`); dropping the mapping does the
    /// same.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelUnmapGpadl")]
    pub fn unmap_gpadl(&self, mapping: GpadlMapping) {
        drop(mapping);
    }

    /// Sets the monitor-notification latency in 100 ns units
    /// (`VmbChannelSetInterruptLatency`). Neither transport can apply it:
    /// the loopback signals without monitor pages, and Linux 7.3 offers a
    /// guest no way to change a channel's monitor latency (the host sets it
    /// in the offer). The value is recorded and shown in debugfs.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelSetInterruptLatency")]
    pub fn set_interrupt_latency(&self, latency_100ns: u32) -> Result {
        self.peer()?;
        self.inner.lock().interrupt_latency = latency_100ns;
        Ok(())
    }

    /// The MMIO space reserved for the device (`VmbChannelGetMmioSpace`);
    /// valid after Opened; `ENOENT` if the server reserved none. Over the
    /// hv transport the range is allocated with `vmbus_allocate_mmio()` on
    /// first use, as large as the host's offer asks, and freed when the
    /// channel closes.
    ///
    /// Context: process context only: over hv the first call allocates the MMIO
    /// range, which takes a mutex.
    #[doc(alias = "VmbChannelGetMmioSpace")]
    pub fn mmio_space(&self) -> Result<MmioSpace> {
        self.peer()?.mmio().map(MmioSpace)
    }
}

/// The MMIO space of an open channel.
pub struct MmioSpace(Mmio);

impl MmioSpace {
    /// The space as memory, on the loopback transport, where memory stands
    /// for MMIO.
    ///
    /// Context: any context.
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.0.as_slice()
    }

    /// The physical range to map (`ioremap`), first address and length, on
    /// the hv transport.
    ///
    /// Context: any context.
    pub fn physical(&self) -> Option<(u64, u64)> {
        self.0.physical()
    }

    /// Length of the space in bytes.
    ///
    /// Context: any context.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether the space is empty (never, for a space that was returned).
    ///
    /// Context: any context.
    // Inlined in the caller: calls only exported functions, so it needs
    // no export of its own.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
