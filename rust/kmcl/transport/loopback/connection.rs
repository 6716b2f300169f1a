// SPDX-License-Identifier: GPL-2.0

//! An open loopback connection: its two rings, its GPADL table and MMIO
//! space, and the endpoints that the client and the server hold.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicBool,
        AtomicU64,
        AtomicU8,
        Ordering, //
    },
};

use kernel::{
    alloc::KVVec,
    new_condvar, new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        CondVar,
        SpinLockIrq, //
    },
};

use super::gpadl::GpadlTable;
use crate::{
    channel::{
        Channel,
        Endpoint as Role, //
    },
    transport::{
        lending::Lending,
        link::ring_result,
        OutPacket,
        RecvLink,
        SendLink,
        SignalTarget as LinkSignal,
        WriteError, //
    },
    wire::ring::{
        RingError,
        RingMemory,
        RingReader,
        RingWriter,
        CONTROL_SIZE, //
    },
    wire::{packet, pipe},
};

/// An open loopback channel: two rings, the GPADL table, MMIO space.
#[pin_data]
pub(crate) struct Connection {
    pub(super) token: u64,
    pub(super) parked: AtomicBool,
    c2s: KVVec<u64>,
    s2c: KVVec<u64>,
    data_size: u32,
    mmio: KVVec<u8>,
    #[pin]
    peers: SpinLockIrq<[Option<Arc<Channel>>; 2]>,
    #[pin]
    pub(super) gpadls: SpinLockIrq<GpadlTable>,
    #[pin]
    pub(super) gpadl_cond: CondVar,
    lending: Arc<Lending>,
    /// What becomes of signals to each end (client, server): one of
    /// [`signals`]; set only by `kmcl::testing`.
    signal_mode: [AtomicU8; 2],
    /// A signal to each end was held by [`signals::HOLD`].
    signal_held: [AtomicBool; 2],
}

/// What becomes of the signals to one end of a connection.
pub(crate) mod signals {
    /// Delivered at once.
    pub(crate) const DELIVER: u8 = 0;
    /// Lost.
    pub(crate) const DROP: u8 = 1;
    /// Kept until the mode changes back, then delivered once.
    pub(crate) const HOLD: u8 = 2;
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn role_index(r: Role) -> usize {
    match r {
        Role::Client => 0,
        Role::Server => 1,
    }
}

fn ring_alloc(words: usize) -> Result<KVVec<u64>> {
    let mut v = KVVec::with_capacity(words, GFP_KERNEL)?;
    v.resize(words, 0, GFP_KERNEL)?;
    Ok(v)
}

impl Connection {
    pub(super) fn new(ring_pages: u32, mmio_mb: u32) -> Result<Arc<Connection>> {
        let data_size = (ring_pages - 1) * 4096;
        let words = (CONTROL_SIZE + data_size as usize) / 8;
        let mut mmio = KVVec::new();
        mmio.resize(mmio_mb as usize * 1024 * 1024, 0, GFP_KERNEL)?;
        let conn = Arc::pin_init(
            try_pin_init!(Connection {
                token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
                parked: AtomicBool::new(false),
                c2s: ring_alloc(words)?,
                s2c: ring_alloc(words)?,
                data_size,
                mmio,
                peers <- new_spinlock_irq!([None, None], "kmcl::loopback::Connection::peers"),
                gpadls <- new_spinlock_irq!(GpadlTable::new(),
                    "kmcl::loopback::Connection::gpadls"),
                gpadl_cond <- new_condvar!("kmcl::loopback::Connection::gpadl_cond"),
                lending: Lending::new()?,
                signal_mode: [AtomicU8::new(signals::DELIVER), AtomicU8::new(signals::DELIVER)],
                signal_held: [AtomicBool::new(false), AtomicBool::new(false)],
            }),
            GFP_KERNEL,
        )?;
        for r in [Role::Client, Role::Server] {
            conn.ring_memory(r).ok_or(EINVAL)?.reset();
        }
        Ok(conn)
    }

    /// The ring that `writer` writes to. The value points into this
    /// connection: it is used only while an `Arc<Connection>` is held.
    pub(crate) fn ring_memory(&self, writer: Role) -> Option<RingMemory> {
        let v = match writer {
            Role::Client => &self.c2s,
            Role::Server => &self.s2c,
        };
        let base = v.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: `base` is a non-null, 8-aligned allocation of `CONTROL_SIZE +
        // data_size` bytes, owned by this connection; every `RingMemory` made
        // here is used only while an `Arc<Connection>` is held, and the
        // vectors are never resized.
        unsafe {
            RingMemory::new(
                NonNull::new(base)?,
                NonNull::new(base.add(CONTROL_SIZE))?,
                self.data_size,
            )
        }
    }

