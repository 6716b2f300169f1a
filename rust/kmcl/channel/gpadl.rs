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
    prelude::*,
    sync::Arc, //
};

use super::Channel;
use crate::{
    sys,
    transport::{
        hv::{
            bus::HvDevice,
            memory::{
                self as hv_memory,
                HvGpadl, //
            },
        },
        loopback::{
            Connection,
            GpadlEntry, //
        },
    },
};

/// Flag of GPADL creation: the server should only read (a hint, not
/// protection) (`VMBUS_CHANNEL_GPADL_READ_ONLY`).
pub const GPADL_READ_ONLY: u32 = 0x1;

/// The memory behind a GPADL, owned by the [`Gpadl`] until it is deleted.
pub enum GpadlMemory {
    /// A virtually contiguous buffer.
    Buffer(KVVec<u8>),
    /// Pages.
    Pages(KVec<Page>),
}

impl GpadlMemory {
    fn pfns(&self) -> Result<(KVec<u64>, usize)> {
        let mut pfns = KVec::new();
        match self {
            GpadlMemory::Buffer(b) => {
                if b.is_empty() {
                    return Err(EINVAL);
                }
                let base = b.as_ptr();
                // The buffer starts page aligned only if it spans whole pages;
                // describe it from its first byte's page.
                let start = base as usize & !4095;
                let end = base as usize + b.len();
                let mut p = start;
                while p < end {
                    pfns.push(sys::virt_to_pfn(p as *const u8), GFP_KERNEL)?;
                    p += 4096;
                }
                Ok((pfns, b.len()))
            }
            GpadlMemory::Pages(pages) => {
                if pages.is_empty() {
                    return Err(EINVAL);
                }
                for pg in pages.iter() {
                    pfns.push(sys::page_to_pfn(pg), GFP_KERNEL)?;
                }
                Ok((pfns, pages.len() * 4096))
            }
        }
    }

    fn offset(&self) -> usize {
        match self {
            GpadlMemory::Buffer(b) => b.as_ptr() as usize & 4095,
            GpadlMemory::Pages(_) => 0,
        }
    }
}

/// A GPADL created by a client. Dropping it deletes it (blocking).
pub struct Gpadl {
    id: u32,
    backing: Option<Backing>,
    mem: Option<GpadlMemory>,
}

/// Where a GPADL lives.
enum Backing {
    Loopback(Arc<Connection>),
    Hv(HvGpadl),
}

/// What an open channel shares memory through.
enum Peer {
    Loopback(Arc<Connection>),
    /// A bound device, and the open of it this channel has.
    Hv(Arc<HvDevice>, u64),
}

impl Gpadl {
    /// The GPADL id the server maps it by.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The memory, for the client to read and write.
    pub fn memory(&mut self) -> Option<&mut GpadlMemory> {
        self.mem.as_mut()
    }

    fn delete_inner(&mut self) -> Option<GpadlMemory> {
        kernel::task::might_sleep();
        let conn = match self.backing.take() {
            Some(Backing::Loopback(conn)) => conn,
            Some(Backing::Hv(g)) => return g.delete(self.mem.take()),
            None => return self.mem.take(),
        };
        let conn = &conn;
        let mut g = conn.gpadls.lock();
        let Some(pos) = g.entries.iter().position(|e| e.id == self.id) else {
            return self.mem.take();
        };
        g.entries[pos].deleting = true;
        while g.entries.iter().any(|e| e.id == self.id && e.mapped) {
            conn.gpadl_cond.wait(&mut g);
        }
        if let Some(pos) = g.entries.iter().position(|e| e.id == self.id) {
            let _ = g.entries.remove(pos);
        }
        drop(g);
        self.mem.take()
    }
}

impl Drop for Gpadl {
    fn drop(&mut self) {
        let _ = self.delete_inner();
    }
}

/// A server's mapping of a client's GPADL. Dropping it unmaps.
pub struct GpadlMapping {
    id: u32,
    conn: Arc<Connection>,
    pfns: KVec<u64>,
    offset: usize,
    len: usize,
}

