// SPDX-License-Identifier: GPL-2.0

//! One direction of a VMBus channel: a ring buffer in the VMBus format.
//!
//! A ring is a control page followed by a data area. The control page holds
//! the write index (owned by the writer), the read index (owned by the
//! reader), the reader's interrupt mask, the writer's pending send size, and
//! the feature bits. Packets are written into the data area as a descriptor
//! and payload, padded to 8 bytes, followed by an 8-byte trailer that holds
//! the write index at which the packet started, shifted left by 32.
//!
//! The rules both ends follow:
//! - the ring is never filled completely: a write needs strictly more free
//!   bytes than it writes, so a full ring never looks empty;
//! - the writer signals the reader only when the ring goes from empty to
//!   non-empty, and only when the reader's interrupt mask is clear;
//! - a writer that finds no room stores the size of the packet it waits to
//!   write, trailer included, in `pending_send_sz`. Since the write needs
//!   strictly more free space than that, the reader signals the writer at the
//!   commit that takes the free space from at most `pending_send_sz` to more
//!   than it, and at no other: free space equal to the size is still no room.
//!   Linux's reader (`hv_pkt_iter_close()`) and OpenVMM's follow the same
//!   rule, and Linux's writers store the same size.
//!
//! Each end keeps private copies of the indices it owns and never trusts the
//! values the peer writes: an index from the peer is read once, checked
//! against the ring size and alignment, and a bad one fails the operation
//! without moving anything.

use core::{
    ptr::NonNull,
    sync::atomic::{
        fence,
        AtomicU32,
        Ordering, //
    },
};

/// Size of the control page that precedes the data area.
pub const CONTROL_SIZE: usize = 4096;

/// Size of the trailer that follows every packet.
pub const TRAILER_SIZE: u32 = 8;

const WRITE_INDEX: usize = 0;
const READ_INDEX: usize = 4;
const INTERRUPT_MASK: usize = 8;
const PENDING_SEND_SZ: usize = 12;
const FEATURE_BITS: usize = 64;
const FEAT_PENDING_SEND_SZ: u32 = 1;

/// Why a ring operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The ring has no room for the write; `needed` is the value to store as
    /// the pending send size.
    Full {
        /// Bytes the write takes in the ring, trailer included. It fits once
        /// the free space is strictly more than this.
        needed: u32,
    },
    /// The peer's index is out of range or unaligned.
    BadIndex,
    /// The next packet's descriptor is malformed: its lengths do not fit
    /// what is in the ring, or it changed while it was being copied.
    BadPacket,
    /// The next packet is larger than the buffer it would be copied into.
    TooLarge {
        /// The packet's total length in bytes, trailer excluded.
        len: u32,
    },
    /// A packet to write is empty, unaligned, or larger than the ring.
    BadWrite,
}

/// The memory of one ring: control page and data area.
///
/// # Invariants
///
/// `control` is valid for [`CONTROL_SIZE`] bytes and `data` for `size` bytes,
/// both 8-byte aligned, for as long as this value exists; `size` is a
/// non-zero multiple of 8. The peer may write to both concurrently, so the
/// memory is only accessed through atomics and volatile copies.
pub struct RingMemory {
    control: NonNull<u8>,
    data: NonNull<u8>,
    size: u32,
}

