// SPDX-License-Identifier: GPL-2.0

//! The host side of the heartbeat integration component, for tests.
//!
//! A kmcl server that plays Hyper-V for `hv_heartbeat.ko` on kmcl's loopback
//! bus: it offers the heartbeat interface type twice (the guest module's
//! channel and its KUnit suite each take one), negotiates versions when a
//! guest opens it, then sends 20 heartbeats, each only after the guest's
//! answer to the previous one checked out (right transaction id, response
//! flags, status, sequence number plus one).

use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::prelude::*;

use kmcl::{
    ic::{
        self,
        Version, //
    },
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
    type: HeartbeatHost,
    name: "heartbeat_host",
    authors: ["The kmcl developers"],
    description: "kmcl sample: plays the Hyper-V side of the heartbeat IC over loopback",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <HeartbeatHost as kernel::ModuleMetadata>::THIS_MODULE;

const HEARTBEAT: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");
/// The instances offered: one for the guest module's channel, one for its
/// KUnit suite.
const INSTANCES: [Guid; 2] = [
    Guid::from_str_const("2dd1ce17-079e-403c-b352-a1921ee207ee"),
    Guid::from_str_const("2dd1ce17-079e-403c-b352-a1921ee207ef"),
];
/// Heartbeats per session.
const BEATS: u64 = 20;
/// Transaction id of the negotiation; heartbeat `n` uses `0x100 + n`.
const NEGOTIATE_ID: u64 = 1;
const FIRST_SEQ: u64 = 1000;

struct Host {
    versions: AtomicU32,
    negotiated: AtomicBool,
    /// Sequence number of the heartbeat in flight.
    seq: AtomicU64,
    answered: AtomicU64,
    bad: AtomicU32,
}

impl Host {
    fn send_heartbeat(&self, channel: &Channel, n: u64) {
        let v = self.versions.load(Ordering::Relaxed);
        let versions = (
            Version::new((v >> 16) as u16, 0),
            Version::new((v & 0xffff) as u16, 0),
        );
        let seq = FIRST_SEQ + 10 * n;
        self.seq.store(seq, Ordering::Relaxed);
        let mut m = [0u8; ic::HEARTBEAT_SIZE];
        if ic::encode_heartbeat(&mut m, n as u8, versions, seq).is_ok() {
            let _ = channel.send_inband_with_transaction_id(&m, 0x100 + n);
        }
    }

    fn check(&self, channel: &Channel, id: u64, msg: &[u8]) -> bool {
        let Ok(h) = ic::Header::parse(msg) else {
            return false;
        };
        if h.flags != ic::FLAG_TRANSACTION | ic::FLAG_RESPONSE || h.status != ic::S_OK {
            return false;
        }
        match (h.msgtype, id) {
            (ic::MSGTYPE_NEGOTIATE, NEGOTIATE_ID) => match ic::parse_negotiate_answer(msg) {
                Ok(Some((f, m))) => {
                    self.versions.store(
                        u32::from(f.major) << 16 | u32::from(m.major),
                        Ordering::Relaxed,
                    );
                    self.negotiated.store(true, Ordering::Relaxed);
                    self.send_heartbeat(channel, 0);
                    true
                }
                _ => false,
            },
            (ic::MSGTYPE_HEARTBEAT, id) if id >= 0x100 => {
                let n = id - 0x100;
                let want = self.seq.load(Ordering::Relaxed) + 1;
                if ic::heartbeat_sequence(msg) != Ok(want) {
                    return false;
                }
                let done = self.answered.fetch_add(1, Ordering::Relaxed) + 1;
                if done < BEATS {
                    self.send_heartbeat(channel, n + 1);
                } else {
                    pr_info!("guest answered {} heartbeats\n", done);
                }
                true
            }
            _ => false,
        }
    }
}

impl ProcessPacket for Host {
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket) {
        let ok = self.check(channel, packet.transaction_id(), packet.data());
        if !ok {
            self.bad.fetch_add(1, Ordering::Relaxed);
            pr_err!("bad answer from the guest\n");
        }
        let _ = packet.complete(&[]);
    }
}

impl StateChange for Host {
    fn post_started(&self, channel: &Channel) {
        // A guest opened the channel: negotiate, as Hyper-V does first.
        self.answered.store(0, Ordering::Relaxed);
        let mut m = [0u8; 64];
        let v = [Version::new(3, 0), Version::new(1, 0)];
        if let Ok(n) = ic::encode_negotiate(&mut m, 0, &v, &v) {
            let _ = channel.send_inband_with_transaction_id(&m[..n], NEGOTIATE_ID);
        }
    }
}

/// One offer of the heartbeat interface; its [`Host`] state is the
/// channel's driver data.
fn offer(instance: Guid) -> Result<ChannelHandle> {
    let mut chan = Channel::builder(Endpoint::Server, &THIS_MODULE)
        .friendly_name(c"heartbeat-host")
        .driver(Host {
            versions: AtomicU32::new(0),
            negotiated: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            bad: AtomicU32::new(0),
        })
        .vmbus_handle(Bus::Loopback(loopback::default_bus()?))
        .target_interface_id(HEARTBEAT, instance)
        .build()?;
    chan.enable()?;
    Ok(chan)
}

struct HeartbeatHost {
    offers: [ChannelHandle; 2],
}

impl kernel::Module for HeartbeatHost {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(HeartbeatHost {
            offers: [offer(INSTANCES[0])?, offer(INSTANCES[1])?],
        })
    }
}

impl Drop for HeartbeatHost {
    fn drop(&mut self) {
        for chan in &self.offers {
            if let Err(e) = chan.disable() {
                pr_err!("disable failed: {:?}\n", e);
            }
            let Some(host) = chan.data::<Host>() else {
                continue;
            };
            pr_info!(
                "negotiated: {}; heartbeats answered correctly: {}; bad answers: {}\n",
                host.negotiated.load(Ordering::Relaxed),
                host.answered.load(Ordering::Relaxed),
                host.bad.load(Ordering::Relaxed)
            );
        }
    }
}
