// SPDX-License-Identifier: GPL-2.0

//! Channel allocation, init setters and the lifecycle on loopback.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::harness::{
    self,
    settle,
    wait_for,
    Ev,
    Pair,
    Recorder,
    IFACE,
    INSTANCE, //
};
use crate::{
    channel::{
        Channel,
        ChannelFlags,
        Endpoint,
        ServerFlags,
        State, //
    },
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
    wire::guid::Guid,
};

#[kunit_tests(kmcl_channel)]
mod tests {
    use super::*;

    #[test]
    fn allocate_client_and_server_disabled() -> Result {
        let c = Channel::builder(Endpoint::Client, &crate::THIS_MODULE).build()?;
        let s = Channel::builder(Endpoint::Server, &crate::THIS_MODULE).build()?;
        assert_eq!(c.state(), State::Disabled);
        assert_eq!(s.state(), State::Disabled);
        assert_eq!(c.endpoint(), Endpoint::Client);
        assert_eq!(s.endpoint(), Endpoint::Server);
        assert!(c.id() != s.id());
        Ok(())
    }

    #[test]
    fn builder_accepts_valid_values() -> Result {
        let bus = LoopbackBus::new()?;
        let rec = Recorder::new()?;
        let c = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .client_context_size(24)
            .flags(ChannelFlags::IS_PIPE)
            .friendly_name(c"kunit")
            .maximum_external_data(8192, 2)
            .maximum_packet_size(1024)
            .process_packet_callbacks(rec.clone())
            .state_change_callbacks(rec.clone())
            .ring_buffer_page_count(4)
            .target_pnp(IFACE, None)
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .packet_pool_size(8)
            .incoming_slots(8)
            .build()?;
        let s = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
            .server_flags(ServerFlags::LOOPBACK_OFFER | ServerFlags::OFFER_AS_PIPE)
            .mmio_megabytes(1)
            .target_interface_id(IFACE, INSTANCE)
            .target_vtl(0)
            .build()?;
        assert_eq!(s.interface_ids(), (IFACE, Some(INSTANCE)));
        assert_eq!(c.friendly_name().as_str(), "kunit");
        Ok(())
    }

    #[test]
    fn builder_rejects_invalid_values() -> Result {
        let client = || Channel::builder(Endpoint::Client, &crate::THIS_MODULE);
        let server = || Channel::builder(Endpoint::Server, &crate::THIS_MODULE);
        let einval = |r: Result<crate::channel::ChannelHandle>| matches!(r, Err(e) if e == EINVAL);
        assert!(einval(client().maximum_packet_size(0).build()));
        assert!(einval(client().maximum_external_data(0, 1).build()));
        assert!(einval(client().maximum_external_data(4096, 0).build()));
        // A flag KMCL does not define cannot be expressed.
        assert_eq!(ChannelFlags::from_bits(0x2), None);
        assert!(einval(client().ring_buffer_page_count(1).build()));
        assert!(einval(client().target_pnp(Guid::NULL, None).build()));
        // Endpoint-specific settings on the wrong endpoint.
        assert!(einval(server().ring_buffer_page_count(4).build()));
        assert!(einval(server().target_pnp(IFACE, None).build()));
        assert!(einval(
            client().server_flags(ServerFlags::LOOPBACK_OFFER).build()
        ));
        assert!(einval(client().mmio_megabytes(1).build()));
        assert!(einval(
            client().target_interface_id(IFACE, INSTANCE).build()
        ));
        assert!(einval(client().target_vtl(0).build()));
        assert_eq!(ServerFlags::from_bits(0x20), None);
        assert!(einval(server().target_vtl(3).build()));
        Ok(())
    }

    #[test]
    fn builder_configures_a_disabled_channel_that_opens() -> Result {
        let bus = LoopbackBus::new()?;
        let srec = Recorder::new()?;
        let crec = Recorder::new()?;
        let mut s = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
            .friendly_name(c"built-server")
            .process_packet_callbacks(srec.clone())
            .state_change_callbacks(srec.clone())
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .server_flags(ServerFlags::LOOPBACK_OFFER)
            .target_interface_id(IFACE, INSTANCE)
            .build()?;
        let mut c = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .friendly_name(c"built-client")
            .maximum_packet_size(1024)
            .packet_pool_size(8)
            .process_packet_callbacks(crec.clone())
            .state_change_callbacks(crec.clone())
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .target_pnp(IFACE, Some(INSTANCE))
            .build()?;
        assert_eq!(s.state(), State::Disabled);
        assert_eq!(c.state(), State::Disabled);
        assert_eq!(c.friendly_name().as_str(), "built-client");
        assert_eq!(s.interface_ids(), (IFACE, Some(INSTANCE)));
        s.enable()?;
        c.enable()?;
        assert!(wait_for(5000, || c.state() == State::Started
            && s.state() == State::Started));
        // The settings took: a packet above the maximum is refused, the
        // pool holds eight.
        assert_eq!(c.packet_pool_available(), 8);
        let mut resp = [0u8; 8];
        let big = [0u8; 1032];
        assert!(matches!(
            c.send_synchronous_request(
                &big,
                crate::channel::outgoing::SendFlags::WAIT_FOR_COMPLETION,
                &mut resp,
                Some(kernel::time::Delta::from_millis(1000)),
            ),
            Err(e) if e == EINVAL
        ));
        c.disable()?;
        s.disable()?;
        Ok(())
    }

