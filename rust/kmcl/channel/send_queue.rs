// SPDX-License-Identifier: GPL-2.0

//! The send queue: writing into the ring, waiting behind a full ring with
//! the pending send size, and finishing every send at a teardown.

use core::sync::atomic::Ordering;

use kernel::prelude::*;

use super::{
    outgoing::Packet,
    transactions::{
        TxOwner,
        TxState, //
    },
    Channel,
    Inner,
    State, //
};
use crate::transport::{
    Link,
    WriteError, //
};

/// An entry of the send queue.
pub(crate) enum Queued {
    /// A transaction waiting for ring space; its bytes are in its slot.
    Tx { slot: u32, gen: u32 },
    /// A send without completion.
    Oneway(Packet),
    /// A completion of an incoming packet: buffer and length.
    Completion(KVec<u8>, usize),
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

    pub(super) fn front(&self) -> Option<&Queued> {
        if self.queued == 0 {
            return None;
        }
        self.queue[self.head].as_ref()
    }

    /// The bytes an entry puts in the ring; `None` for a stale entry.
    pub(super) fn bytes_of<'a>(&'a self, item: &'a Queued) -> Option<&'a [u8]> {
        match item {
            Queued::Tx { slot, gen } => {
                let s = self.slots.get(*slot as usize)?;
                if s.gen != *gen {
                    return None;
                }
                match s.owner.as_ref()? {
                    TxOwner::Packet(p) => Some(p.wire_bytes()),
                    TxOwner::Sync(r) => Some(&r.req),
                }
            }
            Queued::Oneway(p) => Some(p.wire_bytes()),
            Queued::Completion(b, n) => b.get(..*n),
        }
    }
}

/// Whether the channel can take a send now.
pub(super) fn usable_for_send(g: &Inner) -> Result {
    if g.peer_gone || g.lost || g.disabling || g.state == State::Closing {
        return Err(ENODEV);
    }
    match g.state {
        State::Opened | State::Started | State::Paused if g.att.is_some() => Ok(()),
        _ => Err(EINVAL),
    }
}

impl Channel {
    /// Puts an item in the ring, or queues it behind earlier ones. Called
    /// with the channel lock held.
    pub(crate) fn submit(
        &self,
        g: &mut Inner,
        item: Queued,
    ) -> core::result::Result<Submitted, (Error, Queued)> {
        let Inner { tx, att, .. } = g;
        let Some(att) = att.as_mut() else {
            return Err((ENODEV, item));
        };
        if tx.queued == 0 {
            let Some(bytes) = tx.bytes_of(&item) else {
                return Err((EINVAL, item));
            };
            let mut r = att.write(bytes);
            if let Err(WriteError::Full(needed)) = r {
                self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                att.set_pending_send_size(needed);
                // The reader may have freed space before it could see the
                // pending size; try once more so that no wakeup is lost.
                r = att.write(bytes);
                tx.pending_send = true;
            }
            match r {
                Ok(signal) => {
                    return Ok(Submitted {
                        signal,
                        written: Some(item),
                    })
                }
                Err(WriteError::Full(_)) => {}
                Err(WriteError::Broken) => return Err((EIO, item)),
                Err(WriteError::Gone) => return Err((ENODEV, item)),
            }
        }
        let is_tx = match &item {
            Queued::Tx { slot, .. } => Some(*slot),
            _ => None,
        };
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
        let target = self.inner.lock().att.as_ref().map(|a| a.signal_target());
        if let Some(t) = target {
            self.stats.signals_sent.fetch_add(1, Ordering::Relaxed);
            t.signal();
        }
    }

    /// Writes queued items while the ring has room, in order.
    pub(crate) fn flush_send_queue(&self) {
        loop {
            let mut g = self.inner.lock();
            let Inner { tx, att, .. } = &mut *g;
            let Some(att) = att.as_mut() else {
                return;
            };
            let Some(front) = tx.front() else {
                if tx.pending_send {
                    tx.pending_send = false;
                    att.set_pending_send_size(0);
                }
                return;
            };
            let r = match tx.bytes_of(front) {
                // A cancelled transaction: skip it.
                None => Ok(false),
                Some(bytes) => {
                    let mut r = att.write(bytes);
                    if let Err(WriteError::Full(needed)) = r {
                        att.set_pending_send_size(needed);
                        r = att.write(bytes);
                        tx.pending_send = true;
                    }
                    r
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
                    let schedule = match item {
                        Some(Queued::Completion(b, _)) => {
                            g.rx.put_buf(b);
                            false
                        }
                        Some(Queued::Oneway(p)) => g.routines.push(p),
                        _ => false,
                    };
                    drop(g);
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
            let mut g = self.inner.lock();
            for s in g.tx.slots.iter_mut() {
                if let Some(TxOwner::Sync(r)) = s.owner.as_mut() {
                    if r.result.is_none() {
                        r.result = Some(Err(ENODEV));
                    }
                }
            }
        }
        self.wake_waiters();
        loop {
            let mut g = self.inner.lock();
            let p = if let Some(item) = g.tx.pop() {
                match item {
                    Queued::Oneway(p) => Some(p),
                    Queued::Completion(b, _) => {
                        g.rx.put_buf(b);
                        None
                    }
                    // The slot is finished below.
                    Queued::Tx { .. } => None,
                }
            } else {
                let busy =
                    g.tx.slots
                        .iter()
                        .position(|s| matches!(s.owner, Some(TxOwner::Packet(_))));
                match busy {
                    Some(slot) => g.tx.free_slot(slot as u32),
                    None => break,
                }
            };
            if p.is_some() {
                g.routines.begin_call();
            }
            drop(g);
            if let Some(p) = p {
                self.call_counted_routine(p, Err(status), &[]);
            }
        }
        self.wake_waiters();
        self.wait_until(|g| !g.tx.slots.iter().any(|s| s.owner.is_some()));
        // One-way sends that entered the ring finish as they would have.
        self.finish_routines();
    }
}
