/*
 * MSI-X test guest: drives vfio-user-test-server's device as a driver
 * would (finds it on PCI, assigns its BARs, enables MSI-X with vector 0
 * aimed at the local APIC), then has the device raise the vector many
 * times and counts the interrupts that arrive.  Prints the count on COM1
 * and reports pass/fail through isa-debug-exit.  Built with GUEST_USE_MSI,
 * it does the same with the device's MSI capability instead.
 *
 * Under KVM, vfio-user-pci hands the server KVM irqfds: the server's
 * eventfd writes become guest interrupts without QEMU in the path.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdint.h>

#ifdef GUEST_USE_MSI
#define GUEST           "msi-guest"
#else
#define GUEST           "msix-guest"
#endif

#define TS_VENDOR       0x1b36
#define TS_DEVICE       0x00f0
#define TS_REG_ID       0x000
#define TS_REG_STATUS   0x120
#define TS_REG_VECTOR   0x12c
#define TS_REG_CMD      0x200
#define TS_CMD_VECTOR   4
#define TS_ID           0x56555453u

#define BAR0_ADDR       0xe0000000u
#define BAR1_ADDR       0xe0002000u
#define BAR2_ADDR       0xe0004000u
#define LAPIC           0xfee00000u
#define MSIX_VECTOR     0x40    /* the IDT vector, for MSI too */
#ifdef GUEST_USE_MSI
#define CAP_ID          0x05
#else
#define CAP_ID          0x11
#endif
#define ROUNDS          1000
#define DEBUG_EXIT_PORT 0xf4

static volatile uint32_t msix_count;

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;

    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t mmio_read(uint32_t addr)
{
    return *(volatile uint32_t *)addr;
}

static inline void mmio_write(uint32_t addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

static void putc_serial(char c)
{
    outb(0x3f8, c);
}

static void puts_serial(const char *s)
{
    while (*s) {
        putc_serial(*s++);
    }
}

static void putu_serial(uint32_t v)
{
    char buf[11];
    int i = 10;

    buf[i] = 0;
    do {
        buf[--i] = '0' + v % 10;
        v /= 10;
    } while (v);
    puts_serial(buf + i);
}

static void finish(int ok)
{
    puts_serial(ok ? GUEST ": PASS\n" : GUEST ": FAIL\n");
    /* isa-debug-exit: QEMU exits with (value << 1) | 1 */
    outb(DEBUG_EXIT_PORT, ok ? 0 : 1);
    for (;;) {
        __asm__ volatile("cli; hlt");
    }
}

static uint32_t cfg_addr(int dev, int off)
{
    return 0x80000000u | (dev << 11) | (off & 0xfc);
}

static uint32_t cfg_read(int dev, int off)
{
    outl(0xcf8, cfg_addr(dev, off));
    return inl(0xcfc);
}

static void cfg_write(int dev, int off, uint32_t v)
{
    outl(0xcf8, cfg_addr(dev, off));
    outl(0xcfc, v);
}

static void cfg_write16(int dev, int off, uint16_t v)
{
    outl(0xcf8, cfg_addr(dev, off));
    outw(0xcfc + (off & 2), v);
}

/* The IDT: every vector faults to fault_entry except MSIX_VECTOR */
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];

extern void msix_entry(void);
extern void fault_entry(void);

void msix_handler(void);
void fault_handler(void);
void guest_main(void);

void msix_handler(void)
{
    msix_count++;
    mmio_write(LAPIC + 0xb0, 0);        /* EOI */
}

void fault_handler(void)
{
    puts_serial(GUEST ": unexpected exception or interrupt\n");
    finish(0);
}

static void set_gate(int v, void (*fn)(void))
{
    uint32_t a = (uint32_t)fn;
    uint16_t cs;

    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[v].off_lo = a & 0xffff;
    idt[v].off_hi = a >> 16;
    idt[v].sel = cs;
    idt[v].zero = 0;
    idt[v].type = 0x8e;                 /* present, ring 0, interrupt gate */
}