    #[test]
    fn builder_reports_its_first_error() -> Result {
        let rec = Recorder::new()?;
        // A value out of range.
        let r = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .maximum_packet_size(0)
            .process_packet_callbacks(rec.clone())
            .build();
        assert!(matches!(r, Err(e) if e == EINVAL));
        // A server setting on a client, after valid ones.
        let r = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .process_packet_callbacks(rec.clone())
            .target_pnp(IFACE, None)
            .target_interface_id(IFACE, INSTANCE)
            .build();
        assert!(matches!(r, Err(e) if e == EINVAL));
        Ok(())
    }

    #[test]
    fn flag_sets_carry_the_kmcl_bits_and_nothing_else() -> Result {
        assert_eq!(ChannelFlags::IS_PIPE.bits(), 0x1);
        assert_eq!(ChannelFlags::ALL.bits(), 0x1);
        assert_eq!(
            (ServerFlags::LOOPBACK_OFFER
                | ServerFlags::ENUMERATE_DEVICE_INTERFACE
                | ServerFlags::OFFER_AS_PIPE
                | ServerFlags::FORCE_NEW_CHANNEL
                | ServerFlags::TLNPI_PROVIDER_OFFER)
                .bits(),
            0x1f
        );
        assert_eq!(ServerFlags::ALL.bits(), 0x1f);
        assert_eq!(crate::channel::GpadlFlags::READ_ONLY.bits(), 0x1);
        // Every defined combination converts back; no other bit does.
        assert_eq!(ServerFlags::from_bits(0x1f), Some(ServerFlags::ALL));
        assert_eq!(ChannelFlags::from_bits(0), Some(ChannelFlags::NONE));
        for bit in 5..32 {
            assert_eq!(ServerFlags::from_bits(1 << bit), None);
        }
        for bit in 1..32 {
            assert_eq!(ChannelFlags::from_bits(1 << bit), None);
            assert_eq!(crate::channel::GpadlFlags::from_bits(1 << bit), None);
        }
        assert!(ServerFlags::ALL.contains(ServerFlags::OFFER_AS_PIPE));
        assert!(!ServerFlags::LOOPBACK_OFFER.contains(ServerFlags::OFFER_AS_PIPE));
        Ok(())
    }

