// SPDX-License-Identifier: GPL-2.0

//! The smallest kmcl consumer, built outside kmcl's tree.
//!
//! It connects a client and a server of its own on a private loopback bus
//! and makes one synchronous request; its KUnit suite checks the answer.

use kernel::{prelude::*, sync::Arc, time::Delta};

use kmcl::{
    loopback::LoopbackBus,
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
    type: KmclHello,
    name: "kmcl_hello",
    authors: ["The kmcl developers"],
    description: "kmcl sample: a consumer module built outside kmcl's tree",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <KmclHello as kernel::ModuleMetadata>::THIS_MODULE;

const HELLO: Guid = Guid::from_str_const("0b9f1e2d-3c4b-4a59-8d7e-6f5a4b3c2d1e");

/// Answers "hello" with "world".
struct World;

impl ProcessPacket for World {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        let _ = packet.complete(b"world\0\0\0");
    }
}

impl StateChange for World {}

/// Connects a pair on `bus` and returns (client, server).
fn connect(bus: &Arc<LoopbackBus>) -> Result<(ChannelHandle, ChannelHandle)> {
    let mut ends = KVec::new();
    for e in [Endpoint::Server, Endpoint::Client] {
        let builder = Channel::builder(e, &THIS_MODULE)
            .driver(World)
            .vmbus_handle(Bus::Loopback(bus.clone()));
        let mut h = match e {
            Endpoint::Server => builder.target_interface_id(HELLO, Guid::NULL),
            Endpoint::Client => builder.target_pnp(HELLO, None),
        }
        .build()?;
        h.enable()?;
        ends.push(h, GFP_KERNEL)?;
    }
    let client = ends.pop().ok_or(EINVAL)?;
    let server = ends.pop().ok_or(EINVAL)?;
    client.wait_for_state(State::Started, Delta::from_millis(5000))?;
    Ok((client, server))
}

/// One request; returns the answer's first 5 bytes.
fn hello(client: &Channel) -> Result<[u8; 5]> {
    let mut resp = [0u8; 8];
    let n = client.send_synchronous_request(
        b"hello",
        SendFlags::WAIT_FOR_COMPLETION,
        &mut resp,
        Some(Delta::from_millis(2000)),
    )?;
    if n < 5 {
        return Err(EIO);
    }
    let mut w = [0u8; 5];
    w.copy_from_slice(&resp[..5]);
    Ok(w)
}

struct KmclHello;

impl kernel::Module for KmclHello {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let bus = LoopbackBus::new()?;
        let (client, server) = connect(&bus)?;
        let answer = hello(&client)?;
        pr_info!(
            "asked hello, got {}\n",
            core::str::from_utf8(&answer).unwrap_or("?")
        );
        client.disable()?;
        server.disable()?;
        Ok(KmclHello)
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_out_of_tree)]
mod tests {
    use super::*;

    #[test]
    fn hello_world_across_a_loopback_pair() -> Result {
        let bus = LoopbackBus::new()?;
        let (client, server) = connect(&bus)?;
        assert_eq!(&hello(&client)?, b"world");
        client.disable()?;
        server.disable()?;
        Ok(())
    }
}