    pub(super) fn set_peer(&self, r: Role, chan: Option<Arc<Channel>>) -> Option<Arc<Channel>> {
        core::mem::replace(&mut self.peers.lock()[role_index(r)], chan)
    }

    pub(super) fn peer(&self, r: Role) -> Option<Arc<Channel>> {
        self.peers.lock()[role_index(r)].clone()
    }

    /// Whether a signal to `to` goes through now; one that does not is
    /// dropped or held as [`Connection::set_signal_mode`] said.
    fn signal_passes(&self, to: Role) -> bool {
        let i = role_index(to);
        match self.signal_mode[i].load(Ordering::Acquire) {
            signals::DROP => false,
            signals::HOLD => {
                self.signal_held[i].store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }

    /// Sets what becomes of the signals to `to` (one of [`signals`]).
    /// Leaving [`signals::HOLD`] delivers a signal held meanwhile, once.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn set_signal_mode(&self, to: Role, mode: u8) {
        let i = role_index(to);
        self.signal_mode[i].store(mode, Ordering::Release);
        if mode != signals::HOLD && self.signal_held[i].swap(false, Ordering::AcqRel) {
            if let Some(peer) = self.peer(to) {
                peer.interrupt();
            }
        }
    }

    /// Interrupts the `to` end out of turn; `false` when it has left.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn interrupt_end(&self, to: Role) -> bool {
        match self.peer(to) {
            Some(peer) => {
                peer.interrupt();
                true
            }
            None => false,
        }
    }

    /// The MMIO space.
    pub(crate) fn mmio(&self) -> &[u8] {
        &self.mmio
    }

    /// The connection's identity in saved states.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// One end of a loopback connection.
pub(crate) struct Endpoint {
    pub(crate) conn: Arc<Connection>,
    role: Role,
    /// The two rings of this end, until the channel takes them.
    link: Option<(Reader, Writer)>,
}

/// The ring one end of a connection reads.
pub(crate) struct Reader {
    reader: RingReader,
    /// Keeps the ring memory that `reader` reaches alive.
    _conn: Arc<Connection>,
}

/// The ring one end of a connection writes.
pub(crate) struct Writer {
    writer: RingWriter,
    conn: Arc<Connection>,
    role: Role,
    /// Pipe mode: in-band packets carry the pipe header (wire/pipe.rs).
    pipe: bool,
}

impl Endpoint {
    /// The `role` end of `conn`, for `chan`, which is Enabled (its
    /// transaction table is sized).
    pub(super) fn new(conn: Arc<Connection>, role: Role, chan: &Channel) -> Result<Endpoint> {
        let writer = RingWriter::new(conn.ring_memory(role).ok_or(EINVAL)?).map_err(|_| EIO)?;
        let reader =
            RingReader::new(conn.ring_memory(other(role)).ok_or(EINVAL)?).map_err(|_| EIO)?;
        let slots = chan.transaction_slots();
        conn.lending.reset(role, slots)?;
        let link = (
            Reader {
                reader,
                _conn: conn.clone(),
            },
            Writer {
                writer,
                conn: conn.clone(),
                role,
                pipe: chan.is_pipe(),
            },
        );
        Ok(Endpoint {
            conn,
            role,
            link: Some(link),
        })
    }

    /// The two rings, once. Each holds the connection, so they stay valid
    /// after a close too.
    pub(crate) fn take_link(&mut self) -> Option<(Reader, Writer)> {
        self.link.take()
    }

    pub(crate) fn close(self, _chan: &Channel) {
        self.conn.set_peer(self.role, None);
        // A parked connection waits for a restored server; the client is
        // not told.
        if self.conn.parked.load(Ordering::Acquire) {
            return;
        }
        if let Some(peer) = self.conn.peer(other(self.role)) {
            peer.peer_closed();
        }
    }

    /// Where this end lends the pages of its GPA-direct sends, and as whom.
    pub(crate) fn lending(&self) -> (&Arc<Lending>, Role) {
        (&self.conn.lending, self.role)
    }
}

impl Writer {
    /// Where this end lends the pages of its GPA-direct sends, and as whom.
    pub(crate) fn lending(&self) -> (&Arc<Lending>, Role) {
        (&self.conn.lending, self.role)
    }

