/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel facilities that kmcl's Rust code reaches through C: its two
 * workqueues (one in process context, one in softirq context), bottom-half
 * disabling, context queries, and page frame number conversions. Rust
 * declares the same functions in rust/kmcl/sys.rs.
 */
#ifndef KMCL_HELPERS_SYS_H
#define KMCL_HELPERS_SYS_H

#include <linux/types.h>

struct workqueue_struct;

int kmcl_sys_init(void);
void kmcl_sys_exit(void);
struct workqueue_struct *kmcl_sys_wq(void);
struct workqueue_struct *kmcl_sys_bh_wq(void);
bool kmcl_sys_queue_bh_on(int cpu, struct work_struct *work);
void kmcl_sys_flush(void);

void kmcl_local_bh_disable(void);
void kmcl_local_bh_enable(void);
bool kmcl_in_serving_softirq(void);
bool kmcl_bh_disabled(void);
bool kmcl_in_task(void);
bool kmcl_preemptible(void);
bool kmcl_may_sleep(void);

struct page;

u64 kmcl_virt_to_pfn(const void *addr);
u64 kmcl_page_to_pfn(struct page *page);
void *kmcl_pfn_to_virt(u64 pfn);
unsigned long kmcl_jiffies(void);

struct dentry;
struct seq_file;

/*
 * Per-channel debugfs status files under /sys/kernel/debug/kmcl/. The show
 * callback is kmcl_status_show(), implemented in Rust.
 */
struct dentry *kmcl_debugfs_add(const char *name, void *data);
void kmcl_debugfs_remove(struct dentry *d);
int kmcl_status_show(struct seq_file *m, void *data);

struct module;

/* Implemented in Rust: a module is going away; see sys.c. */
void kmcl_module_going(struct module *mod);

/* Used by the KUnit suites. */
ssize_t kmcl_debugfs_render(const char *name, char *buf, size_t len);

#endif /* KMCL_HELPERS_SYS_H */
