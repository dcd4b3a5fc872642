/*
 * The bench guest's interface between entry.S and main.c.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BENCH_GUEST_H
#define BENCH_GUEST_H

/*
 * Where the second vCPU starts (mode=hammer): a SIPI names a 4 KiB page
 * below 1 MiB.  The multiboot information lies at 0x9000; the page below
 * is free.
 */
#define AP_TRAMPOLINE   0x8000
#define AP_CS           0x08            /* the trampoline's GDT */
#define AP_DS           0x10

#ifndef __ASSEMBLER__

struct mb_info;

/* main.c, called from entry.S */
void bench_main(struct mb_info *mbi);
void ap_main(void);
void irq_handler(void);
void fault_handler(void);

/* entry.S: interrupt gates */
void irq_entry(void);
void fault_entry(void);

/* entry.S: the second vCPU's real-mode start, copied to AP_TRAMPOLINE */
extern const char ap_trampoline[], ap_trampoline_end[];

#endif
#endif
