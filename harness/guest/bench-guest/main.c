/*
 * Bench guest: a freestanding 32-bit multiboot program that times device
 * register accesses from inside the guest, so that QEMU's start-up and the
 * guest's boot stay out of the numbers.  The Makefile builds it (make
 * guest); harness/bench/run.sh runs it on -M pc under TCG, and under KVM
 * where KVM is usable, and harness/kvm-iofds.sh checks, from the counts
 * it prints, which path each kind of access took.  In mode=hammer it is
 * instead the guest of harness/bql-wait.sh: a device driver that never
 * stops touching its device, beside a vCPU that never touches it.
 *
 * Command line (-append):
 *   [mode=mmio|msix|hammer|migrate] [n=MAX] [budget_ms=MS] [reps=R] [pm=guest]
 *   [hammer=config|msix|msix-enable] [eject=1] [probe=msix]
 *
 * mode=mmio (default): rows of 4-byte accesses to
 *   - BAR0 of the raw vfio-user test server (1b36:00f1): the scratch
 *     register at 0x10 (REGION_READ / REGION_WRITE), the doorbells the
 *     server offers through GET_REGION_IO_FDS (ioeventfd at 0x100, shadow
 *     ioeventfd at 0x108, ioregionfd at 0x200 and, posted, at 0x300);
 *     around each row the guest reads the server's stats window (BAR0
 *     0x800-0xfff), so the host can tell which path the accesses took;
 *   - BAR0 of QEMU's edu device (1234:11e8), register 0x04: the same
 *     access to a device emulated inside QEMU, for reference.
 * mode=msix: the libvfio-user test server (1b36:00f0) raises MSI-X
 *   vector 0 once per write of its command register; the guest times
 *   rounds of trigger-then-wait-for-the-interrupt, and plain writes of a
 *   scratch register of the same BAR, so that the difference is the cost
 *   of delivering the interrupt.
 * mode=hammer (needs -smp 2): the BSP writes a counter to the raw test
 *   server's scratch register (BAR0 0x10) and reads it back, for ever,
 *   with a line every n such pairs; it starts the second vCPU (the AP,
 *   by INIT-SIPI-SIPI through the local APIC, at a real-mode trampoline
 *   from entry.S) which never touches the device and prints a tick line
 *   every TICK_MS of its TSC; it also counts its ticks in ap_ticks.  The
 *   two share COM1 a line at a time.  Nothing but a failed start ends
 *   it: the host kills it.  With hammer=config, the counter goes to the
 *   raw server's config space instead (offset 0x40, which it stores and
 *   vfio-pci passes through), by configuration mechanism 1.  With eject=1
 *   (and hammer=config) the BSP only reads, and the AP, once the BSP has
 *   made no progress for EJECT_MS (its access waits for a stopped
 *   server), ejects the device's slot through PIIX4's ACPI PCI hot-plug
 *   registers, as an ACPI guest does, and says so: the device is then
 *   unplugged while that access waits (harness/unplug-race.sh).
 *   With hammer=msix (the raw server with --msix), the BSP also enables
 *   MSI-X and masks and unmasks vector 0 in the table before each pair:
 *   every unmask makes QEMU wire the vector to the server (SET_IRQS).
 *   With hammer=msix-enable, it turns MSI-X off and on again instead:
 *   hw/vfio then tears the vectors down and wires INTx, and back.
 *   With probe=msix (the raw server with --msix), the AP also reads the
 *   vector control word of the device's MSI-X table entry 0 (QEMU's, not
 *   the server's) at every tick, and counts the reads that do not give
 *   what the BSP read before starting it (probe_bad=, in tick lines):
 *   the device's other regions must work while the BSP waits.
 *
 * The rows run R times over (reps=R, default 3), in turn, so that a burst
 * of load on the host spoils one pass of a row rather than all of it.
 * Each pass runs a pilot of PILOT accesses (also the warm-up), then sizes
 * itself to fit budget_ms / R, at most n accesses.
 *
 * Clock: the TSC, calibrated against the ACPI PM timer (3.579545 MHz) of
 * the PIIX4 power management function.  Under multiboot nothing may have
 * set the PM I/O base up, so the guest checks PMBA (config 0x40) and the
 * enable bit PMIOSE (config 0x80, bit 0), programs them when they are not
 * set (with pm=guest: always), and checks that the timer runs.  Under
 * TCG the guest's TSC is the host's; under KVM the host's at a constant
 * rate: the calibration holds for the whole run.  Every pass of a row also
 * reports its length by the PM timer alone (24 bits: only passes shorter
 * than 4 s), a cross-check of the TSC; and before the rows the guest
 * spins 500 ms by the TSC between two serial lines that the host
 * timestamps with its own clock.
 *
 * Output on COM1, one line per fact, parsed by harness/bench/run.sh:
 *   BENCH-GUEST: pm_timer base=0xB set_by=firmware|guest
 *   BENCH-GUEST: clock source=tsc calibrated_by=acpi_pm_timer tsc_khz=K ...
 *   BENCH-GUEST: clockcheck begin / clockcheck end guest_ns=NS
 *   BENCH-GUEST: row name=NAME rep=R n=N ns=TOTAL pm_ns=TOTAL per_ns=X.Y
 *                (+ with the raw server: region_reads= region_writes=
 *                 e0= .. e3=, what the server counted during the pass)
 *   BENCH-GUEST: entry k=K count=C last=V size=S offset=O closed=F
 *   BENCH-GUEST: ap started / hammer pairs=P bad=B / tick n=K ms=M
 *                (mode=hammer: B reads that did not return what was
 *                 written; M the AP's TSC time since it started)
 *   BENCH-GUEST: done ok|fail
 * then it leaves through isa-debug-exit (port 0xf4): QEMU exits with 1
 * when the guest is content, 3 otherwise.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdint.h>

#include "bench-guest.h"

#define RAW_VENDOR      0x1b36
#define RAW_DEVICE      0x00f1
#define EDU_VENDOR      0x1234
#define EDU_DEVICE      0x11e8
#define TS_VENDOR       0x1b36
#define TS_DEVICE       0x00f0
#define PIIX4_PM_ID     0x71138086u     /* device << 16 | vendor */

/* Raw test server, BAR0 */
#define RAW_SCRATCH     0x010
#define RAW_CFG_SCRATCH 0x40    /* config space: stored, not emulated */
#define RAW_IOEVENTFD   0x100
#define RAW_SHADOW      0x108
#define RAW_IOREGION_RD 0x200
#define RAW_IOREGION_WR 0x300
#define RAW_STATS_ENTRY 0x800           /* + K * 0x20 */
#define RAW_STATS_WRITES 0xc00
#define RAW_STATS_READS 0xc08
#define RAW_ENTRIES     4               /* run.sh's --iofd order */
/* Raw test server with --msix: the capability, and the table in BAR2 */
#define RAW_CFG_MSIX    0x60
#define RAW_MSIX_TABLE  0x800
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_VEC_MASKED 1

/* edu, BAR0 */
#define EDU_ID          0x00
#define EDU_LIVENESS    0x04

/* libvfio-user test server, BAR0 */
#define TS_REG_ID       0x000
#define TS_REG_SCRATCH0 0x008
#define TS_REG_VECTOR   0x12c
#define TS_REG_CMD      0x200
#define TS_CMD_VECTOR   4
#define TS_ID           0x56555453u

#define RAW_BAR0        0xe0000000u
#define RAW_BAR2        0xe0002000u     /* 8 KiB: the MSI-X table's */
#define EDU_BAR0        0xe0100000u     /* 1 MiB BAR, 1 MiB aligned */
#define TS_BAR0         0xe0200000u
#define TS_BAR1         0xe0202000u
#define TS_BAR2         0xe0204000u
#define LAPIC           0xfee00000u
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define ICR_INIT        0x00000500u
#define ICR_STARTUP     0x00000600u
#define ICR_PENDING     0x00001000u     /* delivery status */
#define ICR_ASSERT      0x00004000u
#define ICR_ALL_BUT_SELF 0x000c0000u
#define IRQ_VECTOR      0x40
#define TICK_MS         50

#define PM_HZ           3579545u
#define PM_MASK         0xffffffu
#define PM_DEFAULT_BASE 0xb000u
#define PM_TMR          0x08
#define DEBUG_EXIT_PORT 0xf4
#define PILOT           200
#define DEFAULT_N       20000
#define DEFAULT_BUDGET_MS 1000
#define DEFAULT_REPS    3
#define MAX_ROWS        8

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper, boot_device;
    uint32_t cmdline;
};

struct stats {
    uint32_t entry[RAW_ENTRIES];
    uint32_t writes;
    uint32_t reads;
};
/* 4-byte REGION_READs one stats_read() costs */
#define STATS_READS     (RAW_ENTRIES + 2)

static uint16_t pm_port;
static uint32_t tsc_khz;
/* volatile: the interrupt handler counts, the main loop waits on it */
static volatile uint32_t irq_count;
/* volatile: where register reads go, so that none is optimised away */
static volatile uint32_t sink;
static int failed;
static uint32_t max_n = DEFAULT_N;
static uint32_t budget_ms = DEFAULT_BUDGET_MS;
static uint32_t reps = DEFAULT_REPS;
static enum {
    MODE_MMIO,
    MODE_MSIX,
    MODE_HAMMER,
    MODE_MIGRATE,
} mode;
static const char *const mode_names[] = {
    "mmio", "msix", "hammer", "migrate"
};
static int pm_force;     /* pm=guest: program the PM base even if set */
static int hammer_config;   /* hammer=config: config space, not BAR0 */
static int hammer_msix;     /* hammer=msix: vector 0 masked, unmasked */
static int hammer_msix_enable; /* hammer=msix-enable: MSI-X off, on */
static int probe_msix;      /* probe=msix: the AP reads the MSI-X table */
static uint32_t probe_expect;
static uint32_t probe_bad;
static int hammer_eject;    /* eject=1: the AP ejects a stuck device */
/* mode=hammer: the BSP's progress, for the AP to see it stuck */
static volatile uint32_t hammer_done;
static volatile int hammer_slot = -1;
#define EJECT_MS        1000
#define PCIHP_SEL       0xae10  /* PIIX4 ACPI PCI hot-plug: bus select */
#define PCIHP_EJECT     0xae08  /* ... and eject, a bit per slot */
/* mode=hammer: volatile, the other vCPU watches them */
static volatile uint32_t serial_busy;
static volatile uint32_t ap_alive;
/* The AP's ticks, for a look from the host (nm for where, HMP xp) */
volatile uint32_t ap_ticks;

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

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;

    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
    return (uint64_t)hi << 32 | lo;
}

static inline uint32_t mmio_read(uint32_t addr)
{
    /* volatile: a device register, every access must happen */
    return *(volatile uint32_t *)addr;
}

static inline void mmio_write(uint32_t addr, uint32_t v)
{
    /* volatile: a device register, every access must happen */
    *(volatile uint32_t *)addr = v;
}

/* 64-by-32 division without libgcc: two divl */
static uint64_t div64(uint64_t n, uint32_t d)
{
    uint32_t hi = n >> 32, lo = n, qhi, qlo, rem;

    qhi = hi / d;
    hi %= d;
    __asm__("divl %4" : "=a"(qlo), "=d"(rem) : "a"(lo), "d"(hi), "rm"(d));
    (void)rem;
    return (uint64_t)qhi << 32 | qlo;
}

static void puts_serial(const char *s)
{
    while (*s) {
        outb(0x3f8, *s++);
    }
}

static void putu64(uint64_t v)
{
    char buf[21];
    int i = 20;

    buf[i] = 0;
    do {
        uint64_t q = div64(v, 10);

        buf[--i] = '0' + (char)(v - q * 10);
        v = q;
    } while (v);
    puts_serial(buf + i);
}

static void puthex(uint32_t v)
{
    int i;

    puts_serial("0x");
    for (i = 28; i >= 0; i -= 4) {
        outb(0x3f8, "0123456789abcdef"[(v >> i) & 0xf]);
    }
}

static void kv(const char *key, uint64_t v)
{
    puts_serial(" ");
    puts_serial(key);
    puts_serial("=");
    putu64(v);
}

/*
 * mode=hammer: both vCPUs print, a line at a time.  No pause while
 * waiting, as in ap_main.
 */
static void serial_lock(void)
{
    while (__atomic_exchange_n(&serial_busy, 1, __ATOMIC_ACQUIRE)) {
        while (serial_busy) {
            /* nothing */
        }
    }
}

static void serial_unlock(void)
{
    __atomic_store_n(&serial_busy, 0, __ATOMIC_RELEASE);
}

static void finish(void)
{
    serial_lock();                      /* for good: QEMU exits next */
    puts_serial(failed ? "BENCH-GUEST: done fail\n" : "BENCH-GUEST: done ok\n");
    /* isa-debug-exit: QEMU exits with (value << 1) | 1 */
    outb(DEBUG_EXIT_PORT, failed ? 1 : 0);
    for (;;) {
        __asm__ volatile("cli; hlt");
    }
}

static void fail(const char *why)
{
    serial_lock();
    puts_serial("BENCH-GUEST: error ");
    puts_serial(why);
    puts_serial("\n");
    serial_unlock();
    failed = 1;
    finish();
}

/* PCI configuration mechanism 1, bus 0 */
static uint32_t cfg_addr(int dev, int fn, int off)
{
    return 0x80000000u | (dev << 11) | (fn << 8) | (off & 0xfc);
}

static uint32_t cfg_read(int dev, int fn, int off)
{
    outl(0xcf8, cfg_addr(dev, fn, off));
    return inl(0xcfc);
}

static void cfg_write(int dev, int fn, int off, uint32_t v)
{
    outl(0xcf8, cfg_addr(dev, fn, off));
    outl(0xcfc, v);
}

static void cfg_write16(int dev, int fn, int off, uint16_t v)
{
    outl(0xcf8, cfg_addr(dev, fn, off));
    outw(0xcfc + (off & 2), v);
}

/* Returns dev << 3 | fn of the first function with that id, or -1 */
static int pci_find(uint16_t vendor, uint16_t device)
{
    uint32_t want = (uint32_t)device << 16 | vendor;
    int dev, fn;

    for (dev = 0; dev < 32; dev++) {
        for (fn = 0; fn < 8; fn++) {
            if (cfg_read(dev, fn, 0) == want) {
                return dev << 3 | fn;
            }
        }
    }
    return -1;
}

/* Place a 32- or 64-bit memory BAR at addr */
static void set_bar(int devfn, int bar, uint32_t addr)
{
    int dev = devfn >> 3, fn = devfn & 7, off = 0x10 + bar * 4;
    uint32_t old = cfg_read(dev, fn, off);

    if (old & 1) {
        fail("BAR is I/O space, not memory");
    }
    cfg_write(dev, fn, off, addr);
    if ((old & 6) == 4) {
        cfg_write(dev, fn, off + 4, 0);
    }
}

static void enable_device(int devfn, uint32_t cmd)
{
    cfg_write(devfn >> 3, devfn & 7, 0x04, cmd);
}

/*
 * The ACPI PM timer.  PIIX4 function 3 decodes its PM I/O block at PMBA
 * (config 0x40, bits 15:6) when PMIOSE (config 0x80, bit 0) is set.
 */
static void pm_setup(void)
{
    int devfn = -1, dev, fn;
    uint32_t base, misc, a, b, spin;
    const char *by = "firmware";

    for (dev = 0; dev < 32 && devfn < 0; dev++) {
        for (fn = 0; fn < 8; fn++) {
            if (cfg_read(dev, fn, 0) == PIIX4_PM_ID) {
                devfn = dev << 3 | fn;
                break;
            }
        }
    }
    if (devfn < 0) {
        fail("no PIIX4 power management function (run on -M pc)");
    }
    dev = devfn >> 3;
    fn = devfn & 7;
    base = cfg_read(dev, fn, 0x40) & 0xffc0;
    misc = cfg_read(dev, fn, 0x80);
    if (!base || !(misc & 1) || pm_force) {
        by = "guest";
        base = PM_DEFAULT_BASE;
        cfg_write(dev, fn, 0x40, base | 1);
        cfg_write(dev, fn, 0x80, misc | 1);
    }
    pm_port = base + PM_TMR;

    a = inl(pm_port) & PM_MASK;
    for (spin = 0; spin < 10000000; spin++) {
        b = inl(pm_port) & PM_MASK;
        if (b != a) {
            break;
        }
    }
    if (b == a) {
        fail("the ACPI PM timer does not run");
    }
    puts_serial("BENCH-GUEST: pm_timer base=");
    puthex(base);
    puts_serial(" set_by=");
    puts_serial(by);
    puts_serial("\n");
}

static inline uint32_t pm_read(void)
{
    return inl(pm_port) & PM_MASK;
}

/* TSC ticks per millisecond, over 100 ms of the PM timer */
static void calibrate(void)
{
    uint32_t pm0, pm1, dpm, start;
    uint64_t t0, t1;

    start = pm_read();
    do {
        pm0 = pm_read();
    } while (pm0 == start);
    t0 = rdtsc();
    do {
        pm1 = pm_read();
        dpm = (pm1 - pm0) & PM_MASK;
    } while (dpm < PM_HZ / 10);
    t1 = rdtsc();
    tsc_khz = div64(div64((t1 - t0) * PM_HZ, dpm), 1000);
    if (!tsc_khz) {
        /*
         * No usable TSC: the times printed mean nothing, but the counts
         * of which path each access took (harness/kvm-iofds.sh) still do.
         */
        puts_serial("BENCH-GUEST: warning the TSC does not run\n");
        tsc_khz = 1;
        return;
    }
    puts_serial("BENCH-GUEST: clock source=tsc calibrated_by=acpi_pm_timer");
    kv("tsc_khz", tsc_khz);
    kv("pm_ticks", dpm);
    kv("tsc_ticks", t1 - t0);
    puts_serial("\n");
}

static uint64_t tsc_to_ns(uint64_t ticks)
{
    return div64(ticks * 1000000, tsc_khz);
}

static void delay_ms(uint32_t ms)
{
    uint64_t end = rdtsc() + (uint64_t)tsc_khz * ms;

    while (rdtsc() < end) {
        __asm__ volatile("pause");
    }
}

/* 500 ms by the TSC between two lines the host timestamps */
static void clock_check(void)
{
    uint64_t t0, t1;

    if (tsc_khz == 1) {
        return;
    }
    puts_serial("BENCH-GUEST: clockcheck begin\n");
    t0 = rdtsc();
    delay_ms(500);
    t1 = rdtsc();
    puts_serial("BENCH-GUEST: clockcheck end");
    kv("guest_ns", tsc_to_ns(t1 - t0));
    puts_serial("\n");
}

/* The accesses a row times */
enum kind {
    READ,
    WRITE,
    IRQ_ROUND,
};

static void run_accesses(enum kind kind, uint32_t addr, uint32_t n)
{
    /* volatile: the device register under test, every access counts */
    volatile uint32_t *p = (volatile uint32_t *)addr;
    uint32_t i, acc = 0, spin;

    switch (kind) {
    case READ:
        for (i = 0; i < n; i++) {
            acc += *p;
        }
        sink = acc;
        break;
    case WRITE:
        for (i = 0; i < n; i++) {
            *p = i;
        }
        break;
    case IRQ_ROUND:
        for (i = 0; i < n; i++) {
            uint32_t want = irq_count + 1;

            *p = TS_CMD_VECTOR;
            for (spin = 0; irq_count < want && spin < 200000000; spin++) {
                __asm__ volatile("pause");
            }
            if (irq_count < want) {
                puts_serial("BENCH-GUEST: error interrupt did not arrive\n");
                failed = 1;
                return;
            }
        }
        break;
    }
}

static void stats_read(struct stats *s)
{
    int k;

    for (k = 0; k < RAW_ENTRIES; k++) {
        s->entry[k] = mmio_read(RAW_BAR0 + RAW_STATS_ENTRY + k * 0x20);
    }
    s->writes = mmio_read(RAW_BAR0 + RAW_STATS_WRITES);
    s->reads = mmio_read(RAW_BAR0 + RAW_STATS_READS);
}

struct row_def {
    const char *name;
    enum kind kind;
    uint32_t addr;
    int raw;                            /* the raw server's stats apply */
    uint32_t n;                         /* accesses per pass, from pass 1 */
};

static struct row_def rows[MAX_ROWS];
static int nr_rows;

static void add_row(const char *name, enum kind kind, uint32_t addr, int raw)
{
    if (nr_rows == MAX_ROWS) {
        fail("too many rows");
    }
    rows[nr_rows].name = name;
    rows[nr_rows].kind = kind;
    rows[nr_rows].addr = addr;
    rows[nr_rows].raw = raw;
    rows[nr_rows].n = 0;
    nr_rows++;
}

/*
 * One pass of a row: a pilot (also the warm-up), then as many accesses
 * as fit its share of the budget, at most max_n (the first pass sets the
 * number for every pass); with the raw server, its stats before and
 * after, less what reading them cost.  The server reads its io fds before
 * it handles each message, so what the guest's accesses signalled is
 * counted by the time the stats reads arrive.
 */
