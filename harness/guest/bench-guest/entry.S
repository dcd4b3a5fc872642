/*
 * Multiboot entry of the bench guest.  QEMU's multiboot loader starts us
 * in 32-bit protected mode, flat segments, paging off, with the address
 * of the multiboot information structure in %ebx: hand it to bench_main.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
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

    .section .note.GNU-stack, "", @progbits

    .bss
    .align 16
    .space 16384
stack_top:
