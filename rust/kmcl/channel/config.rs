// SPDX-License-Identifier: GPL-2.0

//! Channel configuration: what the init setters write before Enable, and
//! the settings that may change at any time.

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
    Channel,
    ChannelFlags,
    Endpoint,
    ServerFlags,
    State,
    DEFAULT_INCOMING_SLOTS,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_PACKET_POOL,
    DEFAULT_RING_PAGES,
    FRIENDLY_NAME_MAX, //
};
use crate::{
    transport::Bus,
    wire::guid::Guid, //
};

/// A channel's friendly name, copied out of the channel.
pub struct FriendlyName(pub(super) [u8; FRIENDLY_NAME_MAX]);

impl FriendlyName {
    /// The name as text.
    ///
    /// Context: any context.
    pub fn as_str(&self) -> &str {
        let n = self
            .0
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(FRIENDLY_NAME_MAX);
        // The setter only stores UTF-8, whole.
        core::str::from_utf8(&self.0[..n]).unwrap_or("")
    }
}

/// The configuration that the init setters write.
pub(crate) struct Config {
    pub(crate) client_context_size: u32,
    pub(crate) flags: ChannelFlags,
    /// The friendly name, NUL-padded; kept inline so that reading it under
    /// the channel lock allocates nothing.
    pub(crate) friendly_name: [u8; FRIENDLY_NAME_MAX],
    pub(crate) max_external_bytes: u32,
    pub(crate) max_external_chain: u32,
    pub(crate) max_packet_size: u32,
    pub(crate) packet_pool: u32,
    pub(crate) incoming_slots: u32,
    pub(crate) process: Option<Arc<dyn ProcessPacket>>,
    pub(crate) state_cb: Option<Arc<dyn StateChange>>,
    pub(crate) save_restore: Option<Arc<dyn SaveRestorePacket>>,
    pub(crate) ring_pages: u32,
    pub(crate) target_type: Guid,
    pub(crate) target_instance: Option<Guid>,
    pub(crate) server_flags: ServerFlags,
    pub(crate) mmio_megabytes: u32,
    pub(crate) target_vtl: u8,
    pub(crate) bus: Option<Bus>,
}

impl Config {
    pub(super) fn new() -> Self {
        Self {
            client_context_size: 0,
            flags: ChannelFlags::NONE,
            friendly_name: [0; FRIENDLY_NAME_MAX],
            max_external_bytes: 64 * 4096,
            max_external_chain: 4,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            packet_pool: DEFAULT_PACKET_POOL,
            incoming_slots: DEFAULT_INCOMING_SLOTS,
            process: None,
            state_cb: None,
            save_restore: None,
            ring_pages: DEFAULT_RING_PAGES,
            target_type: Guid::NULL,
            target_instance: None,
            server_flags: ServerFlags::NONE,
            mmio_megabytes: 0,
            target_vtl: 0,
            bus: None,
        }
    }
}

/// The sizes that the preallocations of an Enable depend on.
#[derive(Clone, Copy)]
pub(crate) struct Sizing {
    pub(crate) client_context_size: u32,
    pub(crate) max_external_bytes: u32,
    pub(crate) max_external_chain: u32,
    pub(crate) max_packet_size: u32,
    pub(crate) packet_pool: u32,
    pub(crate) incoming_slots: u32,
}

impl Config {
    pub(super) fn sizing(&self) -> Sizing {
        Sizing {
            client_context_size: self.client_context_size,
            max_external_bytes: self.max_external_bytes,
            max_external_chain: self.max_external_chain,
            max_packet_size: self.max_packet_size,
            packet_pool: self.packet_pool,
            incoming_slots: self.incoming_slots,
        }
    }
}

/// Returns `EINVAL` unless the channel is Disabled, for the init setters.
macro_rules! init_setter {
    ($self:ident, $g:ident, $body:block) => {{
        let mut $g = $self.inner.lock();
        if $g.state != State::Disabled {
            return Err(EINVAL);
        }
        $body
        Ok(())
    }};
}

impl Channel {
    // ---- Init setters: valid only while Disabled, else `EINVAL`. ----