    #[test]
    fn quota_changes_while_open() -> Result {
        let p = Pair::connected()?;
        // Quota and delivery context may change at any time.
        assert_eq!(p.server.set_transaction_quota(4), Ok(()));
        assert_eq!(p.server.set_transaction_quota(0), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn enable_requires_packet_callbacks_and_a_target() -> Result {
        let bus = LoopbackBus::new()?;
        let mut c = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .target_pnp(IFACE, None)
            .build()?;
        assert_eq!(c.enable(), Err(EINVAL));
        assert_eq!(c.state(), State::Disabled);
        let rec = Recorder::new()?;
        let mut s = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
            .process_packet_callbacks(rec)
            .vmbus_handle(Bus::Loopback(bus))
            .build()?;
        assert_eq!(s.enable(), Err(EINVAL));
        assert_eq!(s.state(), State::Disabled);
        Ok(())
    }

    #[test]
    fn client_enable_returns_at_once_and_waits_for_the_offer() -> Result {
        let mut p = Pair::plain()?;
        p.client.enable()?;
        assert_eq!(p.client.state(), State::Enabled);
        settle(20);
        assert_eq!(p.client.state(), State::Enabled);
        assert_eq!(p.crec.count(Ev::Opened), 0);
        p.server.enable()?;
        assert!(wait_for(3000, || p.client.state() == State::Started
            && p.server.state() == State::Started));
        Ok(())
    }

    #[test]
    fn wait_for_state_times_out_or_returns_once_there() -> Result {
        let mut p = Pair::plain()?;
        p.client.enable()?;
        assert_eq!(
            p.client
                .wait_for_state(State::Started, kernel::time::Delta::from_millis(30)),
            Err(ETIMEDOUT)
        );
        p.server.enable()?;
        p.client
            .wait_for_state(State::Started, kernel::time::Delta::from_millis(5000))?;
        p.server
            .wait_for_state(State::Started, kernel::time::Delta::from_millis(5000))?;
        assert_eq!(p.client.state(), State::Started);
        Ok(())
    }

    #[test]
    fn state_callbacks_run_in_order() -> Result {
        let mut p = Pair::connected()?;
        for rec in [&p.crec, &p.srec] {
            assert!(wait_for(1000, || rec.count(Ev::PostStarted) == 1));
            assert_eq!(
                &rec.states()[..],
                &[Ev::Opened, Ev::Started, Ev::PostStarted]
            );
        }
        p.client.disable()?;
        assert_eq!(
            &p.crec.states()[..],
            &[
                Ev::Opened,
                Ev::Started,
                Ev::PostStarted,
                Ev::Suspend,
                Ev::Closed
            ]
        );
        assert!(wait_for(1000, || p.srec.count(Ev::Closed) == 1));
        assert_eq!(
            &p.srec.states()[..],
            &[
                Ev::Opened,
                Ev::Started,
                Ev::PostStarted,
                Ev::Suspend,
                Ev::Closed
            ]
        );
        let _ = &mut p;
        Ok(())
    }

    #[test]
    fn opened_failure_rolls_back_and_reports_pnp_failure() -> Result {
        let mut p = Pair::plain()?;
        p.crec
            .opened_error
            .store(-(EIO.to_errno()), Ordering::Relaxed);
        p.server.enable()?;
        p.client.enable()?;
        assert!(wait_for(3000, || p.crec.count(Ev::PnpFailure) == 1));
        assert_eq!(p.client.state(), State::Enabled);
        assert_eq!(p.crec.count(Ev::Started), 0);
        // As with VMBus, the server opened first; it sees the client go away
        // and its offer is free again.
        assert!(wait_for(3000, || p.srec.count(Ev::Opened) == 1
            && p.srec.count(Ev::Closed) == 1
            && p.server.state() == State::Enabled));
        settle(20);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), 0);
        assert_eq!(harness::send(&p.client, b"x", false), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn cleanup_requires_disabled() -> Result {
        let mut p = Pair::connected()?;
        let c = Channel::builder(Endpoint::Client, &crate::THIS_MODULE).build()?;
        assert!(c.cleanup().is_ok());
        // An enabled channel is handed back.
        let rec = Recorder::new()?;
        let mut s = harness::builder(&p.bus, Endpoint::Server, &rec)
            .target_interface_id(
                IFACE,
                Guid::from_str_const("11111111-2222-3333-4444-555555555555"),
            )
            .build()?;
        s.enable()?;
        let s = match s.cleanup() {
            Err((e, s)) => {
                assert_eq!(e, EBUSY);
                s
            }
            Ok(()) => return Err(EINVAL),
        };
        s.disable()?;
        assert!(s.cleanup().is_ok());
        let _ = &mut p;
        Ok(())
    }

    #[test]
    fn disable_blocks_until_torn_down() -> Result {
        let p = Pair::connected()?;
        p.client.disable()?;
        assert_eq!(p.client.state(), State::Disabled);
        assert_eq!(p.crec.count(Ev::Closed), 1);
        assert!(wait_for(2000, || p.server.state() == State::Enabled));
        // Disabling twice is harmless.
        p.client.disable()?;
        assert_eq!(p.crec.count(Ev::Closed), 1);
        Ok(())
    }

    #[test]
    fn peer_close_suspends_and_closes_the_client() -> Result {
        let p = Pair::connected()?;
        p.server.disable()?;
        assert!(wait_for(2000, || p.client.state() == State::Disabled));
        assert_eq!(p.crec.count(Ev::Suspend), 1);
        assert_eq!(p.crec.count(Ev::Closed), 1);
        assert_eq!(harness::send(&p.client, b"x", false), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn server_takes_a_new_client_after_close() -> Result {
        let p = Pair::connected()?;
        p.client.disable()?;
        assert!(wait_for(2000, || p.server.state() == State::Enabled));
        let rec = Recorder::new()?;
        let mut c2 = harness::channel(&p.bus, Endpoint::Client, &rec)?;
        c2.enable()?;
        assert!(wait_for(3000, || c2.state() == State::Started
            && p.server.state() == State::Started));
        assert_eq!(p.srec.count(Ev::Opened), 2);
        c2.disable()?;
        Ok(())
    }

    #[test]
    fn waiting_client_connects_when_the_offer_frees() -> Result {
        let p = Pair::connected()?;
        let rec = Recorder::new()?;
        let mut c2 = harness::channel(&p.bus, Endpoint::Client, &rec)?;
        c2.enable()?;
        settle(20);
        assert_eq!(c2.state(), State::Enabled);
        p.client.disable()?;
        assert!(wait_for(3000, || c2.state() == State::Started));
        c2.disable()?;
        Ok(())
    }

    #[test]
    fn duplicate_offer_is_refused() -> Result {
        let p = Pair::connected()?;
        let rec = Recorder::new()?;
        let mut s2 = harness::channel(&p.bus, Endpoint::Server, &rec)?;
        assert_eq!(s2.enable(), Err(EEXIST));
        assert_eq!(s2.state(), State::Disabled);
        assert_eq!(p.bus.offer_count(), 1);
        Ok(())
    }

    #[test]
    fn client_instance_must_match_the_offer() -> Result {
        let mut p = Pair::plain()?;
        let rec = Recorder::new()?;
        let mut other = harness::builder(&p.bus, Endpoint::Client, &rec)
            .target_pnp(
                IFACE,
                Some(Guid::from_str_const("00000000-0000-0000-0000-00000000abcd")),
            )
            .build()?;
        p.server.enable()?;
        other.enable()?;
        settle(30);
        assert_eq!(other.state(), State::Enabled);
        p.client.enable()?;
        assert!(wait_for(3000, || p.client.state() == State::Started));
        other.disable()?;
        Ok(())
    }

    #[test]
    fn pause_waits_for_outstanding_packets() -> Result {
        let p = Pair::connected()?;
        p.srec.mode.store(harness::mode::HOLD, Ordering::Relaxed);
        harness::send(&p.client, b"held", false)?;
        assert!(wait_for(2000, || p.srec.held() == 1));
        let server = p.server.arc();
        let done = Arc::new(core::sync::atomic::AtomicBool::new(false), GFP_KERNEL)?;
        let d2 = done.clone();
        crate::sys::wq().try_spawn(GFP_KERNEL, move || {
            let _ = server.pause();
            d2.store(true, Ordering::Relaxed);
        })?;
        assert!(wait_for(1000, || p.srec.count(Ev::Suspend) == 1));
        settle(50);
        // pause returned with a packet outstanding.
        assert!(!done.load(Ordering::Relaxed));
        p.srec.release_held();
        assert!(wait_for(2000, || done.load(Ordering::Relaxed)));
        assert_eq!(p.server.state(), State::Paused);
        Ok(())
    }

    #[test]
    fn nothing_is_delivered_between_suspend_and_started() -> Result {
        let p = Pair::connected()?;
        p.server.pause()?;
        let before = p.srec.received.load(Ordering::Relaxed);
        for i in 0..3u64 {
            harness::send(&p.client, &i.to_le_bytes(), false)?;
        }
        settle(50);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), before);
        assert_eq!(p.srec.count(Ev::Started), 1);
        p.server.start()?;
        assert_eq!(p.srec.count(Ev::Started), 2);
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed)
            == before + 3));
        Ok(())
    }

    #[test]
    fn pause_on_disabled_arms_a_pause_for_the_next_enable() -> Result {
        let mut p = Pair::plain()?;
        p.server.pause()?;
        p.up()?;
        assert_eq!(p.server.state(), State::Paused);
        assert_eq!(p.srec.count(Ev::Started), 0);
        harness::send(&p.client, b"later", false)?;
        settle(30);
        assert_eq!(p.srec.received.load(Ordering::Relaxed), 0);
        p.server.start()?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(p.srec.count(Ev::Started), 1);
        Ok(())
    }

    #[test]
    fn lifecycle_calls_from_a_state_callback_fail() -> Result {
        let mut p = Pair::plain()?;
        p.srec.pause_in_started.store(true, Ordering::Relaxed);
        p.up()?;
        assert!(wait_for(1000, || p
            .srec
            .pause_in_started_result
            .load(Ordering::Relaxed)
            != 1));
        assert_eq!(
            p.srec.pause_in_started_result.load(Ordering::Relaxed),
            EDEADLK.to_errno()
        );
        assert_eq!(p.server.state(), State::Started);
        Ok(())
    }
}
