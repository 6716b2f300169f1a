// SPDX-License-Identifier: GPL-2.0

//! The channel builder: configuration before Enable, by construction.
//!
//! [`Channel::builder`] returns a [`ChannelBuilder`]; its by-value setters
//! record settings and [`build`] allocates the channel, applies them and
//! hands over the configured, Disabled [`ChannelHandle`]. The settings of
//! `VmbChannelInitSet*` exist only on the builder, so a driver cannot make
//! one after Enable: the setters do not exist on what Enable is called on.
//! What KMCL lets change at any time (quota, passive processing, target
//! CPU, interrupt latency) stays on [`Channel`].
//!
//! The driver's data and callbacks go in with [`ChannelBuilder::driver`]:
//! a value of the driver's type, pin-initialised in place and owned by the
//! channel, whose callbacks get `&Self`. The channel drops it when its
//! handle goes, after the last callback returned, so it may hold anything
//! the driver keeps per channel without forming a reference cycle.
//!
//! Every setter is an inline store into the builder; only [`build`] is an
//! exported function, so the builder adds one symbol to kmcl's exports.
//!
//! [`build`]: ChannelBuilder::build

use core::any::Any;

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    callbacks::{
        ProcessPacket,
        SaveRestorePacket,
        StateChange, //
    },
    subchannel::SubchannelOffer,
    Channel,
    ChannelFlags,
    ChannelHandle,
    Endpoint,
    ServerFlags,
    FRIENDLY_NAME_MAX, //
};
use crate::{
    transport::Bus,
    wire::guid::Guid, //
};

/// The driver of a channel: its per-channel data and callbacks, as
/// [`ChannelBuilder::driver`] takes them.
///
/// Any type that implements [`ProcessPacket`] and [`StateChange`] (whose
/// methods all have defaults, so `impl StateChange for MyDriver {}` is
/// enough) is one.
pub trait ChannelDriver: ProcessPacket + StateChange + 'static {}

impl<T: ProcessPacket + StateChange + 'static> ChannelDriver for T {}

