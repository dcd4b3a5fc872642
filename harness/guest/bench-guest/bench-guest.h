/*
 * The bench guest's interface between entry.S and main.c.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BENCH_GUEST_H
#define BENCH_GUEST_H

struct mb_info;

/* main.c, called from entry.S */
void bench_main(struct mb_info *mbi);
void irq_handler(void);
void fault_handler(void);

/* entry.S: interrupt gates */
void irq_entry(void);
void fault_entry(void);

#endif
