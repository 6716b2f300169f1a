// SPDX-License-Identifier: GPL-2.0

//! External data: memory that a GPA-direct packet describes by page frame
//! numbers, and the rule for reading it.
//!
//! A sender describes memory with an [`Mdl`] (pages it owns and hands to the
//! packet) or with raw page frame numbers. The receiver sees the numbers in
//! [`ExternalData::ranges`], but reads the bytes only where they are this
//! kernel's to read:
//!
//! - On the loopback transport, the pages of an [`Mdl`] are lent to the peer
//!   while the packet owns it: from the moment the send takes its
//!   transaction until the MDL leaves the packet ([`Packet::take_mdl`], or
//!   the packet is freed). Each page frame number a reader names must be one
//!   of those pages; anything else, raw page frame numbers included, is
//!   refused with `EACCES`. So is a read after the MDL went back to its
//!   owner, even by a receiver that still holds the packet.
//! - On the hv transport, the host never sends a GPA-direct packet to a
//!   guest: kmcl refuses one as malformed, so there is nothing to read.
//!
//! Page frame numbers on the wire count VMBus pages of 4 KiB
//! ([`packet::HV_PAGE_SIZE`]); an MDL's pages are the kernel's, of
//! [`PAGE_SIZE`] bytes, each described by `PAGE_SIZE / 4096` wire numbers.
//!
//! [`Packet::take_mdl`]: super::outgoing::Packet::take_mdl

use kernel::{
    alloc::flags::__GFP_ZERO,
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::Arc, //
};

use super::{
    Channel,
    Endpoint, //
};
use crate::{
    sys,
    transport::lending::Lending,
    wire::packet::{
        self,
        RangeSpec, //
    },
};

/// Bytes of a VMBus page, the unit of page frame numbers on the wire.
const HV_PAGE: usize = packet::HV_PAGE_SIZE as usize;

/// Wire page frame numbers per kernel page: 1 where pages are 4 KiB.
pub(crate) fn hv_pages_per_page() -> u64 {
    (PAGE_SIZE / HV_PAGE).max(1) as u64
}

/// Bytes [`ExternalData::for_each_chunk`] hands out at most per call.
const PIECE: usize = 512;

/// Memory that a packet describes to the peer by page frame numbers, owned
/// by the packet while it is in flight (the counterpart of a Windows MDL for
/// `VmbPacketSendWithExternalMdl`).
///
/// On loopback, the pages are what the peer may read: see the
/// rule in `Documentation/api.rst` (External data).
///
/// # Invariants
///
/// `pages` and `kpfns` are never changed after [`Mdl::from_pages`], so their
/// buffers stay where they are while the MDL lives; `kpfns[i]` is the page
/// frame number of `pages[i]` for the first `kpfns.len()` pages. While
/// `lease` is set, the lease's `Lending` may hold an entry that points at
/// those buffers; the MDL revokes it before it gives the pages out or drops
/// them, and nothing reaches the pages while the lease is set.
pub struct Mdl {
    pages: KVec<Page>,
    /// Frame numbers of the kernel pages the MDL describes.
    kpfns: KVec<u64>,
    /// Wire page frame numbers.
    pfns: KVec<u64>,
    /// Offset into the first wire page.
    offset: u32,
    len: u32,
    lease: Option<Lease>,
}

/// The pages of an [`Mdl`] lent to the peer, for one transaction.
struct Lease {
    lending: Arc<Lending>,
    lender: Endpoint,
    id: u64,
}

