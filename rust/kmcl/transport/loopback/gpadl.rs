// SPDX-License-Identifier: GPL-2.0

//! GPADLs on the loopback transport: the connection's table of the
//! client's shared memory, by page frame number, and the server's mappings.

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::Connection;
use crate::sys;

/// One GPADL registered with a connection.
pub(crate) struct GpadlEntry {
    id: u32,
    pfns: KVec<u64>,
    offset: usize,
    len: usize,
    mapped: bool,
    deleting: bool,
}

/// A connection's GPADLs, under its spinlock.
pub(crate) struct GpadlTable {
    next_id: u32,
    entries: KVec<GpadlEntry>,
}

impl GpadlTable {
    pub(crate) const fn new() -> Self {
        Self {
            next_id: 1,
            entries: KVec::new(),
        }
    }
}

/// A GPADL a client registered with a connection.
pub(crate) struct LoopbackGpadl {
    conn: Arc<Connection>,
    id: u32,
}

impl LoopbackGpadl {
    /// Registers `len` bytes at `offset` in the pages `pfns`; the id is
    /// new for the connection.
    pub(crate) fn create(
        conn: Arc<Connection>,
        pfns: KVec<u64>,
        offset: usize,
        len: usize,
    ) -> Result<(LoopbackGpadl, u32)> {
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
        Ok((LoopbackGpadl { conn, id }, id))
    }

    /// Removes the GPADL; blocks while the server has it mapped.
    pub(crate) fn delete(self) {
        kernel::task::might_sleep();
        let conn = &self.conn;
        let mut g = conn.gpadls.lock();
        let Some(pos) = g.entries.iter().position(|e| e.id == self.id) else {
            return;
        };
        g.entries[pos].deleting = true;
        while g.entries.iter().any(|e| e.id == self.id && e.mapped) {
            conn.gpadl_cond.wait(&mut g);
        }
        if let Some(pos) = g.entries.iter().position(|e| e.id == self.id) {
            let _ = g.entries.remove(pos);
        }
    }
}

/// A server's mapping of a client's GPADL. Dropping it unmaps.
pub(crate) struct GpadlMapping {
    id: u32,
    conn: Arc<Connection>,
    pfns: KVec<u64>,
    offset: usize,
    len: usize,
}

impl Connection {
    /// Maps the client's GPADL `id`: one mapping per GPADL at a time
    /// (`EBUSY`); `ENOENT` for an unknown or deleted id.
    pub(crate) fn map_gpadl(self: &Arc<Self>, id: u32) -> Result<GpadlMapping> {
        let mut g = self.gpadls.lock();
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
            conn: self.clone(),
            pfns,
            offset,
            len,
        })
    }
}

impl GpadlMapping {
    /// The GPADL id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Length of the shared memory in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
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
    pub(crate) fn read(&self, pos: usize, dst: &mut [u8]) -> Result {
        self.copy(pos, dst.as_mut_ptr(), dst.len(), false)
    }

    /// Writes `src` into shared memory at `pos`.
    pub(crate) fn write(&self, pos: usize, src: &[u8]) -> Result {
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
