// SPDX-License-Identifier: GPL-2.0

//! Sub-channels: more channels of one device, each with its own rings,
//! callbacks, quota and target CPU, that the host (or a loopback server)
//! offers beside an open primary channel.
//!
//! - A client primary names a [`SubchannelOffer`] callback before Enable.
//!   For each sub-channel offer of its open connection, kmcl allocates a
//!   Disabled client channel bound to that offer, owned by the primary's
//!   module, and hands a [`ChannelBuilder`] over it to the callback. The driver
//!   sets its callbacks, quota, ring size and target CPU and enables it
//!   before the callback returns; kmcl opens it before the offer's caller
//!   (hv_vmbus's offer work, or the loopback server) gets control back.
//!   An offer lives only that long: a handle enabled later, or enabled
//!   again after it closed, fails with `ENODEV`.
//! - A loopback server primary offers a Disabled server channel of its own
//!   as a sub-channel with [`Channel::offer_subchannel`].
//! - The sub-channels of a primary close before it: a teardown of the
//!   primary (Disable, rescind, peer close, hibernation) disables each of
//!   them first, so their Suspend and Closed run before the primary's
//!   Suspend and Closed, and none of their callbacks runs once the
//!   primary's teardown is over.

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    owners,
    Channel,
    ChannelBuilder,
    ChannelHandle,
    Endpoint,
    State, //
};
use crate::transport::{
    Bus,
    SubOffer, //
};

/// What a client primary's driver is told of each sub-channel offer.
pub trait SubchannelOffer: Send + Sync {
    /// The peer offered a sub-channel of `primary`. `subchannel` builds a
    /// Disabled client channel bound to the offer, with the primary's
    /// interface ids, bus and ring size;
    /// [`ChannelBuilder::subchannel_index`] tells which one it is. To use
    /// it, give it a driver (and a ring size as wanted), build it, set its
    /// quota and target CPU as wanted, call `enable()`, and keep the
    /// handle; dropping the builder or the handle refuses the offer.
    ///
    /// Process context: hv_vmbus's offer work, or on loopback the thread
    /// of the server's [`Channel::offer_subchannel`]. The sub-channel opens
    /// (Opened, Started, PostStarted) after this returns, before the
    /// offer's caller gets control back.
    fn subchannel_offered(&self, primary: &Channel, subchannel: ChannelBuilder);
}

/// A channel's sub-channel state, under `Channel::subs`.
pub(crate) struct Subchannels {
    /// A client primary's offer callback.
    callback: Option<Arc<dyn SubchannelOffer>>,
    /// The sub-channels of the current connection of this primary.
    list: KVec<Arc<Channel>>,
    /// 0 for a primary; the offer's index for a sub-channel.
    index: u16,
    /// A client sub-channel's offer, until its open takes it (or the
    /// offer callback returns without an Enable).
    offer: Option<SubOffer>,
    /// A server sub-channel that may be enabled, once, by
    /// `offer_subchannel`.
    armed: bool,
    /// The last index a server primary gave.
    last_index: u16,
}

impl Subchannels {
    pub(crate) fn new() -> Self {
        Self {
            callback: None,
            list: KVec::new(),
            index: 0,
            offer: None,
            armed: false,
            last_index: 0,
        }
    }
}

/// Whether a channel in `state` has an open connection.
fn is_open(state: State) -> bool {
    matches!(state, State::Opened | State::Started | State::Paused)
}

impl Channel {
    /// Whether the channel's connection takes sub-channels now: open, its
    /// Opened callback succeeded, and neither a Disable nor a peer close
    /// has begun. Checked with `subs` held: a teardown sets `disabling` or
    /// `peer_gone` first and takes the list afterwards, so it closes every
    /// sub-channel added before.
    fn accepts_subchannels(&self) -> bool {
        let g = self.inner.lock();
        is_open(g.state) && g.opened && !g.disabling && !g.peer_gone
    }
}

impl Channel {
    /// The callback told of each sub-channel offer of this client primary.
    /// Client only, while Disabled (`EINVAL` otherwise). Without one, the
    /// offers are left unopened.
    ///
    /// Context: process context only: it takes a mutex.
    pub(crate) fn init_set_subchannel_callback(
        &self,
        callback: Arc<dyn SubchannelOffer>,
    ) -> Result {
        if self.endpoint != Endpoint::Client || self.state() != State::Disabled {
            return Err(EINVAL);
        }
        let mut s = self.subs.lock();
        if s.index != 0 {
            // A sub-channel has no sub-channels.
            return Err(EINVAL);
        }
        s.callback = Some(callback);
        Ok(())
    }

    /// The sub-channel index of the channel's offer: 0 for a primary.
    ///
    /// Context: process context only: it takes a mutex.
    pub fn subchannel_index(&self) -> u16 {
        self.subs.lock().index
    }

    pub(crate) fn is_subchannel(&self) -> bool {
        self.subchannel_index() != 0
    }

