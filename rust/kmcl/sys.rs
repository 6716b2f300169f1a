// SPDX-License-Identifier: GPL-2.0

//! Kernel facilities reached through `rust/helpers/sys.c`: kmcl's
//! workqueues, bottom-half control, context queries and page frame numbers.

use kernel::{
    bindings,
    prelude::*,
    workqueue::{
        Queue,
        RawWorkItem, //
    },
};

mod ffi {
    use kernel::{
        bindings,
        prelude::*, //
    };

    extern "C" {
        pub(super) fn kmcl_sys_init() -> c_int;
        pub(super) fn kmcl_sys_exit();
        pub(super) fn kmcl_sys_wq() -> *mut bindings::workqueue_struct;
        pub(super) fn kmcl_sys_bh_wq() -> *mut bindings::workqueue_struct;
        pub(super) fn kmcl_sys_queue_bh_on(cpu: c_int, work: *mut bindings::work_struct) -> bool;
        #[cfg(CONFIG_KUNIT)]
        pub(super) fn kmcl_sys_flush();
        pub(super) fn kmcl_local_bh_disable();
        pub(super) fn kmcl_local_bh_enable();
        pub(super) fn kmcl_in_serving_softirq() -> bool;
        pub(super) fn kmcl_bh_disabled() -> bool;
        pub(super) fn kmcl_in_task() -> bool;
        pub(super) fn kmcl_preemptible() -> bool;
        pub(super) fn kmcl_may_sleep() -> bool;
        pub(super) fn kmcl_virt_to_pfn(addr: *const c_void) -> u64;
        pub(super) fn kmcl_page_to_pfn(page: *mut c_void) -> u64;
        pub(super) fn kmcl_pfn_to_virt(pfn: u64) -> *mut c_void;
        pub(super) fn kmcl_jiffies() -> c_ulong;
    }
}

/// Owns kmcl's workqueues; they exist from module init until this is dropped.
pub(crate) struct Workqueues(());

impl Workqueues {
    /// Allocates the workqueues.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: called once, from module init.
        kernel::error::to_result(unsafe { ffi::kmcl_sys_init() })?;
        Ok(Self(()))
    }
}

impl Drop for Workqueues {
    fn drop(&mut self) {
        // SAFETY: the queues were allocated by `new`; destroying them drains them.
        unsafe { ffi::kmcl_sys_exit() }
    }
}

fn queue(raw: *mut bindings::workqueue_struct) -> &'static Queue {
    // SAFETY: the queues live from module init to module exit, which bounds every
    // caller inside kmcl, and `Workqueues` is created before any channel exists.
    unsafe { Queue::from_raw(raw) }
}

/// The process-context workqueue.
pub(crate) fn wq() -> &'static Queue {
    // SAFETY: a plain getter.
    queue(unsafe { ffi::kmcl_sys_wq() })
}

/// The softirq-context workqueue: work on it runs like hv's channel tasklet.
pub(crate) fn bh_wq() -> &'static Queue {
    // SAFETY: a plain getter.
    queue(unsafe { ffi::kmcl_sys_bh_wq() })
}

/// Queues `w` on the softirq-context workqueue to run on `cpu`, as a host's
/// interrupt runs the channel's tasklet on the CPU it targets; on the
/// caller's CPU for `None` or a CPU that is not online.
pub(crate) fn enqueue_bh_on<W, const ID: u64>(cpu: Option<u32>, w: W) -> W::EnqueueOutput
where
    W: RawWorkItem<ID> + Send + 'static,
{
    let cpu = cpu.and_then(|c| c_int::try_from(c).ok()).unwrap_or(-1);
    // SAFETY: the closure returns `false` only when the work item is already
    // queued, and then touches nothing; when it returns `true`, the queue
    // (which lives until module exit, after every channel) holds the
    // pointer until it calls the work function, which `__enqueue` keeps
    // valid until then. `W` is `Send` and `'static`.
    unsafe { w.__enqueue(move |work| ffi::kmcl_sys_queue_bh_on(cpu, work)) }
}

/// Waits until everything queued on kmcl's workqueues so far has run (for
/// the KUnit suites).
#[cfg(CONFIG_KUNIT)]
pub(crate) fn flush_work() {
    kernel::task::might_sleep();
    // SAFETY: the queues exist; flushing may sleep, checked above.
    unsafe { ffi::kmcl_sys_flush() }
}

/// Runs `f` with bottom halves disabled, as softirq-context code would run.
pub(crate) fn with_bh_disabled<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: paired with the enable below.
    unsafe { ffi::kmcl_local_bh_disable() };
    let r = f();
    // SAFETY: paired with the disable above.
    unsafe { ffi::kmcl_local_bh_enable() };
    r
}

/// Whether the caller runs in softirq context (kmcl's BH work).
///
/// Context: any context.
pub fn in_softirq() -> bool {
    // SAFETY: a context query.
    unsafe { ffi::kmcl_in_serving_softirq() }
}

/// Whether bottom halves are off on this CPU: the caller serves a softirq
/// (kmcl's BH work, hv's channel tasklet) or disabled them. This is the
/// context of every completion routine and of ProcessPacket when delivery is
/// not at passive level.
///
/// Context: any context.
pub fn bh_disabled() -> bool {
    // SAFETY: a context query.
    unsafe { ffi::kmcl_bh_disabled() }
}

/// Whether the caller runs in process context.
///
/// Context: any context.
pub fn in_task() -> bool {
    // SAFETY: a context query.
    unsafe { ffi::kmcl_in_task() }
}

/// Whether the caller may sleep: not atomic, bottom halves and preemption
/// enabled.
///
/// Context: any context.
pub fn preemptible() -> bool {
    // SAFETY: a context query.
    unsafe { ffi::kmcl_preemptible() }
}

/// Whether the caller may sleep, as `might_sleep()` checks it: process
/// context, no spinlock held, bottom halves and interrupts enabled. kmcl's
/// blocking entry points refuse a caller for whom this is false.
pub(crate) fn may_sleep() -> bool {
    // SAFETY: a context query.
    unsafe { ffi::kmcl_may_sleep() }
}

/// The page frame number of the page holding `addr` (direct map or vmalloc).
pub(crate) fn virt_to_pfn(addr: *const u8) -> u64 {
    // SAFETY: the helper handles both kinds of kernel address.
    unsafe { ffi::kmcl_virt_to_pfn(addr.cast()) }
}

/// The page frame number of `page`.
pub(crate) fn page_to_pfn(page: &kernel::page::Page) -> u64 {
    // SAFETY: `page` owns a valid `struct page`.
    unsafe { ffi::kmcl_page_to_pfn(page.as_ptr().cast()) }
}

/// The direct-map address of page frame `pfn`, if it is a valid one.
pub(crate) fn pfn_to_virt(pfn: u64) -> Option<*mut u8> {
    // SAFETY: the helper checks `pfn_valid` first.
    let p = unsafe { ffi::kmcl_pfn_to_virt(pfn) };
    (!p.is_null()).then_some(p.cast())
}

/// The current jiffies.
pub(crate) fn jiffies() -> u64 {
    // SAFETY: reads a global counter.
    unsafe { ffi::kmcl_jiffies() as u64 }
}
