// SPDX-License-Identifier: GPL-2.0

//! The lifecycle: Enable, Disable, Pause and Start, the open sequence and
//! its state callbacks, and the teardown, driven from process context.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::{
        CondVarTimeoutResult,
        SpinLockIrq, //
    },
    task::Task,
};

use super::{
    callbacks::StateChange,
    event,
    rx::RxState,
    transactions::TxState,
    Channel,
    Endpoint,
    Sizing,
    State, //
};
use crate::sys;

impl Channel {
    /// Waits in process context until the channel is in `state`, for at
    /// most `timeout`. Enable returns before the channel opens: this is how
    /// a caller waits for `State::Started`.
    ///
    /// Fails with `ETIMEDOUT` when the time runs out, and with
    /// `ERESTARTSYS` as soon as a signal is pending for the caller.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel, where the state cannot change until the callback
    /// returns.
    pub fn wait_for_state(&self, state: State, timeout: kernel::time::Delta) -> Result {
        self.check_lifecycle_call("wait_for_state")?;
        // State changes wake the condition variable; the timeout only bounds
        // the wait.
        self.wait_until_interruptible(&self.inner, timeout, |g| g.state == state)
    }

    // ---- Lifecycle. ----

    /// Refuses a call that sleeps where its caller may not (a
    /// ProcessPacket in softirq context, a completion routine, a spinlock
    /// held): [`EWOULDBLOCK`](super::EWOULDBLOCK), with one line logged,
    /// before the call does anything.
    pub(crate) fn check_may_sleep(&self, what: &str) -> Result {
        if sys::may_sleep() {
            return Ok(());
        }
        pr_err!(
            "channel {}: {} may sleep and was called in atomic context; refused\n",
            self.id,
            what
        );
        Err(super::EWOULDBLOCK)
    }

    /// Refuses, with `EDEADLK`, a call that would wait for the callback of
    /// this channel that the caller runs in: a state callback, or a
    /// ProcessPacket in process context (a lifecycle step waits for every
    /// delivered packet, or for the step that runs it).
    fn check_not_in_callback(&self, what: &str) -> Result {
        let me = Task::current_raw() as usize;
        let which = if self.inner.lock().in_callback == me {
            "state callback"
        } else if self.in_passive_work() {
            "ProcessPacket"
        } else {
            return Ok(());
        };
        pr_err!(
            "channel {}: {} called from inside its own {}; refused\n",
            self.id,
            what,
            which
        );
        Err(EDEADLK)
    }

    /// The checks of a lifecycle call: it sleeps, and it waits for the
    /// channel's state callbacks.
    pub(super) fn check_lifecycle_call(&self, what: &str) -> Result {
        self.check_may_sleep(what)?;
        self.check_not_in_callback(what)
    }

    /// Enables a Disabled channel (`VmbChannelEnable`): a server offers it, a
    /// client opens its target or waits for it. Returns at once; the state
    /// callbacks follow in process context.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel. `EINVAL` when the
    /// channel is not Disabled or lacks packet callbacks or a target.
    #[doc(alias = "VmbChannelEnable")]
    pub fn enable(&self) -> Result {
        self.check_lifecycle_call("enable")?;
        kernel::task::might_sleep();
        let _c = self.control.lock();
        let sizing = {
            let g = self.inner.lock();
            if g.state != State::Disabled {
                return Err(EINVAL);
            }
            if g.cfg.process.is_none() {
                pr_err!("channel {}: enable without packet callbacks\n", self.id);
                return Err(EINVAL);
            }
            if g.cfg.target_type.is_null() {
                return Err(EINVAL);
            }
            g.cfg.sizing()
        };
        self.check_subchannel_enable()?;
        // A channel that names no bus uses the machine's VMBus.
        let bus = {
            let named = self.inner.lock().cfg.bus.clone();
            match named.or_else(crate::transport::default_bus) {
                Some(bus) => bus,
                None => return Err(ENODEV),
            }
        };
        self.inner.lock().cfg.bus = Some(bus);
        self.prepare_enabled(&sizing)?;
        let Some(bus) = self.inner.lock().cfg.bus.clone() else {
            return Err(ENODEV);
        };
        let pending = self.inner.lock().pending_restore.take();
        let r = match (self.endpoint, pending) {
            (Endpoint::Server, Some(pending)) => bus.rejoin(self, pending.token).map(|()| {
                self.restore_packets(pending);
                self.post_event(event::PEER_OPENED);
            }),
            (Endpoint::Server, None) => bus.offer(self),
            (Endpoint::Client, _) => bus.add_client(self).map(|()| {
                self.post_event(event::CONNECT);
            }),
        };
        if r.is_err() {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
            self.publish(&g);
            self.rx.lock().release();
            self.tx.lock().release();
        }
        r
    }

