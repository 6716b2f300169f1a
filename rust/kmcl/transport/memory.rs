// SPDX-License-Identifier: GPL-2.0

//! Memory a channel shares with its peer, as the channel layer sees it:
//! GPADLs and MMIO space, whatever transport carries the channel.
//!
//! The channel layer asks its attachment for a `MemoryPeer` and works
//! through it; each transport implements the operations its way (the
//! loopback keeps a table of page frame numbers, the hv transport goes
//! through `vmbus_establish_gpadl()` and `vmbus_allocate_mmio()`).

use kernel::{
    alloc::KVVec,
    page::Page,
    prelude::*,
    sync::Arc, //
};

use super::{
    hv::{
        bus::HvDevice,
        memory::{
            self as hv_memory,
            HvGpadl,
            SharedBuffer, //
        },
    },
    loopback::{
        Connection,
        GpadlMapping,
        LoopbackGpadl, //
    },
    Attachment,
};
use crate::sys;

/// The memory behind a GPADL, owned by the GPADL until it is deleted.
pub enum GpadlMemory {
    /// A virtually contiguous buffer.
    Buffer(KVVec<u8>),
    /// Pages.
    Pages(KVec<Page>),
    /// A buffer that kmcl allocated for sharing with the host
    /// (`Channel::create_gpadl_shared` over the hv transport).
    Shared(SharedBuffer),
}

impl GpadlMemory {
    /// The page frame numbers of the memory and its length in bytes.
    pub(crate) fn pfns(&self) -> Result<(KVec<u64>, usize)> {
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
            // Made by the hv transport only, which shares it its own way.
            GpadlMemory::Shared(_) => Err(EINVAL),
        }
    }

    /// Where the memory starts in its first page.
    pub(crate) fn offset(&self) -> usize {
        match self {
            GpadlMemory::Buffer(b) => b.as_ptr() as usize & 4095,
            GpadlMemory::Pages(_) | GpadlMemory::Shared(_) => 0,
        }
    }
}

/// What an open channel shares memory through.
pub(crate) enum MemoryPeer {
    Loopback(Arc<Connection>),
    /// A bound device, and the open of it the channel has.
    Hv(Arc<HvDevice>, u64),
}

impl Attachment {
    /// What this open channel shares memory through; `EOPNOTSUPP` where
    /// the transport shares none (an hv channel without a device).
    pub(crate) fn memory_peer(&self) -> Result<MemoryPeer> {
        match self {
            Attachment::Loopback(e) => Ok(MemoryPeer::Loopback(e.conn.clone())),
            Attachment::Hv(e) => {
                let (dev, epoch) = e.device().ok_or(EOPNOTSUPP)?;
                Ok(MemoryPeer::Hv(dev.clone(), epoch))
            }
        }
    }
}

/// Where a GPADL lives.
pub(crate) enum GpadlBacking {
    Loopback(LoopbackGpadl),
    Hv(HvGpadl),
}

impl GpadlBacking {
    /// Deletes the GPADL (blocking while the peer uses it) and hands `mem`
    /// back, unless the peer may still see it.
    pub(crate) fn delete(self, mem: Option<GpadlMemory>) -> Option<GpadlMemory> {
        match self {
            GpadlBacking::Loopback(g) => {
                g.delete();
                mem
            }
            GpadlBacking::Hv(g) => g.delete(mem),
        }
    }
}

/// A server's mapping of a client's GPADL.
pub(crate) enum GpadlView {
    Loopback(GpadlMapping),
}

