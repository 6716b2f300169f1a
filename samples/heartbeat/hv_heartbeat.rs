// SPDX-License-Identifier: GPL-2.0

//! Hyper-V heartbeat integration component, as a kmcl VSC.
//!
//! The host negotiates the IC framework and heartbeat versions, then sends
//! heartbeats; the guest answers each with the sequence number plus one, in
//! an in-band packet that carries the request's transaction id. This is the
//! protocol `hv_utils` implements in C.
//!
//! By default the channel opens the heartbeat interface type on kmcl's
//! loopback bus, where `heartbeat_host.ko` plays the host. With `vmbus=1`
//! it names no bus and so opens the machine's VMBus offer: on a Hyper-V
//! guest, once `hv_utils` has let go of the heartbeat device, the same code
//! answers the real host (`Documentation/samples.rst`).

use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc, //
};

use kmcl::{
    ic,
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
    type: HvHeartbeat,
    name: "hv_heartbeat",
    authors: ["The kmcl developers"],
    description: "kmcl sample: Hyper-V heartbeat integration component (VSC)",
    license: "GPL",
    params: {
        vmbus: bool {
            default: false,
            description: "Open the host's heartbeat offer on VMBus instead of kmcl's loopback bus",
        },
    },
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <HvHeartbeat as kernel::ModuleMetadata>::THIS_MODULE;

/// The heartbeat interface type, as Hyper-V offers it.
const HEARTBEAT: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");

/// Heartbeats answered since load.
static BEATS: AtomicU64 = AtomicU64::new(0);
/// The negotiated versions: framework major << 24 | minor << 16 | message
/// major << 8 | minor; 0 before negotiation.
static NEGOTIATED: AtomicU32 = AtomicU32::new(0);
/// Messages refused.
static REFUSED: AtomicU32 = AtomicU32::new(0);

/// Answers one IC message in place; returns its length, or `None` for a
/// message that must be refused.
fn answer(msg: &mut [u8]) -> Option<usize> {
    let h = ic::Header::parse(msg).ok()?;
    let status = match h.msgtype {
        ic::MSGTYPE_NEGOTIATE => {
            match ic::answer_negotiate(msg, &ic::FRAMEWORK_VERSIONS, &ic::HEARTBEAT_VERSIONS)
                .ok()?
            {
                Some((f, m)) => {
                    let v = u32::from(f.major as u8) << 24
                        | u32::from(f.minor as u8) << 16
                        | u32::from(m.major as u8) << 8
                        | u32::from(m.minor as u8);
                    NEGOTIATED.store(v, Ordering::Relaxed);
                    ic::S_OK
                }
                None => ic::E_FAIL,
            }
        }
        ic::MSGTYPE_HEARTBEAT => {
            ic::answer_heartbeat(msg).ok()?;
            BEATS.fetch_add(1, Ordering::Relaxed);
            ic::S_OK
        }
        _ => ic::E_FAIL,
    };
    ic::set_response(msg, status).ok()?;
    Some(msg.len())
}

struct Heartbeat;

impl ProcessPacket for Heartbeat {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        let mut buf = [0u8; 256];
        let d = packet.data();
        if d.len() > buf.len() {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            packet.fail();
            return;
        }
        buf[..d.len()].copy_from_slice(d);
        match answer(&mut buf[..d.len()]) {
            Some(n) => {
                let _ = packet.reply_inband(&buf[..n]);
            }
            None => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                packet.fail();
            }
        }
    }
}

impl StateChange for Heartbeat {}

struct HvHeartbeat {
    chan: ChannelHandle,
}

