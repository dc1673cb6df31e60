// SPDX-License-Identifier: GPL-2.0
/*
 * kmx_crash: provokes kernel reports on demand, so that kmatrix can check it finds each one
 * and titles it with the function that caused it (tests/test_provoke.py).
 *
 *   insmod kmx_crash.ko [secs=N]
 *   cat /proc/kmx_crash            one line per provocation: "WORD yes" or "WORD no: REASON"
 *   echo WORD > /proc/kmx_crash    provokes it in the writing task
 *
 * Every provocation happens in a noinline function named kmx_crash_WORD, so a report's
 * title can name it. Oopses kill the writing task and the kernel goes on (unless
 * panic_on_oops); "panic", "int3" (the trap runs in NMI-like context, so its oops panics)
 * and "overflow" end the kernel. "hung" sleeps in D state: run it in the background.
 */
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/proc_fs.h>
#include <linux/rcupdate.h>
#include <linux/refcount.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vmalloc.h>

static int secs = 6;
module_param(secs, int, 0644);
MODULE_PARM_DESC(secs, "seconds that softlockup and rcustall spin and hung sleeps");

/* Values the compiler cannot fold: the faults must happen at run time, in these functions. */
static volatile unsigned long kmx_zero;

static noinline void kmx_crash_warn(void)
{
	WARN_ON(kmx_zero == 0);
}

static noinline void kmx_crash_bug(void)
{
	BUG_ON(kmx_zero == 0);
}

static noinline void kmx_crash_null(void)
{
	pr_info("kmx_crash: read %d\n", *(volatile int *)(kmx_zero + 0x10));
}

static noinline void kmx_crash_pagefault(void)
{
	/* The guard page after a one-page vmalloc area is never mapped. */
	char *p = vmalloc(PAGE_SIZE);

	if (p)
		pr_info("kmx_crash: read %d\n", *(volatile char *)(p + PAGE_SIZE + kmx_zero));
}

static noinline void kmx_crash_div(void)
{
	pr_info("kmx_crash: quotient %lu\n", 100UL / kmx_zero);
}

static noinline void kmx_crash_gpf(void)
{
	/* A non-canonical address: #GP, not #PF. */
	pr_info("kmx_crash: read %lu\n",
		*(volatile unsigned long *)(0xdead000000000100UL + kmx_zero));
}

#ifdef CONFIG_X86
static noinline void kmx_crash_ud2(void)
{
	/* Not in the bug table, so not a BUG(): a plain invalid opcode. */
	asm volatile("ud2");
	unreachable();
}

static noinline void kmx_crash_int3(void)
{
	asm volatile("int3");
}
#endif

static noinline int kmx_crash_overflow(unsigned long depth)
{
	volatile char frame[256];

	frame[depth % sizeof(frame)] = (char)depth;
	if (kmx_zero == 0)
		return kmx_crash_overflow(depth + 1) + frame[0];
	return frame[0];
}

/*
 * Spins with preemption off: no context switch, no RCU quiescent state on this CPU. Timed by
 * jiffies (the tick keeps running): under emulation a delay loop can run many times late.
 */
static __always_inline void kmx_spin(void)
{
	unsigned long end = jiffies + secs * HZ;

	preempt_disable();
	while (time_before(jiffies, end))
		cpu_relax();
	preempt_enable();
}

static noinline void kmx_crash_softlockup(void)
{
	kmx_spin();
}

/* An RCU callback queued just before the spin, so that a grace period is wanted while this
 * CPU holds it up; one at a time (a pending rcu_head must not be queued again). */
static struct rcu_head kmx_rcu_head;
static atomic_t kmx_rcu_pending;

static void kmx_rcu_done(struct rcu_head *head)
{
	atomic_set(&kmx_rcu_pending, 0);
}

static noinline void kmx_crash_rcustall(void)
{
	/* The stall timeout is read when a grace period starts: end the current one first, so
	 * that the next one, which the spin holds up, uses the timeout set before provoking. */
	synchronize_rcu();
	if (atomic_cmpxchg(&kmx_rcu_pending, 0, 1) == 0) {
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
		call_rcu_hurry(&kmx_rcu_head, kmx_rcu_done); /* not batched by lazy RCU */
#else
		call_rcu(&kmx_rcu_head, kmx_rcu_done);
#endif
	}
	kmx_spin();
}