/// What the channel is built on.
enum Base {
    /// A new channel of this endpoint kind, owned by this module.
    New(Endpoint, &'static ThisModule),
    /// A Disabled channel kmcl allocated (a sub-channel offer).
    Existing(ChannelHandle),
}

/// The settings a builder applies at [`ChannelBuilder::build`], `None`
/// where the channel's default stays.
#[derive(Default)]
pub(crate) struct Settings {
    pub(crate) client_context_size: Option<u32>,
    pub(crate) flags: Option<ChannelFlags>,
    pub(crate) friendly_name: Option<([u8; FRIENDLY_NAME_MAX], usize)>,
    pub(crate) maximum_external_data: Option<(u32, u32)>,
    pub(crate) maximum_packet_size: Option<u32>,
    pub(crate) packet_pool_size: Option<u32>,
    pub(crate) incoming_slots: Option<u32>,
    pub(crate) pipe_mode: Option<u32>,
    pub(crate) process: Option<Arc<dyn ProcessPacket>>,
    pub(crate) state: Option<Arc<dyn StateChange>>,
    pub(crate) save_restore: Option<Arc<dyn SaveRestorePacket>>,
    pub(crate) subchannel: Option<Arc<dyn SubchannelOffer>>,
    pub(crate) data: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) bus: Option<Bus>,
    pub(crate) ring_buffer_page_count: Option<u32>,
    pub(crate) target_pnp: Option<(Guid, Option<Guid>)>,
    pub(crate) server_flags: Option<ServerFlags>,
    pub(crate) mmio_megabytes: Option<u32>,
    pub(crate) target_interface_id: Option<(Guid, Guid)>,
    pub(crate) target_vtl: Option<u8>,
    /// The first error of a setter and the setter's name, reported by
    /// `build`.
    pub(crate) error: Option<(Error, &'static str)>,
}

/// A channel being configured, returned by [`Channel::builder`]
/// (`VmbChannelAllocate` and the `VmbChannelInitSet*` calls).
///
/// Each setter takes the builder by value and returns it. Values are
/// checked by [`ChannelBuilder::build`], which fails with the error of a
/// refused setting, logged with the setting's name: `EINVAL` for a value
/// out of range or a setting of the other endpoint kind, `EOPNOTSUPP` for
/// a pipe mode kmcl does not implement, the initialiser's error for the
/// driver's data. With several refused, the one reported is the first
/// refused as it was given (a friendly name too long, a driver whose
/// initialiser failed), else the first in the order `build` applies them:
/// the order of the setters below, callbacks last. A setter given twice
/// keeps the last value.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use kernel::prelude::*;
/// use kmcl::{
///     Bus, Channel, ChannelHandle, Endpoint, Guid, IncomingPacket, ProcessPacket,
///     StateChange,
/// };
///
/// struct Counter {
///     seen: AtomicU32,
/// }
///
/// impl ProcessPacket for Counter {
///     fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
///         self.seen.fetch_add(1, Ordering::Relaxed);
///         packet.complete(&[]);
///     }
/// }
///
/// impl StateChange for Counter {}
///
/// fn open(bus: Bus, module: &'static ThisModule) -> Result<ChannelHandle> {
///     const MY_TYPE: Guid = Guid::from_str_const("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501");
///     let mut ch = Channel::builder(Endpoint::Client, module)
///         .maximum_packet_size(4096)
///         .target_pnp(MY_TYPE, None)
///         .vmbus_handle(bus)
///         .driver(Counter { seen: AtomicU32::new(0) })
///         .build()?;
///     ch.enable()?;
///     Ok(ch)
/// }
///
/// /// The packets `ch`'s driver saw so far.
/// fn seen(ch: &ChannelHandle) -> u32 {
///     ch.data::<Counter>()
///         .map_or(0, |c| c.seen.load(Ordering::Relaxed))
/// }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct ChannelBuilder {
    base: Base,
    settings: Settings,
}

impl Channel {
    /// A builder for a Disabled channel endpoint of kind `endpoint`
    /// (`VmbChannelAllocate`, then the `VmbChannelInitSet*` calls).
    ///
    /// `module` is the module that owns the channel (its `THIS_MODULE`),
    /// the one whose code the channel's callbacks run. Should that module
    /// go away with the handle still alive, kmcl disables the channel and
    /// drops its driver before the module's memory is freed.
    ///
    /// Context: any context; [`ChannelBuilder::build`] needs process
    /// context.
    #[doc(alias = "VmbChannelAllocate")]
    #[inline]
    pub fn builder(endpoint: Endpoint, module: &'static ThisModule) -> ChannelBuilder {
        ChannelBuilder {
            base: Base::New(endpoint, module),
            settings: Settings::default(),
        }
    }
}

impl ChannelBuilder {
    /// A builder over the Disabled sub-channel `handle` that kmcl
    /// allocated for an offer.
    pub(crate) fn for_subchannel(handle: ChannelHandle) -> Self {
        Self {
            base: Base::Existing(handle),
            settings: Settings::default(),
        }
    }

    /// The sub-channel index of the offer this builder configures the
    /// channel of; 0 for a new channel.
    ///
    /// Context: process context only: it takes a mutex.
    #[inline]
    pub fn subchannel_index(&self) -> u16 {
        match &self.base {
            Base::New(..) => 0,
            Base::Existing(h) => h.subchannel_index(),
        }
    }

    #[inline]
    fn set(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    #[inline]
    fn fail(mut self, e: Error, setting: &'static str) -> Self {
        if self.settings.error.is_none() {
            self.settings.error = Some((e, setting));
        }
        self
    }

    /// Allocates the channel (or takes the offered sub-channel) and applies
    /// every setting, in the order of the `VmbChannelInitSet*` calls. The
    /// result is Disabled: [`ChannelHandle::enable`] opens or offers it.
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL` and
    /// takes a mutex.
    pub fn build(self) -> Result<ChannelHandle> {
        let Self { base, settings } = self;
        let mut handle = match base {
            Base::New(endpoint, module) => Channel::allocate(endpoint, module)?,
            Base::Existing(h) => h,
        };
        handle.apply(settings)?;
        Ok(handle)
    }

    /// The driver's data and callbacks, pin-initialised in place by `init`
    /// and owned by the channel (`VmbChannelInitSetProcessPacketCallbacks`
    /// and `VmbChannelInitSetStateChangeCallbacks` in one). Each callback
    /// gets `&D`; [`ChannelHandle::data`] reaches the same value. The
    /// channel drops it when its handle is dropped, after the last
    /// callback returned. Replaces callbacks set before.
    ///
    /// Context: process context (it allocates with `GFP_KERNEL`).
    #[doc(alias = "VmbChannelInitSetProcessPacketCallbacks")]
    #[doc(alias = "VmbChannelInitSetStateChangeCallbacks")]
    #[inline]
    pub fn driver<D: ChannelDriver, E>(self, init: impl PinInit<D, E>) -> Self
    where
        Error: From<E>,
    {
        match Arc::pin_init(init, GFP_KERNEL) {
            Ok(d) => self.set(|s| {
                s.process = Some(d.clone());
                s.state = Some(d.clone());
                s.data = Some(d);
            }),
            Err(e) => self.fail(e, "driver"),
        }
    }

    /// Packet callbacks shared with other owners: the channel keeps one
    /// reference and drops it with its handle. A driver whose callbacks
    /// are its per-channel state uses [`ChannelBuilder::driver`].
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetProcessPacketCallbacks")]
    #[inline]
    pub fn process_packet_callbacks(self, cb: Arc<dyn ProcessPacket>) -> Self {
        self.set(|s| s.process = Some(cb))
    }

    /// State callbacks shared with other owners, as
    /// [`ChannelBuilder::process_packet_callbacks`].
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetStateChangeCallbacks")]
    #[inline]
    pub fn state_change_callbacks(self, cb: Arc<dyn StateChange>) -> Self {
        self.set(|s| s.state = Some(cb))
    }

    /// Size of the per-incoming-packet scratch area that
    /// [`IncomingPacket::context`](super::incoming::IncomingPacket::context)
    /// returns, at most 4096 bytes.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetClientContextSize")]
    #[inline]
    pub fn client_context_size(self, size: u32) -> Self {
        self.set(|s| s.client_context_size = Some(size))
    }

    /// Channel flags: a [`ChannelFlags`] set.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetFlags")]
    #[inline]
    pub fn flags(self, flags: ChannelFlags) -> Self {
        self.set(|s| s.flags = Some(flags))
    }

    /// Name for debugging and the status file: at most
    /// [`FRIENDLY_NAME_MAX`] bytes of UTF-8.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetFriendlyName")]
    #[inline]
    pub fn friendly_name(self, name: &CStr) -> Self {
        let b = name.to_bytes();
        if b.len() > FRIENDLY_NAME_MAX {
            return self.fail(EINVAL, "friendly_name");
        }
        let mut buf = [0u8; FRIENDLY_NAME_MAX];
        buf[..b.len()].copy_from_slice(b);
        self.set(|s| s.friendly_name = Some((buf, b.len())))
    }

    /// Largest external data a packet may describe: total bytes and number
    /// of ranges (1 to 64), both above zero.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetMaximumExternalData")]
    #[inline]
    pub fn maximum_external_data(self, size: u32, chain_length: u32) -> Self {
        self.set(|s| s.maximum_external_data = Some((size, chain_length)))
    }

    /// Largest payload a send may ever carry: 1 byte to 1 MiB.
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelInitSetMaximumPacketSize")]
    #[inline]
    pub fn maximum_packet_size(self, size: u32) -> Self {
        self.set(|s| s.maximum_packet_size = Some(size))
    }

    /// Number of preallocated packet objects, 1 to 4096 (a kmcl addition:
    /// KMCL's pool grows on demand, kmcl's is fixed so that sends never
    /// allocate).
    ///
    /// Context: any context.
    #[inline]
    pub fn packet_pool_size(self, count: u32) -> Self {
        self.set(|s| s.packet_pool_size = Some(count))
    }

    /// Number of preallocated incoming packet slots, 1 to 4096: the upper
    /// bound of the transaction quota (a kmcl addition, for the same
    /// reason).
    ///
    /// Context: any context.
    #[inline]
    pub fn incoming_slots(self, count: u32) -> Self {
        self.set(|s| s.incoming_slots = Some(count))
    }

    /// The pipe mode of a pipe channel (`VMBUS_PIPE_TYPE_*`):
    /// [`pipe_mode::MESSAGE`](super::pipe::pipe_mode::MESSAGE), the
    /// default, is the only one implemented;
    /// [`pipe_mode::BYTE`](super::pipe::pipe_mode::BYTE) fails with
    /// `EOPNOTSUPP`, any other value with `EINVAL`.
    ///
    /// Context: any context.
    #[inline]
    pub fn pipe_mode(self, mode: u32) -> Self {
        self.set(|s| s.pipe_mode = Some(mode))
    }

    /// The VMBus instance to use. kmcl accepts it on clients too, to pick a
    /// loopback bus; without it a channel uses the machine's VMBus.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetVmbusHandle")]
    #[inline]
    pub fn vmbus_handle(self, bus: Bus) -> Self {
        self.set(|s| s.bus = Some(bus))
    }

    /// Ring size in pages per direction, control page included, 2 to 1024.
    /// Client only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbClientChannelInitSetRingBufferPageCount")]
    #[inline]
    pub fn ring_buffer_page_count(self, pages: u32) -> Self {
        self.set(|s| s.ring_buffer_page_count = Some(pages))
    }

    /// The offer to open: interface type (not null) and, optionally,
    /// instance. PnP failures reach
    /// [`StateChange::pnp_failure`]. Client only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbClientChannelInitSetTargetPnp")]
    #[inline]
    pub fn target_pnp(self, interface_type: Guid, instance: Option<Guid>) -> Self {
        self.set(|s| s.target_pnp = Some((interface_type, instance)))
    }

    /// The callback told of each sub-channel offer of this client primary.
    /// Without one, the offers are left unopened. Client primaries only.
    ///
    /// Context: any context.
    #[inline]
    pub fn subchannel_callback(self, callback: Arc<dyn SubchannelOffer>) -> Self {
        self.set(|s| s.subchannel = Some(callback))
    }

    /// Server flags: a [`ServerFlags`] set. Server only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetFlags")]
    #[inline]
    pub fn server_flags(self, flags: ServerFlags) -> Self {
        self.set(|s| s.server_flags = Some(flags))
    }

    /// MMIO space to reserve for the device, 0 to 64 MiB. Server only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetMmioMegabytes")]
    #[inline]
    pub fn mmio_megabytes(self, megabytes: u32) -> Self {
        self.set(|s| s.mmio_megabytes = Some(megabytes))
    }

    /// Per-packet save and restore callbacks. Server only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetSaveRestorePacketCallbacks")]
    #[inline]
    pub fn save_restore_packet_callbacks(self, cb: Arc<dyn SaveRestorePacket>) -> Self {
        self.set(|s| s.save_restore = Some(cb))
    }

    /// The interface type (not null) and instance of the offer. Server
    /// only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetTargetInterfaceId")]
    #[inline]
    pub fn target_interface_id(self, interface_type: Guid, instance: Guid) -> Self {
        self.set(|s| s.target_interface_id = Some((interface_type, instance)))
    }

    /// The VTL the offer is made to, 0 to 2. Server only.
    ///
    /// Context: any context.
    #[doc(alias = "VmbServerChannelInitSetTargetVtl")]
    #[inline]
    pub fn target_vtl(self, vtl: u8) -> Self {
        self.set(|s| s.target_vtl = Some(vtl))
    }
}

impl ChannelHandle {
    /// Applies a builder's `settings` to this Disabled channel, through the
    /// channel's checked setters.
    fn apply(&mut self, settings: Settings) -> Result {
        let Settings {
            client_context_size,
            flags,
            friendly_name,
            maximum_external_data,
            maximum_packet_size,
            packet_pool_size,
            incoming_slots,
            pipe_mode,
            process,
            state,
            save_restore,
            subchannel,
            data,
            bus,
            ring_buffer_page_count,
            target_pnp,
            server_flags,
            mmio_megabytes,
            target_interface_id,
            target_vtl,
            error,
        } = settings;
        if let Some((e, setting)) = error {
            return refused(self, setting, Err(e));
        }
        let c: &Channel = self;
        if let Some(v) = client_context_size {
            refused(c, "client_context_size", c.init_set_client_context_size(v))?;
        }
        if let Some(v) = flags {
            refused(c, "flags", c.init_set_flags(v))?;
        }
        if let Some((buf, len)) = friendly_name {
            refused(c, "friendly_name", c.init_set_friendly_name(&buf[..len]))?;
        }
        if let Some((size, chain)) = maximum_external_data {
            refused(
                c,
                "maximum_external_data",
                c.init_set_maximum_external_data(size, chain),
            )?;
        }
        if let Some(v) = maximum_packet_size {
            refused(c, "maximum_packet_size", c.init_set_maximum_packet_size(v))?;
        }
        if let Some(v) = packet_pool_size {
            refused(c, "packet_pool_size", c.init_set_packet_pool_size(v))?;
        }
        if let Some(v) = incoming_slots {
            refused(c, "incoming_slots", c.init_set_incoming_slots(v))?;
        }
        if let Some(v) = pipe_mode {
            refused(c, "pipe_mode", c.init_set_pipe_mode(v))?;
        }
        if let Some(v) = bus {
            refused(c, "vmbus_handle", c.init_set_vmbus_handle(v))?;
        }
        if let Some(v) = ring_buffer_page_count {
            refused(
                c,
                "ring_buffer_page_count",
                c.init_set_ring_buffer_page_count(v),
            )?;
        }
        if let Some((ty, instance)) = target_pnp {
            refused(c, "target_pnp", c.init_set_target_pnp(ty, instance))?;
        }
        if let Some(v) = subchannel {
            refused(c, "subchannel_callback", c.init_set_subchannel_callback(v))?;
        }
        if let Some(v) = server_flags {
            refused(c, "server_flags", c.init_set_server_flags(v))?;
        }
        if let Some(v) = mmio_megabytes {
            refused(c, "mmio_megabytes", c.init_set_mmio_megabytes(v))?;
        }
        if let Some(v) = save_restore {
            refused(
                c,
                "save_restore_packet_callbacks",
                c.init_set_save_restore_packet_callbacks(v),
            )?;
        }
        if let Some((ty, instance)) = target_interface_id {
            refused(
                c,
                "target_interface_id",
                c.init_set_target_interface_id(ty, instance),
            )?;
        }
        if let Some(v) = target_vtl {
            refused(c, "target_vtl", c.init_set_target_vtl(v))?;
        }
        if let Some(v) = state {
            refused(
                c,
                "state_change_callbacks",
                c.init_set_state_change_callbacks(v),
            )?;
        }
        if let Some(v) = process {
            refused(
                c,
                "process_packet_callbacks",
                c.init_set_process_packet_callbacks(v),
            )?;
        }
        // The handle keeps its own reference to the driver data.
        *self.data = data;
        Ok(())
    }
}

/// Logs which setting `r` of the builder of `c` refused, and passes `r` on.
fn refused(c: &Channel, setting: &str, r: Result) -> Result {
    if let Err(e) = r {
        pr_err!(
            "channel {}: builder setting {} refused: {:?}\n",
            c.id(),
            setting,
            e
        );
    }
    r
}
