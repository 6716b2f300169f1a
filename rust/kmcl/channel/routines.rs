// SPDX-License-Identifier: GPL-2.0

//! When and where completion routines run.
//!
//! Every completion routine runs with bottom halves disabled: in the
//! channel's softirq work or hv's channel tasklet, or, when kmcl finishes a
//! send from process context (a teardown, delivery at passive level), inside
//! `local_bh_disable()`. A driver lock shared between a routine and a
//! ProcessPacket that runs in softirq context can then be a plain spinlock.
//!
//! A routine never runs inside the `send()` that started its transaction. A
//! one-way send that enters the ring at once is put on the channel's list of
//! finished one-way packets, and the list is worked off, in order and by one
//! context at a time, by the channel's routine work. A routine that sends
//! again only adds to that list, so a driver that refills the ring from its
//! routines uses constant stack, whatever the number of sends.
//!
//! Teardown waits for the list to be empty and for the context working it
//! off to leave, so no routine runs after [`Channel::disable`] returns.

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    outgoing::{
        Packet,
        PacketInner, //
    },
    Channel, //
};
use crate::sys;

/// One-way packets waiting for their routine.
///
/// # Invariants
///
/// `done` is a singly linked list through [`PacketInner::next`], newest
/// first; every entry is a packet whose send entered the ring.
pub(crate) struct Routines {
    done: Option<KBox<PacketInner>>,
    /// A context is calling routines from `done`.
    running: bool,
    /// Routines of finished transactions being called outside the channel
    /// lock: a transaction's slot is free before its routine returns.
    calling: u32,
}

impl Routines {
    pub(crate) const fn new() -> Self {
        Self {
            done: None,
            running: false,
            calling: 0,
        }
    }

    /// Adds a packet whose one-way send entered the ring. Returns whether
    /// the caller must schedule the routine work: nobody is working the list
    /// off and it was empty.
    pub(crate) fn push(&mut self, p: Packet) -> bool {
        let Some(mut b) = p.into_box() else {
            return false;
        };
        let was_empty = self.done.is_none();
        b.next = self.done.take();
        self.done = Some(b);
        was_empty && !self.running
    }

    /// Whether nothing is waiting and nobody is calling routines.
    pub(crate) fn idle(&self) -> bool {
        self.done.is_none() && !self.running && self.calling == 0
    }

    /// A routine of a finished transaction is about to be called: counted
    /// under the same lock hold that frees its slot, so no waiter sees the
    /// transaction gone before its routine returned.
    pub(crate) fn begin_call(&mut self) {
        self.calling += 1;
    }

    /// The routine counted by [`Routines::begin_call`] returned.
    pub(crate) fn end_call(&mut self) {
        self.calling = self.calling.saturating_sub(1);
    }
}

/// Calls a packet's completion routine with bottom halves disabled.
pub(crate) fn call_routine(p: Packet, status: Result, response: &[u8]) {
    bh_off(|| p.complete_routine(status, response));
}

/// Runs `f` with bottom halves disabled: as it is called when they already
/// are (in a softirq, hv's channel tasklet, or after the caller disabled
/// them), else inside `local_bh_disable()`, whose enable would otherwise
/// cost every completion in softirq context a call that finds nothing to
/// do.
#[inline(always)]
fn bh_off<R>(f: impl FnOnce() -> R) -> R {
    if sys::bh_disabled() {
        f()
    } else {
        sys::with_bh_disabled(f)
    }
}

impl Channel {
    /// Calls the routine of a transaction that [`Routines::begin_call`]
    /// counted, then ends the count and wakes the waiters.
    pub(crate) fn call_counted_routine(&self, p: Packet, status: Result, response: &[u8]) {
        call_routine(p, status, response);
        self.tx.lock().routines.end_call();
        self.wake_waiters();
    }

    /// Queues the routine work, which runs [`Channel::run_routines`] in
    /// softirq context.
    pub(crate) fn schedule_routines(&self) {
        let _ = sys::bh_wq().enqueue::<Arc<Channel>, 3>(self.arc());
    }

    /// Calls the routines of finished one-way packets, oldest first, until
    /// none is left. Returns at once when another context is doing it: that
    /// context picks up what was added meanwhile.
    pub(crate) fn run_routines(&self) {
        {
            let mut g = self.tx.lock();
            if g.routines.running || g.routines.done.is_none() {
                return;
            }
            g.routines.running = true;
        }
        loop {
            let list = {
                let mut g = self.tx.lock();
                match g.routines.done.take() {
                    Some(list) => list,
                    None => {
                        g.routines.running = false;
                        drop(g);
                        // Teardown, or a driver waiting for its sends.
                        self.wake_waiters();
                        return;
                    }
                }
            };
            // Newest first: reverse into sending order.
            let mut ordered: Option<KBox<PacketInner>> = None;
            let mut cur = Some(list);
            while let Some(mut b) = cur {
                cur = b.next.take();
                b.next = ordered;
                ordered = Some(b);
            }
            // Packets with no routine only go back to their pool: all of
            // the batch's at once, after the routines.
            let mut spare: Option<KBox<PacketInner>> = None;
            // One bottom-half section for the batch, as a tasklet runs.
            bh_off(|| {
                while let Some(mut b) = ordered.take() {
                    ordered = b.next.take();
                    if b.recyclable() {
                        b.next = spare.take();
                        spare = Some(b);
                        continue;
                    }
                    Packet::from_box(b).complete_routine(Ok(()), &[]);
                }
            });
            if spare.is_some() {
                self.recycle(spare);
            }
        }
    }

    /// Calls what is left on the list and waits until no context is calling
    /// routines of this channel. Process context; part of teardown.
    pub(crate) fn finish_routines(&self) {
        loop {
            self.run_routines();
            let mut g = self.tx.lock();
            if g.routines.idle() {
                return;
            }
            // Another context is working the list off; it clears `running`
            // and wakes the waiters when it is done.
            self.counted_wait(&mut g, |c, g| c.wait(g));
        }
    }
}
