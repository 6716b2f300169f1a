// SPDX-License-Identifier: GPL-2.0

//! The send queue: writing into the ring, waiting behind a full ring with
//! the pending send size, and finishing every send at a teardown.

use core::sync::atomic::{
    AtomicBool,
    AtomicU64,
    Ordering, //
};

use kernel::prelude::*;

use super::{
    outgoing::Packet,
    transactions::{
        transaction_id,
        TxOwner,
        TxSlot,
        TxState, //
    },
    Channel,
    Inner,
    State, //
};
use crate::transport::{
    LinkWriter,
    OutPacket,
    SendLink,
    WriteError, //
};

/// An entry of the send queue.
pub(crate) enum Queued {
    /// A transaction waiting for ring space; its bytes are in its slot.
    Tx { slot: u32, gen: u32 },
    /// A send without completion.
    Oneway(Packet),
    /// A completion or in-band reply of an incoming packet, in the packet's
    /// buffer: the reply's type and transaction id, its payload at the
    /// start of `buf`, `len` bytes long.
    Completion {
        buf: KVec<u8>,
        ty: u16,
        trans_id: u64,
        len: usize,
    },
}

/// The result of [`Channel::submit`].
pub(crate) struct Submitted {
    /// The peer must be signalled.
    pub(crate) signal: bool,
    /// The item went into the ring now, for the caller to finish.
    pub(crate) written: Option<Queued>,
}

impl TxState {
    pub(super) fn push(&mut self, item: Queued) -> core::result::Result<(), Queued> {
        let cap = self.queue.len();
        if self.queued == cap {
            return Err(item);
        }
        let tail = (self.head + self.queued) % cap;
        self.queue[tail] = Some(item);
        self.queued += 1;
        Ok(())
    }

    pub(super) fn pop(&mut self) -> Option<Queued> {
        if self.queued == 0 {
            return None;
        }
        let item = self.queue[self.head].take();
        self.head = (self.head + 1) % self.queue.len();
        self.queued -= 1;
        item
    }
}

fn front(queue: &[Option<Queued>], head: usize, queued: usize) -> Option<&Queued> {
    if queued == 0 {
        return None;
    }
    queue[head].as_ref()
}

/// The packet an entry puts in the ring; `None` for a stale entry.
fn packet_of<'a>(slots: &'a [TxSlot], item: &'a Queued) -> Option<OutPacket<'a>> {
    match item {
        Queued::Tx { slot, gen } => {
            let s = slots.get(*slot as usize)?;
            if s.gen != *gen {
                return None;
            }
            match s.owner.as_ref()? {
                TxOwner::Packet(p) => Some(p.out()),
                TxOwner::Sync(r) => Some(r.out(transaction_id(*slot, *gen))),
            }
        }
        Queued::Oneway(p) => Some(p.out()),
        Queued::Completion {
            buf,
            ty,
            trans_id,
            len,
        } => Some(OutPacket::simple(*ty, 0, *trans_id, buf.get(..*len)?)),
    }
}

/// [`Channel::write_now`] on the parts of the send state it uses.
fn send_unless_queued(
    link: &mut Option<LinkWriter>,
    queued: usize,
    pending_send: &mut bool,
    chan: &Channel,
    packet: &OutPacket<'_>,
) -> Result<Option<bool>> {
    let link = link.as_mut().ok_or(ENODEV)?;
    if queued != 0 {
        return Ok(None);
    }
    match write_or_wait(
        link,
        packet,
        pending_send,
        &chan.send_backlog,
        Some(&chan.stats.ring_full),
    ) {
        Ok(signal) => Ok(Some(signal)),
        Err(WriteError::Full(_)) => Ok(None),
        Err(WriteError::Broken) => Err(EIO),
        Err(WriteError::Gone) => Err(ENODEV),
    }
}

/// Writes `packet`; when the ring is full, stores the pending send size
/// and tries once more, as the reader may have freed space before it could
/// see that size, so that no wakeup is lost. `full` counts a full ring.
///
/// `backlog` (the channel's `send_backlog`) is set before the size is
/// stored, with a full barrier: the reader signals only after it saw the
/// size, so the interrupt that follows reads `backlog` set and flushes.
#[inline]
fn write_or_wait(
    link: &mut LinkWriter,
    packet: &OutPacket<'_>,
    pending_send: &mut bool,
    backlog: &AtomicBool,
    full: Option<&AtomicU64>,
) -> core::result::Result<bool, WriteError> {
    let mut r = link.send(packet);
    if let Err(WriteError::Full(needed)) = r {
        if let Some(c) = full {
            c.fetch_add(1, Ordering::Relaxed);
        }
        backlog.swap(true, Ordering::SeqCst);
        link.set_pending_send_size(needed);
        r = link.send(packet);
        *pending_send = true;
    }
    r
}

