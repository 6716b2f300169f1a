// SPDX-License-Identifier: GPL-2.0

//! Pages an endpoint lends its peer for the life of a GPA-direct send.
//!
//! On the loopback transport both ends are this kernel, and a receiver reads
//! the memory a GPA-direct packet describes. It may read only what the
//! sender really passed and still owns: the pages of the [`Mdl`] that the
//! sending packet holds, for as long as it holds them. The sender lends
//! them here under its transaction id when it sends, and revokes the loan
//! when the MDL leaves the packet; a reader copies under the table's lock.
//! A host (the hv transport) reads guest memory itself, so no table exists
//! there.
//!
//! [`Mdl`]: crate::channel::outgoing::Mdl

use core::ptr::NonNull;

use kernel::{
    new_spinlock_irq,
    page::Page,
    prelude::*,
    sync::{
        Arc,
        SpinLockIrq, //
    },
};

use crate::{channel::Endpoint as Role, wire::packet::HV_PAGE_SIZE};

fn role_index(r: Role) -> usize {
    match r {
        Role::Client => 0,
        Role::Server => 1,
    }
}

/// One transaction's lent pages: the first of `count` pages and their frame
/// numbers.
struct Lent {
    id: u64,
    pages: NonNull<Page>,
    kpfns: NonNull<u64>,
    count: usize,
}

// SAFETY: an entry is only followed under the lock of its [`Lending`], and
// `Page` may be read from any thread.
unsafe impl Send for Lent {}

/// The pages that each end's GPA-direct sends in flight lend to the other
/// end, one table per end, indexed by the slot of the sender's transaction.
///
/// A reader names the sender's transaction id and a page frame number; it
/// reads only when the entry of that transaction holds that page.
///
/// # Invariants
///
/// An entry's `pages` and `kpfns` point at `count` pages and their frame
/// numbers that stay valid and are not written until the entry is removed
/// by [`Lending::revoke`] (the promise of [`Lending::lend`]). So while the
/// lock is held, every entry's pages can be read.
#[pin_data]
pub(crate) struct Lending {
    #[pin]
    tables: SpinLockIrq<[KVec<Option<Lent>>; 2]>,
}

/// The table index of transaction `id`: kmcl's ids carry the slot plus one
/// in their low 32 bits (`channel/outgoing.rs`).
fn lent_index(id: u64) -> Option<usize> {
    ((id & 0xffff_ffff) as usize).checked_sub(1)
}

impl Lending {
    pub(crate) fn new() -> Result<Arc<Lending>> {
        Arc::pin_init(
            pin_init!(Lending {
                tables <- new_spinlock_irq!([KVec::new(), KVec::new()],
                    "kmcl::Lending::tables"),
            }),
            GFP_KERNEL,
        )
    }

    /// Gives `lender` an empty table for `slots` transactions: when an end
    /// attaches, whatever an earlier instance lent is forgotten. Sleeps.
    pub(crate) fn reset(&self, lender: Role, slots: usize) -> Result {
        let mut t = KVec::with_capacity(slots, GFP_KERNEL)?;
        for _ in 0..slots {
            t.push(None, GFP_KERNEL)?;
        }
        // Entries only point at memory they do not own: dropping the old
        // table outside the lock frees nothing else.
        let _old = core::mem::replace(&mut self.tables.lock()[role_index(lender)], t);
        Ok(())
    }

    /// Lends `pages` (with frame numbers `kpfns`) for `lender`'s transaction
    /// `id`, replacing whatever an ended transaction of the same slot lent.
    /// Returns `false` for an id outside the table. Allocates nothing.
    ///
    /// # Safety
    ///
    /// `pages` and `kpfns` must stay valid, and the pages unwritten, until
    /// [`Lending::revoke`] is called with `lender`, `id` and
    /// `pages.as_ptr()`.
    pub(crate) unsafe fn lend(&self, lender: Role, id: u64, pages: &[Page], kpfns: &[u64]) -> bool {
        let count = pages.len().min(kpfns.len());
        let mut g = self.tables.lock();
        let Some(e) = lent_index(id).and_then(|i| g[role_index(lender)].get_mut(i)) else {
            return false;
        };
        // INVARIANT: the caller's promise.
        *e = Some(Lent {
            id,
            pages: NonNull::from(pages).cast(),
            kpfns: NonNull::from(kpfns).cast(),
            count,
        });
        true
    }

    /// Ends what [`Lending::lend`] lent for `lender`'s transaction `id` over
    /// `pages`; when this returns, no reader is copying from them and none
    /// will. Callable from any context.
    pub(crate) fn revoke(&self, lender: Role, id: u64, pages: *const Page) {
        let mut g = self.tables.lock();
        if let Some(e) = lent_index(id).and_then(|i| g[role_index(lender)].get_mut(i)) {
            if e.as_ref()
                .is_some_and(|l| l.id == id && core::ptr::eq(l.pages.as_ptr(), pages))
            {
                *e = None;
            }
        }
    }

    /// Copies `dst.len()` bytes at `offset` of the 4 KiB page `hv_pfn` into
    /// `dst`, if `lender`'s transaction `id` lends the page that holds it;
    /// `EACCES` otherwise. `offset + dst.len()` must not cross the 4 KiB
    /// page.
    pub(crate) fn copy(
        &self,
        lender: Role,
        id: u64,
        hv_pfn: u64,
        offset: usize,
        dst: &mut [u8],
    ) -> Result {
        let hv = HV_PAGE_SIZE as usize;
        if offset.checked_add(dst.len()).is_none_or(|end| end > hv) {
            return Err(EINVAL);
        }
        // A kernel page holds one or more 4 KiB pages.
        let per_page = crate::channel::external::hv_pages_per_page();
        let kpfn = hv_pfn / per_page;
        let at = (hv_pfn % per_page) as usize * hv + offset;
        let g = self.tables.lock();
        let lent = lent_index(id)
            .and_then(|i| g[role_index(lender)].get(i))
            .and_then(|e| e.as_ref())
            .filter(|l| l.id == id)
            .ok_or(EACCES)?;
        // SAFETY: by the invariants, with the lock held, `kpfns` points at
        // `count` frame numbers that are alive.
        let kpfns = unsafe { core::slice::from_raw_parts(lent.kpfns.as_ptr(), lent.count) };
        let i = kpfns.iter().position(|&p| p == kpfn).ok_or(EACCES)?;
        // SAFETY: as above, for the `count` pages; `i < count`.
        let page = unsafe { &*lent.pages.as_ptr().add(i) };
        // SAFETY: `dst` is writable for its length; by the invariants nothing
        // writes the page while the entry exists, and the lock keeps it until
        // the copy is done. `at + dst.len()` stays inside the kernel page,
        // which `read_raw` checks too.
        unsafe { page.read_raw(dst.as_mut_ptr(), at, dst.len()) }
    }
}
