// SPDX-License-Identifier: GPL-2.0

//! Echo VSP: a kmcl server that answers every packet.
//!
//! It offers three instances of the echo interface on kmcl's loopback bus:
//! instance 1 for the echo VSC module, instance 2 for the VSC's KUnit suite,
//! instance 3 for the module-ownership check of `make check`
//! (`tools/testing/leak/`).
//! An in-band packet is completed with its own payload; a packet with
//! external data is completed with the sum and count of the bytes it
//! describes. The transaction quota is 4, so a busy client exercises it.

use core::sync::atomic::{
    AtomicU64,
    Ordering, //
};

use kernel::prelude::*;

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    ProcessPacket,
    StateChange, //
};

module! {
    type: EchoVsp,
    name: "echo_vsp",
    authors: ["The kmcl developers"],
    description: "kmcl sample: echo VSP over the loopback transport",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <EchoVsp as kernel::ModuleMetadata>::THIS_MODULE;

/// The echo interface type.
pub const ECHO_TYPE: Guid = Guid::from_str_const("2b1c9f3e-4d5a-4e6b-8c7d-9e0f1a2b3c4d");

struct Echo {
    requests: AtomicU64,
    external_bytes: AtomicU64,
}

impl ProcessPacket for Echo {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(ext) = packet.external_data() {
            let mut sum = 0u64;
            let mut count = 0u64;
            let ok = ext.for_each_chunk(|b| {
                count += b.len() as u64;
                sum = b.iter().fold(sum, |s, x| s.wrapping_add(u64::from(*x)));
            });
            if ok.is_err() {
                packet.fail();
                return;
            }
            self.external_bytes.fetch_add(count, Ordering::Relaxed);
            let mut reply = [0u8; 16];
            reply[..8].copy_from_slice(&sum.to_le_bytes());
            reply[8..].copy_from_slice(&count.to_le_bytes());
            let _ = packet.complete(&reply);
            return;
        }
        let mut buf = [0u8; 512];
        let d = packet.data();
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        let _ = packet.complete(&buf[..n]);
    }
}

impl StateChange for Echo {}

struct EchoVsp {
    servers: KVec<ChannelHandle>,
}

impl kernel::Module for EchoVsp {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let bus = loopback::default_bus()?;
        let mut servers = KVec::new();
        for instance in 1..=3u8 {
            let mut inst = [0u8; 16];
            inst[15] = instance;
            let mut h = Channel::builder(Endpoint::Server, &THIS_MODULE)
                .friendly_name(c"echo-vsp")
                .driver(Echo {
                    requests: AtomicU64::new(0),
                    external_bytes: AtomicU64::new(0),
                })
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .target_interface_id(ECHO_TYPE, Guid(inst))
                .build()?;
            h.enable()?;
            h.set_transaction_quota(4)?;
            servers.push(h, GFP_KERNEL)?;
        }
        pr_info!("offering the echo interface (3 instances)\n");
        Ok(EchoVsp { servers })
    }
}

impl Drop for EchoVsp {
    fn drop(&mut self) {
        let (mut requests, mut external_bytes) = (0, 0);
        for s in self.servers.iter() {
            if let Err(e) = s.disable() {
                pr_err!("disable failed: {:?}\n", e);
            }
            if let Some(echo) = s.data::<Echo>() {
                requests += echo.requests.load(Ordering::Relaxed);
                external_bytes += echo.external_bytes.load(Ordering::Relaxed);
            }
        }
        pr_info!(
            "served {} requests, {} bytes of external data\n",
            requests,
            external_bytes
        );
    }
}
