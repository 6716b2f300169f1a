// SPDX-License-Identifier: GPL-2.0

//! Echo VSC: a kmcl client of the echo VSP.
//!
//! At load it opens instance 1 of the echo interface on kmcl's loopback bus
//! and exercises it: synchronous requests, asynchronous sends finished by a
//! completion routine (more than the VSP's quota at once), and a GPA-direct
//! send whose pages the VSP checksums. It reports its counters and keeps the
//! channel open until unload. Its KUnit suite does the same on instance 2.

use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{prelude::*, sync::Arc, time::Delta};

use kmcl::{
    channel::{
        callbacks::{
            PacketCompletion,
            ProcessPacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        outgoing::{
            Mdl,
            Packet,
            SendFlags, //
        },
        Channel,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        loopback,
        Bus, //
    },
    wire::guid::Guid,
};

module! {
    type: EchoVsc,
    name: "echo_vsc",
    authors: ["The kmcl developers"],
    description: "kmcl sample: echo VSC over the loopback transport",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <EchoVsc as kernel::ModuleMetadata>::THIS_MODULE;

const ECHO_TYPE: Guid = Guid::from_str_const("2b1c9f3e-4d5a-4e6b-8c7d-9e0f1a2b3c4d");

/// What the asynchronous sends saw: the typed completion of their packets.
#[derive(Default)]
struct Counters {
    completed: AtomicU32,
    echoed: AtomicU32,
    checksum: AtomicU64,
}

impl PacketCompletion for Counters {
    fn completed(&self, packet: Packet, status: Result, response: &[u8]) {
        if status.is_ok() {
            if packet.payload() == response {
                self.echoed.fetch_add(1, Ordering::Relaxed);
            }
            if response.len() == 16 {
                let mut s = [0u8; 8];
                s.copy_from_slice(&response[..8]);
                self.checksum
                    .store(u64::from_le_bytes(s), Ordering::Relaxed);
            }
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

struct Client;

impl ProcessPacket for Client {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        // The VSP sends nothing unsolicited.
        packet.fail();
    }
}

impl StateChange for Client {}

/// Opens instance `instance` of the echo interface.
fn open(instance: u8) -> Result<ChannelHandle> {
    let mut inst = [0u8; 16];
    inst[15] = instance;
    let cb = Arc::new(Client, GFP_KERNEL)?;
    let mut h = Channel::allocate(Endpoint::Client, &THIS_MODULE)?;
    h.init_set_friendly_name(c"echo-vsc")?;
    h.init_set_process_packet_callbacks(cb.clone())?;
    h.init_set_state_change_callbacks(cb)?;
    h.init_set_vmbus_handle(Bus::Loopback(loopback::default_bus()?))?;
    h.init_set_target_pnp(ECHO_TYPE, Some(Guid(inst)))?;
    h.enable()?;
    h.wait_for_state(State::Started, Delta::from_millis(5000))?;
    Ok(h)
}

/// Synchronous requests: returns how many came back intact.
fn sync_requests(ch: &Channel, n: u64) -> Result<u64> {
    let mut ok = 0;
    for i in 0..n {
        let req = (0xec40_0000 + i).to_le_bytes();
        let mut resp = [0u8; 8];
        let len = ch.send_synchronous_request(
            &req,
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        if resp[..len] == req {
            ok += 1;
        }
    }
    Ok(ok)
}

/// `n` asynchronous sends at once; returns once all completed.
fn async_sends(ch: &Channel, c: &Arc<Counters>, n: u32) -> Result {
    let before = c.completed.load(Ordering::Relaxed);
    for i in 0..n {
        let mut p = ch.packet_allocate()?;
        p.set_completion(c.clone());
        p.send(&u64::from(i).to_le_bytes(), SendFlags::WAIT_FOR_COMPLETION)
            .map_err(|e| e.error)?;
    }
    ch.wait_sends_finished(Delta::from_millis(5000))?;
    if c.completed.load(Ordering::Relaxed) != before + n {
        return Err(EIO);
    }
    Ok(())
}

/// A GPA-direct send over two pages; returns the VSP's checksum and ours.
fn external_send(ch: &Channel, c: &Arc<Counters>) -> Result<(u64, u64)> {
    // 6000 bytes from offset 100 of the first page, into the second one
    // where pages are 4 KiB; byte `i` holds `7 * i` (mod 256).
    let (off, len) = (100u32, 6000usize);
    let mut bytes = KVec::with_capacity(len, GFP_KERNEL)?;
    let mut expect = 0u64;
    for i in 0..len {
        let b = (i as u8).wrapping_mul(7);
        bytes.push(b, GFP_KERNEL)?;
        expect = expect.wrapping_add(u64::from(b));
    }
    let mdl = Mdl::from_bytes_at(off, &bytes)?;
    let before = c.completed.load(Ordering::Relaxed);
    let mut p = ch.packet_allocate()?;
    p.set_completion(c.clone());
    p.send_with_external_mdl(b"checksum", mdl, SendFlags::WAIT_FOR_COMPLETION)
        .map_err(|e| e.error)?;
    ch.wait_sends_finished(Delta::from_millis(5000))?;
    if c.completed.load(Ordering::Relaxed) != before + 1 {
        return Err(EIO);
    }
    Ok((c.checksum.load(Ordering::Relaxed), expect))
}

struct EchoVsc {
    chan: ChannelHandle,
}

impl kernel::Module for EchoVsc {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Each packet holds a reference to the counters while it is in
        // flight: their order against the channel does not matter.
        let counters = Arc::new(Counters::default(), GFP_KERNEL)?;
        let chan = open(1)?;
        let sync_ok = sync_requests(&chan, 16)?;
        async_sends(&chan, &counters, 64)?;
        let (theirs, ours) = external_send(&chan, &counters)?;
        let checksum = if theirs == ours { "matches" } else { "DIFFERS" };
        pr_info!(
            "{} of 16 synchronous requests echoed; {} of 64 asynchronous sends echoed; GPA-direct checksum {}\n",
            sync_ok,
            counters.echoed.load(Ordering::Relaxed),
            checksum
        );
        Ok(EchoVsc { chan })
    }
}

impl Drop for EchoVsc {
    fn drop(&mut self) {
        // Finishes every send before the module's code goes.
        self.chan.disable();
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_echo)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_requests_are_echoed() -> Result {
        let ch = open(2)?;
        assert_eq!(sync_requests(&ch, 8)?, 8);
        ch.disable();
        Ok(())
    }

    #[test]
    fn asynchronous_sends_beyond_the_quota_all_complete() -> Result {
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        // The VSP's quota is 4; 32 at once must all come back, echoed.
        async_sends(&ch, &c, 32)?;
        assert_eq!(c.echoed.load(Ordering::Relaxed), 32);
        ch.disable();
        Ok(())
    }

    #[test]
    fn gpa_direct_pages_reach_the_vsp() -> Result {
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        let (theirs, ours) = external_send(&ch, &c)?;
        assert_eq!(theirs, ours);
        ch.disable();
        Ok(())
    }
}
