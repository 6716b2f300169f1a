// SPDX-License-Identifier: GPL-2.0

//! Typed completions: a packet owns its completion context, calls it with
//! the right context when each transaction ends, and drops it exactly once.

use core::sync::atomic::{
    AtomicU32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    mode,
    Pair, //
};
use crate::{
    channel::{
        callbacks::PacketCompletion,
        outgoing::{
            Mdl,
            Packet,
            PacketMemory,
            SendFlags, //
        },
    },
    sys,
};

const WAIT: SendFlags = SendFlags::WAIT_FOR_COMPLETION;

/// How many contexts of a family were dropped.
#[derive(Default)]
struct Drops(AtomicU32);

impl Drops {
    fn new() -> Result<Arc<Drops>> {
        Ok(Arc::new(Drops::default(), GFP_KERNEL)?)
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A completion context: it checks that each packet it completes carries
/// its tag as the first payload byte, and can resend the packet.
struct Ctx {
    tag: u8,
    drops: Arc<Drops>,
    seen: AtomicU32,
    ok: AtomicU32,
    cancelled: AtomicU32,
    wrong: AtomicU32,
    bh_on: AtomicU32,
    /// Sends the packet again from the completion until this many
    /// completions were seen.
    resend_until: u32,
}

impl Ctx {
    fn new(tag: u8, drops: &Arc<Drops>, resend_until: u32) -> Result<Arc<Ctx>> {
        Ok(Arc::new(
            Ctx {
                tag,
                drops: drops.clone(),
                seen: AtomicU32::new(0),
                ok: AtomicU32::new(0),
                cancelled: AtomicU32::new(0),
                wrong: AtomicU32::new(0),
                bh_on: AtomicU32::new(0),
                resend_until,
            },
            GFP_KERNEL,
        )?)
    }

    fn seen(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl PacketCompletion for Ctx {
    fn completed(&self, packet: Packet, status: Result, _response: &[u8]) {
        if packet.payload().first() != Some(&self.tag) {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if !sys::bh_disabled() {
            self.bh_on.fetch_add(1, Ordering::Relaxed);
        }
        match status {
            Ok(()) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) if e == ECANCELED => self.cancelled.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if status.is_ok() && n < self.resend_until {
            // Take a while, as a driver's routine may: the transaction is
            // over but its routine has not returned, and a wait for the
            // channel's sends must not end here.
            let end = sys::jiffies() + 1;
            while sys::jiffies() <= end {
                core::hint::spin_loop();
            }
            // The context stays set: the same packet object goes again.
            let _ = packet.send(&[self.tag], WAIT);
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.drops.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `tag` from a pool packet of `p`'s client with `ctx` as its
/// completion.
fn send_with(p: &Pair, ctx: &Arc<Ctx>) -> Result {
    let mut pkt = p.client.packet_allocate()?;
    pkt.set_completion(ctx.clone());
    pkt.send(&[ctx.tag], WAIT).map_err(|e| e.error)
}

fn finished(p: &Pair) -> Result {
    p.client.wait_sends_finished(Delta::from_millis(5000))
}

#[kunit_tests(kmcl_typed)]
mod tests {
    use super::*;

    #[test]
    fn each_completion_runs_with_the_context_of_its_packet() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        let a = Ctx::new(0xa, &drops, 0)?;
        let b = Ctx::new(0xb, &drops, 0)?;
        for _ in 0..3 {
            send_with(&p, &a)?;
            send_with(&p, &b)?;
        }
        send_with(&p, &a)?;
        finished(&p)?;
        assert_eq!((a.seen(), b.seen()), (4, 3));
        assert_eq!(a.ok.load(Ordering::Relaxed), 4);
        assert_eq!(b.ok.load(Ordering::Relaxed), 3);
        assert_eq!(a.wrong.load(Ordering::Relaxed), 0);
        assert_eq!(b.wrong.load(Ordering::Relaxed), 0);
        assert_eq!(a.bh_on.load(Ordering::Relaxed), 0);
        // Every packet was freed by its completion and dropped its
        // reference; ours are the last.
        assert_eq!(drops.get(), 0);
        drop((a, b));
        assert_eq!(drops.get(), 2);
        Ok(())
    }

    #[test]
    fn a_context_is_dropped_once_when_its_packet_is_freed() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        let pool = p.client.packet_pool_available();
        // Freed unsent, back into the pool.
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_completion(Ctx::new(1, &drops, 0)?);
        assert_eq!(drops.get(), 0);
        drop(pkt);
        assert_eq!(drops.get(), 1);
        assert_eq!(p.client.packet_pool_available(), pool);
        // Freed by its completion, the packet holding the only reference.
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_completion(Ctx::new(2, &drops, 0)?);
        pkt.send(&[2], WAIT).map_err(|e| e.error)?;
        finished(&p)?;
        assert_eq!(drops.get(), 2);
        assert_eq!(p.client.packet_pool_available(), pool);
        // The same pool object handed out again carries nothing over.
        let pkt = p.client.packet_allocate()?;
        assert!(!pkt.has_completion());
        drop(pkt);
        assert_eq!(drops.get(), 2);
        Ok(())
    }

    #[test]
    fn replacing_a_context_drops_the_old_one_once() -> Result {
        let da = Drops::new()?;
        let db = Drops::new()?;
        let p = Pair::connected()?;
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_completion(Ctx::new(1, &da, 0)?);
        pkt.set_completion(Ctx::new(2, &db, 0)?);
        assert_eq!((da.get(), db.get()), (1, 0));
        // The untyped routine replaces it too.
        pkt.set_completion_routine(|_, _, _| {});
        assert_eq!((da.get(), db.get()), (1, 1));
        assert!(!pkt.has_completion());
        pkt.set_completion(Ctx::new(3, &da, 0)?);
        let taken = pkt.take_completion();
        assert!(taken.is_some());
        assert_eq!(da.get(), 1);
        drop(taken);
        assert_eq!(da.get(), 2);
        drop(pkt);
        assert_eq!((da.get(), db.get()), (2, 1));
        Ok(())
    }

    #[test]
    fn a_packet_reused_from_its_completion_keeps_its_context() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        let pool = p.client.packet_pool_available();
        let ctx = Ctx::new(7, &drops, 20)?;
        send_with(&p, &ctx)?;
        finished(&p)?;
        // One packet object, set once, sent 20 times; the wait above ended
        // only after the last routine returned.
        assert_eq!(ctx.seen(), 20);
        assert_eq!(ctx.ok.load(Ordering::Relaxed), 20);
        assert_eq!(ctx.wrong.load(Ordering::Relaxed), 0);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), 20);
        assert_eq!(p.client.packet_pool_available(), pool);
        drop(ctx);
        assert_eq!(drops.get(), 1);
        Ok(())
    }

    #[test]
    fn disable_cancels_typed_sends_and_drops_their_contexts() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        p.srec.mode.store(mode::HOLD, Ordering::Relaxed);
        let ctx = Ctx::new(9, &drops, 0)?;
        for _ in 0..3 {
            send_with(&p, &ctx)?;
        }
        let c = ctx.clone();
        drop(ctx);
        assert!(super::super::harness::wait_for(2000, || p.srec.held() == 3));
        p.client.disable()?;
        assert_eq!(c.cancelled.load(Ordering::Relaxed), 3);
        assert_eq!(c.seen(), 3);
        drop(c);
        assert_eq!(drops.get(), 1);
        Ok(())
    }

    #[test]
    fn a_packet_in_caller_memory_drops_its_context_with_the_memory() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        let mut pkt = Packet::initialize(&p.client, PacketMemory::new(&p.client)?);
        pkt.set_completion(Ctx::new(4, &drops, 0)?);
        let mem = pkt.into_memory();
        assert!(mem.is_some());
        assert_eq!(drops.get(), 1);
        // A packet made again from the same memory starts without one.
        let pkt = Packet::initialize(&p.client, mem.ok_or(EINVAL)?);
        assert!(!pkt.has_completion());
        drop(pkt);
        assert_eq!(drops.get(), 1);
        Ok(())
    }

    #[test]
    fn mdl_from_bytes_carries_exactly_those_bytes() -> Result {
        let drops = Drops::new()?;
        let p = Pair::connected()?;
        let mut data = KVec::new();
        for i in 0..6000u32 {
            data.push((i * 7) as u8, GFP_KERNEL)?;
        }
        let mdl = Mdl::from_bytes_at(100, &data)?;
        let r = mdl.external_range();
        assert_eq!((r.byte_offset, r.byte_count), (100, 6000));
        assert_eq!(r.pfns.len(), 2);
        let mut pkt = p.client.packet_allocate()?;
        pkt.set_completion(Ctx::new(5, &drops, 0)?);
        pkt.send_with_external_mdl(&[5], mdl, WAIT)
            .map_err(|e| e.error)?;
        finished(&p)?;
        {
            let g = p.srec.st.lock();
            assert_eq!(g.external_bytes.len(), 6000);
            assert!(g.external_bytes[..] == data[..]);
        }
        assert_eq!(drops.get(), 1);
        // Nothing to describe, or an offset outside the first page.
        assert!(matches!(Mdl::from_bytes(&[]), Err(e) if e == EINVAL));
        let page = kernel::page::PAGE_SIZE as u32;
        assert!(matches!(Mdl::from_bytes_at(page, &[1]), Err(e) if e == EINVAL));
        let m = Mdl::from_bytes_at(page - 1, &[1, 2])?;
        assert_eq!(m.pages().len(), 2);
        Ok(())
    }
}