impl Mdl {
    /// Describes `len` bytes from `offset` in the first of `pages`.
    ///
    /// `offset` is below the kernel's page size; `pages` must hold every
    /// kernel page the bytes touch.
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL`.
    pub fn from_pages(pages: KVec<Page>, offset: u32, len: u32) -> Result<Mdl> {
        if len == 0 || offset as usize >= PAGE_SIZE {
            return Err(EINVAL);
        }
        let end = u64::from(offset) + u64::from(len);
        let needed = end.div_ceil(PAGE_SIZE as u64);
        if needed > pages.len() as u64 {
            return Err(EINVAL);
        }
        let mut kpfns = KVec::with_capacity(needed as usize, GFP_KERNEL)?;
        for p in pages.iter().take(needed as usize) {
            kpfns.push(sys::page_to_pfn(p), GFP_KERNEL)?;
        }
        // The wire describes 4 KiB pages: the one holding `offset`, and on.
        let per_page = hv_pages_per_page();
        let first = u64::from(offset) / HV_PAGE as u64;
        let wire_offset = offset % packet::HV_PAGE_SIZE;
        let count = packet::pages_spanned(wire_offset, len);
        let mut pfns = KVec::with_capacity(count as usize, GFP_KERNEL)?;
        for k in 0..count {
            let hv = first + k;
            let kpfn = kpfns.get((hv / per_page) as usize).copied().ok_or(EINVAL)?;
            pfns.push(kpfn * per_page + hv % per_page, GFP_KERNEL)?;
        }
        // INVARIANT: `kpfns` matches the first pages; nothing is lent yet.
        Ok(Mdl {
            pages,
            kpfns,
            pfns,
            offset: wire_offset,
            len,
            lease: None,
        })
    }

    /// Describes a copy of `data` in freshly allocated pages, from offset 0
    /// of the first: the safe way to build external data from bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::prelude::*;
    /// use kmcl::{Mdl, Packet, SendFlags};
    ///
    /// fn send_block(packet: Packet, block: &[u8]) -> Result {
    ///     let mdl = Mdl::from_bytes(block)?;
    ///     packet
    ///         .send_with_external_mdl(b"write", mdl, SendFlags::WAIT_FOR_COMPLETION)
    ///         .map_err(|e| e.error)
    /// }
    /// ```
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL`.
    pub fn from_bytes(data: &[u8]) -> Result<Mdl> {
        Self::from_bytes_at(0, data)
    }

    /// Describes a copy of `data` placed at `offset` (below the kernel's
    /// page size) in freshly allocated pages. The rest of the pages is
    /// zeroed, so nothing but `data` reaches the peer.
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL`.
    pub fn from_bytes_at(offset: u32, data: &[u8]) -> Result<Mdl> {
        if data.is_empty() || offset as usize >= PAGE_SIZE || data.len() > u32::MAX as usize {
            return Err(EINVAL);
        }
        let end = (offset as usize).checked_add(data.len()).ok_or(EINVAL)?;
        let count = end.div_ceil(PAGE_SIZE);
        let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
        let mut at = offset as usize;
        let mut rest = data;
        for _ in 0..count {
            let page = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
            let n = (PAGE_SIZE - at).min(rest.len());
            if n > 0 {
                // SAFETY: `rest` is valid for reading `n` bytes; the page was
                // just allocated and nothing else can reach it, so the write
                // races with nothing; `write_raw` checks the bounds.
                unsafe { page.write_raw(rest.as_ptr(), at, n)? };
            }
            rest = &rest[n..];
            at = 0;
            pages.push(page, GFP_KERNEL)?;
        }
        Self::from_pages(pages, offset, data.len() as u32)
    }

    /// The range the MDL describes, as page frame numbers of 4 KiB VMBus
    /// pages, for [`Packet::send_with_external_pfns`]. Numbers only: the
    /// pages stay this MDL's, and a send of them keeps nothing alive, so the
    /// caller keeps the MDL until the transaction ends.
    /// [`Packet::send_with_external_mdl`], which hands the packet the pages,
    /// is what drivers usually want.
    ///
    /// [`Packet::send_with_external_pfns`]: super::outgoing::Packet::send_with_external_pfns
    /// [`Packet::send_with_external_mdl`]: super::outgoing::Packet::send_with_external_mdl
    ///
    /// Context: any context.
    pub fn external_range(&self) -> RangeSpec<'_> {
        self.range()
    }

    /// The pages, to fill before sending or to read after the completion.
    ///
    /// Context: any context.
    pub fn pages(&self) -> &[Page] {
        &self.pages
    }

    /// Takes the pages back.
    ///
    /// Context: any context.
    pub fn into_pages(mut self) -> KVec<Page> {
        self.revoke();
        core::mem::take(&mut self.pages)
    }

    /// The range the packet puts on the wire.
    pub(crate) fn range(&self) -> RangeSpec<'_> {
        RangeSpec {
            byte_count: self.len,
            byte_offset: self.offset,
            pfns: &self.pfns,
        }
    }

    /// Lends the pages through `lending`, as the lender it names, for
    /// transaction `id`, before the packet that owns the MDL can reach the
    /// ring. Only the loopback transport lends; a host reads guest memory
    /// by itself. Called with the send lock held; allocates nothing.
    pub(crate) fn lend(&mut self, lending: Option<(&Arc<Lending>, Endpoint)>, id: u64) {
        self.revoke();
        let Some((lending, lender)) = lending else {
            return;
        };
        let pages = &self.pages[..self.kpfns.len()];
        // SAFETY: by the invariants the buffers stay in place while the MDL
        // lives, and `revoke`, which `Drop`, `into_pages` and
        // `Packet::take_mdl` call before the pages are reached or freed,
        // removes the entry with the same `id` and `pages` pointer.
        if unsafe { lending.lend(lender, id, pages, &self.kpfns) } {
            self.lease = Some(Lease {
                lending: lending.clone(),
                lender,
                id,
            });
        }
    }

    /// Ends the lending: from here on the peer reads nothing of the pages.
    pub(crate) fn revoke(&mut self) {
        if let Some(l) = self.lease.take() {
            l.lending.revoke(l.lender, l.id, self.pages.as_ptr());
        }
    }
}