static void run_row(struct row_def *r, uint32_t rep)
{
    struct stats s0 = { { 0 } }, s1 = { { 0 } };
    uint64_t t0, t1, ns, per10;
    uint32_t n, pm0, pm1, per_pilot;
    int k;

    t0 = rdtsc();
    run_accesses(r->kind, r->addr, PILOT);
    t1 = rdtsc();
    if (!r->n) {
        per_pilot = (uint32_t)div64(tsc_to_ns(t1 - t0), PILOT) + 1;
        n = (uint32_t)div64(div64((uint64_t)budget_ms * 1000000, reps),
                            per_pilot);
        if (n > max_n) {
            n = max_n;
        }
        if (n < PILOT) {
            n = PILOT;
        }
        r->n = n;
    }
    n = r->n;

    if (r->raw) {
        stats_read(&s0);
    }
    pm0 = pm_read();
    t0 = rdtsc();
    run_accesses(r->kind, r->addr, n);
    t1 = rdtsc();
    pm1 = pm_read();
    if (r->raw) {
        stats_read(&s1);
    }

    ns = tsc_to_ns(t1 - t0);
    per10 = div64(ns * 10, n);
    puts_serial("BENCH-GUEST: row name=");
    puts_serial(r->name);
    kv("rep", rep);
    kv("n", n);
    kv("ns", ns);
    if (ns < 4000000000ull) {
        kv("pm_ns", div64((uint64_t)((pm1 - pm0) & PM_MASK) * 1000000000,
                          PM_HZ));
    }
    puts_serial(" per_ns=");
    putu64(div64(per10, 10));
    puts_serial(".");
    putu64(per10 - div64(per10, 10) * 10);
    if (r->raw) {
        kv("region_reads", s1.reads - s0.reads - STATS_READS);
        kv("region_writes", s1.writes - s0.writes);
        for (k = 0; k < RAW_ENTRIES; k++) {
            char key[] = "e0";

            key[1] = '0' + k;
            kv(key, s1.entry[k] - s0.entry[k]);
        }
    }
    puts_serial("\n");
}

static int prefix(const char *s, const char *p)
{
    while (*p && *s == *p) {
        s++;
        p++;
    }
    return !*p;
}

static void run_rows(void)
{
    uint32_t rep;
    int i;

    for (rep = 1; rep <= reps; rep++) {
        for (i = 0; i < nr_rows; i++) {
            run_row(&rows[i], rep);
        }
    }
}

static void parse_cmdline(struct mb_info *mbi)
{
    const char *s;

    if (!(mbi->flags & 4) || !mbi->cmdline) {
        return;
    }
    for (s = (const char *)mbi->cmdline; *s; s++) {
        uint32_t *num = 0;

        if (s != (const char *)mbi->cmdline && s[-1] != ' ') {
            continue;
        }
        if (s[0] == 'n' && s[1] == '=') {
            num = &max_n;
            s += 2;
        } else if (prefix(s, "budget_ms=")) {
            num = &budget_ms;
            s += 10;
        } else if (prefix(s, "reps=")) {
            num = &reps;
            s += 5;
        } else if (prefix(s, "mode=msix")) {
            mode = MODE_MSIX;
        } else if (prefix(s, "mode=hammer")) {
            mode = MODE_HAMMER;
        } else if (prefix(s, "mode=migrate")) {
            mode = MODE_MIGRATE;
        } else if (prefix(s, "pm=guest")) {
            pm_force = 1;
        } else if (prefix(s, "hammer=config")) {
            hammer_config = 1;
        } else if (prefix(s, "hammer=msix-enable")) {
            hammer_msix = 1;
            hammer_msix_enable = 1;
        } else if (prefix(s, "hammer=msix")) {
            hammer_msix = 1;
        } else if (prefix(s, "probe=msix")) {
            probe_msix = 1;
        } else if (prefix(s, "eject=1")) {
            hammer_eject = 1;
        }
        if (num) {
            *num = 0;
            while (*s >= '0' && *s <= '9') {
                *num = *num * 10 + (*s - '0');
                s++;
            }
            s--;
        }
    }
}

static void print_entries(void)
{
    int k;

    for (k = 0; k < RAW_ENTRIES; k++) {
        uint32_t e = RAW_BAR0 + RAW_STATS_ENTRY + k * 0x20;

        puts_serial("BENCH-GUEST: entry");
        kv("k", k);
        kv("count", mmio_read(e));
        kv("last", mmio_read(e + 8));
        kv("size", mmio_read(e + 16));
        puts_serial(" offset=");
        puthex(mmio_read(e + 20));
        kv("closed", mmio_read(e + 24));
        puts_serial("\n");
    }
}

