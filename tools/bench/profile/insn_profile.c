// SPDX-License-Identifier: GPL-2.0
/*
 * insn_profile.c - a QEMU TCG plugin that counts the guest instructions
 * executed at each guest address, for `make profile`.
 *
 * Usage: qemu-system-x86_64 ... -plugin insn_profile.so,out=FILE[,mode=M]
 *
 * TCG translates guest code in translation blocks (TBs): straight-line runs
 * of instructions that end at a branch. For each TB it translates, the
 * plugin asks TCG to add a constant to a counter of its own every time the
 * TB runs (an inline add in the generated code: no call, nothing shared
 * with QEMU's state). What the counter stands for depends on the mode:
 *
 *   mode=tb (default)  one counter per TB start address; each execution of
 *                      a TB adds the number of instructions in it. The
 *                      profile attributes a TB to the function holding its
 *                      first instruction, which is exact unless a TB runs
 *                      across a function's end (a call or jump ends a TB,
 *                      so only fall-through into the next symbol does).
 *   mode=insn          one counter per translation; each execution adds
 *                      one. At exit every instruction of the translation
 *                      is credited with the translation's count, giving
 *                      the executions of each instruction address.
 *
 * A TB cut short by a fault or an interrupt still counts whole, and a TB
 * QEMU runs again after an I/O access counts twice; both are rare next to
 * the straight runs of the benchmark. Translations of the same address
 * (after a flush, or the shorter TBs -icount makes near a deadline) share
 * the address's counters.
 *
 * At exit FILE gets one line "ADDRESS COUNT" per address that ran (hex
 * address, decimal count), in address order. In mode=tb COUNT is the
 * instructions executed in TBs starting at ADDRESS; in mode=insn the
 * executions of the instruction at ADDRESS. The counters are plain adds:
 * exact with one vCPU, or with several under -icount, where TCG runs the
 * vCPUs in turns on one thread; racy otherwise.
 *
 * The API is QEMU's plugin API version 1 (QEMU 7.2); its header is fetched
 * by tools/bench/profile/setup.sh.
 */

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/*
 * An open-addressing hash table from a guest address to a 64-bit value: the
 * counter of a TB start in mode=tb, the executions of an instruction when
 * mode=insn folds its translations at exit. Key 0 marks a free slot (guest
 * code never runs at address 0 in the VM; a count for it would be dropped).
 */
struct slot {
	uint64_t addr;
	union {
		uint64_t count;		/* counts at exit */
		uint64_t *counter;	/* mode=tb: the TB's counter */
	};
};

struct table {
	struct slot *slots;
	size_t size;	/* a power of two */
	size_t used;
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (!p) {
		perror("insn_profile");
		exit(1);
	}
	return p;
}

static size_t hash(uint64_t addr)
{
	addr ^= addr >> 33;
	addr *= 0xff51afd7ed558ccdULL;
	addr ^= addr >> 33;
	return addr;
}

static struct slot *table_find(struct table *t, uint64_t addr);

static void table_grow(struct table *t)
{
	struct table bigger = { .size = t->size ? t->size * 2 : 1 << 16 };
	size_t i;

	bigger.slots = xcalloc(bigger.size, sizeof(*bigger.slots));
	for (i = 0; i < t->size; i++)
		if (t->slots[i].addr)
			*table_find(&bigger, t->slots[i].addr) = t->slots[i];
	free(t->slots);
	*t = bigger;
}

/*
 * The slot of addr, created zeroed if it is new. Slots move when the table
 * grows, so the counters TCG adds to in mode=tb are allocated on their own
 * and the table holds pointers to them.
 */
static struct slot *table_find(struct table *t, uint64_t addr)
{
	size_t i;

	if ((t->used + 1) * 2 > t->size)
		table_grow(t);
	i = hash(addr) & (t->size - 1);
	while (t->slots[i].addr && t->slots[i].addr != addr)
		i = (i + 1) & (t->size - 1);
	if (!t->slots[i].addr) {
		t->slots[i].addr = addr;
		t->used++;
	}
	return &t->slots[i];
}

