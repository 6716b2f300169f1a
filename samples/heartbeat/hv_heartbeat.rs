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

use kernel::{
    new_condvar, new_spinlock_irq,
    prelude::*,
    sync::{
        CondVar,
        CondVarTimeoutResult,
        SpinLockIrq, //
    },
    time::{
        msecs_to_jiffies,
        Delta, //
    },
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

/// What one channel of the heartbeat IC saw.
#[derive(Clone, Copy, Default)]
struct Stats {
    /// Heartbeats answered.
    beats: u64,
    /// The negotiated versions: framework major << 24 | minor << 16 |
    /// message major << 8 | minor; 0 before negotiation.
    negotiated: u32,
    /// Messages refused.
    refused: u32,
}

/// What answering one IC message did.
enum Answered {
    Negotiated(u32),
    Beat,
    Failed,
}

/// Answers one IC message in place; returns its length and what it was, or
/// `None` for a message that must be refused.
fn answer_message(msg: &mut [u8]) -> Option<(usize, Answered)> {
    let h = ic::Header::parse(msg).ok()?;
    let (status, what) = match h.msgtype {
        ic::MSGTYPE_NEGOTIATE => {
            match ic::answer_negotiate(msg, &ic::FRAMEWORK_VERSIONS, &ic::HEARTBEAT_VERSIONS)
                .ok()?
            {
                Some((f, m)) => {
                    let v = u32::from(f.major as u8) << 24
                        | u32::from(f.minor as u8) << 16
                        | u32::from(m.major as u8) << 8
                        | u32::from(m.minor as u8);
                    (ic::S_OK, Answered::Negotiated(v))
                }
                None => (ic::E_FAIL, Answered::Failed),
            }
        }
        ic::MSGTYPE_HEARTBEAT => {
            ic::answer_heartbeat(msg).ok()?;
            (ic::S_OK, Answered::Beat)
        }
        _ => (ic::E_FAIL, Answered::Failed),
    };
    ic::set_response(msg, status).ok()?;
    Some((msg.len(), what))
}

/// The driver of one heartbeat channel: its state, and a condition
/// variable woken at every change of it.
#[pin_data]
struct Heartbeat {
    #[pin]
    stats: SpinLockIrq<Stats>,
    #[pin]
    changed: CondVar,
}

impl Heartbeat {
    fn new() -> impl PinInit<Heartbeat> {
        pin_init!(Heartbeat {
            stats <- new_spinlock_irq!(Stats::default(), "hv_heartbeat::Heartbeat::stats"),
            changed <- new_condvar!("hv_heartbeat::Heartbeat::changed"),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock());
        self.changed.notify_all();
    }

    fn stats(&self) -> Stats {
        *self.stats.lock()
    }

    /// Waits in process context until `beats` heartbeats were answered, at
    /// most `timeout`.
    #[cfg_attr(not(CONFIG_KUNIT), expect(dead_code))]
    fn wait_beats(&self, beats: u64, timeout: Delta) -> Result<Stats> {
        let mut left = msecs_to_jiffies(timeout.as_millis().try_into().unwrap_or(u32::MAX));
        let mut g = self.stats.lock();
        while g.beats < beats {
            match self.changed.wait_interruptible_timeout(&mut g, left) {
                CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
            }
        }
        Ok(*g)
    }
}

impl ProcessPacket for Heartbeat {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        let mut buf = [0u8; 256];
        let d = packet.data();
        if d.len() > buf.len() {
            self.update(|s| s.refused += 1);
            packet.fail();
            return;
        }
        buf[..d.len()].copy_from_slice(d);
        match answer_message(&mut buf[..d.len()]) {
            Some((n, what)) => {
                let _ = packet.reply_inband(&buf[..n]);
                match what {
                    Answered::Negotiated(v) => self.update(|s| s.negotiated = v),
                    Answered::Beat => self.update(|s| s.beats += 1),
                    Answered::Failed => {}
                }
            }
            None => {
                self.update(|s| s.refused += 1);
                packet.fail();
            }
        }
    }
}

impl StateChange for Heartbeat {}

/// Opens a heartbeat channel, with a [`Heartbeat`] of its own as its
/// driver.
fn open(vmbus: bool) -> Result<ChannelHandle> {
    let mut builder = Channel::builder(Endpoint::Client, &THIS_MODULE)
        .friendly_name(c"hv-heartbeat")
        .driver(Heartbeat::new())
        .ring_buffer_page_count(4)
        .target_pnp(HEARTBEAT, None);
    if !vmbus {
        builder = builder.vmbus_handle(Bus::Loopback(loopback::default_bus()?));
    }
    let mut chan = builder.build()?;
    chan.enable()?;
    Ok(chan)
}

struct HvHeartbeat {
    chan: ChannelHandle,
}

impl kernel::Module for HvHeartbeat {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let chan = open(module_parameters::vmbus.value())?;
        Ok(HvHeartbeat { chan })
    }
}

impl Drop for HvHeartbeat {
    fn drop(&mut self) {
        if let Err(e) = self.chan.disable() {
            pr_err!("disable failed: {:?}\n", e);
        }
        let Some(hb) = self.chan.data::<Heartbeat>() else {
            return;
        };
        let s = hb.stats();
        let v = s.negotiated;
        pr_info!(
            "negotiated framework {}.{} heartbeat {}.{}; answered {} heartbeats, refused {} messages\n",
            v >> 24,
            (v >> 16) & 0xff,
            (v >> 8) & 0xff,
            v & 0xff,
            s.beats,
            s.refused
        );
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_heartbeat)]
mod tests {
    use super::*;

    /// Answers one IC message in place; returns its length.
    fn answer(msg: &mut [u8]) -> Option<usize> {
        answer_message(msg).map(|(n, _)| n)
    }

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
    fn the_test_host_negotiates_and_gets_heartbeats() -> Result {
        // heartbeat_host.ko is loaded before this module and offers a
        // second instance for this suite; it starts as soon as the channel
        // opens and sends 20 heartbeats, each after the previous answer
        // checked out.
        let ch = open(false)?;
        let hb = ch.data::<Heartbeat>().ok_or(EINVAL)?;
        let s = hb.wait_beats(20, Delta::from_millis(10_000));
        let beats = s.map(|s| s.beats).unwrap_or(0);
        assert_eq!(beats, 20);
        let s = hb.stats();
        assert_eq!(s.beats, 20);
        assert_eq!(s.negotiated, 0x0300_0300);
        assert_eq!(s.refused, 0);
        ch.disable()?;
        Ok(())
    }
}