    /// Disables the channel (`VmbChannelDisable`): closes it on a client,
    /// revokes the offer on a server. Process context; blocks until the
    /// channel is torn down, in this order:
    ///
    /// - delivery stops, and every ProcessPacket and ProcessingComplete
    ///   already running (a deferred packet's redelivery included) returns;
    /// - Suspend runs, if the channel was Started;
    /// - the driver finishes every incoming packet it still holds;
    /// - every transaction in flight and every queued send finishes with
    ///   `ECANCELED` (`ENODEV` if the peer went away), and one-way sends that
    ///   entered the ring get their routine with success; the call waits for
    ///   routines running on other CPUs;
    /// - Closed runs, if Opened had succeeded, and the connection closes.
    ///
    /// Once it returns, no callback of this channel runs until the next
    /// [`Channel::enable`]. On a Disabled channel it does nothing and
    /// succeeds.
    ///
    /// Context: process context only (`might_sleep()` is checked). Refused
    /// before it does anything, with one line logged:
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context (a
    /// ProcessPacket in softirq context, a completion routine, a spinlock
    /// held), `EDEADLK` from one of the channel's own state callbacks or
    /// from its ProcessPacket in process context, which it would wait for.
    #[doc(alias = "VmbChannelDisable")]
    pub fn disable(&self) -> Result {
        self.check_lifecycle_call("disable")?;
        kernel::task::might_sleep();
        {
            let mut g = self.inner.lock();
            g.disabling = true;
            self.publish(&g);
        }
        self.wake_waiters();
        // Sub-channels close first, their Suspend and Closed before this
        // channel's; outside the control lock, which each takes its own of.
        self.close_subchannels();
        let _c = self.control.lock();
        let (bus, servicing) = {
            let mut g = self.inner.lock();
            if g.state == State::Disabled {
                return Ok(());
            }
            (g.cfg.bus.clone(), core::mem::take(&mut g.servicing))
        };
        if let Some(bus) = &bus {
            if servicing {
                bus.park(self);
            }
            bus.withdraw(self);
        }
        self.teardown(false);
        {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
            g.events = 0;
            g.disabling = false;
            g.reconnect = false;
            self.publish(&g);
        }
        if let Some(bus) = bus {
            bus.release(self);
        }
        Ok(())
    }

    /// Pauses incoming delivery (`VmbChannelPause`). Blocks until Suspend has
    /// run and the driver has finished every outstanding incoming packet. On
    /// a Disabled channel, arms a pause that applies after the next open.
    /// `EINVAL` in a state other than Disabled, Started or Paused.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel.
    #[doc(alias = "VmbChannelPause")]
    pub fn pause(&self) -> Result {
        self.check_lifecycle_call("pause")?;
        kernel::task::might_sleep();
        let _c = self.control.lock();
        if self.set_paused(true)? {
            self.stop_delivery();
            self.call_state(|cb, ch| cb.suspend(ch));
            self.wait_incoming_finished();
        }
        Ok(())
    }

    /// Leaves the paused state (`VmbChannelStart`): Started runs again and
    /// delivery resumes. On a Disabled channel, disarms a pending pause.
    /// `EINVAL` in a state other than Disabled, Started or Paused.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context and with
    /// `EDEADLK` from a state callback or a process-context ProcessPacket
    /// of this channel.
    #[doc(alias = "VmbChannelStart")]
    pub fn start(&self) -> Result {
        self.check_lifecycle_call("start")?;
        kernel::task::might_sleep();
        let _c = self.control.lock();
        if self.set_paused(false)? {
            self.call_state(|cb, ch| cb.started(ch));
            self.start_delivery();
        }
        Ok(())
    }

    /// Moves a Started channel to Paused (`paused`) or a Paused one back to
    /// Started; on a Disabled channel, arms or disarms the pause for the
    /// next open. `Ok(true)` when the state changed and the callbacks are
    /// owed; `EINVAL` in any other state.
    fn set_paused(&self, paused: bool) -> Result<bool> {
        let (from, to) = if paused {
            (State::Started, State::Paused)
        } else {
            (State::Paused, State::Started)
        };
        let mut g = self.inner.lock();
        match g.state {
            State::Disabled => {
                g.pause_armed = paused;
                Ok(false)
            }
            s if s == to => Ok(false),
            s if s == from => {
                g.state = to;
                if paused {
                    // Delivery stops with the state, under the same lock.
                    self.set_rx_enabled(false);
                }
                if !paused {
                    // Resuming this instance abandons a save.
                    g.servicing = false;
                }
                Ok(true)
            }
            _ => Err(EINVAL),
        }
    }

    /// Runs a state callback with the in-callback marker set.
    pub(crate) fn call_state<R: Default>(
        &self,
        f: impl FnOnce(&dyn StateChange, &Channel) -> R,
    ) -> R {
        let cb = {
            let mut g = self.inner.lock();
            g.in_callback = Task::current_raw() as usize;
            g.cfg.state_cb.clone()
        };
        let r = cb.as_deref().map(|cb| f(cb, self)).unwrap_or_default();
        self.inner.lock().in_callback = 0;
        r
    }

    /// The Opened, Started and PostStarted sequence after a connection.
    /// Returns the Opened callback's error, after rolling back.
    pub(crate) fn run_open_sequence(&self) -> Result {
        if let Err(e) = self
            .call_state(|cb, ch| Some(cb.opened(ch)))
            .unwrap_or(Ok(()))
        {
            pr_info!(
                "channel {}: Opened failed ({:?}); rolled back\n",
                self.id,
                e
            );
            let left = self.xfer_take_left();
            self.detach();
            drop(left);
            let mut g = self.inner.lock();
            g.state = State::Enabled;
            self.publish(&g);
            return Err(e);
        }
        let paused = {
            let mut g = self.inner.lock();
            if g.state != State::Opened {
                // The peer closed meanwhile; the control work handles it.
                g.opened = true;
                return Ok(());
            }
            g.opened = true;
            if g.pause_armed {
                g.pause_armed = false;
                g.state = State::Paused;
                true
            } else {
                g.state = State::Started;
                false
            }
        };
        self.wake_waiters();
        if !paused {
            self.call_state(|cb, ch| cb.started(ch));
            self.start_delivery();
            self.call_state(|cb, ch| cb.post_started(ch));
        }
        Ok(())
    }

    /// Waits on the channel's condition variable until `done` holds of
    /// what `lock` guards.
    pub(crate) fn wait_until<T: Unpin>(
        &self,
        lock: &SpinLockIrq<T>,
        mut done: impl FnMut(&mut T) -> bool,
    ) {
        let mut g = lock.lock();
        while !done(&mut g) {
            self.counted_wait(&mut g, |c, g| c.wait(g));
        }
    }

    /// Waits in process context on the channel's condition variable until
    /// `done` holds: `ETIMEDOUT` once `timeout` has run out, `ERESTARTSYS`
    /// as soon as a signal is pending for the caller.
    pub(crate) fn wait_until_interruptible<T: Unpin>(
        &self,
        lock: &SpinLockIrq<T>,
        timeout: kernel::time::Delta,
        mut done: impl FnMut(&mut T) -> bool,
    ) -> Result {
        kernel::task::might_sleep();
        let deadline = deadline(timeout);
        let mut g = lock.lock();
        while !done(&mut g) {
            let now = sys::jiffies();
            if now >= deadline {
                return Err(ETIMEDOUT);
            }
            let left = (deadline - now) as kernel::time::Jiffies;
            match self.counted_wait(&mut g, |c, g| c.wait_interruptible_timeout(g, left)) {
                CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
                CondVarTimeoutResult::Timeout | CondVarTimeoutResult::Woken { .. } => {}
            }
        }
        Ok(())
    }

    /// Makes the preallocations of an Enable (packet pool, transaction table,
    /// send queue, incoming slots) and moves a Disabled channel to Enabled.
    /// Called with the control mutex held, which keeps the state Disabled
    /// while the allocations, which sleep, run outside the channel's locks.
    fn prepare_enabled(&self, sizing: &Sizing) -> Result {
        let mut rx = RxState::new();
        rx.prepare(sizing)?;
        let mut tx = TxState::new();
        tx.prepare(sizing)?;
        let mut g = self.inner.lock();
        rx.process = g.cfg.process.clone();
        // Pipe mode (channel/pipe.rs).
        self.prepare_pipe_rx(&mut rx, &g.cfg);
        {
            let mut r = self.rx.lock();
            // The quota and the delivery context are settings, not state.
            rx.passive = r.passive;
            *r = rx;
            // Disabled: nothing is delivered or outstanding.
            self.rxc.enabled.store(false, Ordering::Relaxed);
            self.rxc.failed.store(false, Ordering::Relaxed);
            self.rxc.outstanding.store(0, Ordering::Relaxed);
        }
        {
            let mut t = self.tx.lock();
            // Whether the handle still lives is not state of one Enable.
            tx.pool_refs = t.pool_refs;
            *t = tx;
        }
        g.state = State::Enabled;
        g.peer_gone = false;
        g.disabling = false;
        g.opened = false;
        g.lost = false;
        g.reconnect = false;
        self.publish(&g);
        Ok(())
    }

    /// Tears an open or enabled channel down. `peer` says the peer closed.
    fn teardown(&self, peer: bool) {
        let (was_started, was_opened) = {
            let mut g = self.inner.lock();
            let s = g.state;
            g.state = State::Closing;
            self.set_rx_enabled(false);
            self.publish(&g);
            (s == State::Started, g.opened)
        };
        self.stop_delivery();
        if was_started {
            self.call_state(|cb, ch| cb.suspend(ch));
        }
        self.wait_incoming_finished();
        self.xfer_release_deferred();
        self.cancel_all_sends(if peer { ENODEV } else { ECANCELED });
        if was_opened {
            self.call_state(|cb, ch| cb.closed(ch));
        }
        let left = self.xfer_take_left();
        self.detach();
        drop(left);
        self.inner.lock().opened = false;
        let mut r = self.rx.lock();
        let keep = r.drop_deferred(&self.rxc);
        self.rxc.failed.store(false, Ordering::Relaxed);
        drop(r);
        drop(keep);
    }

    pub(super) fn handle_events(&self) {
        // The peer went away: sub-channels close first, as in `disable`.
        if self.inner.lock().events & event::PEER_CLOSED != 0 {
            self.close_subchannels();
        }
        let _c = self.control.lock();
        let ev = {
            let mut g = self.inner.lock();
            let ev = core::mem::take(&mut g.events);
            // A peer close raised for a connection that is gone already (an
            // open rolled back after the device left, say) closes nothing.
            // Kept, it would close the connection that CONNECT below opens.
            if g.att.is_none() {
                ev & !event::PEER_CLOSED
            } else {
                ev
            }
        };
        if ev & event::CONNECT != 0 {
            let bus = self.inner.lock().cfg.bus.clone();
            if let Some(bus) = bus {
                match bus.connect(self) {
                    Ok(true) => {
                        if let Err(e) = self.run_open_sequence() {
                            self.call_state(|cb, ch| cb.pnp_failure(ch, e));
                            // Rolled back to Enabled: wait for the device
                            // to be offered again.
                            bus.wait_again(self, false);
                        }
                    }
                    Ok(false) => {} // waiting for an offer
                    // A Disable that raced with the open is no PnP failure.
                    Err(_) if self.inner.lock().disabling => {}
                    Err(e) => self.call_state(|cb, ch| cb.pnp_failure(ch, e)),
                }
            }
        }
        if ev & event::PEER_OPENED != 0 && self.state() == State::Opened {
            let _ = self.run_open_sequence();
        }
        if ev & event::PEER_CLOSED != 0 {
            let s = self.state();
            if matches!(s, State::Opened | State::Started | State::Paused) {
                self.teardown(true);
                let mut g = self.inner.lock();
                g.peer_gone = false;
                let reconnect = core::mem::take(&mut g.reconnect);
                g.state = match self.endpoint {
                    // A server's offer stays up for the next client.
                    Endpoint::Server => State::Enabled,
                    // A client whose device hibernated waits for it again.
                    Endpoint::Client if reconnect => State::Enabled,
                    // A client needs a new Enable.
                    Endpoint::Client => State::Disabled,
                };
                let state = g.state;
                self.publish(&g);
                if state == State::Disabled {
                    self.rx.lock().release();
                    self.tx.lock().release();
                }
                let bus = g.cfg.bus.clone();
                drop(g);
                self.wake_waiters();
                match (self.endpoint, bus) {
                    (Endpoint::Server, Some(bus)) => bus.offer_available(self),
                    (Endpoint::Client, Some(bus)) if state == State::Enabled => {
                        bus.wait_again(self, true)
                    }
                    (Endpoint::Client, Some(bus)) => bus.release(self),
                    _ => {}
                }
            }
        }
    }

    /// Opens the channel on a connection that is open already, in the
    /// caller's thread: the preallocations of an Enable, the attachment that
    /// `connect` makes, then Opened, Started and PostStarted. For the suites
    /// that put kmcl on a transport endpoint they built, without a bus.
    #[cfg(CONFIG_KUNIT)]
    pub(crate) fn open_attached(
        &self,
        connect: impl FnOnce() -> crate::transport::Attachment,
    ) -> Result {
        kernel::task::might_sleep();
        let c = self.control.lock();
        let sizing = {
            let g = self.inner.lock();
            if g.state != State::Disabled || g.cfg.process.is_none() {
                return Err(EINVAL);
            }
            g.cfg.sizing()
        };
        self.prepare_enabled(&sizing)?;
        self.attach(connect())?;
        drop(c);
        let r = self.run_open_sequence();
        if r.is_err() {
            let mut g = self.inner.lock();
            g.state = State::Disabled;
            self.publish(&g);
        }
        r
    }
}

/// The jiffies at which `timeout`, counted from now, runs out.
pub(super) fn deadline(timeout: kernel::time::Delta) -> u64 {
    let ms = u32::try_from(timeout.as_millis().max(0)).unwrap_or(u32::MAX);
    sys::jiffies() + kernel::time::msecs_to_jiffies(ms) as u64
}