static void setup_idt(void)
{
    struct {
        uint16_t limit;
        uint32_t base;
    } __attribute__((packed)) idtr = { sizeof(idt) - 1, (uint32_t)idt };
    int v;

    for (v = 0; v < 256; v++) {
        set_gate(v, fault_entry);
    }
    set_gate(MSIX_VECTOR, msix_entry);
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

void guest_main(void)
{
    int dev, cap, i, spin;
    uint32_t sent = 0;
#ifdef GUEST_USE_MSI
    uint32_t ctrl, data_off;
#else
    uint32_t table;
#endif

    puts_serial(GUEST ": start\n");
    setup_idt();
    /* The 8259s deliver nothing we want: mask them all */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    /* Software-enable the local APIC, spurious vector 0xff */
    mmio_write(LAPIC + 0xf0, 0x1ff);

    for (dev = 0; dev < 32; dev++) {
        if (cfg_read(dev, 0) == (TS_DEVICE << 16 | TS_VENDOR)) {
            break;
        }
    }
    if (dev == 32) {
        puts_serial(GUEST ": no test device\n");
        finish(0);
    }
    cfg_write(dev, 0x10, BAR0_ADDR);
    cfg_write(dev, 0x14, BAR1_ADDR);
    cfg_write(dev, 0x18, BAR2_ADDR);
    cfg_write(dev, 0x04, 0x6);          /* memory space, bus master */
    if (mmio_read(BAR0_ADDR + TS_REG_ID) != TS_ID) {
        puts_serial(GUEST ": BAR0 does not answer\n");
        finish(0);
    }

    for (cap = cfg_read(dev, 0x34) & 0xfc; cap;
         cap = (cfg_read(dev, cap) >> 8) & 0xfc) {
        if ((cfg_read(dev, cap) & 0xff) == CAP_ID) {
            break;
        }
    }
#ifdef GUEST_USE_MSI
    if (!cap) {
        puts_serial(GUEST ": no MSI capability\n");
        finish(0);
    }
    /* One vector, aimed at this CPU's APIC; 64-bit layout if offered */
    ctrl = cfg_read(dev, cap) >> 16;
    data_off = ctrl & 0x80 ? 12 : 8;
    cfg_write(dev, cap + 4, LAPIC);
    if (ctrl & 0x80) {
        cfg_write(dev, cap + 8, 0);
    }
    cfg_write16(dev, cap + data_off, MSIX_VECTOR);
    if (ctrl & 0x100) {
        cfg_write(dev, cap + data_off + 4, 0);      /* unmask */
    }
    cfg_write16(dev, cap + 2, (ctrl & ~0x70) | 1);
#else
    if (!cap) {
        puts_serial(GUEST ": no MSI-X capability\n");
        finish(0);
    }
    table = cfg_read(dev, cap + 4);
    if ((table & 7) != 2) {
        puts_serial(GUEST ": MSI-X table not in BAR2\n");
        finish(0);
    }
    table = BAR2_ADDR + (table & ~7u);

    /* Enable MSI-X, then aim vector 0 at this CPU's APIC and unmask it */
    cfg_write16(dev, cap + 2, (cfg_read(dev, cap) >> 16) | 0x8000);
    mmio_write(table + 0, LAPIC);
    mmio_write(table + 4, 0);
    mmio_write(table + 8, MSIX_VECTOR);
    mmio_write(table + 12, 0);
#endif
    __asm__ volatile("sti");

    mmio_write(BAR0_ADDR + TS_REG_VECTOR, 0);
    for (i = 0; i < ROUNDS; i++) {
        mmio_write(BAR0_ADDR + TS_REG_CMD, TS_CMD_VECTOR);
        sent++;
        for (spin = 0; msix_count < sent && spin < 100000000; spin++) {
            __asm__ volatile("pause");
        }
        if (msix_count < sent) {
            break;
        }
    }
    puts_serial(GUEST ": interrupts ");
    putu_serial(msix_count);
    puts_serial(" of ");
    putu_serial(ROUNDS);
    puts_serial("\n");
    finish(msix_count == ROUNDS);
}