impl Drop for Mdl {
    fn drop(&mut self) {
        self.revoke();
    }
}

/// The external memory described by a GPA-direct packet
/// (`VmbChannelPacketGetExternalData`).
///
/// [`ExternalData::ranges`] shows what the sender wrote. [`copy_to`] and
/// [`for_each_chunk`] read the bytes only where they are pages that the
/// sender's packet owns and lends for this transaction (loopback; see the
/// rule in `Documentation/api.rst`, External data); otherwise they fail with `EACCES`.
///
/// [`copy_to`]: ExternalData::copy_to
/// [`for_each_chunk`]: ExternalData::for_each_chunk
pub struct ExternalData<'a> {
    ranges: packet::GpaRanges<'a>,
    chan: &'a Channel,
    trans_id: u64,
}

impl<'a> ExternalData<'a> {
    pub(crate) fn new(ranges: packet::GpaRanges<'a>, chan: &'a Channel, trans_id: u64) -> Self {
        Self {
            ranges,
            chan,
            trans_id,
        }
    }

    /// The ranges, each a byte count, an offset into its first page, and the
    /// page frame numbers (of 4 KiB pages).
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn ranges(&self) -> packet::GpaRangeIter<'a> {
        self.ranges.iter()
    }

    /// Total bytes described.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.byte_count)).sum()
    }

    /// Calls `piece` with the wire page frame number, offset and length of
    /// each piece of the described bytes, in order, one per 4 KiB page;
    /// stops at the first error.
    fn walk(&self, mut piece: impl FnMut(u64, usize, usize) -> Result) -> Result {
        for r in self.ranges.iter() {
            let mut left = r.byte_count as usize;
            let mut off = r.byte_offset as usize;
            for i in 0..r.pfn_count() {
                if left == 0 {
                    break;
                }
                let pfn = r.pfn(i).ok_or(EINVAL)?;
                let n = (HV_PAGE - off).min(left);
                piece(pfn, off, n)?;
                left -= n;
                off = 0;
            }
        }
        Ok(())
    }

    /// Calls `f` with the described bytes, in order, in pieces of at most
    /// 512 bytes, each copied out of the sender's pages first.
    ///
    /// Fails with `EACCES`, having handed out only the pieces before it, at
    /// the first page that is not lent by the sender's packet: a page frame
    /// number it did not pass with an [`Mdl`], a read after the sender took
    /// its pages back (the sender's channel was disabled, say), and any read
    /// over the hv transport.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8])) -> Result {
        // Only this line is instantiated in the caller's module: the walk
        // stays in kmcl, out of the modules' ABI.
        self.for_each_chunk_dyn(&mut f)
    }

    /// [`ExternalData::for_each_chunk`] with a trait object.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn for_each_chunk_dyn(&self, f: &mut dyn FnMut(&[u8])) -> Result {
        let (lending, lender) = self.chan.peer_lending().ok_or(EACCES)?;
        let mut buf = [0u8; PIECE];
        self.walk(|pfn, mut off, mut n| {
            while n > 0 {
                let k = n.min(PIECE);
                lending.copy(lender, self.trans_id, pfn, off, &mut buf[..k])?;
                // The sender's pages are not borrowed while `f` runs: it may
                // do anything, disable the sender included.
                f(&buf[..k]);
                off += k;
                n -= k;
            }
            Ok(())
        })
    }

    /// Copies the described bytes, in order, into `dst`; returns how many.
    ///
    /// Fails with `EACCES` as [`ExternalData::for_each_chunk`] does; `dst`
    /// may then hold the bytes before the refused page.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    pub fn copy_to(&self, dst: &mut [u8]) -> Result<usize> {
        let (lending, lender) = self.chan.peer_lending().ok_or(EACCES)?;
        let mut done = 0usize;
        self.walk(|pfn, off, n| {
            let k = n.min(dst.len() - done);
            if k > 0 {
                lending.copy(lender, self.trans_id, pfn, off, &mut dst[done..done + k])?;
                done += k;
            }
            Ok(())
        })?;
        Ok(done)
    }
}

impl Channel {
    /// What the peer of this open channel lends, and the peer's role: where
    /// this end reads external data. `None` where the transport lends
    /// nothing (hv).
    pub(crate) fn peer_lending(&self) -> Option<(Arc<Lending>, Endpoint)> {
        let g = self.inner.lock();
        let (lending, role) = g.att.as_ref()?.lending()?;
        Some((lending.clone(), role.peer()))
    }
}