    /// Writes raw bytes into the ring: the suites' hostile-peer hook.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> Result<bool, WriteError> {
        ring_result(self.writer.write(&[bytes]))
    }
}

/// A peer to signal.
pub(crate) struct SignalTarget {
    conn: Arc<Connection>,
    to: Role,
}

impl SignalTarget {
    pub(crate) fn signal(self) {
        if !self.conn.signal_passes(self.to) {
            return;
        }
        if let Some(peer) = self.conn.peer(self.to) {
            peer.interrupt();
        }
    }
}

/// The other end.
fn other(r: Role) -> Role {
    r.peer()
}

#[cfg(CONFIG_KUNIT)]
impl Channel {
    /// The loopback connection of an open channel, for the suites' fault
    /// injection (raw ring access). Test-only.
    pub(crate) fn loopback_connection(&self) -> Option<Arc<Connection>> {
        self.with_attachment(|a| match a {
            Some(crate::transport::Attachment::Loopback(e)) => Some(e.conn.clone()),
            _ => None,
        })
    }
}

impl SendLink for Writer {
    fn send(&mut self, p: &OutPacket<'_>) -> Result<bool, WriteError> {
        // Pipe mode (wire/pipe.rs): the header goes before an in-band
        // packet's data.
        if self.pipe && p.ty == packet::TYPE_DATA_INBAND {
            return self.send_pipe(p);
        }
        let desc = p.descriptor().ok_or(WriteError::Broken)?;
        // Ring writes take whole 8-byte words: descriptor and ranges, the
        // aligned body of the payload, then its tail padded with zeroes.
        let data = p.payload;
        let body = data.len() & !7;
        let mut tail = [0u8; 8];
        tail[..data.len() - body].copy_from_slice(&data[body..]);
        let tail_len = if data.len() == body { 0 } else { 8 };
        ring_result(self.writer.write(&[
            &desc.encode(),
            p.ranges,
            &data[..body],
            &tail[..tail_len],
        ]))
    }

    fn free(&self) -> u32 {
        self.writer.free().unwrap_or(0)
    }

    fn set_pending_send_size(&mut self, needed: u32) {
        self.writer.set_pending_send_size(needed)
    }

    fn signal_target(&self) -> LinkSignal {
        LinkSignal::Loopback(SignalTarget {
            conn: self.conn.clone(),
            to: other(self.role),
        })
    }

    fn fill(&self) -> (u32, u32) {
        let size = self.writer.memory().size();
        (size - self.writer.free().unwrap_or(size), size)
    }
}

// Pipe mode (wire/pipe.rs, channel/pipe.rs).
impl Writer {
    /// Writes in-band packet `p` of a pipe channel: descriptor, pipe
    /// header, data, padding.
    fn send_pipe(&mut self, p: &OutPacket<'_>) -> Result<bool, WriteError> {
        let data = p.payload;
        let header = pipe::encode(data.len()).ok_or(WriteError::Broken)?;
        let len = packet::DESCRIPTOR_SIZE
            .checked_add(pipe::HEADER_SIZE)
            .and_then(|n| n.checked_add(packet::align8(data.len())))
            .ok_or(WriteError::Broken)?;
        let desc = packet::Descriptor {
            ty: p.ty,
            offset8: (packet::DESCRIPTOR_SIZE / 8) as u16,
            len8: u16::try_from(len / 8).map_err(|_| WriteError::Broken)?,
            flags: p.flags,
            trans_id: p.trans_id,
        };
        let body = data.len() & !7;
        let mut tail = [0u8; 8];
        tail[..data.len() - body].copy_from_slice(&data[body..]);
        let tail_len = if data.len() == body { 0 } else { 8 };
        ring_result(
            self.writer
                .write(&[&desc.encode(), &header, &data[..body], &tail[..tail_len]]),
        )
    }
}

impl RecvLink for Reader {
    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        self.reader.read(buf)
    }

    fn begin_read(&mut self) {
        self.reader.begin_read()
    }

    fn end_read(&mut self) -> bool {
        self.reader.end_read().unwrap_or(true)
    }

    fn commit(&mut self) -> bool {
        self.reader.commit()
    }

    fn fill(&self) -> (u32, u32) {
        let size = self.reader.memory().size();
        (self.reader.available().unwrap_or(0), size)
    }

    fn completion_id(&mut self, wire: u64) -> Option<u64> {
        // Both ends are kmcl: ids travel unchanged.
        Some(wire)
    }
}
