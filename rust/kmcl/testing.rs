// SPDX-License-Identifier: GPL-2.0

//! Fault injection for the KUnit suites of drivers built on kmcl.
//!
//! Built only with `CONFIG_KUNIT`. A VSC's suite connects the driver to a
//! test host of its own (a server channel on a private
//! [`LoopbackBus`](crate::transport::loopback::LoopbackBus)) and plays a
//! misbehaving host with:
//!
//! - [`write_raw`] and [`write_raw_unsignalled`]: any bytes, well-formed or
//!   not, written into a channel's outgoing ring through the channel's own
//!   writer, followed by a signal or not;
//! - [`Rings`]: the ring indices, the interrupt mask, the pending send size
//!   and the data of both rings of a loopback connection, and signals to
//!   either end dropped, held for later, or sent out of turn;
//! - [`close_peer`] and [`rescind`]: the peer going away, or the transport
//!   removed under the channel, at a moment the test chooses (from a
//!   callback included);
//! - [`Counters`] from [`Channel::counters`], to check what the channel
//!   counted, after [`flush`] let kmcl's work run.
//!
//! Every handle keeps alive what it points into: a [`Rings`] holds the
//! connection whose rings it reaches, so one kept after
//! [`Channel::disable`] still writes into live memory, which nothing reads
//! any more. No function here reaches memory that is not the connection's
//! or the caller's.
//!
//! # Examples
//!
//! ```
//! use kernel::prelude::*;
//! use kmcl::{
//!     testing::{self, RingField, Rings},
//!     Channel, Endpoint,
//! };
//!
//! /// A host whose write index points outside the ring: the VSC must stop
//! /// its queue and count the packet as malformed.
//! fn corrupt_index(vsc: &Channel) -> Result<bool> {
//!     let rings = Rings::of(vsc)?;
//!     rings.set(Endpoint::Server, RingField::WriteIndex, u32::MAX);
//!     rings.signal(Endpoint::Client)?;
//!     testing::flush();
//!     Ok(vsc.counters().malformed_packets == 1)
//! }
//! ```

use core::ptr::NonNull;

use kernel::{
    prelude::*,
    sync::Arc, //
};

pub use crate::vmbus::ffi::VmbusChannel;

/// The ring format alone, for measuring kmcl's ring code without a channel.
pub mod ring {
    pub use crate::wire::ring::{
        RingError,
        RingMemory,
        RingReader,
        RingWriter,
        CONTROL_SIZE, //
    };
}

/// Packet descriptors, for writing packets into a [`ring`] by hand.
pub mod packet {
    pub use crate::wire::packet::{
        align8,
        encode_simple,
        Descriptor,
        DESCRIPTOR_SIZE,
        TYPE_COMPLETION,
        TYPE_DATA_INBAND, //
    };
}

pub use crate::channel::Counters;
use crate::{
    channel::{
        Channel,
        Endpoint, //
    },
    sys,
    transport::{
        loopback::{
            signals,
            Connection, //
        },
        LinkWriter, //
    },
};

/// Writes `bytes`, a whole packet or anything else, into `channel`'s
/// outgoing ring through the channel's own writer (so it never races with
/// the channel's sends), then signals the peer if the ring rules ask for a
/// signal (the peer's interrupt mask is clear and the ring was empty).
///
/// Fails with `ENODEV` when the channel is not open, `EOPNOTSUPP` over the
/// hv transport, and `EAGAIN` when the ring has no room. Any context.
pub fn write_raw(channel: &Channel, bytes: &[u8]) -> Result {
    if write_raw_unsignalled(channel, bytes)? {
        channel.signal_peer();
    }
    Ok(())
}

/// As [`write_raw`], without the signal: a host that forgot to signal.
/// Returns whether the ring rules asked for one; [`Rings::signal`] sends it
/// later.
pub fn write_raw_unsignalled(channel: &Channel, bytes: &[u8]) -> Result<bool> {
    let mut g = channel.tx.lock();
    match g.link.as_mut().ok_or(ENODEV)? {
        LinkWriter::Loopback(w) => w.write_raw(bytes).map_err(|_| EAGAIN),
        LinkWriter::Hv(_) => Err(EOPNOTSUPP),
    }
}

/// The peer of `channel` goes away now, as `channel` sees it: sends fail
/// with `ENODEV` from here on, transactions in flight finish with `ENODEV`,
/// and the channel tears down (a client to Disabled, a server back to
/// Enabled) on kmcl's workqueue. The peer's end is closed by that
/// teardown. Fails with `ENODEV` when the channel is not open. Any context,
/// a callback of either end included.
pub fn close_peer(channel: &Channel) -> Result {
    if !channel.with_attachment(|a| a.is_some()) {
        return Err(ENODEV);
    }
    channel.peer_closed();
    Ok(())
}

/// The transport under `channel` is removed now, as when a host rescinds
/// its offer: as [`close_peer`], and calls on the channel fail with
/// `ENODEV` until it is enabled again. Fails with `ENODEV` when the channel
/// is not open. Any context.
pub fn rescind(channel: &Channel) -> Result {
    if channel.transport_lost(false) {
        Ok(())
    } else {
        Err(ENODEV)
    }
}

/// Waits until the work kmcl queued so far has run, and the work that
/// queued in turn: interrupts, deliveries, completion routines, teardowns.
/// Process context.
pub fn flush() {
    for _ in 0..3 {
        sys::flush_work();
    }
}