impl GpadlMapping {
    /// The GPADL id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Length of the shared memory in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a mapped GPADL).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies between the shared memory at `pos` and `buf`; `write` copies
    /// into the shared memory.
    fn copy(&self, pos: usize, buf: *mut u8, n: usize, write: bool) -> Result {
        if pos.checked_add(n).is_none_or(|e| e > self.len) {
            return Err(EINVAL);
        }
        let mut done = 0;
        while done < n {
            let abs = self.offset + pos + done;
            let page = abs / 4096;
            let off = abs % 4096;
            let chunk = (4096 - off).min(n - done);
            let pfn = *self.pfns.get(page).ok_or(EINVAL)?;
            let va = sys::pfn_to_virt(pfn).ok_or(EFAULT)?;
            // SAFETY: `va` is the direct-map address of a valid page of the
            // GPADL, which the client cannot free while this mapping exists;
            // `off + chunk <= 4096`; `buf` has `n` bytes.
            unsafe {
                if write {
                    core::ptr::copy_nonoverlapping(buf.add(done), va.add(off), chunk);
                } else {
                    core::ptr::copy_nonoverlapping(va.add(off), buf.add(done), chunk);
                }
            }
            done += chunk;
        }
        Ok(())
    }

    /// Reads shared memory at `pos` into `dst`.
    pub fn read(&self, pos: usize, dst: &mut [u8]) -> Result {
        self.copy(pos, dst.as_mut_ptr(), dst.len(), false)
    }

    /// Writes `src` into shared memory at `pos`.
    pub fn write(&self, pos: usize, src: &[u8]) -> Result {
        self.copy(pos, src.as_ptr().cast_mut(), src.len(), true)
    }
}

impl Drop for GpadlMapping {
    fn drop(&mut self) {
        let mut g = self.conn.gpadls.lock();
        for e in g.entries.iter_mut() {
            if e.id == self.id {
                e.mapped = false;
            }
        }
        drop(g);
        self.conn.gpadl_cond.notify_all();
    }
}

impl Channel {
    /// What the open channel shares memory through; `ENODEV` once the peer
    /// is gone or before the channel opened.
    fn peer(&self) -> Result<Peer> {
        let g = self.inner.lock();
        if g.peer_gone {
            return Err(ENODEV);
        }
        match g.att.as_ref() {
            Some(crate::transport::Attachment::Loopback(e)) => Ok(Peer::Loopback(e.conn.clone())),
            Some(crate::transport::Attachment::Hv(e)) => {
                let (dev, epoch) = e.device().ok_or(EOPNOTSUPP)?;
                Ok(Peer::Hv(dev.clone(), epoch))
            }
            None => Err(ENODEV),
        }
    }

    fn connection(&self) -> Result<Arc<Connection>> {
        match self.peer()? {
            Peer::Loopback(conn) => Ok(conn),
            Peer::Hv(..) => Err(EOPNOTSUPP),
        }
    }

    /// Creates a GPADL over `buffer` (`VmbChannelCreateGpadlFromBuffer`);
    /// returns once the server side has it. `flags`: [`GPADL_READ_ONLY`].
    /// Over the hv transport the buffer must be whole pages (page-aligned,
    /// a multiple of 4 KiB long), as Linux shares pages; `EINVAL` otherwise.
    pub fn create_gpadl_from_buffer(&self, buffer: KVVec<u8>, flags: u32) -> Result<Gpadl> {
        self.create_gpadl(GpadlMemory::Buffer(buffer), flags)
    }

    /// Creates a GPADL over `pages` (`VmbChannelCreateGpadlFromMdl`).
    pub fn create_gpadl_from_pages(&self, pages: KVec<Page>, flags: u32) -> Result<Gpadl> {
        self.create_gpadl(GpadlMemory::Pages(pages), flags)
    }

