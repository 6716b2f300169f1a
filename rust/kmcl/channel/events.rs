// SPDX-License-Identifier: GPL-2.0

//! The channel's events interface: everything a transport calls on a
//! channel besides the public API. Transports tell a channel of
//! interrupts, of a peer that opened or closed, of a transport that went
//! away; they attach and detach the connection they made; and they ask what
//! to open (ring size, flags, MMIO, transaction slots). The rest of the
//! channel's state is private to `channel/`. Also the channel's work items,
//! which run what the interrupts and events queue.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc,
    workqueue::WorkItem, //
};

use super::{
    Channel,
    State, //
};
use crate::{
    sys,
    transport::Attachment, //
};

/// What `vmbus_open()` is given for a client channel.
pub(crate) struct HvOpenParams {
    pub(crate) ring_pages: u32,
    pub(crate) max_pkt: u32,
    pub(crate) rqstor: u32,
}

/// Control events for the channel's process-context work.
pub(super) mod event {
    /// Look for the offer and open it (client).
    pub(crate) const CONNECT: u32 = 1 << 0;
    /// A client opened this server's offer.
    pub(crate) const PEER_OPENED: u32 = 1 << 1;
    /// The peer closed or went away.
    pub(crate) const PEER_CLOSED: u32 = 1 << 2;
}

impl Channel {
    /// Queues a control event for the process-context work.
    pub(super) fn post_event(&self, ev: u32) {
        self.inner.lock().events |= ev;
        let _ = sys::wq().enqueue::<Arc<Channel>, 2>(self.arc());
    }

    /// The channel's interrupt: the peer wrote to the ring, or freed space.
    pub(crate) fn interrupt(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let _ = sys::enqueue_bh_on::<Arc<Channel>, 0>(self.set_cpu(), self.arc());
    }

    /// Queues incoming delivery in the context the channel is set up for.
    pub(super) fn kick_delivery(&self) {
        let passive = self.rx.lock().passive;
        if passive {
            let _ = sys::wq().enqueue::<Arc<Channel>, 1>(self.arc());
        } else {
            let _ = sys::bh_wq().enqueue::<Arc<Channel>, 0>(self.arc());
        }
    }

    /// Looks for the offer again: a device became free.
    pub(crate) fn post_connect(&self) {
        self.post_event(event::CONNECT);
    }

    /// The transport under the channel went away: removed for good (the
    /// host rescinded the offer, the device was unbound), or, with
    /// `suspend`, for hibernation, after which a client opens again.
    ///
    /// Only an attached channel is affected; `false` otherwise (the bus
    /// then deals with an open still in flight).
    pub(crate) fn transport_lost(&self, suspend: bool) -> bool {
        {
            let mut g = self.inner.lock();
            if g.att.is_none() {
                return false;
            }
            if suspend {
                g.reconnect = true;
            } else {
                g.lost = true;
                self.publish(&g);
            }
        }
        self.peer_closed();
        true
    }

    /// The host's interrupt, in the channel's tasklet: flush the send queue
    /// and drain the ring in place.
    pub(crate) fn on_host_interrupt(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        self.on_interrupt();
    }

    /// The sizes `vmbus_open()` is given for this channel.
    pub(crate) fn hv_open_params(&self) -> HvOpenParams {
        let g = self.inner.lock();
        let packet_room = self.rx.lock().packet_room();
        let slots = self.tx.lock().slot_count();
        HvOpenParams {
            ring_pages: g.cfg.ring_pages,
            // The largest packet kmcl accepts (descriptor, ranges and
            // payload): Linux copies each packet out into a buffer this big.
            // No packet is larger than the ring's data area, and Linux
            // copies up to this many bytes from the ring even when the host
            // lies about the length: never more than the ring holds.
            max_pkt: (packet_room as u32).min((g.cfg.ring_pages - 1) * 4096),
            // Two requestor slots per transaction slot. A request that timed
            // out keeps its requestor slot until the host completes it (its
            // late completion is then refused), so the requestor needs room
            // beyond the requests in flight; should a host never answer, a
            // full requestor only queues sends, as a full ring does.
            rqstor: slots * 2,
        }
    }

