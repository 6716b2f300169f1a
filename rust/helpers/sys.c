// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel facilities for kmcl's Rust code; see sys.h. None is exported:
 * they are reached only from code that stays inside kmcl.ko (see Kbuild and
 * rust/kmcl/exports.txt).
 */

#include <linux/bottom_half.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/irqflags.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/preempt.h>
#include <linux/seq_file.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#include "sys.h"

static struct workqueue_struct *kmcl_wq;
static struct workqueue_struct *kmcl_bh_wq;
static struct dentry *kmcl_debugfs_root;

/*
 * A module that goes away with channels it never dropped: kmcl disables
 * them before the module's memory is freed (rust/kmcl/channel/owners.rs).
 */
static int kmcl_module_notify(struct notifier_block *nb, unsigned long action,
			      void *data)
{
	if (action == MODULE_STATE_GOING)
		kmcl_module_going(data);
	return NOTIFY_DONE;
}

static struct notifier_block kmcl_module_nb = {
	.notifier_call = kmcl_module_notify,
};

int kmcl_sys_init(void)
{
	/*
	 * Process-context work: state callbacks, passive delivery, deferred
	 * packets. Unbound, so that a callback that blocks on its peer (a
	 * synchronous request in PostStarted) never stalls the work that
	 * would answer it.
	 */
	kmcl_wq = alloc_workqueue("kmcl", WQ_UNBOUND, 0);
	if (!kmcl_wq)
		return -ENOMEM;
	/* Softirq-context work: the channel interrupt, like hv's tasklet. */
	kmcl_bh_wq = alloc_workqueue("kmcl_bh", WQ_BH | WQ_PERCPU, 0);
	if (!kmcl_bh_wq) {
		destroy_workqueue(kmcl_wq);
		return -ENOMEM;
	}
	/* Observability only: kmcl works without debugfs. */
	kmcl_debugfs_root = debugfs_create_dir("kmcl", NULL);
	register_module_notifier(&kmcl_module_nb);
	return 0;
}

void kmcl_sys_exit(void)
{
	unregister_module_notifier(&kmcl_module_nb);
	debugfs_remove_recursive(kmcl_debugfs_root);
	/* destroy_workqueue() drains what is still queued. */
	destroy_workqueue(kmcl_wq);
	destroy_workqueue(kmcl_bh_wq);
}

struct workqueue_struct *kmcl_sys_wq(void)
{
	return kmcl_wq;
}

struct workqueue_struct *kmcl_sys_bh_wq(void)
{
	return kmcl_bh_wq;
}

bool kmcl_sys_queue_bh_on(int cpu, struct work_struct *work)
{
	/*
	 * Work on a BH workqueue runs in softirq context on the CPU it was
	 * queued on. A CPU that is not online, or none (-1), stands for the
	 * caller's own. Work queued on a CPU that goes offline right after the
	 * check still runs: a dying CPU's pending BH work is run when its
	 * softirqs are taken over.
	 */
	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu))
		cpu = WORK_CPU_UNBOUND;
	return queue_work_on(cpu, kmcl_bh_wq, work);
}

void kmcl_sys_flush(void)
{
	flush_workqueue(kmcl_wq);
	flush_workqueue(kmcl_bh_wq);
}

void kmcl_local_bh_disable(void)
{
	local_bh_disable();
}

void kmcl_local_bh_enable(void)
{
	local_bh_enable();
}

bool kmcl_in_serving_softirq(void)
{
	return in_serving_softirq();
}

bool kmcl_bh_disabled(void)
{
	/* Serving a softirq, or bottom halves disabled by the caller. */
	return in_softirq();
}

bool kmcl_in_task(void)
{
	return in_task();
}

bool kmcl_preemptible(void)
{
	return preemptible();
}

bool kmcl_may_sleep(void)
{
	/*
	 * What might_sleep() checks, without reporting: no hardirq, softirq or
	 * NMI, bottom halves and interrupts enabled, and (with a preemption
	 * count) no spinlock or preempt_disable() held. Unlike preemptible(),
	 * true in process context on a kernel without CONFIG_PREEMPT_COUNT.
	 */
	return !in_atomic() && !irqs_disabled();
}

u64 kmcl_virt_to_pfn(const void *addr)
{
	if (is_vmalloc_addr(addr))
		return vmalloc_to_pfn(addr);
	return page_to_pfn(virt_to_page(addr));
}

u64 kmcl_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

void *kmcl_pfn_to_virt(u64 pfn)
{
	if (!pfn_valid(pfn))
		return NULL;
	return page_address(pfn_to_page(pfn));
}

unsigned long kmcl_jiffies(void)
{
	return jiffies;
}

/* single_open() hands the data pointer to show() as m->private. */
static int kmcl_status_show_private(struct seq_file *m, void *v)
{
	return kmcl_status_show(m, m->private);
}

static int kmcl_status_open(struct inode *inode, struct file *file)
{
	return single_open(file, kmcl_status_show_private, inode->i_private);
}

static const struct file_operations kmcl_status_fops = {
	.owner = THIS_MODULE,
	.open = kmcl_status_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = single_release,
};

struct dentry *kmcl_debugfs_add(const char *name, void *data)
{
	struct dentry *d;

	if (IS_ERR_OR_NULL(kmcl_debugfs_root))
		return NULL;
	d = debugfs_create_file(name, 0444, kmcl_debugfs_root, data,
				&kmcl_status_fops);
	return IS_ERR(d) ? NULL : d;
}

/* Returns once no reader is inside kmcl_status_show() for this file. */
void kmcl_debugfs_remove(struct dentry *d)
{
	debugfs_remove(d);
}

/*
 * For the KUnit suites: finds a status file by name and renders it through
 * the same show path a reader of the file takes. Kernel threads do not see
 * the mounts of user space, so the suites cannot open the file by path.
 */
ssize_t kmcl_debugfs_render(const char *name, char *buf, size_t len)
{
	struct seq_file m = { .buf = buf, .size = len };
	struct dentry *d;

	if (IS_ERR_OR_NULL(kmcl_debugfs_root))
		return -ENOENT;
	d = debugfs_lookup(name, kmcl_debugfs_root);
	if (!d)
		return -ENOENT;
	mutex_init(&m.lock);
	m.private = d_inode(d)->i_private;
	kmcl_status_show_private(&m, NULL);
	dput(d);
	return seq_has_overflowed(&m) ? -EOVERFLOW : m.count;
}
