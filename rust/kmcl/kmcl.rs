// SPDX-License-Identifier: GPL-2.0

//! kmcl: the VMBus Kernel Mode Client Library for Rust drivers.
//!
//! kmcl gives Rust kernel drivers on Hyper-V guests the channel and packet
//! model of the Windows VMBus Kernel Mode Client Library: channels with a
//! lifecycle and state callbacks, packet objects with completions and
//! transaction ids, quotas, synchronous requests, GPADLs and save/restore.
//! Channels run over one of two transports: real VMBus channels of
//! `hv_vmbus`, or an in-kernel loopback that connects a client and a server
//! endpoint, so that drivers can be tested under KUnit without Hyper-V.
//!
//! See `Documentation/` for the guide.

use kernel::prelude::*;

// Every module is private: what drivers may use is re-exported below, and
// only that is exported to other modules (see `exports.txt`).
mod channel;
mod demo;
mod hv;
mod sys;
#[cfg(CONFIG_KUNIT)]
mod tests;
mod transport;
mod vmbus;
// The ring, packet and message formats, in pure `core`. The same files build
// the host crate `tools/kmcl-wire`, whose tests use every item, so they keep
// their `pub` items even where kmcl itself uses only some of them.
#[allow(unreachable_pub, dead_code)]
mod wire;

#[cfg(CONFIG_KUNIT)]
pub mod testing;

pub use channel::{
    callbacks::{
        CompletionRoutine,
        PacketCompletion,
        ProcessPacket,
        SaveRestorePacket,
        StateChange, //
    },
    external::{
        ExternalData,
        Mdl, //
    },
    gpadl::{
        Gpadl,
        GpadlBytes,
        GpadlMapping,
        GpadlMemory,
        MmioSpace,
        SharedBytes, //
    },
    incoming::{
        DeferError,
        IncomingPacket,
        PROCESS_PACKET_FLAG_EXTERNAL_DATA, //
    },
    outgoing::{
        ExternalRange,
        Packet,
        PacketMemory,
        SendError,
        SendFlags, //
    },
    pipe::pipe_mode,
    save::{
        RestoreStatus,
        SaveContext,
        SaveStatus, //
    },
    subchannel::SubchannelOffer,
    xfer::TransferPages,
    Channel,
    ChannelBuilder,
    ChannelDriver,
    ChannelFlags,
    ChannelHandle,
    Counters,
    Endpoint,
    FriendlyName,
    GpadlFlags,
    ServerFlags,
    State,
    DEFAULT_INCOMING_SLOTS,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_PACKET_POOL,
    DEFAULT_RING_PAGES,
    EWOULDBLOCK,
    FRIENDLY_NAME_MAX, //
};
pub use transport::{
    hv::memory::SharedBuffer,
    Bus, //
};
pub use wire::guid::{
    Guid,
    ParseGuidError, //
};
pub use wire::xfer::XferRange as TransferRange;

/// The in-kernel loopback transport: a bus on which a client and a server
/// endpoint of the same machine connect, for tests and samples.
pub mod loopback {
    pub use crate::transport::loopback::{
        default_bus,
        LoopbackBus, //
    };
}

/// Integration-component (IC) messages, the framing of Hyper-V's utility
/// devices (heartbeat, shutdown, time synchronisation): parse and build them
/// without hand-rolled byte offsets.
pub mod ic {
    pub use crate::wire::ic::*;
}

/// Context predicates: which context the caller runs in.
pub mod context {
    pub use crate::sys::{
        bh_disabled,
        in_softirq,
        in_task,
        preemptible, //
    };
}

module! {
    type: Kmcl,
    name: "kmcl",
    authors: ["The kmcl developers"],
    description: "VMBus Kernel Mode Client Library for Rust drivers",
    license: "GPL",
    params: {
        demo: bool {
            default: false,
            description: "Connect a loopback client and echo server at load and keep them until unload",
        },
    },
}

/// This module, for registrations made outside `init`.
pub(crate) static THIS_MODULE: ThisModule = <Kmcl as kernel::ModuleMetadata>::THIS_MODULE;

/// The module state: kmcl's VMBus driver, when the machine has a VMBus.
struct Kmcl {
    _demo: Option<demo::Demo>,
    _hv: Option<hv::Transport>,
    _bus: transport::loopback::DefaultBus,
    _wq: sys::Workqueues,
}

impl kernel::Module for Kmcl {
    fn init(module: &'static ThisModule) -> Result<Self> {
        channel::owners::init();
        transport::hv::subchannel::init();
        let wq = sys::Workqueues::new()?;
        let hv = hv::Transport::register(module)?;
        match &hv {
            Some(_) => pr_info!("transport vmbus: available\n"),
            None => pr_info!("transport vmbus: absent (no VMBus on this machine)\n"),
        }
        pr_info!("kmcl loaded\n");
        let bus = transport::loopback::DefaultBus::new()?;
        pr_info!("transport loopback: available\n");
        let demo = if module_parameters::demo.value() {
            Some(demo::Demo::run()?)
        } else {
            None
        };
        Ok(Kmcl {
            _demo: demo,
            _hv: hv,
            _bus: bus,
            _wq: wq,
        })
    }
}

impl Drop for Kmcl {
    fn drop(&mut self) {
        // The demo's channels close before the workqueues they use go away.
        drop(self._demo.take());
        pr_info!("kmcl unloaded\n");
    }
}