static void mmio_rows(void)
{
    int raw = pci_find(RAW_VENDOR, RAW_DEVICE);
    int edu = pci_find(EDU_VENDOR, EDU_DEVICE);

    if (raw < 0 && edu < 0) {
        fail("neither the raw test server nor edu is on the bus");
    }
    if (raw >= 0) {
        set_bar(raw, 0, RAW_BAR0);
        enable_device(raw, 0x2);        /* memory space */
        mmio_write(RAW_BAR0 + RAW_SCRATCH, 0x5a5aa5a5);
        if (mmio_read(RAW_BAR0 + RAW_SCRATCH) != 0x5a5aa5a5) {
            fail("the raw server's scratch register does not hold a value");
        }
        add_row("region_read", READ, RAW_BAR0 + RAW_SCRATCH, 1);
        add_row("region_write", WRITE, RAW_BAR0 + RAW_SCRATCH, 1);
        add_row("ioeventfd", WRITE, RAW_BAR0 + RAW_IOEVENTFD, 1);
        add_row("shadow_ioeventfd", WRITE, RAW_BAR0 + RAW_SHADOW, 1);
        add_row("ioregionfd_write", WRITE, RAW_BAR0 + RAW_IOREGION_WR, 1);
        add_row("ioregionfd_read", READ, RAW_BAR0 + RAW_IOREGION_RD, 1);
    }
    if (edu >= 0) {
        set_bar(edu, 0, EDU_BAR0);
        enable_device(edu, 0x2);
        mmio_write(EDU_BAR0 + EDU_LIVENESS, 0x12345678);
        if ((mmio_read(EDU_BAR0 + EDU_ID) & 0xff) != 0xed ||
            mmio_read(EDU_BAR0 + EDU_LIVENESS) != ~0x12345678u) {
            fail("edu does not answer");
        }
        add_row("edu_read", READ, EDU_BAR0 + EDU_LIVENESS, 0);
        add_row("edu_write", WRITE, EDU_BAR0 + EDU_LIVENESS, 0);
    }
    run_rows();
    if (raw >= 0) {
        print_entries();
    }
}

/* The IDT: every vector faults to fault_entry except IRQ_VECTOR */
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];

void irq_handler(void)
{
    irq_count++;
    mmio_write(LAPIC + LAPIC_EOI, 0);
}