/* mode=insn: one translation, its execution count and its instructions. */
struct translation {
	struct translation *next;
	uint64_t execs;
	size_t n;
	uint64_t insn[];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct table table;		/* mode=tb: TB start -> counter */
static struct translation *translations;	/* mode=insn */
static int insn_mode;
static char *out_path;

static void tb_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb);
	uint64_t *counter;
	size_t i;

	pthread_mutex_lock(&lock);
	if (insn_mode) {
		struct translation *t;

		t = xcalloc(1, sizeof(*t) + n * sizeof(t->insn[0]));
		t->n = n;
		for (i = 0; i < n; i++)
			t->insn[i] = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, i));
		t->next = translations;
		translations = t;
		counter = &t->execs;
		n = 1;
	} else {
		struct slot *s = table_find(&table, qemu_plugin_tb_vaddr(tb));

		if (!s->counter)
			s->counter = xcalloc(1, sizeof(*s->counter));
		counter = s->counter;
	}
	qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
						 counter, n);
	pthread_mutex_unlock(&lock);
}

static int by_addr(const void *a, const void *b)
{
	const struct slot *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static void write_counts(qemu_plugin_id_t id, void *data)
{
	struct table counts = { 0 };
	uint64_t total = 0;
	size_t i, n = 0;
	FILE *f;

	pthread_mutex_lock(&lock);
	if (insn_mode) {
		struct translation *t;

		for (t = translations; t; t = t->next)
			for (i = 0; t->execs && i < t->n; i++)
				table_find(&counts, t->insn[i])->count += t->execs;
	} else {
		for (i = 0; i < table.size; i++) {
			uint64_t *c = table.slots[i].counter;

			if (c && *c)
				table_find(&counts, table.slots[i].addr)->count = *c;
		}
	}
	/* Compact the used slots to the front and sort them by address. */
	for (i = 0; i < counts.size; i++)
		if (counts.slots[i].addr)
			counts.slots[n++] = counts.slots[i];
	qsort(counts.slots, n, sizeof(*counts.slots), by_addr);

	f = fopen(out_path, "w");
	if (!f) {
		perror(out_path);
		goto out;
	}
	for (i = 0; i < n; i++) {
		fprintf(f, "%" PRIx64 " %" PRIu64 "\n", counts.slots[i].addr,
			counts.slots[i].count);
		total += counts.slots[i].count;
	}
	if (fclose(f))
		perror(out_path);
	fprintf(stderr, "insn_profile: %" PRIu64 " instructions, %s\n",
			total, out_path);
out:
	pthread_mutex_unlock(&lock);
	free(counts.slots);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
					   const qemu_info_t *info,
					   int argc, char **argv)
{
	int i;

	/* QEMU refuses a plugin outside [min, cur] itself; say it plainly. */
	if (info->version.min > QEMU_PLUGIN_VERSION ||
	    info->version.cur < QEMU_PLUGIN_VERSION) {
		fprintf(stderr, "insn_profile: built for plugin API %d, QEMU has %d to %d\n",
			QEMU_PLUGIN_VERSION, info->version.min, info->version.cur);
		return -1;
	}
	for (i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "out=", 4)) {
			out_path = strdup(argv[i] + 4);
		} else if (!strcmp(argv[i], "mode=tb")) {
			insn_mode = 0;
		} else if (!strcmp(argv[i], "mode=insn")) {
			insn_mode = 1;
		} else {
			fprintf(stderr, "insn_profile: unknown argument %s\n", argv[i]);
			return -1;
		}
	}
	if (!out_path) {
		fprintf(stderr, "insn_profile: out=FILE is required\n");
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, tb_translated);
	qemu_plugin_register_atexit_cb(id, write_counts, NULL);
	return 0;
}