    fn create_gpadl(&self, mem: GpadlMemory, flags: u32) -> Result<Gpadl> {
        kernel::task::might_sleep();
        if flags & !GPADL_READ_ONLY != 0 || self.endpoint() != super::Endpoint::Client {
            return Err(EINVAL);
        }
        let conn = match self.peer()? {
            Peer::Loopback(conn) => conn,
            Peer::Hv(dev, epoch) => {
                let (g, id, mem) = HvGpadl::establish(&dev, epoch, mem).map_err(|(e, _)| e)?;
                return Ok(Gpadl {
                    id,
                    backing: Some(Backing::Hv(g)),
                    mem: Some(mem),
                });
            }
        };
        let (pfns, len) = mem.pfns()?;
        let offset = mem.offset();
        let mut g = conn.gpadls.lock();
        let id = g.next_id;
        g.next_id = g.next_id.wrapping_add(1).max(1);
        // The table lives under a spinlock: it grows with an atomic
        // allocation, and a failure is reported like any other.
        g.entries.push(
            GpadlEntry {
                id,
                pfns,
                offset,
                len,
                mapped: false,
                deleting: false,
            },
            GFP_ATOMIC,
        )?;
        drop(g);
        Ok(Gpadl {
            id,
            backing: Some(Backing::Loopback(conn)),
            mem: Some(mem),
        })
    }

    /// Deletes a GPADL (`VmbChannelDeleteGpadl`) and returns its memory.
    /// Blocks while the server has it mapped.
    pub fn delete_gpadl(&self, mut gpadl: Gpadl) -> Option<GpadlMemory> {
        gpadl.delete_inner()
    }

    /// Maps the client's GPADL `id` (`VmbChannelMapGpadl`). Server only; one
    /// mapping per GPADL at a time (`EBUSY`); `ENOENT` for an unknown or
    /// deleted id.
    pub fn map_gpadl(&self, id: u32) -> Result<GpadlMapping> {
        if self.endpoint() != super::Endpoint::Server {
            return Err(EINVAL);
        }
        let conn = self.connection()?;
        let mut g = conn.gpadls.lock();
        let e = g
            .entries
            .iter_mut()
            .find(|e| e.id == id && !e.deleting)
            .ok_or(ENOENT)?;
        if e.mapped {
            return Err(EBUSY);
        }
        let mut pfns = KVec::with_capacity(e.pfns.len(), GFP_ATOMIC)?;
        pfns.extend_from_slice(&e.pfns, GFP_ATOMIC)?;
        e.mapped = true;
        let (len, offset) = (e.len, e.offset);
        drop(g);
        Ok(GpadlMapping {
            id,
            conn,
            pfns,
            offset,
            len,
        })
    }

    /// Unmaps a GPADL (`VmbChannelUnmapGpadl`); dropping the mapping does the
    /// same.
    pub fn unmap_gpadl(&self, mapping: GpadlMapping) {
        drop(mapping);
    }

    /// Sets the monitor-notification latency in 100 ns units
    /// (`VmbChannelSetInterruptLatency`). Neither transport can apply it:
    /// the loopback signals without monitor pages, and Linux 7.3 offers a
    /// guest no way to change a channel's monitor latency (the host sets it
    /// in the offer). The value is recorded and shown in debugfs.
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
    pub fn mmio_space(&self) -> Result<MmioSpace> {
        match self.peer()? {
            Peer::Loopback(conn) => {
                if conn.mmio().is_empty() {
                    return Err(ENOENT);
                }
                Ok(MmioSpace::Loopback(conn))
            }
            Peer::Hv(dev, epoch) => {
                let (start, len) = hv_memory::mmio(&dev, epoch)?;
                Ok(MmioSpace::Physical { start, len })
            }
        }
    }
}

/// The MMIO space of an open channel.
pub enum MmioSpace {
    /// Memory that stands for MMIO on the loopback transport.
    Loopback(Arc<Connection>),
    /// A physical address range to map (`ioremap`) on the hv transport.
    Physical {
        /// First physical address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl MmioSpace {
    /// The space as memory, on the loopback transport.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match self {
            MmioSpace::Loopback(conn) => Some(conn.mmio()),
            MmioSpace::Physical { .. } => None,
        }
    }

    /// Length of the space in bytes.
    pub fn len(&self) -> u64 {
        match self {
            MmioSpace::Loopback(conn) => conn.mmio().len() as u64,
            MmioSpace::Physical { len, .. } => *len,
        }
    }

    /// Whether the space is empty (never, for a space that was returned).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