void fault_handler(void)
{
    fail("unexpected exception or interrupt");
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

/* IRQ_VECTOR counts in irq_count; the 8259s masked, the local APIC on */
static void idt_setup(void)
{
    struct {
        uint16_t limit;
        uint32_t base;
    } __attribute__((packed)) idtr = { sizeof(idt) - 1, (uint32_t)idt };
    int v;

    for (v = 0; v < 256; v++) {
        set_gate(v, fault_entry);
    }
    set_gate(IRQ_VECTOR, irq_entry);
    __asm__ volatile("lidt %0" : : "m"(idtr));
    outb(0x21, 0xff);                   /* mask both 8259s */
    outb(0xa1, 0xff);
    mmio_write(LAPIC + LAPIC_SVR, 0x1ff); /* APIC on, spurious vector 0xff */
}

static void msix_rows(void)
{
    int ts = pci_find(TS_VENDOR, TS_DEVICE);
    int dev, fn;
    uint32_t cap, table;

    if (ts < 0) {
        fail("no libvfio-user test server (1b36:00f0) on the bus");
    }
    dev = ts >> 3;
    fn = ts & 7;
    idt_setup();

    set_bar(ts, 0, TS_BAR0);
    set_bar(ts, 1, TS_BAR1);
    set_bar(ts, 2, TS_BAR2);
    enable_device(ts, 0x6);             /* memory space, bus master */
    if (mmio_read(TS_BAR0 + TS_REG_ID) != TS_ID) {
        fail("the test server's BAR0 does not answer");
    }
    for (cap = cfg_read(dev, fn, 0x34) & 0xfc; cap;
         cap = (cfg_read(dev, fn, cap) >> 8) & 0xfc) {
        if ((cfg_read(dev, fn, cap) & 0xff) == 0x11) {
            break;
        }
    }
    if (!cap) {
        fail("no MSI-X capability");
    }
    table = cfg_read(dev, fn, cap + 4);
    if ((table & 7) != 2) {
        fail("MSI-X table not in BAR2");
    }
    table = TS_BAR2 + (table & ~7u);
    cfg_write16(dev, fn, cap + 2, (cfg_read(dev, fn, cap) >> 16) | 0x8000);
    mmio_write(table + 0, LAPIC);
    mmio_write(table + 4, 0);
    mmio_write(table + 8, IRQ_VECTOR);
    mmio_write(table + 12, 0);
    __asm__ volatile("sti");

    mmio_write(TS_BAR0 + TS_REG_VECTOR, 0);
    add_row("msix_trigger_write", WRITE, TS_BAR0 + TS_REG_SCRATCH0, 0);
    add_row("msix_round", IRQ_ROUND, TS_BAR0 + TS_REG_CMD, 0);
    run_rows();
    puts_serial("BENCH-GUEST: interrupts");
    kv("count", irq_count);
    puts_serial("\n");
}

/* An IPI to every other CPU, once the previous one has gone */
static void ipi_others(uint32_t icr)
{
    mmio_write(LAPIC + LAPIC_ICR_HI, 0);
    mmio_write(LAPIC + LAPIC_ICR_LO, ICR_ALL_BUT_SELF | ICR_ASSERT | icr);
    while (mmio_read(LAPIC + LAPIC_ICR_LO) & ICR_PENDING) {
        /* nothing */
    }
}

/*
 * Start the AP as an OS does: INIT (after the firmware it sleeps in a
 * halt loop; INIT makes it wait for a SIPI), 10 ms, SIPI, and a second
 * SIPI if the first was lost (one that comes after the AP started is
 * ignored).  The SIPI's vector is the page where the AP starts.
 */
static void start_ap(void)
{
    /* volatile: a copy loop that the compiler must not make a memcpy() */
    volatile char *dst = (volatile char *)AP_TRAMPOLINE;
    const char *src;
    uint64_t end;

    for (src = ap_trampoline; src < ap_trampoline_end; src++) {
        *dst++ = *src;
    }
    mmio_write(LAPIC + LAPIC_SVR, 0x1ff); /* APIC on, spurious vector 0xff */
    ipi_others(ICR_INIT);
    delay_ms(10);
    ipi_others(ICR_STARTUP | AP_TRAMPOLINE >> 12);
    delay_ms(1);
    if (!ap_alive) {
        ipi_others(ICR_STARTUP | AP_TRAMPOLINE >> 12);
    }
    end = rdtsc() + (uint64_t)tsc_khz * 1000;
    while (!ap_alive && rdtsc() < end) {
        __asm__ volatile("pause");
    }
    if (!ap_alive) {
        fail("the second vCPU did not start within 1 s (run with -smp 2)");
    }
}

/*
 * The AP, from entry.S, interrupts off.  It waits without pause: under
 * TCG, pause leaves the vCPU's execution loop, and every return to that
 * loop takes the BQL; so would any interrupt.  This vCPU then needs the
 * BQL only for the serial port.
 */
void ap_main(void)
{
    uint64_t start = rdtsc(), next, stuck_since = rdtsc();
    uint32_t seen = 0;

    ap_alive = 1;
    for (;;) {
        next = rdtsc() + (uint64_t)tsc_khz * TICK_MS;
        while (rdtsc() < next) {
            /* nothing */
        }
        if (hammer_eject && hammer_slot >= 0) {
            if (hammer_done != seen) {
                seen = hammer_done;
                stuck_since = rdtsc();
            } else if (rdtsc() - stuck_since >
                       (uint64_t)tsc_khz * EJECT_MS) {
                serial_lock();
                puts_serial("BENCH-GUEST: ejecting");
                kv("slot", hammer_slot);
                kv("after", seen);
                puts_serial("\n");
                serial_unlock();
                outl(PCIHP_SEL, 0);
                outl(PCIHP_EJECT, 1u << hammer_slot);
                hammer_slot = -1;
            }
        }
        if (probe_msix &&
            mmio_read(RAW_BAR2 + RAW_MSIX_TABLE + 12) != probe_expect) {
            probe_bad++;
        }
        ap_ticks++;
        serial_lock();
        puts_serial("BENCH-GUEST: tick");
        kv("n", ap_ticks);
        kv("ms", div64(rdtsc() - start, tsc_khz));
        if (probe_msix) {
            kv("probe_bad", probe_bad);
        }
        puts_serial("\n");
        serial_unlock();
    }
}

/* mode=hammer: the register it hammers, in BAR0 or config space */
/*
 * The raw server's MSI-X (with --msix; BAR2 placed, memory space on):
 * vector 0 at the local APIC's IRQ_VECTOR, with @vector_ctrl (masked or
 * not), and MSI-X enabled.
 */
static void raw_msix_enable(int raw, uint32_t vector_ctrl)
{
    int dev = raw >> 3, fn = raw & 7;
    uint32_t cap = cfg_read(dev, fn, RAW_CFG_MSIX);

    if ((cap & 0xff) != 0x11) {
        fail("no MSI-X capability at 0x60 (run the server with --msix)");
    }
    mmio_write(RAW_BAR2 + RAW_MSIX_TABLE, LAPIC);
    mmio_write(RAW_BAR2 + RAW_MSIX_TABLE + 4, 0);
    mmio_write(RAW_BAR2 + RAW_MSIX_TABLE + 8, IRQ_VECTOR);
    mmio_write(RAW_BAR2 + RAW_MSIX_TABLE + 12, vector_ctrl);
    cfg_write16(dev, fn, RAW_CFG_MSIX + 2, (cap >> 16) | MSIX_CTRL_ENABLE);
}

static void hammer_write(int raw, uint32_t v)
{
    if (hammer_config) {
        cfg_write(raw >> 3, raw & 7, RAW_CFG_SCRATCH, v);
    } else {
        mmio_write(RAW_BAR0 + RAW_SCRATCH, v);
    }
}

static uint32_t hammer_read(int raw)
{
    if (hammer_config) {
        return cfg_read(raw >> 3, raw & 7, RAW_CFG_SCRATCH);
    }
    return mmio_read(RAW_BAR0 + RAW_SCRATCH);
}

/*
 * mode=hammer: the BSP as a driver that never stops using its device,
 * the AP as a vCPU that never touches it.
 */
static void hammer(void)
{
    int raw = pci_find(RAW_VENDOR, RAW_DEVICE);
    uint32_t i, bad = 0;

    if (raw < 0) {
        fail("no raw test server (1b36:00f1) on the bus");
    }
    if (tsc_khz == 1) {
        fail("the AP's ticks need a TSC that runs");
    }
    if (!max_n) {
        max_n = 1;
    }
    set_bar(raw, 0, RAW_BAR0);
    if (hammer_msix || probe_msix) {
        set_bar(raw, 2, RAW_BAR2);
    }
    enable_device(raw, 0x2);            /* memory space */
    if (hammer_msix) {
        /* Masked: this vCPU never takes it */
        raw_msix_enable(raw, MSIX_VEC_MASKED);
    }
    hammer_write(raw, 0x5a5aa5a5);
    if (hammer_read(raw) != 0x5a5aa5a5) {
        fail("the raw server's scratch register does not hold a value");
    }
    if (hammer_eject) {
        hammer_slot = raw >> 3;
    }
    if (probe_msix) {
        if ((cfg_read(raw >> 3, raw & 7, RAW_CFG_MSIX) & 0xff) != 0x11) {
            fail("no MSI-X capability at 0x60 (run the server with --msix)");
        }
        probe_expect = mmio_read(RAW_BAR2 + RAW_MSIX_TABLE + 12);
    }
    start_ap();
    serial_lock();
    puts_serial("BENCH-GUEST: ap started\n");
    serial_unlock();
    for (i = 1;; i++) {
        if (hammer_eject) {
            /* reads only: a read is what waits when the AP ejects */
            if (hammer_read(raw) != 0x5a5aa5a5) {
                bad++;
            }
            hammer_done = i;
        } else {
            if (hammer_msix_enable) {
                uint32_t ctrl = cfg_read(raw >> 3, raw & 7, RAW_CFG_MSIX);

                ctrl = (ctrl >> 16) & ~MSIX_CTRL_ENABLE;
                cfg_write16(raw >> 3, raw & 7, RAW_CFG_MSIX + 2,
                            i & 1 ? ctrl : ctrl | MSIX_CTRL_ENABLE);
            } else if (hammer_msix) {
                mmio_write(RAW_BAR2 + RAW_MSIX_TABLE + 12,
                           i & 1 ? MSIX_VEC_MASKED : 0);
            }
            hammer_write(raw, i);
            if (hammer_read(raw) != i) {
                bad++;
            }
        }
        if (i % max_n == 0) {
            serial_lock();
            puts_serial("BENCH-GUEST: hammer");
            kv("pairs", i);
            kv("bad", bad);
            puts_serial("\n");
            serial_unlock();
        }
    }
}

/*
 * mode=migrate: a driver that keeps using the raw server's device (with
 * --msix) while the host migrates the VM.  It leaves a value in one
 * register (MIG_STICKY), then for ever writes a counter to another and
 * reads it back, checks the first, and has the device raise MSI-X vector
 * 0, waiting for the interrupt; an interrupt that has not come after
 * MIG_REFIRE_MS is asked for again (one raised as the VM stops may be
 * lost on the way, and a busy host may stall the VM), and counted.  A line every n
 * rounds; after a migration the destination's serial port has them.
 */
#define RAW_MIG_STICKY  0x018
#define RAW_MSIX_FIRE   0x7f0
#define MIG_STICKY      0xc0ffee42u
#define MIG_REFIRE_MS   1000

static void migrate_loop(void)
{
    int raw = pci_find(RAW_VENDOR, RAW_DEVICE);
    uint32_t i, bad = 0, refires = 0;
    uint64_t wait = (uint64_t)tsc_khz * MIG_REFIRE_MS;

    if (raw < 0) {
        fail("no raw test server (1b36:00f1) on the bus");
    }
    if (!max_n) {
        max_n = 1;
    }
    idt_setup();
    set_bar(raw, 0, RAW_BAR0);
    set_bar(raw, 2, RAW_BAR2);
    enable_device(raw, 0x6);            /* memory space, bus master */
    raw_msix_enable(raw, 0);
    __asm__ volatile("sti");
    mmio_write(RAW_BAR0 + RAW_MIG_STICKY, MIG_STICKY);

    for (i = 1;; i++) {
        uint32_t want = irq_count + 1;
        uint64_t since = rdtsc();

        mmio_write(RAW_BAR0 + RAW_SCRATCH, i);
        if (mmio_read(RAW_BAR0 + RAW_SCRATCH) != i ||
            mmio_read(RAW_BAR0 + RAW_MIG_STICKY) != MIG_STICKY) {
            bad++;
        }
        mmio_write(RAW_BAR0 + RAW_MSIX_FIRE, 0);
        while (irq_count < want) {
            uint64_t now = rdtsc();

            /* The TSC may jump either way across a migration */
            if (now < since) {
                since = now;
            } else if (now - since > wait) {
                refires++;
                mmio_write(RAW_BAR0 + RAW_MSIX_FIRE, 0);
                since = now;
            }
            __asm__ volatile("pause");
        }
        if (i % max_n == 0) {
            puts_serial("BENCH-GUEST: migrate");
            kv("rounds", i);
            kv("bad", bad);
            kv("refires", refires);
            kv("irqs", irq_count);
            puts_serial("\n");
        }
    }
}

void bench_main(struct mb_info *mbi)
{
    parse_cmdline(mbi);
    if (!reps) {
        reps = 1;
    }
    puts_serial("BENCH-GUEST: start mode=");
    puts_serial(mode_names[mode]);
    kv("n", max_n);
    kv("budget_ms", budget_ms);
    kv("reps", reps);
    puts_serial("\n");
    pm_setup();
    calibrate();
    switch (mode) {
    case MODE_MMIO:
        clock_check();
        mmio_rows();
        break;
    case MODE_MSIX:
        clock_check();
        msix_rows();
        break;
    case MODE_HAMMER:
        hammer();                       /* does not return */
        break;
    case MODE_MIGRATE:
        migrate_loop();                 /* does not return */
        break;
    }
    finish();
}
