// SPDX-License-Identifier: GPL-2.0

//! A module that breaks the rules on purpose: it opens a client of the echo
//! VSP (instance 3) and, at unload, forgets to drop its channel. kmcl must
//! disable the channel when the module goes away, before the module's
//! memory is freed; otherwise the VSP's own unload, which closes the
//! channel, would call this module's Suspend and Closed after it is gone.
//! `make check` loads it after the VSP and checks kmcl's report of it.

use core::mem::ManuallyDrop;

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    ProcessPacket,
    SendFlags,
    State,
    StateChange, //
};

module! {
    type: KmclLeak,
    name: "kmcl_leak",
    authors: ["The kmcl developers"],
    description: "kmcl test: a module that unloads without dropping its channel",
    license: "GPL",
}

/// This module: the owner of its channel.
static THIS_MODULE: ThisModule = <KmclLeak as kernel::ModuleMetadata>::THIS_MODULE;

const ECHO_TYPE: Guid = Guid::from_str_const("2b1c9f3e-4d5a-4e6b-8c7d-9e0f1a2b3c4d");

struct Client;

impl ProcessPacket for Client {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        packet.fail();
    }
}

impl StateChange for Client {
    fn suspend(&self, channel: &Channel) {
        pr_info!("channel {}: suspend\n", channel.id());
    }

    fn closed(&self, channel: &Channel) {
        pr_info!("channel {}: closed\n", channel.id());
    }
}

/// The module state: a channel handle that is never dropped.
struct KmclLeak {
    _forgotten: ManuallyDrop<ChannelHandle>,
}

impl kernel::Module for KmclLeak {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let mut inst = [0u8; 16];
        inst[15] = 3;
        let cb = Arc::new(Client, GFP_KERNEL)?;
        let mut h = Channel::builder(Endpoint::Client, &THIS_MODULE)
            .friendly_name(c"leak")
            .process_packet_callbacks(cb.clone())
            .state_change_callbacks(cb)
            .vmbus_handle(Bus::Loopback(loopback::default_bus()?))
            .target_pnp(ECHO_TYPE, Some(Guid(inst)))
            .build()?;
        h.enable()?;
        h.wait_for_state(State::Started, Delta::from_millis(5000))?;
        let mut resp = [0u8; 8];
        let n = h.send_synchronous_request(
            b"leak\0\0\0\0",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        pr_info!("channel {} open, {} bytes echoed\n", h.id(), n);
        Ok(KmclLeak {
            _forgotten: ManuallyDrop::new(h),
        })
    }
}