    /// Size of the per-incoming-packet scratch area
    /// (`VmbChannelInitSetClientContextSize`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetClientContextSize")]
    pub(crate) fn init_set_client_context_size(&self, size: u32) -> Result {
        if size > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.client_context_size = size;
        })
    }

    /// Channel flags (`VmbChannelInitSetFlags`): a [`ChannelFlags`] set,
    /// which holds only flags KMCL defines.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetFlags")]
    pub(crate) fn init_set_flags(&self, flags: ChannelFlags) -> Result {
        init_setter!(self, g, {
            g.cfg.flags = flags;
        })
    }

    /// Name for debugging and debugfs (`VmbChannelInitSetFriendlyName`): at
    /// most [`FRIENDLY_NAME_MAX`] bytes of UTF-8.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetFriendlyName")]
    pub(crate) fn init_set_friendly_name(&self, name: &[u8]) -> Result {
        let b = core::str::from_utf8(name).map_err(|_| EINVAL)?.as_bytes();
        if b.len() > FRIENDLY_NAME_MAX {
            return Err(EINVAL);
        }
        let mut buf = [0u8; FRIENDLY_NAME_MAX];
        buf[..b.len()].copy_from_slice(b);
        init_setter!(self, g, {
            g.cfg.friendly_name = buf;
        })
    }

    /// Largest external data a packet may describe: total bytes and number of
    /// ranges, both above zero (`VmbChannelInitSetMaximumExternalData`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetMaximumExternalData")]
    pub(crate) fn init_set_maximum_external_data(&self, size: u32, chain_length: u32) -> Result {
        if size == 0 || chain_length == 0 || chain_length > 64 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.max_external_bytes = size;
            g.cfg.max_external_chain = chain_length;
        })
    }

    /// Largest payload a send may ever carry, above zero
    /// (`VmbChannelInitSetMaximumPacketSize`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetMaximumPacketSize")]
    pub(crate) fn init_set_maximum_packet_size(&self, size: u32) -> Result {
        if size == 0 || size > 1 << 20 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.max_packet_size = size;
        })
    }

    /// Packet callbacks (`VmbChannelInitSetProcessPacketCallbacks`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetProcessPacketCallbacks")]
    pub(crate) fn init_set_process_packet_callbacks(&self, cb: Arc<dyn ProcessPacket>) -> Result {
        init_setter!(self, g, {
            g.cfg.process = Some(cb);
        })
    }

    /// State callbacks (`VmbChannelInitSetStateChangeCallbacks`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbChannelInitSetStateChangeCallbacks")]
    pub(crate) fn init_set_state_change_callbacks(&self, cb: Arc<dyn StateChange>) -> Result {
        init_setter!(self, g, {
            g.cfg.state_cb = Some(cb);
        })
    }

    /// Number of preallocated packet objects (a kmcl addition: KMCL's pool
    /// grows on demand, kmcl's is fixed so that sends never allocate).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    pub(crate) fn init_set_packet_pool_size(&self, count: u32) -> Result {
        if count == 0 || count > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.packet_pool = count;
        })
    }

    /// Number of preallocated incoming packet slots, the upper bound of the
    /// transaction quota (a kmcl addition, for the same reason).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    pub(crate) fn init_set_incoming_slots(&self, count: u32) -> Result {
        if count == 0 || count > 4096 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.incoming_slots = count;
        })
    }

    /// The VMBus instance to use (`VmbServerChannelInitSetVmbusHandle`). kmcl
    /// accepts it on clients too, to pick a loopback bus.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetVmbusHandle")]
    pub(crate) fn init_set_vmbus_handle(&self, bus: Bus) -> Result {
        init_setter!(self, g, {
            g.cfg.bus = Some(bus);
        })
    }

    /// Ring size in pages per direction, control page included, at least 2
    /// (`VmbClientChannelInitSetRingBufferPageCount`). Client only.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbClientChannelInitSetRingBufferPageCount")]
    pub(crate) fn init_set_ring_buffer_page_count(&self, pages: u32) -> Result {
        if self.endpoint != Endpoint::Client || !(2..=1024).contains(&pages) {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.ring_pages = pages;
        })
    }

    /// The offer to open: interface type and, optionally, instance
    /// (`VmbClientChannelInitSetTargetPnp`). PnP failures reach
    /// [`StateChange::pnp_failure`]. Client only.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbClientChannelInitSetTargetPnp")]
    pub(crate) fn init_set_target_pnp(
        &self,
        interface_type: Guid,
        instance: Option<Guid>,
    ) -> Result {
        if self.endpoint != Endpoint::Client || interface_type.is_null() {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_type = interface_type;
            g.cfg.target_instance = instance;
        })
    }

    /// Server flags (`VmbServerChannelInitSetFlags`): a [`ServerFlags`]
    /// set. Server only (`EINVAL`).
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetFlags")]
    pub(crate) fn init_set_server_flags(&self, flags: ServerFlags) -> Result {
        if self.endpoint != Endpoint::Server {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.server_flags = flags;
        })
    }

    /// MMIO space to reserve for the device, in MiB
    /// (`VmbServerChannelInitSetMmioMegabytes`). Server only.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetMmioMegabytes")]
    pub(crate) fn init_set_mmio_megabytes(&self, megabytes: u32) -> Result {
        if self.endpoint != Endpoint::Server || megabytes > 64 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.mmio_megabytes = megabytes;
        })
    }

    /// Per-packet save/restore callbacks
    /// (`VmbServerChannelInitSetSaveRestorePacketCallbacks`). Server only.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetSaveRestorePacketCallbacks")]
    pub(crate) fn init_set_save_restore_packet_callbacks(
        &self,
        cb: Arc<dyn SaveRestorePacket>,
    ) -> Result {
        if self.endpoint != Endpoint::Server {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.save_restore = Some(cb);
        })
    }

    /// The interface type and instance of the offer
    /// (`VmbServerChannelInitSetTargetInterfaceId`). Server only.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetTargetInterfaceId")]
    pub(crate) fn init_set_target_interface_id(
        &self,
        interface_type: Guid,
        instance: Guid,
    ) -> Result {
        if self.endpoint != Endpoint::Server || interface_type.is_null() {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_type = interface_type;
            g.cfg.target_instance = Some(instance);
        })
    }

    /// The VTL the offer is made to (`VmbServerChannelInitSetTargetVtl`).
    /// Server only; 0 to 2.
    ///
    /// Context: any context (it takes the channel's control spinlock).
    #[doc(alias = "VmbServerChannelInitSetTargetVtl")]
    pub(crate) fn init_set_target_vtl(&self, vtl: u8) -> Result {
        if self.endpoint != Endpoint::Server || vtl > 2 {
            return Err(EINVAL);
        }
        init_setter!(self, g, {
            g.cfg.target_vtl = vtl;
        })
    }

    // ---- Settings that may change at any time. ----

    /// Caps how many incoming packets may be delivered and not yet finished
    /// (`VmbChannelSetTransactionQuota`), above zero. Lowering it below the
    /// outstanding count delivers nothing more until enough packets finish.
    ///
    /// Context: any context, ProcessPacket and completion context included.
    #[doc(alias = "VmbChannelSetTransactionQuota")]
    pub fn set_transaction_quota(&self, quota: u32) -> Result {
        if quota == 0 {
            return Err(EINVAL);
        }
        self.rxc
            .quota
            .store(quota, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Delivers incoming packets in process context instead of softirq
    /// context (`VmbChannelSetIncomingProcessingAtPassive`).
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelSetIncomingProcessingAtPassive")]
    pub fn set_incoming_processing_at_passive(&self, passive: bool) {
        self.rx.lock().passive = passive;
    }

    /// The interface type and instance of the channel's offer
    /// (`VmbChannelGetInterfaceInstance` returns the latter).
    ///
    /// Context: any context.
    #[doc(alias = "VmbChannelGetInterfaceInstance")]
    pub fn interface_ids(&self) -> (Guid, Option<Guid>) {
        let g = self.inner.lock();
        (g.cfg.target_type, g.cfg.target_instance)
    }

    /// The friendly name; empty if none was set.
    ///
    /// Context: any context.
    pub fn friendly_name(&self) -> FriendlyName {
        FriendlyName(self.inner.lock().cfg.friendly_name)
    }
}
