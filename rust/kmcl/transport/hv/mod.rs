// SPDX-License-Identifier: GPL-2.0

//! The hv transport: a kmcl channel over a `struct vmbus_channel` of
//! `hv_vmbus`, through Linux's own ring code.
//!
//! - Sends go through `vmbus_sendpacket_getid()`. Requests that want a
//!   completion get their wire id from the channel's requestor, which maps it
//!   back to kmcl's generation-tagged id when the completion arrives; kmcl
//!   then checks that id as on any transport. Linux signals the host itself.
//! - Receives copy each packet once, straight out of the ring into kmcl's
//!   buffer (`rust/helpers/hv_ring.c`), with Linux's ring state and
//!   hardening: the host's values are read once, and a packet whose length
//!   or offset Linux would clamp or replace is refused; kmcl parses every
//!   copy. `hv_pkt_iter_close()` publishes the read index and signals the
//!   host as for Linux's own readers.
//!   A GPA-direct packet from the host is refused as malformed: a guest never
//!   reads memory that the host names.
//! - Sends hand Linux the packet's parts (type, flags, id, payload) from the
//!   sender's memory; nothing is encoded and decoded again.
//! - GPA-direct sends go through `vmbus_sendpacket_mpb_desc()`, with the
//!   range list kmcl encoded.
//! - Devices are bound, opened and closed in [`bus`]; GPADLs and MMIO are
//!   in `memory`.

use core::ptr::NonNull;

use kernel::prelude::*;

pub(crate) mod bus;
mod device;
pub(crate) mod memory;
pub(crate) mod subchannel;

pub(crate) use bus::HvBus;

use crate::{
    transport::{
        OutPacket,
        RecvLink,
        SendLink,
        SignalTarget,
        WriteError, //
    },
    vmbus::ffi::VmbusChannel,
    wire::{packet, ring::RingError},
};

/// The helper's hv functions; the interop suites call some directly.
pub(crate) mod ffi {
    use kernel::prelude::*;

    use crate::vmbus::ffi::VmbusChannel;

    extern "C" {
        pub(crate) fn kmcl_hv_sendpacket(
            c: *mut VmbusChannel,
            buf: *mut c_void,
            len: u32,
            requestid: u64,
            trans_id: *mut u64,
            ty: u16,
            flags: u32,
        ) -> c_int;
        pub(crate) fn kmcl_hv_sendpacket_mpb(
            c: *mut VmbusChannel,
            desc: *mut c_void,
            desc_size: u32,
            buf: *mut c_void,
            len: u32,
            requestid: u64,
        ) -> c_int;
        pub(crate) fn kmcl_hv_recv(c: *mut VmbusChannel, buf: *mut c_void, len: u32) -> c_int;
        pub(crate) fn kmcl_hv_recv_close(c: *mut VmbusChannel);
        pub(crate) fn kmcl_hv_begin_read(c: *mut VmbusChannel);
        pub(crate) fn kmcl_hv_end_read(c: *mut VmbusChannel) -> u32;
        pub(crate) fn kmcl_hv_bytes_to_write(c: *mut VmbusChannel) -> u32;
        pub(crate) fn kmcl_hv_bytes_to_read(c: *mut VmbusChannel) -> u32;
        pub(crate) fn kmcl_hv_ring_datasize(c: *mut VmbusChannel) -> u32;
        pub(crate) fn kmcl_hv_set_pending_send_size(c: *mut VmbusChannel, size: u32);
        pub(crate) fn kmcl_hv_request_addr(
            c: *mut VmbusChannel,
            trans_id: u64,
            rqst_addr: u64,
        ) -> u64;
    }
}

/// The channel callback type of `vmbus_open()`.
pub(crate) type ChannelCallback = unsafe extern "C" fn(*mut c_void);