/// What the control state says about the send side, copied under the send
/// lock so that a send takes no other lock: whether a send is allowed, and
/// with which error it is refused; whether a packet may be allocated; and
/// whether synchronous requesters must give up.
#[derive(Clone, Copy)]
pub(crate) struct Gates {
    pub(crate) send: Result,
    pub(crate) alloc: Result,
    pub(crate) abandon: bool,
}

impl Gates {
    /// The gates of a Disabled channel.
    pub(crate) const DISABLED: Gates = Gates {
        send: Err(EINVAL),
        alloc: Err(EINVAL),
        abandon: false,
    };

    /// The gates for the control state `g`.
    pub(crate) fn of(g: &Inner) -> Gates {
        let send = if g.peer_gone || g.lost || g.disabling || g.state == State::Closing {
            Err(ENODEV)
        } else {
            match g.state {
                State::Opened | State::Started | State::Paused if g.att.is_some() => Ok(()),
                _ => Err(EINVAL),
            }
        };
        let alloc = if g.lost {
            Err(ENODEV)
        } else if g.state == State::Disabled {
            Err(EINVAL)
        } else {
            Ok(())
        };
        Gates {
            send,
            alloc,
            abandon: g.peer_gone || g.disabling,
        }
    }
}

impl Channel {
    /// Copies what the control state `g` says about sends into the send
    /// gate. Called, with the control lock held, after every change of the
    /// state, the attachment or the flags [`Gates::of`] reads: a send that
    /// passed the gate is in the send state before the change is seen, and
    /// one that comes after sees the change.
    pub(crate) fn publish(&self, g: &Inner) {
        let mut t = self.tx.lock();
        t.gate = Gates::of(g);
        // Not the last reference: the caller borrows the channel.
        drop(self.cache_gate(&mut t));
    }

    /// Writes `packet` into the ring now, from the caller's memory, unless
    /// earlier sends are queued: `Ok(Some(signal))` when it went in,
    /// `Ok(None)` when it must queue (the pending send size is set). Called
    /// with the send lock held.
    pub(crate) fn write_now(
        &self,
        tx: &mut TxState,
        packet: &OutPacket<'_>,
    ) -> Result<Option<bool>> {
        let TxState {
            link,
            queued,
            pending_send,
            ..
        } = tx;
        send_unless_queued(link, *queued, pending_send, self, packet)
    }

    /// Puts an item in the ring, or queues it behind earlier ones. Called
    /// with the send lock held.
    pub(crate) fn submit(
        &self,
        tx: &mut TxState,
        item: Queued,
    ) -> core::result::Result<Submitted, (Error, Queued)> {
        let TxState {
            link,
            slots,
            queued,
            pending_send,
            ..
        } = &mut *tx;
        let Some(packet) = packet_of(slots, &item) else {
            return Err((EINVAL, item));
        };
        match send_unless_queued(link, *queued, pending_send, self, &packet) {
            Ok(Some(signal)) => {
                return Ok(Submitted {
                    signal,
                    written: Some(item),
                })
            }
            Ok(None) => {}
            Err(e) => return Err((e, item)),
        }
        self.enqueue(tx, item)
    }

    /// Queues an item behind earlier sends. Called with the send lock held.
    pub(crate) fn enqueue(
        &self,
        tx: &mut TxState,
        item: Queued,
    ) -> core::result::Result<Submitted, (Error, Queued)> {
        if tx.link.is_none() {
            return Err((ENODEV, item));
        }
        let is_tx = match &item {
            Queued::Tx { slot, .. } => Some(*slot),
            _ => None,
        };
        // Before the item is in the queue: a queue holds items only behind
        // an earlier one or a full ring, which set it already; this keeps
        // the rule that a queued item implies it set.
        self.send_backlog.store(true, Ordering::Relaxed);
        tx.push(item).map_err(|item| (EBUSY, item))?;
        if let Some(slot) = is_tx {
            tx.slots[slot as usize].queued = true;
        }
        Ok(Submitted {
            signal: false,
            written: None,
        })
    }