    /// The peer closed: sends fail from now on, and the control work tears
    /// the channel down.
    pub(crate) fn peer_closed(&self) {
        {
            let mut g = self.inner.lock();
            g.peer_gone = true;
            self.publish(&g);
        }
        self.wake_waiters();
        self.post_event(event::PEER_CLOSED);
    }

    /// The number of transaction slots of the channel, which is Enabled:
    /// transports size their per-transaction tables by it.
    pub(crate) fn transaction_slots(&self) -> usize {
        self.tx.lock().slots_len()
    }

    /// Waits until no lifecycle step runs on the channel: an Enable, a
    /// Disable, or a connection or teardown of its control work. A bus that
    /// took the channel's transport away waits with it for the teardown
    /// that follows to end.
    pub(crate) fn wait_lifecycle_idle(&self) {
        kernel::task::might_sleep();
        drop(self.control.lock());
    }

    /// Holds the channel's lifecycle mutex: no lifecycle step and no pass
    /// of the control work runs until the guard is dropped. For the suites,
    /// to line events up for one pass.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn hold_lifecycle(&self) -> impl Sized + '_ {
        self.control.lock()
    }

    /// Attaches an open connection and moves to Opened.
    pub(crate) fn attach(&self, att: Attachment) -> Result {
        self.attach_or_return(att).map_err(|(e, att)| {
            // Nothing used it: closing tells the peer.
            att.close(self);
            e
        })
    }

    /// As [`Channel::attach`], but hands the connection back on failure.
    pub(crate) fn attach_or_return(
        &self,
        mut att: Attachment,
    ) -> core::result::Result<(), (Error, Attachment)> {
        let mut g = self.inner.lock();
        if g.state != State::Enabled || g.att.is_some() || g.disabling {
            return Err((EBUSY, att));
        }
        // SAFETY: the halves live in the receive and send state until
        // `detach` drops them, before it closes the attachment; the type's
        // invariant.
        let Some((reader, writer)) = (unsafe { att.take_link() }) else {
            return Err((EINVAL, att));
        };
        self.rx.lock().link = Some(reader);
        self.tx.lock().link = Some(writer);
        g.att = Some(att);
        g.state = State::Opened;
        // What was said of an earlier connection (its peer gone, its
        // transport lost or hibernated) does not carry over to this one.
        g.peer_gone = false;
        g.lost = false;
        g.reconnect = false;
        self.publish(&g);
        Ok(())
    }

    /// Drops the attachment's link, then closes it and tells the peer.
    pub(crate) fn detach(&self) {
        let att = {
            let mut g = self.inner.lock();
            let reader = self.rx.lock().link.take();
            let writer = self.tx.lock().link.take();
            let att = g.att.take();
            self.publish(&g);
            drop(g);
            drop(reader);
            drop(writer);
            att
        };
        if let Some(att) = att {
            att.close(self);
        }
    }

    pub(crate) fn flags(&self) -> super::ChannelFlags {
        self.inner.lock().cfg.flags
    }

    pub(crate) fn ring_pages(&self) -> u32 {
        self.inner.lock().cfg.ring_pages
    }

    pub(crate) fn mmio_megabytes(&self) -> u32 {
        self.inner.lock().cfg.mmio_megabytes
    }

    /// A client opened this server's offer: the server's control work runs
    /// Opened, Started and PostStarted.
    pub(crate) fn peer_opened(&self) {
        self.post_event(event::PEER_OPENED);
    }

    /// Calls `f` with the channel's attachment, under the channel lock: the
    /// transport that attached a connection looks at it (a loopback bus
    /// parks a saved server's connection).
    pub(crate) fn with_attachment<R>(&self, f: impl FnOnce(Option<&Attachment>) -> R) -> R {
        f(self.inner.lock().att.as_ref())
    }
}

impl WorkItem<0> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.on_interrupt();
    }
}

impl WorkItem<1> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        let me = kernel::task::Task::current_raw() as usize;
        this.passive_task.store(me, Ordering::Relaxed);
        this.run_passive();
        this.passive_task.store(0, Ordering::Relaxed);
    }
}

impl WorkItem<2> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.handle_events();
    }
}

impl WorkItem<3> for Channel {
    type Pointer = Arc<Channel>;

    fn run(this: Arc<Channel>) {
        this.run_routines();
    }
}