// SAFETY: the ring memory is shared by design; every access is atomic or volatile.
unsafe impl Send for RingMemory {}
// SAFETY: as above.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    /// Describes a ring at `control` (one control page) and `data` (`size` bytes).
    ///
    /// Returns `None` unless `size` is a non-zero multiple of 8 below 2^31 and
    /// both pointers are 8-byte aligned.
    ///
    /// # Safety
    ///
    /// `control` must be valid for reads and writes of [`CONTROL_SIZE`] bytes and
    /// `data` of `size` bytes, for the whole life of the returned value and of
    /// every reader and writer built on it.
    pub unsafe fn new(control: NonNull<u8>, data: NonNull<u8>, size: u32) -> Option<Self> {
        if size == 0 || size % 8 != 0 || size >= 1 << 31 {
            return None;
        }
        if control.as_ptr() as usize % 8 != 0 || data.as_ptr() as usize % 8 != 0 {
            return None;
        }
        // INVARIANT: checked above; validity is the caller's promise.
        Some(Self {
            control,
            data,
            size,
        })
    }

    /// The size of the data area in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn ctl(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the constant field offsets, all below
        // `CONTROL_SIZE` and 4-byte aligned; the page is valid by the invariant.
        unsafe { AtomicU32::from_ptr(self.control.as_ptr().add(offset).cast()) }
    }

    /// Initialises the control page of a new ring: indices zero, interrupts
    /// unmasked, no pending send, and `feat_pending_send_sz` set.
    pub fn reset(&self) {
        for off in (0..FEATURE_BITS + 4).step_by(4) {
            self.ctl(off).store(0, Ordering::Relaxed);
        }
        self.ctl(FEATURE_BITS)
            .store(FEAT_PENDING_SEND_SZ, Ordering::Release);
    }

    /// Reads `dst.len()` bytes (a multiple of 8, at most `size`) starting at
    /// data offset `off` (a multiple of 8 below `size`), wrapping at the end
    /// of the data area.
    ///
    /// The bytes are copied with `copy_nonoverlapping`: one copy, or two
    /// when they wrap. A peer that writes them concurrently can only make
    /// the copy hold garbage, which the caller checks before using (see
    /// `RingReader::read`); the copy itself stays within the data area.
    fn copy_out(&self, off: u32, dst: &mut [u8]) {
        debug_assert!(off < self.size && off % 8 == 0 && dst.len() <= self.size as usize);
        let first = dst.len().min((self.size - off) as usize);
        // SAFETY: `off + first <= size` and `dst.len() - first <= off`, so both
        // pieces lie in the data area, valid by the type invariant; `dst` is a
        // distinct, private buffer.
        unsafe {
            let base = self.data.as_ptr();
            core::ptr::copy_nonoverlapping(base.add(off as usize), dst.as_mut_ptr(), first);
            if first < dst.len() {
                core::ptr::copy_nonoverlapping(
                    base,
                    dst.as_mut_ptr().add(first),
                    dst.len() - first,
                );
            }
        }
    }

    /// Reads the 16 bytes at data offset `off` (a multiple of 8 below
    /// `size`): a packet descriptor. Fixed-size loads, split in two 8-byte
    /// halves only at the end of the data area.
    fn load_descriptor(&self, off: u32) -> [u8; 16] {
        debug_assert!(off < self.size && off % 8 == 0);
        let mut d = [0u8; 16];
        let base = self.data.as_ptr();
        if self.size - off >= 16 {
            // SAFETY: `off + 16 <= size`: in the data area, valid by the type
            // invariant; `d` is a private buffer.
            unsafe { core::ptr::copy_nonoverlapping(base.add(off as usize), d.as_mut_ptr(), 16) };
        } else {
            // SAFETY: both `off` and `size` are multiples of 8, so here
            // `off + 8 == size`: the first half ends the data area and the
            // second starts it (`size >= 8`).
            unsafe {
                core::ptr::copy_nonoverlapping(base.add(off as usize), d.as_mut_ptr(), 8);
                core::ptr::copy_nonoverlapping(base, d.as_mut_ptr().add(8), 8);
            }
        }
        d
    }

    /// Writes `src` (a multiple of 8 bytes, at most `size`) at data offset
    /// `off` (a multiple of 8 below `size`), wrapping; returns the offset
    /// after it. One copy, or two when it wraps; a descriptor (16 bytes)
    /// that does not wrap is a fixed-size store.
    fn copy_in(&self, off: u32, src: &[u8]) -> u32 {
        debug_assert!(off < self.size && off % 8 == 0 && src.len() <= self.size as usize);
        let room = (self.size - off) as usize;
        let base = self.data.as_ptr();
        if src.len() <= room {
            // SAFETY: `off + src.len() <= size`: in the data area, valid by
            // the type invariant; `src` is a distinct buffer.
            unsafe {
                let dst = base.add(off as usize);
                if src.len() == 16 {
                    core::ptr::copy_nonoverlapping(src.as_ptr(), dst, 16);
                } else {
                    core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
                }
            }
        } else {
            // SAFETY: as in `copy_out`, with the roles of the buffers swapped:
            // `room` bytes end the data area, the rest (at most `off`) start it.
            unsafe {
                core::ptr::copy_nonoverlapping(src.as_ptr(), base.add(off as usize), room);
                core::ptr::copy_nonoverlapping(src.as_ptr().add(room), base, src.len() - room);
            }
        }
        self.advance(off, src.len() as u32)
    }

    /// Writes a trailer at data offset `off` (a multiple of 8 below `size`):
    /// one 8-byte store, which never wraps since `size` is a multiple of 8.
    /// Returns the offset after it.
    fn store_trailer(&self, off: u32, trailer: u64) -> u32 {
        debug_assert!(off < self.size && off % 8 == 0);
        // SAFETY: `off + 8 <= size`: in the data area, valid by the type
        // invariant, and 8-aligned like the data area itself.
        unsafe {
            core::ptr::copy_nonoverlapping(
                trailer.to_ne_bytes().as_ptr(),
                self.data.as_ptr().add(off as usize),
                8,
            )
        };
        self.advance(off, TRAILER_SIZE)
    }

    /// `off + len` (`off` below `size`, `len` at most `size`), wrapped.
    fn advance(&self, off: u32, len: u32) -> u32 {
        let end = off as usize + len as usize;
        if end >= self.size as usize {
            (end - self.size as usize) as u32
        } else {
            end as u32
        }
    }

    /// Reads a peer-owned index once and checks it.
    fn load_index(&self, offset: usize) -> Result<u32, RingError> {
        let v = self.ctl(offset).load(Ordering::Acquire);
        if v >= self.size || v % 8 != 0 {
            return Err(RingError::BadIndex);
        }
        Ok(v)
    }

    fn used(&self, write: u32, read: u32) -> u32 {
        if write >= read {
            write - read
        } else {
            self.size - read + write
        }
    }

    /// The raw control fields, for observability: write index, read index,
    /// interrupt mask, pending send size.
    pub fn snapshot(&self) -> [u32; 4] {
        [
            self.ctl(WRITE_INDEX).load(Ordering::Relaxed),
            self.ctl(READ_INDEX).load(Ordering::Relaxed),
            self.ctl(INTERRUPT_MASK).load(Ordering::Relaxed),
            self.ctl(PENDING_SEND_SZ).load(Ordering::Relaxed),
        ]
    }

    /// Test and fault-injection access: stores a raw control field. `field` is
    /// 0 (write index), 1 (read index), 2 (interrupt mask), 3 (pending send
    /// size) or 4 (feature bits).
    pub fn poke_control(&self, field: usize, value: u32) {
        let off = match field {
            0 => WRITE_INDEX,
            1 => READ_INDEX,
            2 => INTERRUPT_MASK,
            3 => PENDING_SEND_SZ,
            _ => FEATURE_BITS,
        };
        self.ctl(off).store(value, Ordering::Release);
    }

    /// Test and fault-injection access: overwrites data bytes at `off`.
    pub fn poke_data(&self, off: u32, src: &[u8]) {
        if off < self.size && off % 8 == 0 && src.len() % 8 == 0 && src.len() as u32 <= self.size {
            self.copy_in(off, src);
        }
    }
}

