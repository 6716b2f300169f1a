// SPDX-License-Identifier: GPL-2.0

//! GPADLs and the MMIO space on loopback.

use core::sync::atomic::{
    AtomicBool,
    Ordering, //
};

use kernel::{
    alloc::KVVec,
    page::Page,
    prelude::*,
    sync::Arc, //
};

use super::harness::{
    settle,
    wait_for,
    Pair, //
};
use crate::channel::{gpadl::GpadlMemory, Endpoint, GpadlFlags};

fn buffer(len: usize, fill: u8) -> Result<KVVec<u8>> {
    let mut b = KVVec::with_capacity(len, GFP_KERNEL)?;
    b.resize(len, fill, GFP_KERNEL)?;
    Ok(b)
}

#[kunit_tests(kmcl_gpadl)]
mod tests {
    use super::*;

    #[test]
    fn buffer_gpadl_is_shared_with_the_server() -> Result {
        let p = Pair::connected()?;
        let g = p
            .client
            .create_gpadl_from_buffer(buffer(3 * 4096, 0x11)?, GpadlFlags::NONE)?;
        let m = p.server.map_gpadl(g.id())?;
        assert_eq!(m.len(), 3 * 4096);
        let mut head = [0u8; 16];
        m.read(4090, &mut head)?;
        assert_eq!(head, [0x11; 16]);
        m.write(5000, b"from the server")?;
        drop(m);
        let mem = p
            .client
            .delete_gpadl(g)
            .map_err(|(e, _)| e)?
            .ok_or(EINVAL)?;
        match mem {
            GpadlMemory::Buffer(b) => assert_eq!(&b[5000..5015], b"from the server"),
            GpadlMemory::Pages(_) | GpadlMemory::Shared(_) => return Err(EINVAL),
        }
        Ok(())
    }

    #[test]
    fn pages_gpadl_is_shared_with_the_server() -> Result {
        let p = Pair::connected()?;
        let mut pages = KVec::new();
        for i in 0..2u8 {
            let pg = Page::alloc_page(GFP_KERNEL)?;
            let fill = [i + 1; 4096];
            // SAFETY: a whole page.
            unsafe { pg.write_raw(fill.as_ptr(), 0, 4096)? };
            pages.push(pg, GFP_KERNEL)?;
        }
        let g = p
            .client
            .create_gpadl_from_pages(pages, GpadlFlags::READ_ONLY)?;
        let m = p.server.map_gpadl(g.id())?;
        let mut b = [0u8; 2];
        m.read(4095, &mut b)?;
        assert_eq!(b, [1, 2]);
        // read past the end.
        assert_eq!(m.read(8191, &mut b), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn one_mapping_at_a_time() -> Result {
        let p = Pair::connected()?;
        let g = p
            .client
            .create_gpadl_from_buffer(buffer(4096, 0)?, GpadlFlags::NONE)?;
        let m = p.server.map_gpadl(g.id())?;
        assert!(matches!(p.server.map_gpadl(g.id()), Err(e) if e == EBUSY));
        p.server.unmap_gpadl(m);
        let m2 = p.server.map_gpadl(g.id())?;
        drop(m2);
        Ok(())
    }

    #[test]
    fn delete_blocks_while_the_server_has_it_mapped() -> Result {
        let p = Pair::connected()?;
        let g = p
            .client
            .create_gpadl_from_buffer(buffer(4096, 0)?, GpadlFlags::NONE)?;
        let m = p.server.map_gpadl(g.id())?;
        let client = p.client.arc();
        let deleted = Arc::new(AtomicBool::new(false), GFP_KERNEL)?;
        let d2 = deleted.clone();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let _ = client.delete_gpadl(g);
            d2.store(true, Ordering::Relaxed);
        })?;
        settle(50);
        // deleted while mapped.
        assert!(!deleted.load(Ordering::Relaxed));
        drop(m);
        assert!(wait_for(2000, || deleted.load(Ordering::Relaxed)));
        Ok(())
    }

    #[test]
    fn unknown_ids_and_wrong_endpoints_are_refused() -> Result {
        let p = Pair::connected()?;
        assert!(matches!(p.server.map_gpadl(1234), Err(e) if e == ENOENT));
        assert!(matches!(p.client.map_gpadl(1), Err(e) if e == EINVAL));
        assert!(matches!(
            p.server.create_gpadl_from_buffer(buffer(4096, 0)?, GpadlFlags::NONE),
            Err(e) if e == EINVAL
        ));
        // An unknown flag cannot be expressed.
        assert_eq!(GpadlFlags::from_bits(0x2), None);
        assert!(matches!(
            p.client.create_gpadl_from_buffer(KVVec::new(), GpadlFlags::NONE),
            Err(e) if e == EINVAL
        ));
        Ok(())
    }

    #[test]
    fn gpadl_needs_an_open_channel() -> Result {
        let p = Pair::connected()?;
        p.client.disable()?;
        assert!(matches!(
            p.client.create_gpadl_from_buffer(buffer(4096, 0)?, GpadlFlags::NONE),
            Err(e) if e == ENODEV
        ));
        Ok(())
    }

    #[test]
    fn mmio_space_is_what_the_server_reserved() -> Result {
        let mut p = Pair::new(|e, b| {
            if e == Endpoint::Server {
                b.mmio_megabytes(2)
            } else {
                b
            }
        })?;
        p.up()?;
        let mmio = p.client.mmio_space()?;
        assert_eq!(mmio.as_slice().map(|s| s.len()), Some(2 << 20));
        assert_eq!(mmio.len(), 2 << 20);
        assert_eq!(p.client.set_interrupt_latency(100), Ok(()));
        let q = Pair::connected()?;
        assert!(matches!(q.client.mmio_space(), Err(e) if e == ENOENT));
        Ok(())
    }
}