/// The functions that open and close a device's channel and share memory
/// with the host: Linux's, or the KUnit suites' stand-ins, which build the
/// rings in memory and play the host's part of each message exchange.
pub(crate) struct Ops {
    /// `vmbus_open()` with RingBufferPageCount (4 KiB pages per direction,
    /// control page included, rounded up to a power of two so that both
    /// rings fill `vmbus_alloc_ring()`'s block), callback and context; it
    /// reads the sizes kmcl set with `kmcl_hv_prepare_open()`. On failure
    /// the callback may still be set: `close` resets it.
    pub(crate) open:
        unsafe extern "C" fn(*mut VmbusChannel, u32, Option<ChannelCallback>, *mut c_void) -> c_int,
    /// `vmbus_close()`; also after a failed `open`.
    pub(crate) close: unsafe extern "C" fn(*mut VmbusChannel),
    /// `vmbus_establish_gpadl()`.
    pub(crate) gpadl_establish:
        unsafe extern "C" fn(*mut VmbusChannel, *mut c_void, u32, *mut memory::VmbusGpadl) -> c_int,
    /// `vmbus_establish_gpadl_caller_decrypted()`, for a buffer from
    /// `vmbus_alloc_buffer()`.
    pub(crate) gpadl_establish_decrypted:
        unsafe extern "C" fn(*mut VmbusChannel, *mut c_void, u32, *mut memory::VmbusGpadl) -> c_int,
    /// `vmbus_teardown_gpadl()`.
    pub(crate) gpadl_teardown:
        unsafe extern "C" fn(*mut VmbusChannel, *mut memory::VmbusGpadl) -> c_int,
}

/// Linux's functions.
pub(crate) static LINUX_OPS: Ops = Ops {
    open: memory::ffi::kmcl_hv_open,
    close: memory::ffi::kmcl_hv_close,
    gpadl_establish: memory::ffi::kmcl_hv_gpadl_establish,
    gpadl_establish_decrypted: memory::ffi::kmcl_hv_gpadl_establish_decrypted,
    gpadl_teardown: memory::ffi::kmcl_hv_gpadl_teardown,
};

/// Whether `packet`, as copied out of the ring, is of the GPA-direct type.
fn is_gpa_direct(packet: &[u8]) -> bool {
    packet
        .get(..2)
        .is_some_and(|t| u16::from_le_bytes([t[0], t[1]]) == packet::TYPE_DATA_GPA_DIRECT)
}

/// `VMBUS_RQST_ERROR`: the requestor does not know the id.
const RQST_ERROR: u64 = u64::MAX - 1;
/// `VMBUS_RQST_ADDR_ANY`.
const RQST_ADDR_ANY: u64 = u64::MAX;

/// What to do with a test-built `vmbus_channel` when the kmcl channel closes.
#[cfg(CONFIG_KUNIT)]
pub(crate) type Release = unsafe extern "C" fn(*mut VmbusChannel);

/// Who owns the `vmbus_channel` under an endpoint.
pub(crate) enum Owner {
    /// A device bound to kmcl; closing hands it back to the bus.
    Device(bus::Lease),
    /// A sub-channel of a device's primary; closing closes it.
    Sub(subchannel::SubLease),
    /// A channel the interop suites or the benchmark built, with its
    /// destructor. Test-only.
    #[cfg(CONFIG_KUNIT)]
    Raw(Option<Release>),
}

/// One open hv channel.
///
/// # Invariants
///
/// `chan` is an open `vmbus_channel` (rings, packet buffer and requestor set
/// up) that stays valid until `owner` lets go of it in [`HvEndpoint::close`].
/// `linked` is set once the two [`HvLink`]s of the channel were handed out.
pub(crate) struct HvEndpoint {
    chan: NonNull<VmbusChannel>,
    owner: Owner,
    linked: bool,
}

// SAFETY: the endpoint only hands out its channel and closes it; Linux's
// functions for those take their own locks and may be called from any
// thread.
unsafe impl Send for HvEndpoint {}
// SAFETY: as above.
unsafe impl Sync for HvEndpoint {}

/// One half of an open hv channel's link: the channel's incoming ring (as
/// the receive half) or its outgoing ring (as the send half).
///
/// # Invariants
///
/// `chan` is an open `vmbus_channel` for as long as the link lives: the
/// [`HvEndpoint`] it came from is closed only after both halves are dropped
/// ([`Attachment::take_link`](crate::transport::Attachment::take_link)).
/// The receive half is used by one context at a time (the channel's
/// receive lock), as Linux's ring iterator requires; sends take Linux's
/// outgoing ring lock.
pub(crate) struct HvLink {
    chan: NonNull<VmbusChannel>,
}

// SAFETY: Linux's ring functions take the channel's own locks where they
// need them, and run in any context; the receive half is serialised by the
// channel's receive lock.
unsafe impl Send for HvLink {}
// SAFETY: as above.
unsafe impl Sync for HvLink {}

impl HvEndpoint {
    /// Wraps an open channel.
    ///
    /// # Safety
    ///
    /// `chan` must be an open `vmbus_channel` that stays valid until `owner`
    /// lets go of it (for `Owner::Raw(None)`, forever).
    pub(crate) unsafe fn new(chan: NonNull<VmbusChannel>, owner: Owner) -> Self {
        // INVARIANT: the caller's promise; no link was handed out yet.
        Self {
            chan,
            owner,
            linked: false,
        }
    }