/// The writing end of a ring.
///
/// # Invariants
///
/// `write` is the private write index: below `mem.size()` and 8-aligned.
pub struct RingWriter {
    mem: RingMemory,
    write: u32,
}

/// What a successful write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct WriteOutcome {
    /// The reader must be signalled.
    pub signal: bool,
}

impl RingWriter {
    /// Takes the writing end of `mem`, starting at the current write index.
    pub fn new(mem: RingMemory) -> Result<Self, RingError> {
        let write = mem.load_index(WRITE_INDEX)?;
        Ok(Self { mem, write })
    }

    /// The ring memory.
    pub fn memory(&self) -> &RingMemory {
        &self.mem
    }

    /// Free bytes as of the reader's last published read index.
    pub fn free(&self) -> Result<u32, RingError> {
        let read = self.mem.load_index(READ_INDEX)?;
        Ok(self.mem.size - self.mem.used(self.write, read))
    }

    /// Writes one packet made of `parts` (each a multiple of 8 bytes long),
    /// then the trailer, and publishes the new write index.
    pub fn write(&mut self, parts: &[&[u8]]) -> Result<WriteOutcome, RingError> {
        let mut len: u32 = 0;
        for p in parts {
            if p.len() % 8 != 0 {
                return Err(RingError::BadWrite);
            }
            len = u32::try_from(p.len())
                .ok()
                .and_then(|l| len.checked_add(l))
                .ok_or(RingError::BadWrite)?;
        }
        let total = len.checked_add(TRAILER_SIZE).ok_or(RingError::BadWrite)?;
        if len == 0 || total >= self.mem.size {
            return Err(RingError::BadWrite);
        }
        let read = self.mem.load_index(READ_INDEX)?;
        let free = self.mem.size - self.mem.used(self.write, read);
        if free <= total {
            return Err(RingError::Full { needed: total });
        }
        let start = self.write;
        let mut off = start;
        for p in parts {
            off = self.mem.copy_in(off, p);
        }
        off = self.mem.store_trailer(off, u64::from(start) << 32);
        // Publish: the data must be visible before the index.
        self.mem.ctl(WRITE_INDEX).store(off, Ordering::Release);
        self.write = off;

        // Signal only on empty to non-empty, and only if the reader wants it.
        fence(Ordering::SeqCst);
        if self.mem.ctl(INTERRUPT_MASK).load(Ordering::Relaxed) != 0 {
            return Ok(WriteOutcome { signal: false });
        }
        let read_now = self.mem.ctl(READ_INDEX).load(Ordering::Acquire);
        Ok(WriteOutcome {
            signal: read_now == start,
        })
    }

