/*
 * Multiboot entry of the MSI-X test guest: QEMU's multiboot loader starts
 * us in 32-bit protected mode with flat segments and paging off.
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
    call guest_main
1:  cli
    hlt
    jmp 1b

/*
 * Interrupt entries: save what C may clobber, count, return.
 *
 * The KVM of these machines (PVM) fails to emulate iret here, so return by
 * hand: same privilege level, so the frame is just EIP, CS, EFLAGS.  Only
 * moves and lea until popf restores the interrupted flags (IF included);
 * a nested interrupt between popf and ret is harmless.
 */
    .globl msix_entry
msix_entry:
    pusha
    call msix_handler
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
