/*
 * Multiboot entry of the bench guest.  QEMU's multiboot loader starts us
 * in 32-bit protected mode, flat segments, paging off, with the address
 * of the multiboot information structure in %ebx: hand it to bench_main.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "bench-guest.h"

    .section .multiboot, "a"
    .align 4
    .long 0x1badb002            /* magic */
    .long 0x00000000            /* flags: nothing asked */
    .long -0x1badb002           /* checksum */

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    push %ebx
    call bench_main
1:  cli
    hlt
    jmp 1b

/*
 * The MSI-X vector's entry: save what C may clobber, count, return.
 * The PVM flavour of KVM on these machines does not emulate iret for this
 * guest (see harness/guest/msix-guest/entry.S), so return without it: the
 * frame at the same privilege level is EIP, CS, EFLAGS; rearrange it into
 * EFLAGS, EIP and leave with popf; ret.
 */
    .globl irq_entry
irq_entry:
    pusha
    call irq_handler
    popa
    push %eax
    mov 4(%esp), %eax           /* EIP */
    xchg %eax, 12(%esp)         /* EFLAGS slot <- EIP, EAX <- EFLAGS */
    mov %eax, 8(%esp)           /* CS slot <- EFLAGS */
    pop %eax
    lea 4(%esp), %esp           /* now: EFLAGS, EIP */
    popf
    ret

    .globl fault_entry
fault_entry:
    call fault_handler          /* does not return */

/*
 * The second vCPU (mode=hammer).  The SIPI starts it in real mode at
 * AP_TRAMPOLINE (CS = AP_TRAMPOLINE >> 4, IP 0), where bench_main copied
 * the code from ap_trampoline to ap_trampoline_end: it loads a flat GDT
 * of its own (which stays there: it is the AP's GDT from then on), turns
 * protection on and jumps to ap_start32, in the image at 1 MiB.  Only
 * the copy runs, so it addresses its data at where the copy lies.
 */
#define AP_ADDR(sym) (AP_TRAMPOLINE + (sym) - ap_trampoline)

    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl AP_ADDR(ap_gdt_desc)
    mov %cr0, %eax
    or $1, %eax                 /* PE */
    mov %eax, %cr0
    ljmpl $AP_CS, $ap_start32

    .align 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* AP_CS: code, base 0, 4 GiB, 32-bit */
    .quad 0x00cf92000000ffff    /* AP_DS: data, base 0, 4 GiB */
ap_gdt_desc:
    .word ap_gdt_desc - ap_gdt - 1
    .long AP_ADDR(ap_gdt)
ap_trampoline_end:

    .code32
ap_start32:
    mov $AP_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $ap_stack_top, %esp
    call ap_main                /* does not return */
1:  cli
    hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits

    .bss
    .align 16
    .space 16384
stack_top:
    .space 4096
ap_stack_top:
