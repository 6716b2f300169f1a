// SPDX-License-Identifier: GPL-2.0

//! The channel builder: configuration before Enable, by construction.
//!
//! [`Channel::builder`] allocates a channel and returns a
//! [`ChannelBuilder`], whose by-value setters configure it; [`build`]
//! hands over the configured, Disabled [`ChannelHandle`]. The builder is
//! the only way to the channel until then, so a driver written against it
//! cannot set a setting after Enable: the setters do not exist on what
//! Enable is called on. The KMCL-shaped `init_set_*` calls remain on
//! [`Channel`] for ported drivers; they fail with `EINVAL` once the
//! channel is enabled.
//!
//! Every method is an inline wrapper over the exported `init_set_*` calls,
//! so the builder adds nothing to kmcl's exports.
//!
//! [`build`]: ChannelBuilder::build

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
    ServerFlags, //
};
use crate::{
    transport::Bus,
    wire::guid::Guid, //
};

/// A channel being configured, returned by [`Channel::builder`].
///
/// Each setter takes the builder by value and returns it; the first setter
/// that fails makes [`ChannelBuilder::build`] fail with its error (a value
/// out of range, a setter of the other endpoint: `EINVAL`), after which
/// the others do nothing. Dropping a builder frees its channel.
///
/// # Examples
///
/// ```
/// use kmcl::{Bus, Channel, ChannelHandle, Endpoint, Guid, ProcessPacket};
/// use kernel::{prelude::*, sync::Arc};
///
/// fn open(
///     driver: Arc<impl ProcessPacket + 'static>,
///     bus: Bus,
///     module: &'static ThisModule,
/// ) -> Result<ChannelHandle> {
///     const MY_TYPE: Guid = Guid::from_str_const("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501");
///     let mut ch = Channel::builder(Endpoint::Client, module)
///         .maximum_packet_size(4096)
///         .target_pnp(MY_TYPE, None)
///         .vmbus_handle(bus)
///         .process_packet_callbacks(driver)
///         .build()?;
///     ch.enable()?;
///     Ok(ch)
/// }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct ChannelBuilder {
    handle: Result<ChannelHandle>,
}

impl Channel {
    /// Allocates a Disabled channel and returns a builder to configure it
    /// (`VmbChannelAllocate` followed by the `VmbChannelInitSet*` calls).
    /// A failed allocation is reported by [`ChannelBuilder::build`].
    ///
    /// Context: process context only: it allocates with `GFP_KERNEL` and
    /// takes a mutex.
    #[inline]
    pub fn builder(endpoint: Endpoint, module: &'static ThisModule) -> ChannelBuilder {
        ChannelBuilder {
            handle: Channel::allocate(endpoint, module),
        }
    }
}

impl ChannelBuilder {
    #[inline]
    fn with(mut self, f: impl FnOnce(&Channel) -> Result) -> Self {
        if let Ok(h) = &self.handle {
            if let Err(e) = f(h) {
                self.handle = Err(e);
            }
        }
        self
    }

    /// The configured, Disabled channel; the first error of an allocation
    /// or a setter otherwise.
    ///
    /// Context: process context, as every builder method.
    #[inline]
    pub fn build(self) -> Result<ChannelHandle> {
        self.handle
    }

    /// See [`Channel::init_set_client_context_size`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetClientContextSize")]
    #[inline]
    pub fn client_context_size(self, size: u32) -> Self {
        self.with(|c| c.init_set_client_context_size(size))
    }

    /// See [`Channel::init_set_flags`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetFlags")]
    #[inline]
    pub fn flags(self, flags: ChannelFlags) -> Self {
        self.with(|c| c.init_set_flags(flags))
    }

    /// See [`Channel::init_set_friendly_name`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetFriendlyName")]
    #[inline]
    pub fn friendly_name(self, name: &CStr) -> Self {
        self.with(|c| c.init_set_friendly_name(name))
    }

    /// See [`Channel::init_set_maximum_external_data`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetMaximumExternalData")]
    #[inline]
    pub fn maximum_external_data(self, size: u32, chain_length: u32) -> Self {
        self.with(|c| c.init_set_maximum_external_data(size, chain_length))
    }