    /// The bound device under this endpoint, if any, and the open it is
    /// for ([`bus::DeviceMemory::epoch`]).
    pub(crate) fn device(&self) -> Option<(&kernel::sync::Arc<bus::HvDevice>, u64)> {
        match &self.owner {
            Owner::Device(lease) => Some((&lease.dev, lease.epoch)),
            Owner::Sub(_) => None,
            #[cfg(CONFIG_KUNIT)]
            Owner::Raw(_) => None,
        }
    }

    /// The CPU the host interrupts for the channel.
    pub(crate) fn target_cpu(&self) -> u32 {
        // SAFETY: `chan` is open until `close`, by the invariant.
        unsafe { subchannel::target_cpu(self.chan.as_ptr()) }
    }

    /// The receive and send halves of the channel's link, once.
    ///
    /// # Safety
    ///
    /// Both must be dropped before [`HvEndpoint::close`].
    pub(crate) unsafe fn take_link(&mut self) -> Option<(HvLink, HvLink)> {
        if core::mem::replace(&mut self.linked, true) {
            return None;
        }
        // INVARIANT: `chan` is open until `close`, which the caller runs only
        // after both links are gone.
        Some((HvLink { chan: self.chan }, HvLink { chan: self.chan }))
    }

    pub(crate) fn close(self) {
        match self.owner {
            Owner::Device(lease) => bus::HvBus::close(lease),
            Owner::Sub(lease) => lease.close(self.chan.as_ptr()),
            #[cfg(CONFIG_KUNIT)]
            Owner::Raw(Some(release)) => {
                // SAFETY: the invariant: `release` ends the channel's life, once.
                unsafe { release(self.chan.as_ptr()) }
            }
            #[cfg(CONFIG_KUNIT)]
            Owner::Raw(None) => {}
        }
    }
}

impl HvLink {
    fn raw(&self) -> *mut VmbusChannel {
        self.chan.as_ptr()
    }

    /// Sends one packet by its parts, from the caller's memory: Linux builds
    /// the descriptor and pads the payload. Returns the id on the wire.
    #[inline]
    pub(crate) fn send_packet(&mut self, p: &OutPacket<'_>) -> Result<u64, WriteError> {
        if p.ty != packet::TYPE_DATA_GPA_DIRECT {
            return self.send(p.ty, p.flags, p.trans_id, p.payload);
        }
        self.send_gpa_direct(p)
    }

    /// Sends a GPA-direct packet: out of line, so that the in-band sends
    /// do not pay for its header buffer's frame.
    #[inline(never)]
    fn send_gpa_direct(&mut self, p: &OutPacket<'_>) -> Result<u64, WriteError> {
        // Linux fills in the descriptor in front of the GPA header and
        // ranges it is given, so hand it a copy of those.
        let off = packet::DESCRIPTOR_SIZE + p.ranges.len();
        let mut hdr = [0u8; 512];
        let h = hdr.get_mut(..off).ok_or(WriteError::Broken)?;
        h[packet::DESCRIPTOR_SIZE..].copy_from_slice(p.ranges);
        // SAFETY: `chan` is open; `hdr` holds a `vmbus_packet_mpb_array` of
        // `off` bytes with its range count set; Linux only reads `payload`.
        let r = unsafe {
            ffi::kmcl_hv_sendpacket_mpb(
                self.raw(),
                h.as_mut_ptr().cast(),
                off as u32,
                p.payload.as_ptr().cast_mut().cast(),
                p.payload.len() as u32,
                p.trans_id,
            )
        };
        // The requestor's id is not reported for GPA-direct packets.
        let len = off + packet::align8(p.payload.len());
        self.result(r, len).map(|()| 0)
    }

    /// Sends `payload` (padded by Linux) as a packet of type `ty`; returns
    /// the id on the wire.
    pub(crate) fn send(
        &mut self,
        ty: u16,
        flags: u16,
        trans_id: u64,
        payload: &[u8],
    ) -> Result<u64, WriteError> {
        let mut wire = 0u64;
        // SAFETY: `chan` is open by the invariant; Linux only reads `payload`
        // (its prototype takes a mutable pointer for historical reasons).
        let r = unsafe {
            ffi::kmcl_hv_sendpacket(
                self.raw(),
                payload.as_ptr().cast_mut().cast(),
                payload.len() as u32,
                trans_id,
                &mut wire,
                ty,
                u32::from(flags),
            )
        };
        let len = packet::DESCRIPTOR_SIZE + packet::align8(payload.len());
        self.result(r, len).map(|()| wire)
    }