    /// Takes a client sub-channel's offer, for its open. `None` once it was
    /// taken, or for a channel that is no sub-channel.
    pub(crate) fn take_subchannel_offer(&self) -> Option<SubOffer> {
        self.subs.lock().offer.take()
    }

    /// Offers `subchannel`, a Disabled server channel, as the next
    /// sub-channel of this server primary, which must be open (`EINVAL`
    /// otherwise, or when either is no server, or `subchannel` is not
    /// Disabled). It takes the primary's interface ids and bus, and is
    /// enabled. Returns its index.
    ///
    /// The client primary's [`SubchannelOffer`] runs in this thread; a
    /// sub-channel its driver enabled is open when this returns. When the
    /// client primary is not open (closing, say), the offer is withdrawn
    /// and the call fails with `ENOTCONN`. A client without a callback, or
    /// one that dropped the handle, leaves the sub-channel offered and
    /// unopened. Loopback only: `EOPNOTSUPP` on other buses.
    ///
    /// Context: process context only (`might_sleep()` is checked); refused
    /// with [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context.
    pub fn offer_subchannel(&self, subchannel: &mut ChannelHandle) -> Result<u16> {
        self.check_may_sleep("offer_subchannel")?;
        kernel::task::might_sleep();
        if self.endpoint != Endpoint::Server
            || subchannel.endpoint != Endpoint::Server
            || core::ptr::eq(self, &**subchannel)
            || self.is_subchannel()
            || subchannel.state() != State::Disabled
        {
            return Err(EINVAL);
        }
        if !self.accepts_subchannels() {
            return Err(EINVAL);
        }
        let (ty, instance, bus) = {
            let g = self.inner.lock();
            (g.cfg.target_type, g.cfg.target_instance, g.cfg.bus.clone())
        };
        let (Some(instance), Some(bus)) = (instance, bus) else {
            return Err(EINVAL);
        };
        if !matches!(bus, Bus::Loopback(_)) {
            return Err(EOPNOTSUPP);
        }
        subchannel.init_set_target_interface_id(ty, instance)?;
        subchannel.init_set_vmbus_handle(bus.clone())?;
        let index = {
            let mut s = self.subs.lock();
            if !self.accepts_subchannels() {
                return Err(EINVAL);
            }
            let index = s.last_index.checked_add(1).ok_or(ENOSPC)?;
            s.list.push(subchannel.arc(), GFP_KERNEL)?;
            s.last_index = index;
            index
        };
        {
            let mut s = subchannel.subs.lock();
            s.index = index;
            s.armed = true;
        }
        if let Err(e) = subchannel.enable() {
            self.forget_subchannel(subchannel);
            return Err(e);
        }
        // A teardown of this primary that took the list before the Enable
        // found the sub-channel still Disabled: it would outlive it.
        let listed = {
            let s = self.subs.lock();
            self.accepts_subchannels() && s.list.iter().any(|c| core::ptr::eq(&**c, &**subchannel))
        };
        if !listed {
            // Process context, not a callback of the sub-channel: it runs.
            let _ = subchannel.disable();
            self.forget_subchannel(subchannel);
            return Err(ENOTCONN);
        }
        let client = bus.subchannel_peer(self);
        let offered = match client {
            Some(c) => c.subchannel_offered(SubOffer::Loopback(subchannel.arc()), index),
            None => Err(ENOTCONN),
        };
        if let Err(e) = offered {
            // Process context, not a callback of the sub-channel: it runs.
            let _ = subchannel.disable();
            self.forget_subchannel(subchannel);
            return Err(e);
        }
        Ok(index)
    }

    fn forget_subchannel(&self, sub: &Channel) {
        let gone = {
            let mut s = self.subs.lock();
            let pos = s.list.iter().position(|c| core::ptr::eq(&**c, sub));
            pos.and_then(|i| s.list.remove(i).ok())
        };
        drop(gone);
    }