    /// Stores the size of the packet the writer waits to write, trailer
    /// included (`needed` of [`RingError::Full`]; 0: not waiting). The reader
    /// signals once the free space is strictly more than it.
    pub fn set_pending_send_size(&self, needed: u32) {
        self.mem
            .ctl(PENDING_SEND_SZ)
            .store(needed, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}

/// The reading end of a ring.
///
/// # Invariants
///
/// `read` (private read index) and `published` (last read index stored in the
/// control page) are below `mem.size()` and 8-aligned.
pub struct RingReader {
    mem: RingMemory,
    read: u32,
    published: u32,
}

impl RingReader {
    /// Takes the reading end of `mem`, starting at the current read index.
    pub fn new(mem: RingMemory) -> Result<Self, RingError> {
        let read = mem.load_index(READ_INDEX)?;
        Ok(Self {
            mem,
            read,
            published: read,
        })
    }

    /// The ring memory.
    pub fn memory(&self) -> &RingMemory {
        &self.mem
    }

    /// Bytes written by the peer and not yet read privately.
    pub fn available(&self) -> Result<u32, RingError> {
        let write = self.mem.load_index(WRITE_INDEX)?;
        Ok(self.mem.used(write, self.read))
    }

    /// Masks the peer's signals while this end drains the ring.
    pub fn begin_read(&self) {
        self.mem.ctl(INTERRUPT_MASK).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Unmasks signals. Returns `true` if data arrived meanwhile, which the
    /// caller must then read, since no signal will come for it.
    pub fn end_read(&self) -> Result<bool, RingError> {
        self.mem.ctl(INTERRUPT_MASK).store(0, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.available()? != 0)
    }

    /// Copies the next packet (descriptor, payload, padding; trailer
    /// excluded) into `buf` and moves the private read index past it.
    ///
    /// Returns `Ok(None)` on an empty ring. On any error nothing moves.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let avail = self.available()?;
        if avail == 0 {
            return Ok(None);
        }
        if avail < 16 + TRAILER_SIZE {
            return Err(RingError::BadPacket);
        }
        let desc = self.mem.load_descriptor(self.read);
        let len8 = u16::from_le_bytes([desc[4], desc[5]]);
        let len = u32::from(len8) * 8;
        if len < 16 || len + TRAILER_SIZE > avail {
            return Err(RingError::BadPacket);
        }
        let Some(dst) = buf.get_mut(..len as usize) else {
            return Err(RingError::TooLarge { len });
        };
        self.mem.copy_out(self.read, dst);
        // The copy is what gets parsed: if the peer changed the length meanwhile,
        // the copy is inconsistent with what was sized, and it is refused.
        if dst[4..6] != desc[4..6] {
            return Err(RingError::BadPacket);
        }
        // `len + TRAILER_SIZE <= avail < size`, so one subtraction wraps.
        let mut next = self.read + len + TRAILER_SIZE;
        if next >= self.mem.size {
            next -= self.mem.size;
        }
        self.read = next;
        Ok(Some(len as usize))
    }

    /// Publishes the private read index. Returns `true` if the writer must be
    /// signalled: the free space was at most its pending send size before this
    /// commit and is more than it now.
    pub fn commit(&mut self) -> bool {
        if self.read == self.published {
            return false;
        }
        let freed = self.mem.used(self.read, self.published);
        // All reads of packet data complete before the writer may reuse the space.
        fence(Ordering::Release);
        self.mem.ctl(READ_INDEX).store(self.read, Ordering::Release);
        self.published = self.read;
        fence(Ordering::SeqCst);

        if self.mem.ctl(FEATURE_BITS).load(Ordering::Relaxed) & FEAT_PENDING_SEND_SZ == 0 {
            return false;
        }
        let pending = self.mem.ctl(PENDING_SEND_SZ).load(Ordering::Relaxed);
        // 0: not waiting. The free space never exceeds the ring size, so a
        // size at or beyond it can never be met.
        if pending == 0 || pending >= self.mem.size {
            return false;
        }
        let Ok(write) = self.mem.load_index(WRITE_INDEX) else {
            // A corrupt index will fail the next read; waking the writer is harmless.
            return true;
        };
        let free_now = self.mem.size - self.mem.used(write, self.read);
        // A write needs strictly more free space than it writes: free space
        // equal to the pending size is not yet room for the writer.
        if free_now <= pending {
            return false;
        }
        // Signal only when this commit made room: before it there was none.
        free_now.saturating_sub(freed) <= pending
    }
}