/// A field of a ring's control page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingField {
    /// Where the writer writes next.
    WriteIndex,
    /// Where the reader reads next.
    ReadIndex,
    /// Set by the reader: no signals wanted.
    InterruptMask,
    /// Set by the writer: room it waits for before it wants a signal.
    PendingSendSize,
}

/// What becomes of the signals to one end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signals {
    /// Delivered at once (the default).
    Deliver,
    /// Lost, every one.
    Drop,
    /// Kept until the mode changes, then delivered once: a late signal.
    Hold,
}

/// Both rings of an open loopback connection, for fault injection.
///
/// # Invariants
///
/// `conn` is held for the life of the value: the rings it owns are never
/// freed or moved while a `Rings` exists, whatever happens to the channels.
pub struct Rings {
    conn: Arc<Connection>,
}

impl Rings {
    /// The rings of `channel`'s connection. Fails with `ENODEV` when the
    /// channel is not open on the loopback transport.
    pub fn of(channel: &Channel) -> Result<Rings> {
        // INVARIANT: the connection is held from here on.
        Ok(Rings {
            conn: channel.loopback_connection().ok_or(ENODEV)?,
        })
    }

    fn field(f: RingField) -> usize {
        match f {
            RingField::WriteIndex => 0,
            RingField::ReadIndex => 1,
            RingField::InterruptMask => 2,
            RingField::PendingSendSize => 3,
        }
    }

    /// Reads `field` of the ring that `writer` writes.
    pub fn get(&self, writer: Endpoint, field: RingField) -> u32 {
        self.conn
            .ring_memory(writer)
            .map_or(0, |m| m.snapshot()[Self::field(field)])
    }

    /// Stores `value` in `field` of the ring that `writer` writes. Nobody is
    /// signalled: [`Rings::signal`] does that.
    pub fn set(&self, writer: Endpoint, field: RingField, value: u32) {
        if let Some(m) = self.conn.ring_memory(writer) {
            m.poke_control(Self::field(field), value);
        }
    }

    /// Bytes of the data area of each ring.
    pub fn data_size(&self) -> u32 {
        self.conn
            .ring_memory(Endpoint::Client)
            .map_or(0, |m| m.size())
    }

    /// Overwrites the data of the ring that `writer` writes at `offset`, a
    /// packet header say. `offset` and the length of `bytes` must be
    /// multiples of 8 and inside the data area, else `EINVAL`.
    pub fn write_data(&self, writer: Endpoint, offset: u32, bytes: &[u8]) -> Result {
        let m = self.conn.ring_memory(writer).ok_or(EINVAL)?;
        let end = (offset as usize).checked_add(bytes.len()).ok_or(EINVAL)?;
        if offset % 8 != 0 || bytes.len() % 8 != 0 || end > m.size() as usize {
            return Err(EINVAL);
        }
        m.poke_data(offset, bytes);
        Ok(())
    }

    /// Signals `to` out of turn, as an interrupt from its peer. Fails with
    /// `ENODEV` when that end has left the connection.
    pub fn signal(&self, to: Endpoint) -> Result {
        if self.conn.interrupt_end(to) {
            Ok(())
        } else {
            Err(ENODEV)
        }
    }

    /// Sets what becomes of the signals to `to` from here on, kmcl's own
    /// included. Leaving [`Signals::Hold`] delivers a signal held
    /// meanwhile, once.
    pub fn set_signals(&self, to: Endpoint, mode: Signals) {
        let m = match mode {
            Signals::Deliver => signals::DELIVER,
            Signals::Drop => signals::DROP,
            Signals::Hold => signals::HOLD,
        };
        self.conn.set_signal_mode(to, m);
    }
}

/// Frees a `vmbus_channel` the caller built, when the kmcl channel on it
/// closes.
#[doc(hidden)]
pub type Release = unsafe extern "C" fn(*mut VmbusChannel);

/// Opens `channel` on `raw`, a `vmbus_channel` that is open already (rings,
/// packet buffer and requestor set up, no channel callback): the
/// preallocations of an Enable, then Opened, Started and PostStarted, in the
/// caller's thread. The channel must be configured and not enabled. For
/// kmcl's benchmark, as kmcl's own hv interop suites do.
///
/// Nothing calls kmcl when the host writes to the ring: the caller does, with
/// [`host_interrupt`].
///
/// # Safety
///
/// `raw` must stay valid and open until the kmcl channel is disabled, which
/// calls `release` (when given) on it, once; nothing else may use its rings'
/// guest ends meanwhile.
#[doc(hidden)]
pub unsafe fn open_on_hv(
    channel: &Channel,
    raw: NonNull<VmbusChannel>,
    release: Option<Release>,
) -> Result {
    // SAFETY: the caller's promise is the one `open_on_hv` asks for.
    unsafe { channel.open_on_hv(raw, release) }
}

/// The host's interrupt on a channel opened with [`open_on_hv`]: what the
/// channel callback of `vmbus_open()` does in hv_vmbus's tasklet (flush the
/// send queue, drain the ring). Call it with bottom halves disabled, where
/// that tasklet would run.
#[doc(hidden)]
pub fn host_interrupt(channel: &Channel) {
    channel.on_host_interrupt();
}