    /// Maps Linux's return of a write of `len` bytes (descriptor, payload).
    fn result(&self, r: c_int, len: usize) -> Result<(), WriteError> {
        match r {
            0 => Ok(()),
            // Linux needs strictly more free space than packet and trailer;
            // the pending send size is their size, as Linux's own writers
            // store it, and the host signals once more than that is free.
            r if r == EAGAIN.to_errno() => Err(WriteError::Full(
                len as u32 + crate::wire::ring::TRAILER_SIZE,
            )),
            // Linux refuses writes once the host rescinded the channel.
            r if r == ENODEV.to_errno() => Err(WriteError::Gone),
            _ => Err(WriteError::Broken),
        }
    }

    /// The next packet, copied once out of the ring into `buf`.
    ///
    /// A GPA-direct packet is refused like a malformed one: it would have
    /// the guest read memory that the host names, which in a confidential
    /// VM is the guest's private memory. Linux's drivers never accept one.
    #[inline]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        // SAFETY: `chan` is open; `buf` is writable for its length.
        let n = unsafe { ffi::kmcl_hv_recv(self.raw(), buf.as_mut_ptr().cast(), buf.len() as u32) };
        match n {
            0 => Ok(None),
            n if n > 0 && is_gpa_direct(&buf[..(n as usize).min(buf.len())]) => {
                pr_err!("hv: refused a GPA-direct packet from the host: a guest reads no memory the host names\n");
                Err(RingError::BadPacket)
            }
            n if n > 0 => Ok(Some(n as usize)),
            n if n == EMSGSIZE.to_errno() => Err(RingError::TooLarge { len: 0 }),
            _ => Err(RingError::BadPacket),
        }
    }

    pub(crate) fn commit(&mut self) {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_recv_close(self.raw()) }
    }

    pub(crate) fn begin_read(&mut self) {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_begin_read(self.raw()) }
    }

    pub(crate) fn end_read(&mut self) -> bool {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_end_read(self.raw()) != 0 }
    }

    pub(crate) fn free(&self) -> u32 {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_bytes_to_write(self.raw()) }
    }

    pub(crate) fn set_pending_send_size(&mut self, size: u32) {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_set_pending_send_size(self.raw(), size) }
    }

    /// kmcl's id for the wire id of a completion, through the requestor;
    /// `None` for an id the requestor does not know.
    pub(crate) fn completion_id(&mut self, wire: u64) -> Option<u64> {
        // SAFETY: `chan` is open.
        let id = unsafe { ffi::kmcl_hv_request_addr(self.raw(), wire, RQST_ADDR_ANY) };
        (id != RQST_ERROR).then_some(id)
    }

    /// The size of each ring's data area.
    fn ring_size(&self) -> u32 {
        // SAFETY: `chan` is open.
        unsafe { ffi::kmcl_hv_ring_datasize(self.raw()) }
    }
}

impl SendLink for HvLink {
    fn send(&mut self, p: &OutPacket<'_>) -> Result<bool, WriteError> {
        // Linux's ring code signals the host itself.
        self.send_packet(p).map(|_| false)
    }

    fn free(&self) -> u32 {
        HvLink::free(self)
    }

    fn set_pending_send_size(&mut self, needed: u32) {
        HvLink::set_pending_send_size(self, needed)
    }

    fn signal_target(&self) -> SignalTarget {
        SignalTarget::None
    }

    fn fill(&self) -> (u32, u32) {
        let size = self.ring_size();
        (size - self.free(), size)
    }
}

impl RecvLink for HvLink {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        HvLink::read(self, buf)
    }

    fn begin_read(&mut self) {
        HvLink::begin_read(self)
    }

    fn end_read(&mut self) -> bool {
        HvLink::end_read(self)
    }

    fn commit(&mut self) -> bool {
        // hv_pkt_iter_close() signals the host itself when needed.
        HvLink::commit(self);
        false
    }

    fn fill(&self) -> (u32, u32) {
        // SAFETY: `chan` is open.
        let inc = unsafe { ffi::kmcl_hv_bytes_to_read(self.raw()) };
        (inc, self.ring_size())
    }

    fn completion_id(&mut self, wire: u64) -> Option<u64> {
        HvLink::completion_id(self, wire)
    }
}