impl kernel::Module for HvHeartbeat {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let cb = Arc::new(Heartbeat, GFP_KERNEL)?;
        let mut chan = Channel::allocate(Endpoint::Client, &THIS_MODULE)?;
        chan.init_set_friendly_name(c"hv-heartbeat")?;
        chan.init_set_process_packet_callbacks(cb.clone())?;
        chan.init_set_state_change_callbacks(cb)?;
        chan.init_set_ring_buffer_page_count(4)?;
        if !module_parameters::vmbus.value() {
            chan.init_set_vmbus_handle(Bus::Loopback(loopback::default_bus()?))?;
        }
        chan.init_set_target_pnp(HEARTBEAT, None)?;
        chan.enable()?;
        Ok(HvHeartbeat { chan })
    }
}

impl Drop for HvHeartbeat {
    fn drop(&mut self) {
        self.chan.disable();
        let v = NEGOTIATED.load(Ordering::Relaxed);
        pr_info!(
            "negotiated framework {}.{} heartbeat {}.{}; answered {} heartbeats, refused {} messages\n",
            v >> 24,
            (v >> 16) & 0xff,
            (v >> 8) & 0xff,
            v & 0xff,
            BEATS.load(Ordering::Relaxed),
            REFUSED.load(Ordering::Relaxed)
        );
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_heartbeat)]
mod tests {
    use super::*;
    use kernel::time::{
        delay::fsleep,
        Delta, //
    };

    #[test]
    fn negotiate_answer_picks_version_3() {
        let mut m = [0u8; 64];
        let v = [ic::Version::new(3, 0), ic::Version::new(1, 0)];
        let n = ic::encode_negotiate(&mut m, 1, &v, &v).unwrap_or(0);
        assert!(answer(&mut m[..n]).is_some());
        let got = ic::parse_negotiate_answer(&m[..n]);
        assert_eq!(got, Ok(Some((v[0], v[0]))));
        let h = ic::Header::parse(&m[..n]);
        assert!(
            matches!(h, Ok(h) if h.status == ic::S_OK && h.flags == ic::FLAG_TRANSACTION | ic::FLAG_RESPONSE)
        );
    }

    #[test]
    fn unknown_versions_and_types_answer_e_fail() {
        let mut m = [0u8; 64];
        let v = [ic::Version::new(7, 0)];
        let n = ic::encode_negotiate(&mut m, 1, &v, &v).unwrap_or(0);
        assert!(answer(&mut m[..n]).is_some());
        assert!(matches!(ic::Header::parse(&m[..n]), Ok(h) if h.status == ic::E_FAIL));
        let mut hb = [0u8; ic::HEARTBEAT_SIZE];
        let _ = ic::encode_heartbeat(&mut hb, 1, (v[0], v[0]), 5);
        hb[ic::PIPE_HEADER_SIZE + 4] = 9; // message type 9
        assert!(answer(&mut hb).is_some());
        assert!(matches!(ic::Header::parse(&hb), Ok(h) if h.status == ic::E_FAIL));
    }

    #[test]
    fn short_messages_are_refused() {
        let mut m = [0u8; 20];
        assert!(answer(&mut m).is_none());
        let mut hb = [0u8; ic::BODY + 4];
        let _ = ic::Header {
            framework: ic::Version::new(3, 0),
            msgtype: ic::MSGTYPE_HEARTBEAT,
            message: ic::Version::new(3, 0),
            size: 4,
            status: 0,
            transaction: 0,
            flags: ic::FLAG_REQUEST,
        }
        .write(&mut hb, ic::BODY + 4);
        assert!(answer(&mut hb).is_none());
    }

    #[test]
    fn the_test_host_negotiates_and_gets_heartbeats() {
        // heartbeat_host.ko is loaded before this module and starts as soon
        // as the channel opens; it sends 20 heartbeats, each after the
        // previous answer checked out.
        let mut waited = 0;
        while BEATS.load(Ordering::Relaxed) < 20 && waited < 10_000 {
            fsleep(Delta::from_millis(1));
            waited += 1;
        }
        assert_eq!(BEATS.load(Ordering::Relaxed), 20);
        assert_eq!(NEGOTIATED.load(Ordering::Relaxed), 0x0300_0300);
        assert_eq!(REFUSED.load(Ordering::Relaxed), 0);
    }
}
