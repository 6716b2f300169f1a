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

use kernel::{
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::Arc,
    time::Delta,
};

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    Mdl,
    Packet,
    ProcessPacket,
    SendFlags,
    State,
    StateChange, //
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

/// What the asynchronous sends saw; a packet's pointer names one of these.
#[derive(Default)]
struct Counters {
    completed: AtomicU32,
    echoed: AtomicU32,
    checksum: AtomicU64,
}

/// The completion routine of the asynchronous sends.
fn on_complete(packet: Packet, status: Result, response: &[u8]) {
    // SAFETY: every packet sent with this routine points to `Counters` that
    // outlive it: the channel is disabled, which finishes every send, before
    // the counters are dropped.
    let c = unsafe { &*(packet.pointer() as *const Counters) };
    if status.is_ok() {
        if packet.payload() == response {
            c.echoed.fetch_add(1, Ordering::Relaxed);
        }
        if response.len() == 16 {
            let mut s = [0u8; 8];
            s.copy_from_slice(&response[..8]);
            c.checksum.store(u64::from_le_bytes(s), Ordering::Relaxed);
        }
    }
    c.completed.fetch_add(1, Ordering::Relaxed);
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
fn async_sends(ch: &Channel, c: &Counters, n: u32) -> Result {
    let before = c.completed.load(Ordering::Relaxed);
    for i in 0..n {
        let mut p = ch.packet_allocate()?;
        p.set_pointer(core::ptr::from_ref(c) as usize);
        p.set_completion_routine(on_complete);
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
fn external_send(ch: &Channel, c: &Counters) -> Result<(u64, u64)> {
    let mut pages = KVec::new();
    let mut expect = 0u64;
    // Byte `j` of page `i` holds `7 * j + i` (mod 256).
    let pattern = |i: usize, j: usize| (j as u8).wrapping_mul(7).wrapping_add(i as u8);
    for i in 0..2 {
        let pg = Page::alloc_page(GFP_KERNEL)?;
        let mut fill = [0u8; 256];
        for at in (0..PAGE_SIZE).step_by(fill.len()) {
            for (k, b) in fill.iter_mut().enumerate() {
                *b = pattern(i, at + k);
            }
            // SAFETY: 256 bytes inside the page, which nothing else uses yet.
            unsafe { pg.write_raw(fill.as_ptr(), at, fill.len())? };
        }
        pages.push(pg, GFP_KERNEL)?;
    }
    // 6000 bytes from offset 100 of the first page, into the second one
    // where pages are 4 KiB.
    let (off, len) = (100usize, 6000usize);
    for i in off..off + len {
        expect = expect.wrapping_add(u64::from(pattern(i / PAGE_SIZE, i % PAGE_SIZE)));
    }
    let mdl = Mdl::from_pages(pages, off as u32, len as u32)?;
    let before = c.completed.load(Ordering::Relaxed);
    let mut p = ch.packet_allocate()?;
    p.set_pointer(core::ptr::from_ref(c) as usize);
    p.set_completion_routine(on_complete);
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
    _counters: KBox<Counters>,
}

impl kernel::Module for EchoVsc {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // The counters first: on an early return the channel, declared
        // after them, is dropped (disabled) first, so no completion routine
        // can reach freed counters.
        let counters = KBox::new(Counters::default(), GFP_KERNEL)?;
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
        Ok(EchoVsc {
            chan,
            _counters: counters,
        })
    }
}

impl Drop for EchoVsc {
    fn drop(&mut self) {
        // Finishes every send before the counters go.
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
        let c = KBox::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        // The VSP's quota is 4; 32 at once must all come back, echoed.
        async_sends(&ch, &c, 32)?;
        assert_eq!(c.echoed.load(Ordering::Relaxed), 32);
        ch.disable();
        Ok(())
    }

    #[test]
    fn gpa_direct_pages_reach_the_vsp() -> Result {
        let c = KBox::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        let (theirs, ours) = external_send(&ch, &c)?;
        assert_eq!(theirs, ours);
        ch.disable();
        Ok(())
    }
}