    /// A sub-channel of this client primary was offered: hands a new
    /// sub-channel to the driver's callback and opens it if the driver
    /// enabled it. `ENOTCONN` when this primary is not open; a primary
    /// without a callback leaves the offer unopened.
    pub(crate) fn subchannel_offered(&self, offer: SubOffer, index: u16) -> Result {
        kernel::task::might_sleep();
        if self.endpoint != Endpoint::Client || index == 0 || self.is_subchannel() {
            return Err(EINVAL);
        }
        if !self.accepts_subchannels() {
            return Err(ENOTCONN);
        }
        let (ty, instance, bus, ring_pages) = {
            let g = self.inner.lock();
            (
                g.cfg.target_type,
                g.cfg.target_instance,
                g.cfg.bus.clone(),
                g.cfg.ring_pages,
            )
        };
        let Some(callback) = self.subs.lock().callback.clone() else {
            return Ok(());
        };
        let bus = bus.ok_or(ENOTCONN)?;
        let module = owners::module_of(self).ok_or(ENODEV)?;
        let sub = Channel::allocate(Endpoint::Client, module)?;
        sub.init_set_target_pnp(ty, instance)?;
        sub.init_set_vmbus_handle(bus)?;
        sub.init_set_ring_buffer_page_count(ring_pages)?;
        {
            let mut s = sub.subs.lock();
            s.index = index;
            s.offer = Some(offer);
        }
        let chan = sub.arc();
        callback.subchannel_offered(self, ChannelBuilder::for_subchannel(sub));
        // Enabled in the callback: on the primary's list first, so that a
        // teardown of the primary from now on closes it.
        let registered = chan.state() != State::Disabled && {
            let mut s = self.subs.lock();
            self.accepts_subchannels() && s.list.push(chan.clone(), GFP_KERNEL).is_ok()
        };
        if registered {
            // Open it now, while the offer is valid; the control work that
            // the Enable queued then finds nothing to do (or opened it
            // first).
            chan.handle_events();
        } else if chan.state() != State::Disabled {
            // Process context, not a callback of the sub-channel: it runs.
            let _ = chan.disable();
        }
        // The offer lives only as long as this call. An open that took it
        // elsewhere (an Enable from another thread) runs under the
        // sub-channel's control lock: wait for it to end.
        drop(chan.take_subchannel_offer());
        chan.wait_lifecycle_idle();
        if !registered && chan.state() != State::Disabled {
            // Enabled after the callback returned: not a sub-channel of
            // this primary's lifecycle, so not left open.
            // Process context, not a callback of the sub-channel: it runs.
            let _ = chan.disable();
        }
        Ok(())
    }

    /// Whether a sub-channel may be enabled now: a client one whose offer
    /// is still there, a server one armed by `offer_subchannel` (which this
    /// disarms). `ENODEV` otherwise.
    pub(super) fn check_subchannel_enable(&self) -> Result {
        let mut s = self.subs.lock();
        if s.index == 0 {
            return Ok(());
        }
        let ok = match self.endpoint {
            Endpoint::Client => s.offer.is_some(),
            Endpoint::Server => core::mem::take(&mut s.armed),
        };
        if ok {
            Ok(())
        } else {
            Err(ENODEV)
        }
    }

    /// Disables every sub-channel of this primary: called before its
    /// teardown (Disable, peer close), outside its control lock, so that
    /// theirs is over before the primary's Suspend.
    pub(super) fn close_subchannels(&self) {
        let list = core::mem::take(&mut self.subs.lock().list);
        for sub in list.iter() {
            // Process context, not a callback of the sub-channel (its
            // own Disable or the control work of its primary): it runs.
            let _ = sub.disable();
        }
    }

    /// Drops the driver's offer callback (the channel is going away).
    pub(super) fn drop_subchannel_callback(&self) {
        let cb = self.subs.lock().callback.take();
        drop(cb);
    }

    /// Sets the CPU the channel's interrupts should run on.
    ///
    /// - Loopback: reported by [`Channel::target_cpu`], and the CPU the
    ///   peer's signals run the channel's receive work on (in softirq
    ///   context, as a host's interrupt runs the channel's tasklet on the
    ///   CPU it targets); while it is unset or not online, the CPU that
    ///   signalled.
    /// - hv: `EOPNOTSUPP`. The host interrupts the CPU hv_vmbus chose for
    ///   the offer; Linux 7.3 moves it only through the channel's sysfs
    ///   `cpu` attribute (`vmbus_channel_set_cpu()` is not exported). kmcl
    ///   runs wherever the interrupt arrives, so a move during traffic is
    ///   harmless.
    ///
    /// `EINVAL` for a CPU number beyond `nr_cpu_ids`. Any state.
    ///
    /// Context: process context only; refused with
    /// [`EWOULDBLOCK`](super::EWOULDBLOCK) in atomic context.
    pub fn set_target_cpu(&self, cpu: u32) -> Result {
        self.check_may_sleep("set_target_cpu")?;
        if cpu >= kernel::cpu::nr_cpu_ids() {
            return Err(EINVAL);
        }
        if self.with_attachment(|a| a.is_some_and(|a| a.target_cpu().is_some()))
            || matches!(self.inner.lock().cfg.bus, Some(Bus::Hv(_)))
        {
            return Err(EOPNOTSUPP);
        }
        self.irq_cpu
            .store(cpu, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The CPU the channel's interrupts go to: on hv, while open, the one
    /// the host interrupts; otherwise the value set with
    /// [`Channel::set_target_cpu`], if any.
    ///
    /// Context: process context only: it takes a mutex.
    pub fn target_cpu(&self) -> Option<u32> {
        self.with_attachment(|a| a.and_then(|a| a.target_cpu()))
            .or(self.set_cpu())
    }

    /// The CPU set with [`Channel::set_target_cpu`], if any.
    pub(crate) fn set_cpu(&self) -> Option<u32> {
        match self.irq_cpu.load(core::sync::atomic::Ordering::Relaxed) {
            u32::MAX => None,
            cpu => Some(cpu),
        }
    }
}