static noinline void kmx_crash_hung(void)
{
	msleep(secs * 1000); /* TASK_UNINTERRUPTIBLE */
	pr_info("kmx_crash: hung task woke up\n"); /* not a tail call: this frame stays */
}

static noinline void kmx_crash_refcount(void)
{
	refcount_t ref;

	refcount_set(&ref, 0);
	if (refcount_dec_and_test(&ref)) /* 0 -> -1: "refcount_t: underflow" */
		pr_info("kmx_crash: refcount reached zero\n");
}

static noinline void kmx_crash_list(void)
{
	LIST_HEAD(head);
	struct list_head node;

	list_add(&node, &head);
	list_add(&node, &head); /* "list_add double add" */
	list_del(&node);
}

static noinline void kmx_crash_atomic(void)
{
	preempt_disable();
	schedule_timeout_uninterruptible(1); /* "BUG: scheduling while atomic" */
	/* Having said so, the scheduler reset the preemption count: balance it only if not. */
	if (preempt_count())
		preempt_enable();
}

static noinline void kmx_crash_mightsleep(void)
{
	preempt_disable();
	might_sleep(); /* "BUG: sleeping function called from invalid context" */
	preempt_enable();
}

static noinline int kmx_crash_ubsan(void)
{
	int arr[4] = { 1, 2, 3, 4 };
	volatile unsigned long i = 4 + kmx_zero;

	return arr[i]; /* "UBSAN: array-index-out-of-bounds" */
}

static noinline void kmx_crash_panic(void)
{
	panic("kmx_crash: panic on request");
}

/* --- two CPUs reporting at once ---------------------------------------------------------- */

static noinline void kmx_crash_twin_a(void)
{
	WARN_ON(kmx_zero == 0);
}

static noinline void kmx_crash_twin_b(void)
{
	WARN_ON(kmx_zero == 0);
}

struct kmx_twin {
	int index;
	struct completion done;
};

static atomic_t kmx_twin_ready;

static int kmx_twin_thread(void *data)
{
	struct kmx_twin *t = data;
	u64 deadline = ktime_get_ns() + 2 * NSEC_PER_SEC;

	/* Bounded rendezvous, so both CPUs warn at the same moment. */
	atomic_inc(&kmx_twin_ready);
	while (atomic_read(&kmx_twin_ready) < 2 && ktime_get_ns() < deadline)
		cpu_relax();
	if (t->index == 0)
		kmx_crash_twin_a();
	else
		kmx_crash_twin_b();
	complete(&t->done);
	return 0;
}

static int kmx_twin(void)
{
	struct kmx_twin twins[2];
	struct task_struct *tasks[2];
	int cpu, n = 0;

	atomic_set(&kmx_twin_ready, 0);
	for_each_online_cpu(cpu) {
		if (n == 2)
			break;
		twins[n].index = n;
		init_completion(&twins[n].done);
		tasks[n] = kthread_create(kmx_twin_thread, &twins[n], "kmx_twin/%d", cpu);
		if (IS_ERR(tasks[n]))
			break;
		kthread_bind(tasks[n], cpu);
		n++;
	}
	if (n < 2) {
		/* Never woken: kthread_stop() ends them without running kmx_twin_thread. */
		while (n--)
			kthread_stop(tasks[n]);
		return -ENODEV;
	}
	wake_up_process(tasks[0]);
	wake_up_process(tasks[1]);
	wait_for_completion(&twins[0].done);
	wait_for_completion(&twins[1].done);
	return 0;
}

/* --- the control file ---------------------------------------------------------------- */

struct kmx_provocation {
	const char *word;
	const char *missing; /* why this kernel cannot produce it, or NULL */
	void (*fn)(void);
};

static void kmx_ubsan(void)
{
	kmx_crash_ubsan();
}

static void kmx_overflow(void)
{
	kmx_crash_overflow(0);
}

static void kmx_twin_void(void)
{
	kmx_twin();
}