    /// Signals the peer through the attachment.
    pub(crate) fn signal_peer(&self) {
        let target = self.tx.lock().link.as_ref().map(|l| l.signal_target());
        if let Some(t) = target {
            self.stats.signals_sent.fetch_add(1, Ordering::Relaxed);
            t.signal();
        }
    }

    /// Writes queued items while the ring has room, in order. With nothing
    /// queued and no pending send size (`send_backlog` clear), it returns
    /// without taking the send lock.
    pub(crate) fn flush_send_queue(&self) {
        // Acquire: pairs with the full barrier before the pending send size
        // is stored (`write_or_wait`); a size this flush could have missed
        // was stored after the peer's signal that led here, and its send
        // then retried the write after the peer's read.
        if !self.send_backlog.load(Ordering::Acquire) {
            return;
        }
        loop {
            let mut g = self.tx.lock();
            let tx = &mut *g;
            let TxState {
                link,
                slots,
                queue,
                head,
                queued,
                pending_send,
                ..
            } = &mut *tx;
            let Some(link) = link.as_mut() else {
                return;
            };
            let Some(front) = front(queue, *head, *queued) else {
                if *pending_send {
                    *pending_send = false;
                    link.set_pending_send_size(0);
                }
                self.send_backlog.store(false, Ordering::Relaxed);
                return;
            };
            let r = match packet_of(slots, front) {
                // A cancelled transaction: skip it.
                None => Ok(false),
                Some(packet) => {
                    write_or_wait(link, &packet, pending_send, &self.send_backlog, None)
                }
            };
            match r {
                Ok(signal) => {
                    let item = tx.pop();
                    if let Some(Queued::Tx { slot, gen }) = &item {
                        if let Some(s) = tx.slots.get_mut(*slot as usize) {
                            if s.gen == *gen {
                                s.queued = false;
                            }
                        }
                    }
                    let (schedule, buf) = match item {
                        Some(Queued::Completion { buf, .. }) => (false, Some(buf)),
                        Some(Queued::Oneway(p)) => (tx.routines.push(p), None),
                        _ => (false, None),
                    };
                    drop(g);
                    if let Some(b) = buf {
                        self.rx.lock().put_buf(b);
                    }
                    self.wake_waiters();
                    if signal {
                        self.signal_peer();
                    }
                    if schedule {
                        self.schedule_routines();
                    }
                }
                // The host rescinded the channel: its removal tears down.
                Err(WriteError::Full(_)) | Err(WriteError::Gone) => return,
                Err(WriteError::Broken) => {
                    drop(g);
                    pr_err!(
                        "channel {}: outgoing ring is corrupt; sends stop\n",
                        self.id()
                    );
                    return;
                }
            }
        }
    }

    /// Finishes every transaction in flight and every queued send with
    /// `status`, each exactly once. Synchronous requesters get `ENODEV` and
    /// free their own slots; this waits until they have.
    pub(crate) fn cancel_all_sends(&self, status: Error) {
        {
            let mut g = self.tx.lock();
            for s in g.slots.iter_mut() {
                if let Some(TxOwner::Sync(r)) = s.owner.as_mut() {
                    if r.result.is_none() {
                        r.result = Some(Err(ENODEV));
                    }
                }
            }
        }
        self.wake_waiters();
        loop {
            let mut g = self.tx.lock();
            let mut buf = None;
            let p = if let Some(item) = g.pop() {
                match item {
                    Queued::Oneway(p) => Some(p),
                    Queued::Completion { buf: b, .. } => {
                        buf = Some(b);
                        None
                    }
                    // The slot is finished below.
                    Queued::Tx { .. } => None,
                }
            } else {
                let busy = g
                    .slots
                    .iter()
                    .position(|s| matches!(s.owner, Some(TxOwner::Packet(_))));
                match busy {
                    Some(slot) => g.free_slot(slot as u32),
                    None => break,
                }
            };
            if p.is_some() {
                g.routines.begin_call();
            }
            drop(g);
            if let Some(b) = buf {
                self.rx.lock().put_buf(b);
            }
            if let Some(p) = p {
                self.call_counted_routine(p, Err(status), &[]);
            }
        }
        self.wake_waiters();
        self.wait_until(&self.tx, |g| !g.slots.iter().any(|s| s.owner.is_some()));
        // One-way sends that entered the ring finish as they would have.
        self.finish_routines();
    }
}