    /// See [`Channel::init_set_maximum_packet_size`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetMaximumPacketSize")]
    #[inline]
    pub fn maximum_packet_size(self, size: u32) -> Self {
        self.with(|c| c.init_set_maximum_packet_size(size))
    }

    /// See [`Channel::init_set_process_packet_callbacks`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetProcessPacketCallbacks")]
    #[inline]
    pub fn process_packet_callbacks(self, cb: Arc<dyn ProcessPacket>) -> Self {
        self.with(|c| c.init_set_process_packet_callbacks(cb))
    }

    /// See [`Channel::init_set_state_change_callbacks`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbChannelInitSetStateChangeCallbacks")]
    #[inline]
    pub fn state_change_callbacks(self, cb: Arc<dyn StateChange>) -> Self {
        self.with(|c| c.init_set_state_change_callbacks(cb))
    }

    /// See [`Channel::init_set_packet_pool_size`].
    ///
    /// Context: process context, as every builder method.
    #[inline]
    pub fn packet_pool_size(self, count: u32) -> Self {
        self.with(|c| c.init_set_packet_pool_size(count))
    }

    /// See [`Channel::init_set_incoming_slots`].
    ///
    /// Context: process context, as every builder method.
    #[inline]
    pub fn incoming_slots(self, count: u32) -> Self {
        self.with(|c| c.init_set_incoming_slots(count))
    }

    /// See [`Channel::init_set_vmbus_handle`].
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetVmbusHandle")]
    #[inline]
    pub fn vmbus_handle(self, bus: Bus) -> Self {
        self.with(|c| c.init_set_vmbus_handle(bus))
    }

    /// See [`Channel::init_set_ring_buffer_page_count`]. Client only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbClientChannelInitSetRingBufferPageCount")]
    #[inline]
    pub fn ring_buffer_page_count(self, pages: u32) -> Self {
        self.with(|c| c.init_set_ring_buffer_page_count(pages))
    }

    /// See [`Channel::init_set_target_pnp`]. Client only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbClientChannelInitSetTargetPnp")]
    #[inline]
    pub fn target_pnp(self, interface_type: Guid, instance: Option<Guid>) -> Self {
        self.with(|c| c.init_set_target_pnp(interface_type, instance))
    }

    /// See [`Channel::init_set_server_flags`]. Server only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetFlags")]
    #[inline]
    pub fn server_flags(self, flags: ServerFlags) -> Self {
        self.with(|c| c.init_set_server_flags(flags))
    }

    /// See [`Channel::init_set_mmio_megabytes`]. Server only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetMmioMegabytes")]
    #[inline]
    pub fn mmio_megabytes(self, megabytes: u32) -> Self {
        self.with(|c| c.init_set_mmio_megabytes(megabytes))
    }

    /// See [`Channel::init_set_save_restore_packet_callbacks`]. Server
    /// only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetSaveRestorePacketCallbacks")]
    #[inline]
    pub fn save_restore_packet_callbacks(self, cb: Arc<dyn SaveRestorePacket>) -> Self {
        self.with(|c| c.init_set_save_restore_packet_callbacks(cb))
    }

    /// See [`Channel::init_set_target_interface_id`]. Server only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetTargetInterfaceId")]
    #[inline]
    pub fn target_interface_id(self, interface_type: Guid, instance: Guid) -> Self {
        self.with(|c| c.init_set_target_interface_id(interface_type, instance))
    }

    /// See [`Channel::init_set_target_vtl`]. Server only.
    ///
    /// Context: process context, as every builder method.
    #[doc(alias = "VmbServerChannelInitSetTargetVtl")]
    #[inline]
    pub fn target_vtl(self, vtl: u8) -> Self {
        self.with(|c| c.init_set_target_vtl(vtl))
    }

    /// See [`Channel::init_set_subchannel_callback`].
    ///
    /// Context: process context, as every builder method.
    #[inline]
    pub fn subchannel_callback(self, callback: Arc<dyn SubchannelOffer>) -> Self {
        self.with(|c| c.init_set_subchannel_callback(callback))
    }
}