static const struct kmx_provocation kmx_provocations[] = {
	{ "warn", NULL, kmx_crash_warn },
	{ "bug", IS_ENABLED(CONFIG_BUG) ? NULL : "CONFIG_BUG is not set", kmx_crash_bug },
	{ "null", NULL, kmx_crash_null },
	{ "pagefault", NULL, kmx_crash_pagefault },
	{ "div", NULL, kmx_crash_div },
	{ "gpf", IS_ENABLED(CONFIG_X86_64) ? NULL : "x86-64 only", kmx_crash_gpf },
#ifdef CONFIG_X86
	{ "ud2", NULL, kmx_crash_ud2 },
	{ "int3", NULL, kmx_crash_int3 },
#endif
	{ "overflow", IS_ENABLED(CONFIG_VMAP_STACK) ? NULL : "CONFIG_VMAP_STACK is not set",
	  kmx_overflow },
	{ "softlockup",
	  IS_ENABLED(CONFIG_SOFTLOCKUP_DETECTOR) ? NULL : "CONFIG_SOFTLOCKUP_DETECTOR is not set",
	  kmx_crash_softlockup },
	{ "rcustall",
	  IS_ENABLED(CONFIG_RCU_STALL_COMMON) ? NULL : "CONFIG_RCU_STALL_COMMON is not set",
	  kmx_crash_rcustall },
	{ "hung", IS_ENABLED(CONFIG_DETECT_HUNG_TASK) ? NULL : "CONFIG_DETECT_HUNG_TASK is not set",
	  kmx_crash_hung },
	{ "refcount", NULL, kmx_crash_refcount },
	{ "list",
	  IS_ENABLED(CONFIG_DEBUG_LIST) || IS_ENABLED(CONFIG_LIST_HARDENED) ?
		  NULL : "neither CONFIG_DEBUG_LIST nor CONFIG_LIST_HARDENED is set",
	  kmx_crash_list },
	{ "atomic", NULL, kmx_crash_atomic },
	{ "mightsleep",
	  IS_ENABLED(CONFIG_DEBUG_ATOMIC_SLEEP) ? NULL : "CONFIG_DEBUG_ATOMIC_SLEEP is not set",
	  kmx_crash_mightsleep },
	{ "ubsan", IS_ENABLED(CONFIG_UBSAN_BOUNDS) ? NULL : "CONFIG_UBSAN_BOUNDS is not set",
	  kmx_ubsan },
	{ "panic", NULL, kmx_crash_panic },
	{ "twin", NULL, kmx_twin_void },
};

static int kmx_show(struct seq_file *m, void *v)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(kmx_provocations); i++) {
		const struct kmx_provocation *p = &kmx_provocations[i];
		const char *missing = p->missing;

		if (!missing && p->fn == kmx_twin_void && num_online_cpus() < 2)
			missing = "needs two online CPUs";
		if (missing)
			seq_printf(m, "%s no: %s\n", p->word, missing);
		else
			seq_printf(m, "%s yes\n", p->word);
	}
	return 0;
}

static int kmx_open(struct inode *inode, struct file *file)
{
	return single_open(file, kmx_show, NULL);
}

static ssize_t kmx_write(struct file *file, const char __user *ubuf, size_t len, loff_t *off)
{
	char word[32];
	size_t i;

	if (len == 0 || len >= sizeof(word))
		return -EINVAL;
	if (copy_from_user(word, ubuf, len))
		return -EFAULT;
	word[len] = '\0';
	strim(word);
	for (i = 0; i < ARRAY_SIZE(kmx_provocations); i++) {
		const struct kmx_provocation *p = &kmx_provocations[i];

		if (strcmp(word, p->word))
			continue;
		if (p->missing)
			return -EOPNOTSUPP;
		if (p->fn == kmx_twin_void && num_online_cpus() < 2)
			return -ENODEV;
		pr_info("kmx_crash: provoking %s\n", p->word);
		p->fn();
		return len;
	}
	return -EINVAL;
}

static const struct proc_ops kmx_ops = {
	.proc_open = kmx_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = kmx_write,
};

static int __init kmx_init(void)
{
	if (!proc_create("kmx_crash", 0600, NULL, &kmx_ops))
		return -ENOMEM;
	return 0;
}

static void __exit kmx_exit(void)
{
	remove_proc_entry("kmx_crash", NULL);
	rcu_barrier(); /* kmx_rcu_done must not run after the module is gone */
}

module_init(kmx_init);
module_exit(kmx_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmatrix: provoke kernel reports on demand");