impl GpadlView {
    pub(crate) fn id(&self) -> u32 {
        match self {
            GpadlView::Loopback(m) => m.id(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            GpadlView::Loopback(m) => m.len(),
        }
    }

    pub(crate) fn read(&self, pos: usize, dst: &mut [u8]) -> Result {
        match self {
            GpadlView::Loopback(m) => m.read(pos, dst),
        }
    }

    pub(crate) fn write(&self, pos: usize, src: &[u8]) -> Result {
        match self {
            GpadlView::Loopback(m) => m.write(pos, src),
        }
    }
}

/// The MMIO space of an open channel.
pub(crate) enum Mmio {
    /// Memory that stands for MMIO on the loopback transport.
    Loopback(Arc<Connection>),
    /// A physical address range (hv).
    Physical { start: u64, len: u64 },
}

impl Mmio {
    pub(crate) fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Mmio::Loopback(conn) => Some(conn.mmio()),
            Mmio::Physical { .. } => None,
        }
    }

    pub(crate) fn physical(&self) -> Option<(u64, u64)> {
        match self {
            Mmio::Loopback(_) => None,
            Mmio::Physical { start, len } => Some((*start, *len)),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Mmio::Loopback(conn) => conn.mmio().len() as u64,
            Mmio::Physical { len, .. } => *len,
        }
    }
}

impl MemoryPeer {
    /// Shares `mem` with the peer; returns once the peer has it, with the
    /// GPADL's id. On failure `mem` comes back, unless the peer may still
    /// see it.
    pub(crate) fn create_gpadl(
        &self,
        mem: GpadlMemory,
    ) -> core::result::Result<(GpadlBacking, u32, GpadlMemory), (Error, Option<GpadlMemory>)> {
        match self {
            MemoryPeer::Loopback(conn) => {
                let (pfns, len) = match mem.pfns() {
                    Ok(v) => v,
                    Err(e) => return Err((e, Some(mem))),
                };
                match LoopbackGpadl::create(conn.clone(), pfns, mem.offset(), len) {
                    Ok((g, id)) => Ok((GpadlBacking::Loopback(g), id, mem)),
                    Err(e) => Err((e, Some(mem))),
                }
            }
            MemoryPeer::Hv(dev, epoch) => HvGpadl::establish(dev, *epoch, mem)
                .map(|(g, id, mem)| (GpadlBacking::Hv(g), id, mem)),
        }
    }

    /// Allocates `len` bytes, rounded up to whole pages and zeroed, for
    /// sharing with the peer, and shares them as [`MemoryPeer::create_gpadl`]
    /// does: over hv from `vmbus_alloc_buffer()`, a [`GpadlMemory::Shared`];
    /// on loopback a [`GpadlMemory::Buffer`].
    pub(crate) fn allocate_gpadl(
        &self,
        len: usize,
    ) -> core::result::Result<(GpadlBacking, u32, GpadlMemory), (Error, Option<GpadlMemory>)> {
        match self {
            MemoryPeer::Loopback(_) => {
                let buf = (|| {
                    let len = len
                        .checked_next_multiple_of(4096)
                        .filter(|&l| l != 0)
                        .ok_or(EINVAL)?;
                    let mut b = KVVec::with_capacity(len, GFP_KERNEL)?;
                    b.resize(len, 0, GFP_KERNEL)?;
                    Ok(b)
                })()
                .map_err(|e| (e, None))?;
                self.create_gpadl(GpadlMemory::Buffer(buf))
            }
            MemoryPeer::Hv(dev, epoch) => HvGpadl::allocate(dev, *epoch, len)
                .map(|(g, id, mem)| (GpadlBacking::Hv(g), id, mem)),
        }
    }

    /// Maps the client's GPADL `id` on a server; `EOPNOTSUPP` where this
    /// guest cannot be the server (hv).
    pub(crate) fn map_gpadl(&self, id: u32) -> Result<GpadlView> {
        match self {
            MemoryPeer::Loopback(conn) => conn.map_gpadl(id).map(GpadlView::Loopback),
            MemoryPeer::Hv(..) => Err(EOPNOTSUPP),
        }
    }

    /// The MMIO space reserved for the device; `ENOENT` if none was.
    pub(crate) fn mmio(&self) -> Result<Mmio> {
        match self {
            MemoryPeer::Loopback(conn) => {
                if conn.mmio().is_empty() {
                    return Err(ENOENT);
                }
                Ok(Mmio::Loopback(conn.clone()))
            }
            MemoryPeer::Hv(dev, epoch) => {
                let (start, len) = hv_memory::mmio(dev, *epoch)?;
                Ok(Mmio::Physical { start, len })
            }
        }
    }
}
