/*
 * A vfio-user server for vfio-user tests that speaks the wire protocol
 * itself, without libvfio-user, so that it can offer what that library
 * cannot: VFIO_USER_DEVICE_GET_REGION_IO_FDS entries of every type
 * (ioeventfd, ioregionfd, newer libvfio-user's shadow ioeventfd), in the
 * 40- or 48-byte layout or a stride of any size, bad entries on request,
 * and a record of what arrives on each fd; and, one at a time, the
 * misbehaviours of a hostile server (--misbehave).
 *
 * The device: PCI 1b36:00f1, class 0xff0000, INTx pin A, no capabilities
 * (but MSI-X with --msix).
 *   BAR0  4 KiB memory (32-bit, non-prefetchable)
 *   BAR1  256 bytes I/O space
 *   BAR2  8 KiB memory; its second page is offered for mmap() (a memfd,
 *         sealed against shrinking)
 * BAR0, BAR1 and BAR2 are scratch bytes: REGION_WRITE stores, REGION_READ
 * returns, at any offset and size within the region (else EINVAL).  They
 * and config space outlive a connection; everything else is per
 * connection.  BAR0's statistics window [0x800, 0x1000) is read-only
 * (writes are ignored, but counted); it starts zeroed on every connection:
 *   0x800 + K * 0x20, for io fd entry K (0..15):
 *     +0x00 u64 COUNT      eventfd, shadow: sum of the counter values read;
 *                          ioregionfd: commands received
 *     +0x08 u64 VALUE      ioregionfd: data of the last write; shadow: what
 *                          the shadow memory held when the eventfd last
 *                          fired; plain eventfd: 0
 *     +0x10 u32 SIZE       ioregionfd: size of the last command;
 *                          shadow: the entry's size
 *     +0x14 u32 OFFSET     ioregionfd: offset of the last command
 *     +0x18 u32 CLOSED     ioregionfd: how many of the entry's sockets the
 *                          client has closed (1 after one fetch and close)
 *     +0x1c u32 reserved
 *   0xc00 u64 WRITES       REGION_WRITEs to BAR0-2
 *   0xc08 u64 READS        REGION_READs of BAR0-2, before this one
 *   0xc10 u64 WR_OFFSET    offset of the last REGION_WRITE to BAR0-2
 *   0xc18 u64 WR_VALUE     its first 8 bytes, little-endian
 *   0xc20 u32 WR_REGION    its region index
 *   0xc24 u32 WR_SIZE      its size
 *   0xc28 u64 IOFDS        GET_REGION_IO_FDS requests
 *   0xc30 u64 RESETS       DEVICE_RESETs
 *   0xc38 u64 IOREGION_RD  ioregionfd read commands answered
 *   0xc40 u32 MIG_STATE    the migration FSM's device state (2: RUNNING)
 *   0xc44 u32 MIG_LOADS    migration streams applied (RESUMING -> STOP)
 *   0xc48 u64 MIG_SUM      FNV-1a hash of the extra migration state
 *   0xc50 u64 MIG_PRECOPY  PRE_COPY chunks handed out
 *   0xc58 u64 DMA_FILLS    --dma-fill fills done
 *   0xc60 u64 LOG_REPORTS  DMA_LOGGING_REPORTs answered
 *   0xc68 u64 MSIX_FIRED   --msix vectors signalled
 *
 * What arrives on an io fd lands in the region, as a REGION_WRITE would:
 * an ioregionfd write at the entry's offset plus the command's (a read is
 * answered from there), a shadow entry's value at the entry's offset.
 * Events on an fd shared with share=K count in entry K's slot; ioregionfd
 * commands go to the entry of the socket whose user_data they carry.
 *
 * A GET_REGION_IO_FDS reply carries an fd for each entry that has one of
 * its own, in entry order, then the region's shadow memory (a 4 KiB memfd)
 * if it has shadow entries: at most 8, checked at start.  Eventfds and
 * shadow memory are made at a region's first fetch and handed out again
 * on the next ones (after a reset, say); an ioregionfd socket is new on
 * every fetch, for while we held a copy of the client's end we could not
 * see the client close it.
 *
 * usage: vfio-user-raw-server [--iofd SPEC]... [--iofds-stride N]
 *            [--iofds-error ERRNO] [--fail-write OFFSET]
 *            [--hold-write-replies N] [--misbehave NAME] [--delay-ms N]
 *            [--log FILE] [--migration stop-copy|pre-copy]
 *            [--mig-fault NAME] [--mig-extra-kib N] [--mig-seed N]
 *            [--dma-logging] [--dma-fill KIB] [--dma-fill-precopy]
 *            [--msix N] [--dma-probe] [--stop-on-set-irqs] SOCKET_PATH
 * Serves one client after another until killed.
 *   --iofd REGION,TYPE[,KEY=VALUE]...  an io fd entry of BAR REGION (0-2);
 *       TYPE ioeventfd (wire type 0), ioregionfd (1) or shadow (2).
 *       Entries are numbered 0..15 in command-line order.  Keys (numbers
 *       in C syntax): offset=, size= (default 4), datamatch= (ioeventfd,
 *       shadow), posted=1 (ioregionfd), user_data= (ioregionfd, default
 *       the entry number), shadow_offset= (shadow, default 8 * the entry
 *       number); to send bad entries: fd_index=, type=, flags= (raw wire
 *       values), share=K (entry K's fd, K an earlier entry of the region).
 *   --iofds-stride N  entry stride in GET_REGION_IO_FDS replies: 40 by
 *       default, 48 if any entry is a shadow one; other values send the
 *       48-byte layout truncated or zero-padded to N.
 *   --iofds-error ERRNO  fail every GET_REGION_IO_FDS with ERRNO.
 *   --fail-write OFFSET  fail REGION_WRITEs to BAR0 at OFFSET with EIO.
 *   --hold-write-replies N  answer REGION_WRITEs to BARs only once N of
 *       them wait for their reply, or another message comes (then first,
 *       in order): a client that waits for each before it sends the next
 *       would time out.
 *   --misbehave NAME  misbehave as the row NAME of the table near the end
 *       of this file says (--misbehave help lists them): an error value
 *       that is no errno, headers and sizes that lie, fds where none
 *       belong, absurd region info, config space that breaks its rules,
 *       absurd IRQ info and io fd replies, DMA requests outside guest
 *       RAM, bad capabilities, and servers that flood, stall or go quiet.
 *       Each row is a hook or two: a setup (config space, options, fds),
 *       a change to the reply to one command, a change to a region's
 *       info, or what to do on its own once the client realized the
 *       device, which it takes to be once it answered the client's first
 *       GET_REGION_IO_FDS for BAR2.  Our own requests have ids from
 *       0x8000.
 *   --delay-ms N  answer every message N ms late.
 *   --log FILE  append a line per event: connect, disconnect, reset,
 *       "iofds region R count N nfds F", "iofds region R argsz-too-small
 *       need N", "eof entry K" (the client closed entry K's ioregionfd
 *       socket), and what this server refused; with a misbehaviour,
 *       "realized", "request CMD id N flags F" (one of ours), "reply to
 *       CMD id N: ok", "...: ok data 0xV" (DMA_READ, its first 8 bytes),
 *       "...: error E", "unexpected reply id N", "answered CMD id N"
 *       (with a delay), "unanswered CMD id N" (gone quiet), and "flood
 *       sent N answered M" at the end of a flood.
 *   --migration stop-copy|pre-copy  offer migration (DEVICE_FEATURE,
 *       MIG_DATA_READ/WRITE) with the STOP_COPY states only, or PRE_COPY
 *       too.  Without it, DEVICE_FEATURE fails with ENOTTY.
 *   --mig-fault NAME  refuse-resuming, refuse-stop-copy, truncate (the
 *       stream lacks its END record), excess (a MIG_DATA_READ reply says it
 *       has more than was asked), hang-stop-copy (answer nothing once in
 *       STOP_COPY), claim-p2p (offer VFIO_MIGRATION_P2P, which vfio-user
 *       does not use, and refuse its states as any other unknown state).
 *   --mig-extra-kib N  N KiB of device state besides the registers;
 *       --mig-seed N fills it with bytes made from N (else zeros).
 *   --dma-logging  with --migration, offer DMA logging (the DMA_LOGGING_*
 *       device features): pages --dma-fill writes directly are reported
 *       dirty, once each.
 *   --dma-fill KIB  a write of 8 bytes to BAR0 at 0x7f8 fills KIB KiB
 *       (1024 at most) of guest memory at 0x100000 with bytes made from
 *       the value written (each the top byte of the next step of
 *       v = v * 6364136223846793005 + 1442695040888963407, v starting at
 *       the value): directly where the client's DMA_MAP came with an fd
 *       (the server maps it), else with DMA_WRITE messages.
 *   --dma-fill-precopy  with --dma-fill, also fill (seed 0x1000 plus the
 *       PRE_COPY chunk count) at each PRE_COPY iteration, as a device
 *       that keeps working while the VM migrates.
 *   --msix N  an MSI-X capability (at 0x60) with N vectors (16 at most),
 *       the table at 0x800 and the PBA at 0xc00 of BAR2; a write of 4
 *       bytes to BAR0 at 0x7f0 signals the eventfd of the vector written.
 *   --dma-probe  a write of 8 bytes to BAR0 at 0x7e8 makes the server
 *       DMA_READ 8 bytes at the address written (its log says how the
 *       client answered).
 *   --stop-on-set-irqs  once sent SIGUSR1, stop (SIGSTOP ourselves) on
 *       the next DEVICE_SET_IRQS, before answering it: a client that waits
 *       for the reply waits from then on, until SIGCONT.
 * Bad options exit with status 2.
 *
 * Before each message from the client, the server reads every io fd: the
 * client signals them during the guest's access, before it sends any
 * later message, so the record follows the guest's order.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

#define RAW_VENDOR_ID       0x1b36  /* Red Hat's range for QEMU tests */
#define RAW_DEVICE_ID       0x00f1
#define RAW_CLASS           0xff0000u

/* The wire protocol, from the specification */
#define VU_VERSION                  1
#define VU_DMA_MAP                  2
#define VU_DMA_UNMAP                3
#define VU_DEVICE_GET_INFO          4
#define VU_DEVICE_GET_REGION_INFO   5
#define VU_DEVICE_GET_REGION_IO_FDS 6
#define VU_DEVICE_GET_IRQ_INFO      7
#define VU_DEVICE_SET_IRQS          8
#define VU_REGION_READ              9
#define VU_REGION_WRITE             10
#define VU_DMA_READ                 11
#define VU_DMA_WRITE                12
#define VU_DEVICE_RESET             13
#define VU_DEVICE_FEATURE           16
#define VU_MIG_DATA_READ            17
#define VU_MIG_DATA_WRITE           18

#define VU_TYPE_MASK        0xf
#define VU_TYPE_REQUEST     0x0
#define VU_TYPE_REPLY       0x1
#define VU_NO_REPLY         0x10
#define VU_ERROR            0x20

#define VU_HDR_SIZE         16
#define VU_MAJOR            0
#define VU_MINOR            1
#define MAX_MSG_FDS         8       /* what we announce */
#define MAX_SEND_FDS        16      /* what we send at most (misbehaving) */
#define MAX_XFER            (1024 * 1024)
#define MAX_MSG_SIZE        (VU_HDR_SIZE + 16 + MAX_XFER)
#define RECV_FDS            16      /* taken per recvmsg(); more are closed */
#define VU_CAPS_JSON \
    "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}"

/* Regions */
#define NR_REGIONS          VFIO_PCI_NUM_REGIONS
#define NR_IRQS             VFIO_PCI_NUM_IRQS
#define MAX_MSIX            16          /* --msix */
#define NR_BARS_USED        3
#define BAR0_SIZE           0x1000
#define BAR1_SIZE           0x100
#define BAR2_SIZE           0x2000
#define BAR2_MMAP_OFFSET    0x1000
#define BAR2_MMAP_SIZE      0x1000
#define CFG_SIZE            256     /* the config region, by default */
#define CFG_MAX             4096    /* what config space can hold */

/* Config space */
#define CFG_VENDOR_ID       0x00
#define CFG_DEVICE_ID       0x02
#define CFG_CLASS_REVISION  0x08
#define CFG_BAR0            0x10
#define CFG_BAR1            0x14
#define CFG_BAR2            0x18
#define CFG_STATUS          0x06
#define CFG_STATUS_CAP_LIST 0x10
#define CFG_ROM             0x30
#define CFG_CAP_PTR         0x34
#define CFG_INTERRUPT_PIN   0x3d
#define CFG_BAR_IO          0x1
#define CFG_ROM_ENABLE      0x1

/* BAR0's statistics window */
#define STATS_BASE          0x800
#define STATS_END           0x1000
#define ST_ENTRY(k)         (STATS_BASE + (k) * 0x20)
#define ST_COUNT            0x00
#define ST_VALUE            0x08
#define ST_SIZE             0x10
#define ST_OFFSET           0x14
#define ST_CLOSED           0x18
#define ST_WRITES           0xc00
#define ST_READS            0xc08
#define ST_WR_OFFSET        0xc10
#define ST_WR_VALUE         0xc18
#define ST_WR_REGION        0xc20
#define ST_WR_SIZE          0xc24
#define ST_IOFDS            0xc28
#define ST_RESETS           0xc30
#define ST_IOREGION_RD      0xc38
#define ST_MIG_STATE        0xc40
#define ST_MIG_LOADS        0xc44
#define ST_MIG_SUM          0xc48
#define ST_MIG_PRECOPY      0xc50
#define ST_DMA_FILLS        0xc58
#define ST_LOG_REPORTS      0xc60
#define ST_MSIX_FIRED       0xc68

/* GET_REGION_IO_FDS */
#define MAX_ENTRIES         16
#define IOFD_TYPE_IOEVENTFD 0
#define IOFD_TYPE_IOREGIONFD 1
#define IOFD_TYPE_SHADOW    2
#define IOFD_HDR_SIZE       16
#define ENTRY40_SIZE        40
#define ENTRY48_SIZE        48
#define MAX_STRIDE          1024
#define IOEVENTFD_DATAMATCH 0x1     /* KVM_IOEVENTFD_FLAG_DATAMATCH */
#define IOREGION_POSTED     0x2     /* KVM_IOREGION_POSTED_WRITES */
#define SHADOW_SIZE         4096
#define DEFAULT_ENTRY_SIZE  4

/* ioregionfd's wire protocol */
#define IOREGION_MSG_SIZE   32
#define IOREGION_OP_MASK    0xf
#define IOREGION_OP_READ    0
#define IOREGION_OP_WRITE   1
#define IOREGION_SIZE_SHIFT 4
#define IOREGION_SIZE_MASK  0x3
#define IOREGION_RESPONSE   0x40
#define MAX_IOREGION_SOCKS  64      /* open ones, over all fetches */
#define PARTIAL_WAIT_MS     1000

/* One --iofd, with every default filled in */
struct iofd_spec {
    unsigned region;
    unsigned type;          /* IOFD_TYPE_*: which fd, which fields */
    uint64_t offset;
    uint64_t size;
    uint64_t datamatch;
    uint64_t user_data;
    uint64_t shadow_offset;
    uint32_t wire_type;
    uint32_t flags;
    bool has_fd_index;
    uint32_t fd_index;
    int owner;              /* the entry whose fd this one uses */
};

static struct iofd_spec iofds[MAX_ENTRIES];
static unsigned nr_iofds;
static unsigned iofds_stride;
static uint32_t iofds_error;
static bool fail_write;
static uint64_t fail_write_offset;
static unsigned hold_write_replies;

/* Replies to REGION_WRITEs held back by --hold-write-replies */
#define MAX_HELD_REPLIES    256
static uint8_t held_replies[MAX_HELD_REPLIES][VU_HDR_SIZE + 16];
static unsigned nr_held_replies;
static FILE *log_file;

/* The device */
static uint8_t bar0[BAR0_SIZE];
static uint8_t bar1[BAR1_SIZE];
static uint8_t *bar2;
static int bar2_fd = -1;
static int bar2_offer_fd = -1;  /* sent for BAR2's mmap instead, if set */
static uint8_t config[CFG_MAX];
static uint32_t cfg_size = CFG_SIZE;
static uint32_t rom_mask;       /* ROM BAR's writable address bits */
static uint64_t rom_size;       /* region info of the ROM */

/* What the server does on its own, once the device is realized */
enum mode {
    MODE_SERVE,             /* answer what comes */
    MODE_FLOOD,             /* and send DMA_READs without end */
    MODE_DEAF,              /* read nothing more */
    MODE_MUTE,              /* read, answer nothing */
};

static enum mode mode;
static bool realized;
static unsigned delay_ms;
static const struct misbehaviour *misbehaviour;

/*
 * --dma-fill KIB: a write to BAR0 at FILL_REG fills KIB KiB of guest
 * memory at DMA_ADDR with bytes made from the value written, the way a
 * device fills a buffer: directly where the client's DMA_MAP came with an
 * fd (the pages are then logged as dirty, if the client asked for that),
 * else with DMA_WRITE messages, which only the client can log.
 */
#define FILL_REG            0x7f8
#define DMA_PROBE_REG       0x7e8       /* --dma-probe */
static bool dma_probe;
#define DMA_FILL_CHUNK      4096
static uint64_t dma_fill_size;
static bool dma_fill_precopy;       /* fill on each PRE_COPY iteration */
static void dma_fill(uint64_t seed);
static bool send_dma(uint16_t command, uint32_t flags, uint64_t addr,
                     uint64_t count, bool quiet);

/* The guest memory the client mapped (DMA_MAP), for our DMA requests */
#define MAX_DMA_MAPS        64
#define DMA_ADDR            0x100000    /* where our DMA goes, if mapped */
static struct {
    uint64_t iova, size;
    uint8_t *mem;           /* mmap() of its fd, if it came with one */
} dma_maps[MAX_DMA_MAPS];
static unsigned nr_dma_maps;

/* Requests we sent and whose reply we await */
#define MAX_PENDING         256
#define FLOOD_WINDOW        64
static struct {
    uint16_t id;
    uint16_t command;
    bool quiet;             /* a flood's: counted, not logged */
} pending[MAX_PENDING];
static unsigned nr_pending;
static uint16_t next_request_id = 0x8000;
static uint64_t flood_sent, flood_answered;

/* Our end of an ioregionfd socket the client holds the other end of */
struct ioregion_sock {
    int fd;                 /* -1: a free slot */
    int owner;
    uint8_t cmd[IOREGION_MSG_SIZE];
    size_t have;
};

/* The connection, and every fd that lives as long as it */
static struct {
    int sock;
    int intx_fd;
    int msix_fds[MAX_MSIX];
    int eventfds[MAX_ENTRIES];
    int shadow_fds[NR_BARS_USED];
    uint8_t *shadow[NR_BARS_USED];
    struct ioregion_sock socks[MAX_IOREGION_SOCKS];
} conn;

/* One request and its reply */
struct exchange {
    uint16_t id;
    uint16_t command;
    uint32_t flags;
    uint32_t error;         /* of a reply */
    uint8_t *req;           /* the payload */
    size_t req_len;
    int fds[RECV_FDS];      /* a handler keeps one by setting it to -1 */
    size_t nfds;
    uint8_t *rep;           /* the reply's payload */
    size_t rep_len;
    int rep_fds[MAX_SEND_FDS];
    bool rep_fd_close[MAX_SEND_FDS];    /* ours to close once sent */
    size_t rep_nfds;
    /* What a misbehaviour may change about sending the reply */
    uint8_t *hdr;           /* the reply's header, filled in */
    size_t send_len;        /* bytes to send, header included */
    unsigned copies;        /* how many times to send it */
    bool hangup;            /* close the connection once sent */
};

/* A region info reply, before it goes on the wire */
#define MAX_AREAS           2
struct region_reply {
    struct vfio_region_info info;
    struct vfio_region_sparse_mmap_area areas[MAX_AREAS];
    unsigned nr_areas;
};

/*
 * A misbehaviour (--misbehave NAME): a row of the table near the end of
 * this file, with the hooks it needs and their data in @a, @b, @c, @text.
 */
struct misbehaviour {
    const char *name;
    const char *what;
    /* Before serving: config space patches, options, fds */
    void (*setup)(const struct misbehaviour *m);
    /* Change the reply to @command, for region or IRQ @index - 1 (0: any) */
    uint16_t command;
    uint8_t index;
    void (*reply)(const struct misbehaviour *m, struct exchange *x);
    /* Change region @index - 1's info (0: any region) */
    void (*region)(const struct misbehaviour *m, struct region_reply *r);
    /* Once realized: what the server does on its own */
    void (*realized)(const struct misbehaviour *m);
    uint64_t a, b, c;
    const char *text;
};

#define INDEX(n)            ((n) + 1)

static uint8_t req_buf[MAX_MSG_SIZE];
static uint8_t rep_buf[MAX_MSG_SIZE];

static void log_event(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void log_event(const char *fmt, ...)
{
    va_list ap;

    if (!log_file) {
        return;
    }
    va_start(ap, fmt);
    vfprintf(log_file, fmt, ap);
    va_end(ap);
    fputc('\n', log_file);
    /* Tests read the log while we run */
    fflush(log_file);
}

/* Message fields are in host byte order (the protocol says so) */
static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static void wr16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, sizeof(v));
}

static void wr32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

static void wr64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, sizeof(v));
}

/* Device registers and ioregionfd messages are little-endian */
static uint64_t ld_le(const uint8_t *p, unsigned size)
{
    uint64_t v = 0;

    while (size--) {
        v = (v << 8) | p[size];
    }
    return v;
}

static void st_le(uint8_t *p, unsigned size, uint64_t v)
{
    unsigned i;

    for (i = 0; i < size; i++) {
        p[i] = v >> (8 * i);
    }
}

static void stat_set32(unsigned off, uint32_t v)
{
    st_le(bar0 + off, 4, v);
}

static void stat_set64(unsigned off, uint64_t v)
{
    st_le(bar0 + off, 8, v);
}

static void stat_add64(unsigned off, uint64_t v)
{
    stat_set64(off, ld_le(bar0 + off, 8) + v);
}

static void stat_add32(unsigned off, uint32_t v)
{
    stat_set32(off, ld_le(bar0 + off, 4) + v);
}

/*
 * Scratch regions
 */

static uint8_t *region_mem(unsigned region, uint64_t *size)
{
    switch (region) {
    case VFIO_PCI_BAR0_REGION_INDEX:
        *size = BAR0_SIZE;
        return bar0;
    case VFIO_PCI_BAR1_REGION_INDEX:
        *size = BAR1_SIZE;
        return bar1;
    case VFIO_PCI_BAR2_REGION_INDEX:
        *size = BAR2_SIZE;
        return bar2;
    default:
        *size = 0;
        return NULL;
    }
}

/* Is [offset, offset + len) inside scratch region @region? */
static bool region_fits(unsigned region, uint64_t offset, uint64_t len)
{
    uint64_t size;

    return region_mem(region, &size) && len <= size && offset <= size - len;
}

/* Store into a scratch region, in bounds; the statistics stay as they are */
static void scratch_store(unsigned region, uint64_t offset, const uint8_t *buf,
                          size_t len)
{
    uint64_t size;
    uint8_t *mem = region_mem(region, &size);
    size_t i;

    for (i = 0; i < len; i++) {
        uint64_t at = offset + i;

        if (region == VFIO_PCI_BAR0_REGION_INDEX &&
            at >= STATS_BASE && at < STATS_END) {
            continue;
        }
        mem[at] = buf[i];
    }
}

/*
 * Config space: the header of a type 0 function without capabilities.
 * What the guest writes is stored, except the identity of the device,
 * the status register and the ROM BAR: QEMU sizes the ROM by writing
 * ones and reading back, and a device without a ROM reads back zero.
 */
/*
 * --msix N: an MSI-X capability at CFG_MSIX with N vectors, its table and
 * PBA in BAR2's first page; a write to BAR0 at MSIX_FIRE_REG signals the
 * eventfd of the vector written, if the client gave it one.
 */
#define CFG_MSIX            0x60
#define CFG_MSIX_END        0x6c
#define MSIX_TABLE          0x800
#define MSIX_PBA            0xc00
#define MSIX_FIRE_REG       0x7f0
static unsigned msix_vectors;

static bool config_writable(unsigned off)
{
    if (msix_vectors && off >= CFG_MSIX && off < CFG_MSIX_END) {
        /* Message control's enable and function mask bits only */
        return off == CFG_MSIX + 3;
    }
    return (off >= 0x04 && off < 0x06) ||      /* command */
           (off >= 0x0c && off < 0x0e) ||      /* cache line, latency */
           (off >= 0x10 && off < 0x28) ||      /* BARs */
           (rom_mask && off >= CFG_ROM && off < CFG_ROM + 4) ||
           off == 0x3c ||                      /* interrupt line */
           off >= 0x40;
}

/* A ROM BAR keeps its enable bit and the address bits of its size */
static void config_rom_fixup(void)
{
    st_le(config + CFG_ROM, 4,
          ld_le(config + CFG_ROM, 4) & (rom_mask | CFG_ROM_ENABLE));
}

static void config_init(void)
{
    memset(config, 0, sizeof(config));
    st_le(config + CFG_VENDOR_ID, 2, RAW_VENDOR_ID);
    st_le(config + CFG_DEVICE_ID, 2, RAW_DEVICE_ID);
    st_le(config + CFG_CLASS_REVISION, 4, RAW_CLASS << 8);
    st_le(config + CFG_BAR0, 4, 0);
    st_le(config + CFG_BAR1, 4, CFG_BAR_IO);
    st_le(config + CFG_BAR2, 4, 0);
    config[CFG_INTERRUPT_PIN] = 1;
    if (msix_vectors) {
        config[CFG_STATUS] |= CFG_STATUS_CAP_LIST;
        config[CFG_CAP_PTR] = CFG_MSIX;
        config[CFG_MSIX] = 0x11;                    /* MSI-X */
        st_le(config + CFG_MSIX + 2, 2, msix_vectors - 1);
        st_le(config + CFG_MSIX + 4, 4, MSIX_TABLE | 2);
        st_le(config + CFG_MSIX + 8, 4, MSIX_PBA | 2);
    }
}

/*
 * Sending and receiving messages
 */

static void take_fds(struct msghdr *mh, struct exchange *x)
{
    struct cmsghdr *cmsg;

    if (mh->msg_flags & MSG_CTRUNC) {
        log_event("fds truncated: more than %d in one recvmsg", RECV_FDS);
    }
    for (cmsg = CMSG_FIRSTHDR(mh); cmsg; cmsg = CMSG_NXTHDR(mh, cmsg)) {
        size_t i, n;

        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < n; i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(fd));
            if (x->nfds < RECV_FDS) {
                x->fds[x->nfds++] = fd;
            } else {
                close(fd);
            }
        }
    }
}

/* Read exactly @len bytes; fds that come along go to @x */
static bool recv_full(int sock, uint8_t *buf, size_t len, struct exchange *x)
{
    size_t done = 0;

    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * RECV_FDS)];
            struct cmsghdr align;
        } control;
        struct iovec iov = { .iov_base = buf + done, .iov_len = len - done };
        struct msghdr mh = {
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = control.buf,
            .msg_controllen = sizeof(control.buf),
        };
        ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        take_fds(&mh, x);
        done += n;
    }
    return true;
}

static bool send_full(int sock, const uint8_t *buf, size_t len,
                      const int *fds, size_t nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_SEND_FDS)];
        struct cmsghdr align;
    } control;
    size_t done = 0;

    while (done < len) {
        struct iovec iov = {
            .iov_base = (uint8_t *)buf + done,
            .iov_len = len - done,
        };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t n;

        /* The fds travel with the first byte */
        if (!done && nfds) {
            struct cmsghdr *cmsg;

            memset(&control, 0, sizeof(control));
            mh.msg_control = control.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            cmsg = CMSG_FIRSTHDR(&mh);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
        }
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        done += n;
    }
    return true;
}

/*
 * ioregionfd sockets and eventfds
 */

static const char *const type_names[] = {
    [IOFD_TYPE_IOEVENTFD] = "ioeventfd",
    [IOFD_TYPE_IOREGIONFD] = "ioregionfd",
    [IOFD_TYPE_SHADOW] = "shadow",
};

static void ioregion_respond(struct ioregion_sock *s, uint64_t data)
{
    uint8_t resp[IOREGION_MSG_SIZE] = { 0 };
    size_t done = 0;

    st_le(resp, 8, data);
    while (done < sizeof(resp)) {
        ssize_t n = send(s->fd, resp + done, sizeof(resp) - done,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        struct pollfd pfd = { .fd = s->fd, .events = POLLOUT };

        if (n > 0) {
            done += n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN &&
            poll(&pfd, 1, PARTIAL_WAIT_MS) > 0) {
            continue;
        }
        log_event("ioregionfd response for entry %d lost: %s", s->owner,
                  n < 0 ? strerror(errno) : "short send");
        return;
    }
}

/* The entry, of those on @s's socket, that a command for @user_data is for */
static int ioregion_entry(struct ioregion_sock *s, uint64_t user_data)
{
    unsigned k;

    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].owner == s->owner &&
            iofds[k].type == IOFD_TYPE_IOREGIONFD &&
            iofds[k].user_data == user_data) {
            return k;
        }
    }
    return -1;
}

static void ioregion_command(struct ioregion_sock *s)
{
    uint32_t info = ld_le(s->cmd, 4);
    uint64_t user_data = ld_le(s->cmd + 8, 8);
    uint64_t offset = ld_le(s->cmd + 16, 8);
    uint64_t data = ld_le(s->cmd + 24, 8);
    unsigned op = info & IOREGION_OP_MASK;
    unsigned size = 1u << ((info >> IOREGION_SIZE_SHIFT) & IOREGION_SIZE_MASK);
    bool respond = info & IOREGION_RESPONSE;
    int k = ioregion_entry(s, user_data);
    const struct iofd_spec *e = k >= 0 ? &iofds[k] : NULL;
    uint8_t buf[8];

    if (!e || (op != IOREGION_OP_READ && op != IOREGION_OP_WRITE) ||
        (e->size && (offset > e->size || size > e->size - offset)) ||
        offset > UINT64_MAX - e->offset ||
        !region_fits(e->region, e->offset + offset, size)) {
        log_event("bad ioregionfd command on entry %d's socket: info 0x%x "
                  "user_data 0x%llx offset 0x%llx", s->owner, info,
                  (unsigned long long)user_data, (unsigned long long)offset);
        if (respond) {
            ioregion_respond(s, UINT64_MAX);
        }
        return;
    }

    stat_add64(ST_ENTRY(k) + ST_COUNT, 1);
    stat_set32(ST_ENTRY(k) + ST_SIZE, size);
    stat_set32(ST_ENTRY(k) + ST_OFFSET, offset);
    if (op == IOREGION_OP_WRITE) {
        if (size < 8) {
            data &= (1ull << (8 * size)) - 1;
        }
        stat_set64(ST_ENTRY(k) + ST_VALUE, data);
        st_le(buf, size, data);
        scratch_store(e->region, e->offset + offset, buf, size);
        if (respond) {
            ioregion_respond(s, 0);
        }
        return;
    }
    if (respond) {
        uint64_t rsize;
        uint8_t *mem = region_mem(e->region, &rsize);

        ioregion_respond(s, ld_le(mem + e->offset + offset, size));
        stat_add64(ST_IOREGION_RD, 1);
    }
}

static void ioregion_eof(struct ioregion_sock *s)
{
    unsigned k;

    /* Entries sharing the socket lost it as well */
    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].owner == s->owner) {
            stat_add32(ST_ENTRY(k) + ST_CLOSED, 1);
            log_event("eof entry %u", k);
        }
    }
    if (s->have) {
        log_event("entry %d's socket closed within a command", s->owner);
    }
    close(s->fd);
    s->fd = -1;
}

/*
 * Run every complete command waiting on @s.  The client writes a command
 * whole, so a part of one means the rest is on its way: wait for it, lest
 * a later message overtake it.
 */
static void ioregion_drain(struct ioregion_sock *s)
{
    while (s->fd >= 0) {
        ssize_t n = recv(s->fd, s->cmd + s->have, sizeof(s->cmd) - s->have,
                         MSG_DONTWAIT);

        if (n > 0) {
            s->have += n;
            if (s->have == sizeof(s->cmd)) {
                s->have = 0;
                ioregion_command(s);
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = s->fd, .events = POLLIN };

            if (s->have && poll(&pfd, 1, PARTIAL_WAIT_MS) > 0) {
                continue;
            }
            if (s->have) {
                log_event("entry %d: %zu bytes of a command, then nothing",
                          s->owner, s->have);
            }
            return;
        }
        ioregion_eof(s);
    }
}

/* What a shadow entry's memory holds, stored where the guest wrote it */
static void shadow_sample(unsigned k)
{
    const struct iofd_spec *e = &iofds[k];
    unsigned len = e->size < 8 ? e->size : 8;
    const uint8_t *shadow = conn.shadow[e->region];
    uint8_t buf[8];
    uint64_t value = 0;

    if (shadow && e->shadow_offset <= SHADOW_SIZE - len) {
        value = ld_le(shadow + e->shadow_offset, len);
    } else {
        log_event("entry %u: shadow offset 0x%llx is outside the shadow "
                  "memory", k, (unsigned long long)e->shadow_offset);
    }
    stat_set64(ST_ENTRY(k) + ST_VALUE, value);
    stat_set32(ST_ENTRY(k) + ST_SIZE, e->size);
    if (len && region_fits(e->region, e->offset, len)) {
        st_le(buf, len, value);
        scratch_store(e->region, e->offset, buf, len);
    }
}

/*
 * The client holds the same open file as we do, and may make it blocking:
 * read only when poll() says there is something.
 */
static void eventfd_drain(unsigned owner)
{
    uint64_t value;
    unsigned k;

    if (read(conn.eventfds[owner], &value, sizeof(value)) != sizeof(value)) {
        return;
    }
    stat_add64(ST_ENTRY(owner) + ST_COUNT, value);
    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].owner == (int)owner &&
            iofds[k].type == IOFD_TYPE_SHADOW) {
            shadow_sample(k);
        }
    }
}

#define NR_IO_FDS   (MAX_ENTRIES + MAX_IOREGION_SOCKS)

/*
 * The io fds to poll: eventfds, then our ends of ioregionfd sockets.
 * @what[i] is the entry of an eventfd, or -1 - the socket's slot.
 */
static nfds_t io_pollfds(struct pollfd *pfds, int *what)
{
    nfds_t n = 0;
    int i;

    for (i = 0; i < MAX_ENTRIES; i++) {
        if (conn.eventfds[i] >= 0) {
            pfds[n] = (struct pollfd) { .fd = conn.eventfds[i],
                                        .events = POLLIN };
            what[n++] = i;
        }
    }
    for (i = 0; i < MAX_IOREGION_SOCKS; i++) {
        if (conn.socks[i].fd >= 0) {
            pfds[n] = (struct pollfd) { .fd = conn.socks[i].fd,
                                        .events = POLLIN };
            what[n++] = -1 - i;
        }
    }
    return n;
}

/* Take in whatever every io fd holds, without blocking */
static void drain_io(void)
{
    struct pollfd pfds[NR_IO_FDS];
    int what[NR_IO_FDS];
    nfds_t n = io_pollfds(pfds, what), i;

    if (!n || poll(pfds, n, 0) <= 0) {
        return;
    }
    for (i = 0; i < n; i++) {
        if (!pfds[i].revents) {
            continue;
        }
        if (what[i] >= 0) {
            eventfd_drain(what[i]);
        } else {
            ioregion_drain(&conn.socks[-1 - what[i]]);
        }
    }
}

/*
 * Message handlers.  Each takes the request in @x and fills in the reply,
 * or returns a negative errno for an error reply.
 */

static int add_reply_fd(struct exchange *x, int fd, bool close_after)
{
    if (x->rep_nfds == MAX_SEND_FDS) {
        if (close_after) {
            close(fd);
        }
        return -1;
    }
    x->rep_fds[x->rep_nfds] = fd;
    x->rep_fd_close[x->rep_nfds] = close_after;
    return x->rep_nfds++;
}

/* The region or IRQ index of a request, for those that have one */
static int request_index(const struct exchange *x)
{
    switch (x->command) {
    case VU_DEVICE_GET_REGION_INFO:
    case VU_DEVICE_GET_REGION_IO_FDS:
    case VU_DEVICE_GET_IRQ_INFO:
    case VU_DEVICE_SET_IRQS:
    case VU_REGION_READ:
    case VU_REGION_WRITE:
        return x->req_len >= 12 ? (int)rd32(x->req + 8) : -1;
    default:
        return -1;
    }
}

static bool index_matches(uint8_t index, int actual)
{
    return !index || index - 1 == actual;
}

static int handle_version(struct exchange *x)
{
    static const char caps[] = VU_CAPS_JSON;

    wr16(x->rep, VU_MAJOR);
    wr16(x->rep + 2, VU_MINOR);
    memcpy(x->rep + 4, caps, sizeof(caps));
    x->rep_len = 4 + sizeof(caps);
    return 0;
}

/* DMA_MAP flags */
#define DMA_MAP_WRITE       (1u << 1)

static int handle_dma_map(struct exchange *x)
{
    uint32_t flags = rd32(x->req + 4);
    uint64_t offset = rd64(x->req + 8);
    uint64_t iova = rd64(x->req + 16), size = rd64(x->req + 24);
    void *mem = MAP_FAILED;

    log_event("dma_map iova 0x%llx size 0x%llx fds %zu",
              (unsigned long long)iova, (unsigned long long)size, x->nfds);
    if (nr_dma_maps == MAX_DMA_MAPS) {
        return 0;
    }
    /* Only --dma-fill writes guest memory itself; no need to map it else */
    if (dma_fill_size && x->nfds == 1 && (flags & DMA_MAP_WRITE) &&
        size && size <= SIZE_MAX) {
        mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, x->fds[0],
                   offset);
    }
    dma_maps[nr_dma_maps].iova = iova;
    dma_maps[nr_dma_maps].size = size;
    dma_maps[nr_dma_maps++].mem = mem == MAP_FAILED ? NULL : mem;
    return 0;
}

static void dma_map_drop(unsigned i)
{
    if (dma_maps[i].mem) {
        munmap(dma_maps[i].mem, dma_maps[i].size);
    }
    dma_maps[i] = dma_maps[--nr_dma_maps];
}

static int handle_dma_unmap(struct exchange *x)
{
    uint64_t iova = rd64(x->req + 8);
    unsigned i;

    log_event("dma_unmap iova 0x%llx size 0x%llx",
              (unsigned long long)iova,
              (unsigned long long)rd64(x->req + 16));
    for (i = 0; i < nr_dma_maps; i++) {
        if (dma_maps[i].iova == iova) {
            dma_map_drop(i);
            break;
        }
    }
    /* The reply echoes the request (the specification says so) */
    memcpy(x->rep, x->req, 24);
    x->rep_len = 24;
    return 0;
}

static int handle_device_get_info(struct exchange *x)
{
    if (rd32(x->req) < 16) {
        return -EINVAL;
    }
    wr32(x->rep, 16);
    wr32(x->rep + 4, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    wr32(x->rep + 8, NR_REGIONS);
    wr32(x->rep + 12, NR_IRQS);
    x->rep_len = 16;
    return 0;
}

static int handle_get_region_info(struct exchange *x)
{
    struct vfio_region_info_cap_sparse_mmap sparse = {
        .header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP,
        .header.version = 1,
    };
    struct region_reply r = { .info.argsz = sizeof(r.info) };
    struct vfio_region_info *info = &r.info;
    uint32_t argsz = rd32(x->req);
    size_t caps_len;
    uint64_t size;

    info->index = rd32(x->req + 8);
    if (argsz < sizeof(*info) || info->index >= NR_REGIONS) {
        return -EINVAL;
    }
    switch (info->index) {
    case VFIO_PCI_BAR0_REGION_INDEX:
    case VFIO_PCI_BAR1_REGION_INDEX:
    case VFIO_PCI_BAR2_REGION_INDEX:
    case VFIO_PCI_CONFIG_REGION_INDEX:
        info->flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        break;
    case VFIO_PCI_ROM_REGION_INDEX:
        info->flags = rom_size ? VFIO_REGION_INFO_FLAG_READ : 0;
        break;
    }
    if (info->index == VFIO_PCI_CONFIG_REGION_INDEX) {
        info->size = cfg_size;
    } else if (info->index == VFIO_PCI_ROM_REGION_INDEX) {
        info->size = rom_size;
    } else {
        region_mem(info->index, &size);
        info->size = size;
    }
    if (info->index == VFIO_PCI_BAR2_REGION_INDEX) {
        info->flags |= VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
        r.areas[0].offset = BAR2_MMAP_OFFSET;
        r.areas[0].size = BAR2_MMAP_SIZE;
        r.nr_areas = 1;
    }
    if (misbehaviour && misbehaviour->region &&
        index_matches(misbehaviour->index, info->index)) {
        misbehaviour->region(misbehaviour, &r);
    }

    x->rep_len = sizeof(*info);
    if (r.nr_areas) {
        /* As the kernel does: CAPS always, the list only if it fits */
        caps_len = sizeof(sparse) + r.nr_areas * sizeof(r.areas[0]);
        if (info->argsz == sizeof(*info)) {
            info->argsz += caps_len;
        }
        if (argsz >= sizeof(*info) + caps_len) {
            sparse.nr_areas = r.nr_areas;
            info->cap_offset = sizeof(*info);
            memcpy(x->rep + sizeof(*info), &sparse, sizeof(sparse));
            memcpy(x->rep + sizeof(*info) + sizeof(sparse), r.areas,
                   r.nr_areas * sizeof(r.areas[0]));
            x->rep_len += caps_len;
        }
        add_reply_fd(x, bar2_offer_fd >= 0 ? bar2_offer_fd : bar2_fd, false);
    }
    memcpy(x->rep, info, sizeof(*info));
    return 0;
}

/* The fds of one GET_REGION_IO_FDS reply */
struct iofds_reply {
    int fd_index[MAX_ENTRIES];  /* entry k's fd in the message, or -1 */
    int shadow_index;
    struct ioregion_sock *socks[MAX_ENTRIES];   /* made for this reply */
};

static unsigned iofds_stride_of(void)
{
    unsigned k;

    if (iofds_stride) {
        return iofds_stride;
    }
    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].type == IOFD_TYPE_SHADOW) {
            return ENTRY48_SIZE;
        }
    }
    return ENTRY40_SIZE;
}

/*
 * Entry @k as it goes on the wire.  With a stride of 40, the
 * specification's layout; with any other, newer libvfio-user's 48-byte
 * layout, cut or padded to the stride.
 */
static void iofds_put_entry(uint8_t *out, unsigned stride, unsigned k,
                            const struct iofds_reply *r)
{
    const struct iofd_spec *e = &iofds[k];
    uint8_t ent[ENTRY48_SIZE] = { 0 };

    wr64(ent, e->offset);
    wr64(ent + 8, e->size);
    wr32(ent + 16, e->has_fd_index ? e->fd_index
                                   : (uint32_t)r->fd_index[e->owner]);
    wr32(ent + 20, e->wire_type);
    wr32(ent + 24, e->flags);
    if (stride == ENTRY40_SIZE) {
        wr64(ent + 32, e->type == IOFD_TYPE_IOREGIONFD ? e->user_data
                                                       : e->datamatch);
        memcpy(out, ent, ENTRY40_SIZE);
        return;
    }
    switch (e->type) {
    case IOFD_TYPE_IOEVENTFD:
        wr64(ent + 40, e->datamatch);
        break;
    case IOFD_TYPE_SHADOW:
        wr32(ent + 28, r->shadow_index);
        wr64(ent + 32, e->shadow_offset);
        wr64(ent + 40, e->datamatch);
        break;
    case IOFD_TYPE_IOREGIONFD:
        wr64(ent + 32, e->user_data);
        break;
    }
    memcpy(out, ent, stride < ENTRY48_SIZE ? stride : ENTRY48_SIZE);
}

static struct ioregion_sock *ioregion_slot(void)
{
    unsigned i;

    for (i = 0; i < MAX_IOREGION_SOCKS; i++) {
        if (conn.socks[i].fd < 0) {
            return &conn.socks[i];
        }
    }
    return NULL;
}

/*
 * The fd of entry @k, which owns one, into the reply.  Eventfds are made
 * once per connection, so a client fetching again gets the same ones; an
 * ioregionfd socket is new each time, for we cannot keep the client's end
 * and still see it close.  Returns 0 or a negative errno.
 */
static int iofds_add_fd(struct exchange *x, unsigned k, struct iofds_reply *r)
{
    struct ioregion_sock *s;
    int sv[2];

    if (iofds[k].type != IOFD_TYPE_IOREGIONFD) {
        if (conn.eventfds[k] < 0) {
            conn.eventfds[k] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            if (conn.eventfds[k] < 0) {
                return -errno;
            }
        }
        r->fd_index[k] = add_reply_fd(x, conn.eventfds[k], false);
        return 0;
    }
    s = ioregion_slot();
    if (!s) {
        log_event("entry %u: more than %d ioregionfd sockets open", k,
                  MAX_IOREGION_SOCKS);
        return -ENOSPC;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return -errno;
    }
    /* Only our end: the client's works as it chooses */
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    s->fd = sv[0];
    s->owner = k;
    s->have = 0;
    r->socks[k] = s;
    r->fd_index[k] = add_reply_fd(x, sv[1], true);
    return 0;
}

static int iofds_add_shadow(struct exchange *x, unsigned region,
                            struct iofds_reply *r)
{
    int fd = conn.shadow_fds[region];

    if (fd < 0) {
        void *mem = MAP_FAILED;

        fd = memfd_create("vfio-user-raw-shadow", MFD_CLOEXEC);
        if (fd < 0) {
            return -errno;
        }
        if (ftruncate(fd, SHADOW_SIZE) == 0) {
            mem = mmap(NULL, SHADOW_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                       fd, 0);
        }
        if (mem == MAP_FAILED) {
            int ret = -errno;

            close(fd);
            return ret;
        }
        conn.shadow_fds[region] = fd;
        conn.shadow[region] = mem;
    }
    r->shadow_index = add_reply_fd(x, fd, false);
    return 0;
}

static int handle_get_region_io_fds(struct exchange *x)
{
    uint32_t argsz = rd32(x->req);
    uint32_t index = rd32(x->req + 8);
    unsigned stride = iofds_stride_of();
    struct iofds_reply r;
    unsigned k, count = 0, n = 0;
    bool shadow = false;
    uint32_t need;
    int ret;

    stat_add64(ST_IOFDS, 1);
    if (iofds_error) {
        log_event("iofds region %u error %u", index, iofds_error);
        return -(int)iofds_error;
    }
    if (index >= NR_REGIONS) {
        return -EINVAL;
    }
    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].region == index) {
            count++;
            shadow |= iofds[k].type == IOFD_TYPE_SHADOW;
        }
    }
    need = IOFD_HDR_SIZE + count * stride;
    wr32(x->rep, need);
    wr32(x->rep + 4, 0);
    wr32(x->rep + 8, index);
    wr32(x->rep + 12, count);
    x->rep_len = IOFD_HDR_SIZE;
    if (argsz < need) {
        log_event("iofds region %u argsz-too-small need %u", index, need);
        return 0;
    }

    memset(&r, 0, sizeof(r));
    memset(r.fd_index, -1, sizeof(r.fd_index));
    for (k = 0, ret = 0; k < nr_iofds && !ret; k++) {
        if (iofds[k].region == index && iofds[k].owner == (int)k) {
            ret = iofds_add_fd(x, k, &r);
        }
    }
    if (shadow && !ret) {
        ret = iofds_add_shadow(x, index, &r);
    }
    if (ret) {
        /* The client never saw these: no EOF to report */
        for (k = 0; k < nr_iofds; k++) {
            if (r.socks[k]) {
                close(r.socks[k]->fd);
                r.socks[k]->fd = -1;
            }
        }
        log_event("iofds region %u failed: %s", index, strerror(-ret));
        return ret;
    }
    memset(x->rep + IOFD_HDR_SIZE, 0, count * stride);
    for (k = 0; k < nr_iofds; k++) {
        if (iofds[k].region == index) {
            iofds_put_entry(x->rep + IOFD_HDR_SIZE + n * stride, stride, k,
                            &r);
            n++;
        }
    }
    x->rep_len = need;
    log_event("iofds region %u count %u nfds %zu", index, count, x->rep_nfds);
    return 0;
}

static int handle_get_irq_info(struct exchange *x)
{
    uint32_t index = rd32(x->req + 8);
    uint32_t count = 0;

    if (rd32(x->req) < 16 || index >= NR_IRQS) {
        return -EINVAL;
    }
    if (index == VFIO_PCI_INTX_IRQ_INDEX) {
        count = 1;
    } else if (index == VFIO_PCI_MSIX_IRQ_INDEX) {
        count = msix_vectors;
    }
    wr32(x->rep, 16);
    wr32(x->rep + 4, count ? VFIO_IRQ_INFO_EVENTFD : 0);
    wr32(x->rep + 8, index);
    wr32(x->rep + 12, count);
    x->rep_len = 16;
    return 0;
}

/* MSI-X triggers: fds for start..start + count, none to drop them */
static int set_msix(struct exchange *x, uint32_t flags, uint32_t start,
                    uint32_t count)
{
    uint32_t i;

    if (!(flags & VFIO_IRQ_SET_ACTION_TRIGGER)) {
        return 0;
    }
    if ((flags & VFIO_IRQ_SET_DATA_NONE) && !count) {
        start = 0;
        count = msix_vectors;
    } else if (!(flags & VFIO_IRQ_SET_DATA_EVENTFD)) {
        return 0;
    }
    if (start > msix_vectors || count > msix_vectors - start ||
        (x->nfds && x->nfds != count)) {
        return -EINVAL;
    }
    for (i = 0; i < count; i++) {
        if (conn.msix_fds[start + i] >= 0) {
            close(conn.msix_fds[start + i]);
        }
        conn.msix_fds[start + i] = -1;
        if (x->nfds) {
            conn.msix_fds[start + i] = x->fds[i];
            x->fds[i] = -1;
        }
    }
    return 0;
}

static void msix_fire(uint64_t vector)
{
    uint64_t one = 1;

    if (vector < msix_vectors && conn.msix_fds[vector] >= 0 &&
        write(conn.msix_fds[vector], &one, sizeof(one)) == sizeof(one)) {
        stat_add64(ST_MSIX_FIRED, 1);
    }
}

/* --stop-on-set-irqs: SIGUSR1 arms it */
static bool stop_on_set_irqs;
static volatile sig_atomic_t stop_armed;

static void arm_stop(int sig)
{
    stop_armed = 1;
}

static int handle_set_irqs(struct exchange *x)
{
    uint32_t flags = rd32(x->req + 4);
    uint32_t index = rd32(x->req + 8);
    uint32_t start = rd32(x->req + 12);
    uint32_t count = rd32(x->req + 16);

    log_event("set_irqs index %u flags 0x%x start %u count %u fds %zu",
              index, flags, start, count, x->nfds);
    if (stop_armed) {
        stop_armed = 0;
        log_event("stopped on set_irqs");
        raise(SIGSTOP);
    }
    if (index >= NR_IRQS) {
        return -EINVAL;
    }
    if (index == VFIO_PCI_MSIX_IRQ_INDEX && msix_vectors) {
        return set_msix(x, flags, start, count);
    }
    if (index != VFIO_PCI_INTX_IRQ_INDEX ||
        !(flags & VFIO_IRQ_SET_ACTION_TRIGGER)) {
        return 0;
    }
    /* Keep INTx's trigger eventfd; no fd (or no data, count 0) drops it */
    if ((flags & VFIO_IRQ_SET_DATA_EVENTFD) ||
        ((flags & VFIO_IRQ_SET_DATA_NONE) && !count)) {
        if (conn.intx_fd >= 0) {
            close(conn.intx_fd);
            conn.intx_fd = -1;
        }
        if ((flags & VFIO_IRQ_SET_DATA_EVENTFD) && x->nfds) {
            conn.intx_fd = x->fds[0];
            x->fds[0] = -1;
        }
    }
    return 0;
}

static int handle_region_rw(struct exchange *x)
{
    bool write = x->command == VU_REGION_WRITE;
    uint64_t offset = rd64(x->req);
    uint32_t region = rd32(x->req + 8);
    uint32_t count = rd32(x->req + 12);
    uint8_t *mem;
    uint64_t size;
    uint32_t i;

    if (region == VFIO_PCI_CONFIG_REGION_INDEX) {
        mem = config;
        size = cfg_size < CFG_MAX ? cfg_size : CFG_MAX;
    } else {
        mem = region_mem(region, &size);
    }
    if (!mem || count > MAX_XFER || count > size || offset > size - count ||
        (write && x->req_len - 16 < count)) {
        return -EINVAL;
    }
    memcpy(x->rep, x->req, 16);
    x->rep_len = 16;
    if (!write) {
        memcpy(x->rep + 16, mem + offset, count);
        x->rep_len += count;
        if (mem != config) {
            stat_add64(ST_READS, 1);
        }
        return 0;
    }
    if (mem == config) {
        for (i = 0; i < count; i++) {
            if (config_writable(offset + i)) {
                config[offset + i] = x->req[16 + i];
            }
        }
        config_rom_fixup();
        return 0;
    }
    if (fail_write && region == 0 && offset == fail_write_offset) {
        return -EIO;
    }
    scratch_store(region, offset, x->req + 16, count);
    if (dma_fill_size && region == 0 && offset == FILL_REG && count == 8) {
        dma_fill(rd64(x->req + 16));
    }
    if (msix_vectors && region == 0 && offset == MSIX_FIRE_REG && count == 4) {
        msix_fire(rd32(x->req + 16));
    }
    if (dma_probe && region == 0 && offset == DMA_PROBE_REG && count == 8) {
        send_dma(VU_DMA_READ, 0, rd64(x->req + 16), 8, false);
    }
    stat_add64(ST_WRITES, 1);
    stat_set64(ST_WR_OFFSET, offset);
    stat_set64(ST_WR_VALUE, ld_le(x->req + 16, count < 8 ? count : 8));
    stat_set32(ST_WR_REGION, region);
    stat_set32(ST_WR_SIZE, count);
    return 0;
}

/*
 * Migration (the specification's v2, with --migration): the device state
 * is BAR0's scratch bytes, BAR1, BAR2, config space and, with
 * --mig-extra-kib, a buffer of that size.  The migration data is a stream
 * of records (struct mig_record, then its bytes): the extra buffer in
 * chunks, then the registers, then an END record.  In PRE_COPY, each
 * MIG_DATA_READ hands out at most the rest of one chunk of the extra
 * buffer, so that the client needs one iteration per chunk; STOP_COPY adds
 * what was not sent yet and the registers.  RESUMING takes the stream in
 * and applies it when the device leaves RESUMING: a stream without its
 * END record, or a record out of bounds, fails that arc.
 */
#define MIG_FLAG_STOP_COPY      (1u << 0)
#define MIG_FLAG_P2P            (1u << 1)
#define MIG_FLAG_PRE_COPY       (1u << 2)
#define MIG_CHUNK               (64 * 1024)
#define MIG_MAX_EXTRA_KIB       (256 * 1024)
#define MIG_REC_EXTRA           1
#define MIG_REC_BAR0            2
#define MIG_REC_BAR1            3
#define MIG_REC_BAR2            4
#define MIG_REC_CONFIG          5
#define MIG_REC_END             6
#define MIG_REC_SIZE            16

/* Device features (the kernel's numbering) */
#define FEATURE_MASK            0xffffu
#define FEATURE_GET             (1u << 16)
#define FEATURE_SET             (1u << 17)
#define FEATURE_PROBE           (1u << 18)
#define FEATURE_MIGRATION       1
#define FEATURE_MIG_DEVICE_STATE 2
#define FEATURE_DMA_LOGGING_START 6
#define FEATURE_DMA_LOGGING_STOP 7
#define FEATURE_DMA_LOGGING_REPORT 8

enum mig_state {
    MIG_ERROR = 0,
    MIG_STOP = 1,
    MIG_RUNNING = 2,
    MIG_STOP_COPY = 3,
    MIG_RESUMING = 4,
    MIG_PRE_COPY = 6,
    MIG_NR_STATES = 8,
};

/* --mig-fault */
enum mig_fault {
    MIG_FAULT_NONE,
    MIG_FAULT_REFUSE_RESUMING,  /* fail STOP -> RESUMING */
    MIG_FAULT_REFUSE_STOP_COPY, /* fail the arcs into STOP_COPY */
    MIG_FAULT_TRUNCATE,         /* leave the END record out */
    MIG_FAULT_EXCESS,           /* say a read has more than was asked */
    MIG_FAULT_HANG_STOP_COPY,   /* go quiet on the way into STOP_COPY */
    MIG_FAULT_CLAIM_P2P,        /* claim the P2P states, and refuse them */
};

static const char *const mig_fault_names[] = {
    [MIG_FAULT_NONE] = "none",
    [MIG_FAULT_REFUSE_RESUMING] = "refuse-resuming",
    [MIG_FAULT_REFUSE_STOP_COPY] = "refuse-stop-copy",
    [MIG_FAULT_TRUNCATE] = "truncate",
    [MIG_FAULT_EXCESS] = "excess",
    [MIG_FAULT_HANG_STOP_COPY] = "hang-stop-copy",
    [MIG_FAULT_CLAIM_P2P] = "claim-p2p",
};

static uint32_t mig_flags;          /* 0: no migration */
static enum mig_fault mig_fault;
static uint8_t *mig_extra;
static size_t mig_extra_size;

/* Per connection */
static enum mig_state mig_state;
static size_t mig_cursor;           /* extra bytes already in the stream */
static uint8_t *mig_out;            /* the outgoing stream, not read yet */
static size_t mig_out_len, mig_out_pos, mig_out_cap;
static size_t mig_rec_end;          /* PRE_COPY: where this chunk ends */
static uint8_t *mig_in;             /* RESUMING: what came so far */
static size_t mig_in_len, mig_in_cap;

static void mig_grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need > *cap) {
        *cap = need * 2;
        *buf = realloc(*buf, *cap);
        if (!*buf) {
            perror("vfio-user-raw-server: migration buffer");
            exit(EXIT_FAILURE);
        }
    }
}

static uint64_t mig_extra_sum(void)
{
    uint64_t h = 0xcbf29ce484222325ull;     /* FNV-1a */
    size_t i;

    for (i = 0; i < mig_extra_size; i++) {
        h = (h ^ mig_extra[i]) * 0x100000001b3ull;
    }
    return h;
}

/* Hashing MiBs of state at each state change would slow migration down */
static bool mig_sum_stale = true;
static uint64_t mig_sum;

static void mig_stats(void)
{
    stat_set32(ST_MIG_STATE, mig_state);
    if (mig_sum_stale) {
        mig_sum = mig_extra_sum();
        mig_sum_stale = false;
    }
    stat_set64(ST_MIG_SUM, mig_sum);
}

static void mig_put(unsigned kind, uint64_t offset, const uint8_t *data,
                    uint32_t len)
{
    uint8_t *rec;

    mig_grow(&mig_out, &mig_out_cap, mig_out_len + MIG_REC_SIZE + len);
    rec = mig_out + mig_out_len;
    wr32(rec, kind);
    wr32(rec + 4, len);
    wr64(rec + 8, offset);
    if (len) {
        memcpy(rec + MIG_REC_SIZE, data, len);
    }
    mig_out_len += MIG_REC_SIZE + len;
}

static void mig_out_reset(void)
{
    mig_out_len = mig_out_pos = mig_rec_end = 0;
}

/* The next chunk of the extra buffer, as one record */
static bool mig_put_chunk(void)
{
    uint32_t len;

    if (mig_cursor >= mig_extra_size) {
        return false;
    }
    len = mig_extra_size - mig_cursor < MIG_CHUNK ?
          mig_extra_size - mig_cursor : MIG_CHUNK;
    mig_put(MIG_REC_EXTRA, mig_cursor, mig_extra + mig_cursor, len);
    mig_cursor += len;
    return true;
}

/* Into STOP_COPY: the rest of the state, registers last */
static void mig_put_final(void)
{
    while (mig_put_chunk()) {
        continue;
    }
    mig_put(MIG_REC_BAR0, 0, bar0, STATS_BASE);
    mig_put(MIG_REC_BAR1, 0, bar1, BAR1_SIZE);
    mig_put(MIG_REC_BAR2, 0, bar2, BAR2_SIZE);
    mig_put(MIG_REC_CONFIG, 0, config, cfg_size);
    if (mig_fault != MIG_FAULT_TRUNCATE) {
        mig_put(MIG_REC_END, 0, NULL, 0);
    }
    mig_rec_end = mig_out_len;
}

/* Out of RESUMING: check the whole stream, then apply it */
static int mig_apply(bool apply)
{
    size_t pos = 0;

    while (pos + MIG_REC_SIZE <= mig_in_len) {
        const uint8_t *rec = mig_in + pos;
        uint32_t kind = rd32(rec), len = rd32(rec + 4);
        uint64_t offset = rd64(rec + 8), size;
        uint8_t *mem;

        if (len > mig_in_len - pos - MIG_REC_SIZE) {
            break;
        }
        switch (kind) {
        case MIG_REC_EXTRA:
            mem = mig_extra;
            size = mig_extra_size;
            mig_sum_stale |= apply;
            break;
        case MIG_REC_BAR0:
            mem = bar0;
            size = STATS_BASE;
            break;
        case MIG_REC_BAR1:
            mem = bar1;
            size = BAR1_SIZE;
            break;
        case MIG_REC_BAR2:
            mem = bar2;
            size = BAR2_SIZE;
            break;
        case MIG_REC_CONFIG:
            mem = config;
            size = cfg_size;
            break;
        case MIG_REC_END:
            return pos + MIG_REC_SIZE == mig_in_len ? 0 : -EINVAL;
        default:
            log_event("migration: record kind %u", kind);
            return -EINVAL;
        }
        if (len > size || offset > size - len) {
            log_event("migration: record %u out of bounds", kind);
            return -EINVAL;
        }
        if (apply) {
            memcpy(mem + offset, rec + MIG_REC_SIZE, len);
        }
        pos += MIG_REC_SIZE + len;
    }
    log_event("migration: stream of %zu bytes ends without END",
              mig_in_len);
    return -EINVAL;
}

/* One arc of the FSM (the specification's direct transitions) */
static int mig_arc(enum mig_state from, enum mig_state to)
{
    int ret;

    switch (from * MIG_NR_STATES + to) {
    case MIG_RUNNING * MIG_NR_STATES + MIG_STOP:
    case MIG_STOP * MIG_NR_STATES + MIG_RUNNING:
        return 0;
    case MIG_STOP_COPY * MIG_NR_STATES + MIG_STOP:
    case MIG_PRE_COPY * MIG_NR_STATES + MIG_RUNNING:
        mig_out_reset();
        return 0;
    case MIG_RUNNING * MIG_NR_STATES + MIG_PRE_COPY:
        mig_out_reset();
        mig_cursor = 0;
        return 0;
    case MIG_STOP * MIG_NR_STATES + MIG_STOP_COPY:
        mig_out_reset();
        mig_cursor = 0;
        /* fall through */
    case MIG_PRE_COPY * MIG_NR_STATES + MIG_STOP_COPY:
        if (mig_fault == MIG_FAULT_REFUSE_STOP_COPY) {
            return -EINVAL;
        }
        if (mig_fault == MIG_FAULT_HANG_STOP_COPY) {
            log_event("migration: hanging");
            mode = MODE_MUTE;
        }
        mig_put_final();
        return 0;
    case MIG_STOP * MIG_NR_STATES + MIG_RESUMING:
        if (mig_fault == MIG_FAULT_REFUSE_RESUMING) {
            return -EINVAL;
        }
        mig_in_len = 0;
        return 0;
    case MIG_RESUMING * MIG_NR_STATES + MIG_STOP:
        ret = mig_apply(false);
        if (ret == 0) {
            mig_apply(true);
            config_rom_fixup();
            stat_add32(ST_MIG_LOADS, 1);
        }
        mig_in_len = 0;
        return ret;
    default:
        return -EINVAL;
    }
}

static bool mig_state_valid(uint32_t s)
{
    return s == MIG_STOP || s == MIG_RUNNING || s == MIG_STOP_COPY ||
           s == MIG_RESUMING ||
           (s == MIG_PRE_COPY && (mig_flags & MIG_FLAG_PRE_COPY));
}

static bool mig_saving(enum mig_state s)
{
    return s == MIG_STOP_COPY || s == MIG_PRE_COPY;
}

/*
 * Move to @to by the shortest path of direct arcs whose interior states
 * are not saving ones (a breadth-first search over the few states).
 */
static int mig_set_state(uint32_t to)
{
    static const enum mig_state all[] = {
        MIG_STOP, MIG_RUNNING, MIG_STOP_COPY, MIG_RESUMING, MIG_PRE_COPY,
    };
    int prev[MIG_NR_STATES], queue[MIG_NR_STATES], path[MIG_NR_STATES];
    unsigned head = 0, tail = 0, n = 0, i;
    int s, ret;

    if (!mig_state_valid(to) || mig_state == MIG_ERROR) {
        log_event("refused migration state %u", to);
        return -EINVAL;
    }
    for (i = 0; i < MIG_NR_STATES; i++) {
        prev[i] = -1;
    }
    prev[mig_state] = mig_state;
    queue[tail++] = mig_state;
    while (head < tail && prev[to] < 0) {
        s = queue[head++];
        if (s != (int)mig_state && mig_saving(s)) {
            continue;
        }
        for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
            enum mig_state t = all[i];
            bool arc;

            switch (s * MIG_NR_STATES + t) {
            case MIG_RUNNING * MIG_NR_STATES + MIG_STOP:
            case MIG_STOP_COPY * MIG_NR_STATES + MIG_STOP:
            case MIG_RESUMING * MIG_NR_STATES + MIG_STOP:
            case MIG_PRE_COPY * MIG_NR_STATES + MIG_RUNNING:
            case MIG_STOP * MIG_NR_STATES + MIG_RUNNING:
            case MIG_RUNNING * MIG_NR_STATES + MIG_PRE_COPY:
            case MIG_STOP * MIG_NR_STATES + MIG_STOP_COPY:
            case MIG_PRE_COPY * MIG_NR_STATES + MIG_STOP_COPY:
            case MIG_STOP * MIG_NR_STATES + MIG_RESUMING:
                arc = mig_state_valid(t);
                break;
            default:
                arc = false;
            }
            if (arc && prev[t] < 0) {
                prev[t] = s;
                queue[tail++] = t;
            }
        }
    }
    if (prev[to] < 0) {
        return -EINVAL;
    }
    for (s = to; s != (int)mig_state; s = prev[s]) {
        path[n++] = s;
    }
    while (n--) {
        ret = mig_arc(mig_state, path[n]);
        log_event("migration: %u -> %u%s", mig_state, path[n],
                  ret ? " refused" : "");
        if (ret) {
            mig_stats();
            return ret;
        }
        mig_state = path[n];
    }
    mig_stats();
    return 0;
}

/*
 * DMA logging (--dma-logging): a bitmap per range the client asked for,
 * a bit per page, set where --dma-fill wrote guest memory directly.
 */
#define MAX_LOG_RANGES      16
#define MAX_LOG_BITMAP      (64 * 1024 * 1024)
static bool dma_logging;
static struct {
    uint64_t iova, length;
    uint64_t *bitmap;
} log_ranges[MAX_LOG_RANGES];
static unsigned nr_log_ranges;
static uint64_t log_page_size;

static void dma_logging_stop(void)
{
    while (nr_log_ranges) {
        free(log_ranges[--nr_log_ranges].bitmap);
    }
}

static void dma_log_dirty(uint64_t addr, uint64_t len)
{
    unsigned i;
    uint64_t a;

    for (i = 0; i < nr_log_ranges; i++) {
        for (a = addr & ~(log_page_size - 1); a < addr + len;
             a += log_page_size) {
            if (a >= log_ranges[i].iova &&
                a - log_ranges[i].iova < log_ranges[i].length) {
                uint64_t page = (a - log_ranges[i].iova) / log_page_size;

                log_ranges[i].bitmap[page / 64] |= 1ull << (page % 64);
            }
        }
    }
}

/* START: page_size, num_ranges, reserved, then {iova, length} ranges */
static int dma_logging_start(struct exchange *x)
{
    uint64_t page_size, total = 0;
    uint32_t n, i;

    if (x->req_len < 24) {
        return -EINVAL;
    }
    page_size = rd64(x->req + 8);
    n = rd32(x->req + 16);
    if (nr_log_ranges) {
        return -EBUSY;
    }
    if (!n || n > MAX_LOG_RANGES || x->req_len - 24 < n * 16ull ||
        page_size < 4096 || (page_size & (page_size - 1))) {
        return -EINVAL;
    }
    for (i = 0; i < n; i++) {
        uint64_t length = rd64(x->req + 24 + i * 16 + 8);
        uint64_t words = (length / page_size + 63) / 64;

        total += words * 8;
        if (!length || length % page_size || total > MAX_LOG_BITMAP) {
            dma_logging_stop();
            return -EINVAL;
        }
        log_ranges[i].iova = rd64(x->req + 24 + i * 16);
        log_ranges[i].length = length;
        log_ranges[i].bitmap = calloc(words, 8);
        if (!log_ranges[i].bitmap) {
            dma_logging_stop();
            return -ENOMEM;
        }
        nr_log_ranges = i + 1;
    }
    log_page_size = page_size;
    log_event("dma logging start ranges %u page size 0x%llx", n,
              (unsigned long long)page_size);
    memcpy(x->rep + 8, x->req + 8, 16);
    x->rep_len = 24;
    wr32(x->rep, x->rep_len);
    return 0;
}

/* REPORT: iova, length, page_size; the reply adds the bitmap, cleared */
static int dma_logging_report(struct exchange *x)
{
    uint64_t iova, length, page_size, first, pages, p;
    uint32_t argsz = rd32(x->req);
    unsigned i;

    if (x->req_len < 32) {
        return -EINVAL;
    }
    iova = rd64(x->req + 8);
    length = rd64(x->req + 16);
    page_size = rd64(x->req + 24);
    for (i = 0; i < nr_log_ranges; i++) {
        if (iova >= log_ranges[i].iova &&
            iova - log_ranges[i].iova < log_ranges[i].length &&
            length <= log_ranges[i].length - (iova - log_ranges[i].iova)) {
            break;
        }
    }
    if (i == nr_log_ranges || page_size != log_page_size || !length ||
        (iova - log_ranges[i].iova) % page_size) {
        return -EINVAL;
    }
    /* The last page may be partial, as in the kernel */
    pages = (length + page_size - 1) / page_size;
    if ((pages + 63) / 64 * 8 > MAX_XFER - 32 ||
        argsz < 32 + (pages + 63) / 64 * 8) {
        return -EINVAL;
    }
    first = (iova - log_ranges[i].iova) / page_size;
    memcpy(x->rep + 8, x->req + 8, 24);
    memset(x->rep + 32, 0, (pages + 63) / 64 * 8);
    for (p = 0; p < pages; p++) {
        uint64_t *word = &log_ranges[i].bitmap[(first + p) / 64];
        uint64_t bit = 1ull << ((first + p) % 64);

        if (*word & bit) {
            x->rep[32 + p / 8] |= 1 << (p % 8);
            *word &= ~bit;
        }
    }
    x->rep_len = 32 + (pages + 63) / 64 * 8;
    wr32(x->rep, x->rep_len);
    stat_add64(ST_LOG_REPORTS, 1);
    return 0;
}

static int handle_device_feature(struct exchange *x)
{
    uint32_t flags = rd32(x->req + 4);
    uint32_t feature = flags & FEATURE_MASK;
    bool logging = feature == FEATURE_DMA_LOGGING_START ||
                   feature == FEATURE_DMA_LOGGING_STOP ||
                   feature == FEATURE_DMA_LOGGING_REPORT;

    if (!mig_flags || (logging && !dma_logging) ||
        (!logging && feature != FEATURE_MIGRATION &&
         feature != FEATURE_MIG_DEVICE_STATE)) {
        return -ENOTTY;
    }
    memcpy(x->rep, x->req, 8);
    x->rep_len = 8;
    if (flags & FEATURE_PROBE) {
        return 0;
    }
    /* As in the kernel: SET starts and stops, GET reports */
    if (logging && !(flags & (feature == FEATURE_DMA_LOGGING_REPORT ?
                              FEATURE_GET : FEATURE_SET))) {
        return -EINVAL;
    }
    switch (feature) {
    case FEATURE_DMA_LOGGING_START:
        return dma_logging_start(x);
    case FEATURE_DMA_LOGGING_STOP:
        log_event("dma logging stop");
        dma_logging_stop();
        return 0;
    case FEATURE_DMA_LOGGING_REPORT:
        return dma_logging_report(x);
    }
    if (feature == FEATURE_MIGRATION) {
        if (!(flags & FEATURE_GET)) {
            return -EINVAL;
        }
        wr64(x->rep + 8, mig_flags |
             (mig_fault == MIG_FAULT_CLAIM_P2P ? MIG_FLAG_P2P : 0));
        x->rep_len += 8;
        wr32(x->rep, x->rep_len);
        return 0;
    }
    if (flags & FEATURE_SET) {
        int ret;

        if (x->req_len < 16) {
            return -EINVAL;
        }
        ret = mig_set_state(rd32(x->req + 8));
        if (ret) {
            return ret;
        }
    }
    wr32(x->rep + 8, mig_state);
    wr32(x->rep + 12, (uint32_t)-1);
    x->rep_len += 8;
    wr32(x->rep, x->rep_len);
    return 0;
}

static int handle_mig_data_read(struct exchange *x)
{
    uint32_t size = rd32(x->req + 4);
    size_t avail;

    if (!mig_saving(mig_state) || size > MAX_XFER) {
        return -EINVAL;
    }
    if (mig_state == MIG_PRE_COPY && mig_out_pos == mig_out_len) {
        mig_out_reset();
        if (mig_put_chunk()) {
            mig_rec_end = mig_out_len;
            stat_add64(ST_MIG_PRECOPY, 1);
        }
        /* A device at work: it writes guest memory in every iteration */
        if (dma_fill_precopy && dma_fill_size) {
            dma_fill(0x1000 + ld_le(bar0 + ST_MIG_PRECOPY, 8));
        }
    }
    /* In PRE_COPY, a read ends with the chunk: one chunk per iteration */
    avail = mig_rec_end - mig_out_pos;
    if (size > avail) {
        size = avail;
    }
    memcpy(x->rep + 8, mig_out + mig_out_pos, size);
    mig_out_pos += size;
    x->rep_len = 8 + size;
    wr32(x->rep, x->rep_len);
    wr32(x->rep + 4, size);
    if (mig_fault == MIG_FAULT_EXCESS && size) {
        wr32(x->rep + 4, size + 4096);
    }
    return 0;
}

static int handle_mig_data_write(struct exchange *x)
{
    uint32_t size = rd32(x->req + 4);

    if (mig_state != MIG_RESUMING || size > x->req_len - 8 ||
        mig_in_len + size > mig_extra_size * 2 + 2 * MAX_XFER) {
        return -EINVAL;
    }
    mig_grow(&mig_in, &mig_in_cap, mig_in_len + size);
    memcpy(mig_in + mig_in_len, x->req + 8, size);
    mig_in_len += size;
    x->rep_len = 0;
    return 0;
}

/* The extra state's first contents: zeros, or bytes that --mig-seed makes */
static void mig_init(uint64_t extra_kib, uint64_t seed)
{
    uint64_t v = seed;
    size_t i;

    mig_extra_size = extra_kib * 1024;
    mig_extra = calloc(1, mig_extra_size ? mig_extra_size : 1);
    if (!mig_extra) {
        perror("vfio-user-raw-server: migration state");
        exit(EXIT_FAILURE);
    }
    for (i = 0; seed && i < mig_extra_size; i++) {
        v = v * 6364136223846793005ull + 1442695040888963407ull;
        mig_extra[i] = v >> 56;
    }
    /*
     * Room for the whole outgoing stream, touched now: growing it and
     * faulting it in on the way into STOP_COPY would count as downtime
     */
    mig_grow(&mig_out, &mig_out_cap, mig_extra_size + 2 * MIG_CHUNK);
    memset(mig_out, 0, mig_out_cap);
}

static void mig_conn_start(void)
{
    mig_state = MIG_RUNNING;
    mig_cursor = 0;
    mig_out_reset();
    mig_in_len = 0;
    mig_stats();
}

static int handle_device_reset(struct exchange *x)
{
    stat_add64(ST_RESETS, 1);
    log_event("reset");
    mig_conn_start();
    x->rep_len = 0;
    return 0;
}

/*
 * What the server does with each command: a request's payload shorter
 * than min_len gets EINVAL without reaching the handler; a command not
 * here gets ENOSYS.
 */
static const struct command {
    uint16_t command;
    const char *name;
    size_t min_len;
    int (*handler)(struct exchange *x);
} commands[] = {
    { VU_VERSION, "VERSION", 4, handle_version },
    { VU_DMA_MAP, "DMA_MAP", 32, handle_dma_map },
    { VU_DMA_UNMAP, "DMA_UNMAP", 24, handle_dma_unmap },
    { VU_DEVICE_GET_INFO, "DEVICE_GET_INFO", 16, handle_device_get_info },
    { VU_DEVICE_GET_REGION_INFO, "DEVICE_GET_REGION_INFO", 32,
      handle_get_region_info },
    { VU_DEVICE_GET_REGION_IO_FDS, "DEVICE_GET_REGION_IO_FDS", 16,
      handle_get_region_io_fds },
    { VU_DEVICE_GET_IRQ_INFO, "DEVICE_GET_IRQ_INFO", 16, handle_get_irq_info },
    { VU_DEVICE_SET_IRQS, "DEVICE_SET_IRQS", 20, handle_set_irqs },
    { VU_REGION_READ, "REGION_READ", 16, handle_region_rw },
    { VU_REGION_WRITE, "REGION_WRITE", 16, handle_region_rw },
    { VU_DEVICE_RESET, "DEVICE_RESET", 0, handle_device_reset },
    { VU_DEVICE_FEATURE, "DEVICE_FEATURE", 8, handle_device_feature },
    { VU_MIG_DATA_READ, "MIG_DATA_READ", 8, handle_mig_data_read },
    { VU_MIG_DATA_WRITE, "MIG_DATA_WRITE", 8, handle_mig_data_write },
};

static const struct command *find_command(uint16_t command)
{
    size_t i;

    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (commands[i].command == command) {
            return &commands[i];
        }
    }
    return NULL;
}

static const char *command_name(uint16_t command)
{
    const struct command *cmd = find_command(command);

    switch (command) {
    case VU_DMA_READ:
        return "DMA_READ";
    case VU_DMA_WRITE:
        return "DMA_WRITE";
    }
    return cmd ? cmd->name : "UNKNOWN";
}

/*
 * Requests of our own
 */

/* Send a request with @len bytes of payload; false if the link is gone */
static bool send_request(uint16_t command, uint32_t flags, const void *payload,
                         size_t len, bool quiet)
{
    uint8_t msg[VU_HDR_SIZE + 16 + DMA_FILL_CHUNK];
    uint16_t id = next_request_id++;

    if (len > sizeof(msg) - VU_HDR_SIZE) {
        len = sizeof(msg) - VU_HDR_SIZE;
    }
    wr16(msg, id);
    wr16(msg + 2, command);
    wr32(msg + 4, VU_HDR_SIZE + len);
    wr32(msg + 8, VU_TYPE_REQUEST | flags);
    wr32(msg + 12, 0);
    memcpy(msg + VU_HDR_SIZE, payload, len);
    if (!quiet) {
        log_event("request %s id %u flags 0x%x", command_name(command), id,
                  flags);
    }
    if (!(flags & VU_NO_REPLY) && nr_pending < MAX_PENDING) {
        pending[nr_pending].id = id;
        pending[nr_pending].command = command;
        pending[nr_pending++].quiet = quiet;
    }
    return send_full(conn.sock, msg, VU_HDR_SIZE + len, NULL, 0);
}

/* Where a DMA of @len bytes can go: DMA_ADDR if the client mapped it */
static uint64_t dma_target(uint64_t len)
{
    unsigned i;

    for (i = 0; i < nr_dma_maps; i++) {
        if (dma_maps[i].iova <= DMA_ADDR && len <= dma_maps[i].size &&
            DMA_ADDR - dma_maps[i].iova <= dma_maps[i].size - len) {
            return DMA_ADDR;
        }
    }
    for (i = 0; i < nr_dma_maps; i++) {
        if (dma_maps[i].size >= len) {
            return dma_maps[i].iova;
        }
    }
    return DMA_ADDR;
}

/*
 * DMA_READ or DMA_WRITE of @count bytes at @addr; a write carries
 * DMA_PATTERN's bytes, as many as the count says, 64 at most.
 */
#define DMA_PATTERN         0x1122334455667788ull
static bool send_dma(uint16_t command, uint32_t flags, uint64_t addr,
                     uint64_t count, bool quiet)
{
    uint8_t payload[16 + 48];
    size_t len = 16, i;

    wr64(payload, addr);
    wr64(payload + 8, count);
    if (command == VU_DMA_WRITE) {
        for (i = 0; i < count && len < sizeof(payload); i++) {
            payload[len++] = DMA_PATTERN >> (8 * (i % 8));
        }
    }
    return send_request(command, flags, payload, len, quiet);
}

/* Where guest memory at @addr is mapped for @len bytes, if it is */
static uint8_t *dma_mem(uint64_t addr, uint64_t len)
{
    unsigned i;

    for (i = 0; i < nr_dma_maps; i++) {
        if (dma_maps[i].mem && addr >= dma_maps[i].iova &&
            len <= dma_maps[i].size &&
            addr - dma_maps[i].iova <= dma_maps[i].size - len) {
            return dma_maps[i].mem + (addr - dma_maps[i].iova);
        }
    }
    return NULL;
}

static void dma_fill(uint64_t seed)
{
    uint8_t payload[16 + DMA_FILL_CHUNK];
    uint64_t v = seed, done, n, i;

    for (done = 0; done < dma_fill_size; done += n) {
        uint64_t addr = DMA_ADDR + done;
        uint8_t *mem;

        n = dma_fill_size - done < DMA_FILL_CHUNK ?
            dma_fill_size - done : DMA_FILL_CHUNK;
        for (i = 0; i < n; i++) {
            v = v * 6364136223846793005ull + 1442695040888963407ull;
            payload[16 + i] = v >> 56;
        }
        mem = dma_mem(addr, n);
        if (mem) {
            memcpy(mem, payload + 16, n);
            dma_log_dirty(addr, n);
        } else {
            wr64(payload, addr);
            wr64(payload + 8, n);
            send_request(VU_DMA_WRITE, 0, payload, 16 + n, true);
        }
    }
    log_event("dma fill 0x%llx", (unsigned long long)seed);
    stat_add64(ST_DMA_FILLS, 1);
}

/* The client's reply to a request of ours */
static void take_reply(const struct exchange *x)
{
    uint16_t command;
    unsigned i;
    bool quiet;

    for (i = 0; i < nr_pending && pending[i].id != x->id; i++) {
        continue;
    }
    if (i == nr_pending) {
        log_event("unexpected reply id %u (command %u)", x->id, x->command);
        return;
    }
    command = pending[i].command;
    quiet = pending[i].quiet;
    pending[i] = pending[--nr_pending];
    if (quiet) {
        flood_answered++;
    } else if (x->flags & VU_ERROR) {
        log_event("reply to %s id %u: error %u", command_name(command), x->id,
                  x->error);
    } else if (command == VU_DMA_READ && x->req_len >= 24) {
        log_event("reply to %s id %u: ok data 0x%llx", command_name(command),
                  x->id, (unsigned long long)rd64(x->req + 16));
    } else {
        log_event("reply to %s id %u: ok", command_name(command), x->id);
    }
}

/* Send DMA_READs within mapped memory until FLOOD_WINDOW are unanswered */
static bool flood_more(void)
{
    while (nr_pending < FLOOD_WINDOW) {
        if (!send_dma(VU_DMA_READ, 0, dma_target(8), 8, true)) {
            return false;
        }
        flood_sent++;
    }
    return true;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000,
                           .tv_nsec = (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        continue;
    }
}

/* Handle @x and send its reply; false if the connection is gone */
static bool dispatch(struct exchange *x)
{
    const struct command *cmd = find_command(x->command);
    const struct misbehaviour *m = misbehaviour;
    uint8_t *hdr = rep_buf;
    bool ok = true;
    unsigned copy;
    size_t i;
    int ret;

    x->rep = rep_buf + VU_HDR_SIZE;
    x->rep_len = 0;
    x->rep_nfds = 0;
    if ((x->flags & VU_TYPE_MASK) == VU_TYPE_REPLY) {
        take_reply(x);
        ret = 0;
        x->flags |= VU_NO_REPLY;
    } else if ((x->flags & VU_TYPE_MASK) != VU_TYPE_REQUEST) {
        log_event("unexpected message type 0x%x, command %u",
                  x->flags & VU_TYPE_MASK, x->command);
        ret = 0;
        x->flags |= VU_NO_REPLY;
    } else if (mode == MODE_MUTE) {
        log_event("unanswered %s id %u", command_name(x->command), x->id);
        ret = 0;
        x->flags |= VU_NO_REPLY;
    } else if (!cmd) {
        log_event("unknown command %u", x->command);
        ret = -ENOSYS;
    } else if (x->req_len < cmd->min_len) {
        log_event("%s: payload of %zu bytes, less than %zu", cmd->name,
                  x->req_len, cmd->min_len);
        ret = -EINVAL;
    } else {
        ret = cmd->handler(x);
    }

    if (!(x->flags & VU_NO_REPLY)) {
        if (ret) {
            /* An error reply is the header alone, without fds */
            x->rep_len = 0;
            for (i = 0; i < x->rep_nfds; i++) {
                if (x->rep_fd_close[i]) {
                    close(x->rep_fds[i]);
                }
            }
            x->rep_nfds = 0;
        }
        wr16(hdr, x->id);
        wr16(hdr + 2, x->command);
        wr32(hdr + 4, VU_HDR_SIZE + x->rep_len);
        wr32(hdr + 8, VU_TYPE_REPLY | (ret ? VU_ERROR : 0));
        wr32(hdr + 12, -ret);
        x->hdr = hdr;
        x->send_len = VU_HDR_SIZE + x->rep_len;
        x->copies = 1;
        x->hangup = false;
        if (m && m->reply && m->command == x->command &&
            index_matches(m->index, request_index(x))) {
            m->reply(m, x);
        }
        if (delay_ms) {
            sleep_ms(delay_ms);
            log_event("answered %s id %u", command_name(x->command), x->id);
        }
        if (hold_write_replies && x->command == VU_REGION_WRITE &&
            rd32(x->req + 8) != VFIO_PCI_CONFIG_REGION_INDEX &&
            x->send_len <= sizeof(held_replies[0]) &&
            nr_held_replies + 1 < hold_write_replies) {
            memcpy(held_replies[nr_held_replies++], rep_buf, x->send_len);
        } else {
            for (i = 0; i < nr_held_replies && ok; i++) {
                ok = send_full(conn.sock, held_replies[i],
                               rd32(held_replies[i] + 4), NULL, 0);
            }
            nr_held_replies = 0;
            for (copy = 0; copy < x->copies && ok; copy++) {
                ok = send_full(conn.sock, rep_buf, x->send_len, x->rep_fds,
                               copy ? 0 : x->rep_nfds);
            }
        }
        ok = ok && !x->hangup;
    }
    for (i = 0; i < x->rep_nfds; i++) {
        if (x->rep_fd_close[i]) {
            close(x->rep_fds[i]);
        }
    }
    for (i = 0; i < x->nfds; i++) {
        if (x->fds[i] >= 0) {
            close(x->fds[i]);
        }
    }

    /* The client asks for BAR2's io fds last when it realizes the device */
    if (ok && !realized && x->command == VU_DEVICE_GET_REGION_IO_FDS &&
        request_index(x) == VFIO_PCI_BAR2_REGION_INDEX) {
        realized = true;
        log_event("realized");
        if (m && m->realized) {
            m->realized(m);
        }
    }
    return ok;
}

/* Receive one message and serve it; false if the connection is gone */
static bool serve_message(void)
{
    struct exchange x = { 0 };
    uint8_t hdr[VU_HDR_SIZE];
    uint32_t size;
    size_t i;

    if (!recv_full(conn.sock, hdr, sizeof(hdr), &x)) {
        goto gone;
    }
    memcpy(&x.id, hdr, 2);
    memcpy(&x.command, hdr + 2, 2);
    size = rd32(hdr + 4);
    x.flags = rd32(hdr + 8);
    x.error = rd32(hdr + 12);
    if (size < VU_HDR_SIZE || size > MAX_MSG_SIZE) {
        log_event("message %u (command %u) has size %u", x.id, x.command,
                  size);
        goto gone;
    }
    x.req = req_buf;
    x.req_len = size - VU_HDR_SIZE;
    if (!recv_full(conn.sock, x.req, x.req_len, &x)) {
        goto gone;
    }
    return dispatch(&x);

gone:
    for (i = 0; i < x.nfds; i++) {
        close(x.fds[i]);
    }
    return false;
}

/*
 * Connections
 */

static void conn_start(int sock)
{
    unsigned i;

    conn.sock = sock;
    conn.intx_fd = -1;
    for (i = 0; i < MAX_MSIX; i++) {
        conn.msix_fds[i] = -1;
    }
    for (i = 0; i < MAX_ENTRIES; i++) {
        conn.eventfds[i] = -1;
    }
    for (i = 0; i < NR_BARS_USED; i++) {
        conn.shadow_fds[i] = -1;
        conn.shadow[i] = NULL;
    }
    for (i = 0; i < MAX_IOREGION_SOCKS; i++) {
        conn.socks[i].fd = -1;
    }
    memset(bar0 + STATS_BASE, 0, STATS_END - STATS_BASE);
    mig_conn_start();
    nr_held_replies = 0;
    mode = MODE_SERVE;
    realized = false;
    while (nr_dma_maps) {
        dma_map_drop(0);
    }
    dma_logging_stop();
    nr_pending = 0;
    flood_sent = 0;
    flood_answered = 0;
    log_event("connect");
}

static void conn_end(void)
{
    unsigned i;

    close(conn.sock);
    if (conn.intx_fd >= 0) {
        close(conn.intx_fd);
    }
    for (i = 0; i < MAX_MSIX; i++) {
        if (conn.msix_fds[i] >= 0) {
            close(conn.msix_fds[i]);
        }
    }
    for (i = 0; i < MAX_ENTRIES; i++) {
        if (conn.eventfds[i] >= 0) {
            close(conn.eventfds[i]);
        }
    }
    for (i = 0; i < NR_BARS_USED; i++) {
        if (conn.shadow[i]) {
            munmap(conn.shadow[i], SHADOW_SIZE);
            close(conn.shadow_fds[i]);
        }
    }
    for (i = 0; i < MAX_IOREGION_SOCKS; i++) {
        if (conn.socks[i].fd >= 0) {
            close(conn.socks[i].fd);
        }
    }
    if (flood_sent) {
        log_event("flood sent %llu answered %llu",
                  (unsigned long long)flood_sent,
                  (unsigned long long)flood_answered);
    }
    log_event("disconnect");
}

/*
 * Serve the connection until the client leaves.  One poll() covers the
 * socket and every io fd; a message on the socket waits until every io
 * fd is drained.
 */
static void serve(void)
{
    struct pollfd pfds[1 + NR_IO_FDS];
    int what[NR_IO_FDS];

    for (;;) {
        short events = mode == MODE_DEAF ? 0 : POLLIN;
        nfds_t n;

        if (mode == MODE_FLOOD && nr_pending < FLOOD_WINDOW) {
            events |= POLLOUT;
        }
        pfds[0] = (struct pollfd) { .fd = conn.sock, .events = events };
        n = 1 + io_pollfds(pfds + 1, what);
        if (poll(pfds, n, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("vfio-user-raw-server: poll");
            exit(EXIT_FAILURE);
        }
        drain_io();
        if (mode == MODE_DEAF) {
            /* Until the client hangs up */
            if (pfds[0].revents & (POLLHUP | POLLERR)) {
                return;
            }
            continue;
        }
        if ((pfds[0].revents & POLLOUT) && !flood_more()) {
            return;
        }
        if ((pfds[0].revents & ~POLLOUT) && !serve_message()) {
            return;
        }
    }
}

/*
 * Misbehaviours: what --misbehave NAME makes the server do wrong.  Each is
 * a row of the table below; its hooks are these small functions, their
 * data the row's a, b, c and text.
 */

static void drop_reply_fds(struct exchange *x)
{
    size_t i;

    for (i = 0; i < x->rep_nfds; i++) {
        if (x->rep_fd_close[i]) {
            close(x->rep_fds[i]);
        }
    }
    x->rep_nfds = 0;
}

/* Reply hooks: @x's reply is built, its header in x->hdr */

/* An error reply whose error is @a */
static void reply_error(const struct misbehaviour *m, struct exchange *x)
{
    wr32(x->hdr + 4, VU_HDR_SIZE);
    wr32(x->hdr + 8, VU_TYPE_REPLY | VU_ERROR);
    wr32(x->hdr + 12, m->a);
    x->send_len = VU_HDR_SIZE;
    drop_reply_fds(x);
}

/* The header says the message has @a bytes; it has what it has */
static void reply_size(const struct misbehaviour *m, struct exchange *x)
{
    wr32(x->hdr + 4, m->a);
}

/* The header says @a bytes; @b bytes of payload follow, then EOF */
static void reply_size_eof(const struct misbehaviour *m, struct exchange *x)
{
    wr32(x->hdr + 4, m->a);
    x->send_len = VU_HDR_SIZE + m->b;
    x->hangup = true;
}

/* Only @a bytes of the payload, and a header that agrees */
static void reply_truncate(const struct misbehaviour *m, struct exchange *x)
{
    if (m->a < x->send_len - VU_HDR_SIZE) {
        x->send_len = VU_HDR_SIZE + m->a;
    }
    wr32(x->hdr + 4, x->send_len);
}

static void reply_command(const struct misbehaviour *m, struct exchange *x)
{
    wr16(x->hdr + 2, m->a);
}

static void reply_id(const struct misbehaviour *m, struct exchange *x)
{
    wr16(x->hdr, x->id + m->a);
}

static void reply_twice(const struct misbehaviour *m, struct exchange *x)
{
    x->copies = 2;
}

static void reply_flags(const struct misbehaviour *m, struct exchange *x)
{
    wr32(x->hdr + 8, m->a);
}

/* @a eventfds come along */
static void reply_fds(const struct misbehaviour *m, struct exchange *x)
{
    uint64_t i;

    for (i = 0; i < m->a; i++) {
        int fd = eventfd(0, EFD_CLOEXEC);

        if (fd >= 0) {
            add_reply_fd(x, fd, true);
        }
    }
}

/* The 32-bit field at payload offset @a is @b */
static void reply_set32(const struct misbehaviour *m, struct exchange *x)
{
    if (m->a + 4 <= x->send_len - VU_HDR_SIZE) {
        wr32(x->rep + m->a, m->b);
    }
}

/* Version @a.@b with capabilities @text (NUL-terminated unless @c) */
static void reply_version(const struct misbehaviour *m, struct exchange *x)
{
    size_t len = strlen(m->text) + !m->c;

    wr16(x->rep, m->a);
    wr16(x->rep + 2, m->b);
    memcpy(x->rep + 4, m->text, len);
    x->send_len = VU_HDR_SIZE + 4 + len;
    wr32(x->hdr + 4, x->send_len);
}

/* Before the reply, a request with command @a of our own */
static void request_first(const struct misbehaviour *m, struct exchange *x)
{
    uint64_t payload = 0;

    send_request(m->a, 0, &payload, sizeof(payload), false);
}

/* Region info hooks */

static void region_size(const struct misbehaviour *m, struct region_reply *r)
{
    r->info.size = m->a;
}

static void region_offset(const struct misbehaviour *m,
                          struct region_reply *r)
{
    r->info.offset = m->a;
}

/* Sparse mmap areas @a and @b, each AREA(offset, size); b = 0: one */
#define AREA(offset, size)  ((uint64_t)(offset) << 32 | (size))
static void region_areas(const struct misbehaviour *m, struct region_reply *r)
{
    r->areas[0].offset = m->a >> 32;
    r->areas[0].size = (uint32_t)m->a;
    r->areas[1].offset = m->b >> 32;
    r->areas[1].size = (uint32_t)m->b;
    r->nr_areas = m->b ? 2 : 1;
}

static void region_argsz(const struct misbehaviour *m, struct region_reply *r)
{
    r->info.argsz = m->a;
}

static void region_index(const struct misbehaviour *m, struct region_reply *r)
{
    r->info.index += m->a;
}

/* Setup hooks: config space, options, fds */

static void set_cfg_size(const struct misbehaviour *m)
{
    cfg_size = m->a;
}

static void cfg_add_cap(unsigned pos, uint8_t id, uint8_t next)
{
    config[pos] = id;
    config[pos + 1] = next;
    config[CFG_STATUS] |= CFG_STATUS_CAP_LIST;
}

/*
 * Capability pointer @a; capabilities @b and @c, each CAP(pos, id, next),
 * or 0
 */
#define CAP(pos, id, next)  ((uint64_t)(pos) << 16 | (id) << 8 | (next))
static void cfg_caps(const struct misbehaviour *m)
{
    uint64_t caps[] = { m->b, m->c };
    unsigned i;

    config[CFG_CAP_PTR] = m->a;
    config[CFG_STATUS] |= CFG_STATUS_CAP_LIST;
    for (i = 0; i < 2; i++) {
        if (caps[i]) {
            cfg_add_cap(caps[i] >> 16, caps[i] >> 8, caps[i]);
        }
    }
}

/* BAR @b is a 64-bit memory BAR, by its type bits in config space */
static void cfg_bar64(const struct misbehaviour *m)
{
    st_le(config + CFG_BAR0 + 4 * m->b, 4, PCI_BASE_ADDRESS_MEM_TYPE_64);
}

/* MSI with 64-bit addresses and per-vector masking (24 bytes) at @pos */
static void cfg_add_msi(unsigned pos)
{
    config[CFG_CAP_PTR] = pos;
    cfg_add_cap(pos, PCI_CAP_ID_MSI, 0);
    st_le(config + pos + PCI_MSI_FLAGS, 2,
          PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT);
}

static void cfg_msi(const struct misbehaviour *m)
{
    cfg_add_msi(m->a);
}

static void cfg_msi_good(const struct misbehaviour *m)
{
    cfg_add_msi(0x40);
}

static void cfg_add_msix(uint32_t table, uint32_t pba, uint16_t ctrl)
{
    config[CFG_CAP_PTR] = 0x40;
    cfg_add_cap(0x40, PCI_CAP_ID_MSIX, 0);
    st_le(config + 0x40 + PCI_MSIX_FLAGS, 2, ctrl);
    st_le(config + 0x40 + PCI_MSIX_TABLE, 4, table);
    st_le(config + 0x40 + PCI_MSIX_PBA, 4, pba);
}

/* MSI-X at 0x40: table @a and PBA @b (offset | BIR), control @c */
static void cfg_msix(const struct misbehaviour *m)
{
    cfg_add_msix(m->a, m->b, m->c);
}

/* Four vectors, table and PBA in BAR0 */
static void cfg_msix_good(const struct misbehaviour *m)
{
    cfg_add_msix(0x400, 0x600, 3);
}

/*
 * PCI Express: 4 KiB of config space, a PCIe capability (an endpoint) at
 * 0x40, extended capabilities @b and @c, each ECAP(pos, id, next)
 */
#define ECAP(pos, id, next) \
    ((uint64_t)(pos) << 32 | (uint32_t)(next) << 20 | 1 << 16 | (id))
static void cfg_ecaps(const struct misbehaviour *m)
{
    uint64_t ecaps[] = { m->b, m->c };
    unsigned i;

    cfg_size = CFG_MAX;
    config[CFG_CAP_PTR] = 0x40;
    cfg_add_cap(0x40, PCI_CAP_ID_EXP, 0);
    st_le(config + 0x40 + PCI_EXP_FLAGS, 2, 2);  /* v2, endpoint */
    for (i = 0; i < 2; i++) {
        if (ecaps[i]) {
            st_le(config + (ecaps[i] >> 32), 4, (uint32_t)ecaps[i]);
        }
    }
}

/* A ROM of @b bytes whose BAR keeps address bits @a */
static void rom(const struct misbehaviour *m)
{
    rom_mask = m->a;
    rom_size = m->b;
}

/* What BAR2's mmap() gets instead of its memory */
enum {
    OFFER_SOCKET,
    OFFER_PIPE,
    OFFER_EVENTFD,
    OFFER_SHORT_MEMFD,      /* ends where the mmap()able area starts */
    OFFER_TMPFILE,          /* a regular file, unsealed */
    OFFER_SEALED_MEMFD,     /* the good case */
};

static int make_tmpfile(void)
{
    char path[] = "/tmp/vfio-user-raw-XXXXXX";
    int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

    if (fd < 0) {
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0) {
            unlink(path);
        }
    }
    return fd;
}

static void offer_fd(const struct misbehaviour *m)
{
    int fds[2] = { -1, -1 }, fd = -1;

    switch (m->a) {
    case OFFER_SOCKET:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
            fd = fds[0];
        }
        break;
    case OFFER_PIPE:
        if (pipe2(fds, O_CLOEXEC) == 0) {
            fd = fds[0];
        }
        break;
    case OFFER_EVENTFD:
        fd = eventfd(0, EFD_CLOEXEC);
        break;
    case OFFER_SHORT_MEMFD:
        fd = memfd_create("vfio-user-raw-short", MFD_CLOEXEC);
        if (fd >= 0 && ftruncate(fd, BAR2_MMAP_OFFSET) < 0) {
            fd = -1;
        }
        break;
    case OFFER_TMPFILE:
        fd = make_tmpfile();
        if (fd >= 0 && ftruncate(fd, BAR2_SIZE) < 0) {
            fd = -1;
        }
        break;
    case OFFER_SEALED_MEMFD:
        fd = memfd_create("vfio-user-raw-sealed",
                          MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd >= 0 && (ftruncate(fd, BAR2_SIZE) < 0 ||
                        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)) {
            fd = -1;
        }
        break;
    }
    if (fd < 0) {
        perror("vfio-user-raw-server: an fd to offer");
        exit(EXIT_FAILURE);
    }
    bar2_offer_fd = fd;
}

/* io fd entries @text (--iofd specs separated by ';'), stride @a */
static void parse_iofd(const char *arg);
static void add_iofds(const struct misbehaviour *m)
{
    char *specs = strdup(m->text), *save = NULL, *spec;

    for (spec = strtok_r(specs, ";", &save); spec;
         spec = strtok_r(NULL, ";", &save)) {
        parse_iofd(spec);
    }
    free(specs);
    if (m->a) {
        iofds_stride = m->a;
    }
}

/* Answer every message @a ms late, unless --delay-ms says otherwise */
static void set_delay(const struct misbehaviour *m)
{
    if (!delay_ms) {
        delay_ms = m->a;
    }
}

/* Once realized */

/* A request with command @c (DMA_READ or DMA_WRITE) at @a of @b bytes */
static void dma_request(const struct misbehaviour *m)
{
    send_dma(m->c, 0, m->a, m->b, false);
}

/* Request @a, which nobody knows */
static void unknown_request(const struct misbehaviour *m)
{
    uint64_t payload = 0;

    send_request(m->a, 0, &payload, sizeof(payload), false);
}

/* DMA_WRITE with NO_REPLY, then a DMA_READ of what it wrote */
static void no_reply_write(const struct misbehaviour *m)
{
    uint64_t addr = dma_target(8);

    send_dma(VU_DMA_WRITE, VU_NO_REPLY, addr, 8, false);
    send_dma(VU_DMA_READ, 0, addr, 8, false);
}

static void start_flood(const struct misbehaviour *m)
{
    mode = MODE_FLOOD;
}

/* @b DMA_READs of @a bytes of mapped memory, then read nothing more */
static void go_deaf(const struct misbehaviour *m)
{
    uint64_t i;

    for (i = 0; i < m->b; i++) {
        send_dma(VU_DMA_READ, 0, dma_target(m->a), m->a, false);
    }
    mode = MODE_DEAF;
}

static void go_mute(const struct misbehaviour *m)
{
    mode = MODE_MUTE;
}

/* An error reply with @value to @command (for @index) */
#define ERRNO_ROW(name, what, command_, index_, value) \
    { name, what " fails with error " #value, .command = command_, \
      .index = index_, .reply = reply_error, .a = value }
#define ERRNO_BAR0          INDEX(VFIO_PCI_BAR0_REGION_INDEX)
#define ERRNO_CFG           INDEX(VFIO_PCI_CONFIG_REGION_INDEX)

#define MSIX_IRQ            INDEX(VFIO_PCI_MSIX_IRQ_INDEX)
#define BAR2                INDEX(VFIO_PCI_BAR2_REGION_INDEX)
#define CAP_ID_OTHER        PCI_CAP_ID_SSVID    /* one QEMU just copies */

static const struct misbehaviour misbehaviours[] = {
    /* Error values that are no errno, or none */
    ERRNO_ROW("errno-high-version", "VERSION", VU_VERSION, 0, 0x80000001),
    ERRNO_ROW("errno-high-get-info", "DEVICE_GET_INFO", VU_DEVICE_GET_INFO, 0,
              0x80000001),
    ERRNO_ROW("errno-high-bar-read", "REGION_READ of BAR0", VU_REGION_READ,
              ERRNO_BAR0, 0x80000001),
    ERRNO_ROW("errno-high-cfg-info", "GET_REGION_INFO of config space",
              VU_DEVICE_GET_REGION_INFO, ERRNO_CFG, 0x80000001),
    ERRNO_ROW("errno-ones-version", "VERSION", VU_VERSION, 0, 0xffffffff),
    ERRNO_ROW("errno-ones-get-info", "DEVICE_GET_INFO", VU_DEVICE_GET_INFO, 0,
              0xffffffff),
    ERRNO_ROW("errno-ones-bar-read", "REGION_READ of BAR0", VU_REGION_READ,
              ERRNO_BAR0, 0xffffffff),
    ERRNO_ROW("errno-ones-cfg-info", "GET_REGION_INFO of config space",
              VU_DEVICE_GET_REGION_INFO, ERRNO_CFG, 0xffffffff),
    ERRNO_ROW("errno-zero-version", "VERSION", VU_VERSION, 0, 0),
    ERRNO_ROW("errno-zero-get-info", "DEVICE_GET_INFO", VU_DEVICE_GET_INFO, 0,
              0),
    ERRNO_ROW("errno-zero-bar-read", "REGION_READ of BAR0", VU_REGION_READ,
              ERRNO_BAR0, 0),
    ERRNO_ROW("errno-zero-cfg-info", "GET_REGION_INFO of config space",
              VU_DEVICE_GET_REGION_INFO, ERRNO_CFG, 0),
    ERRNO_ROW("errno-4096-version", "VERSION", VU_VERSION, 0, 4096),
    ERRNO_ROW("errno-4096-get-info", "DEVICE_GET_INFO", VU_DEVICE_GET_INFO, 0,
              4096),
    ERRNO_ROW("errno-4096-bar-read", "REGION_READ of BAR0", VU_REGION_READ,
              ERRNO_BAR0, 4096),
    ERRNO_ROW("errno-4096-cfg-info", "GET_REGION_INFO of config space",
              VU_DEVICE_GET_REGION_INFO, ERRNO_CFG, 4096),

    /* Headers and sizes */
    { "hdr-size-small", "DEVICE_GET_INFO's reply says it has 8 bytes",
      .command = VU_DEVICE_GET_INFO, .reply = reply_size, .a = 8 },
    { "hdr-size-huge", "DEVICE_GET_INFO's reply says 1 MiB + 4 KiB + 17",
      .command = VU_DEVICE_GET_INFO, .reply = reply_size,
      .a = MAX_XFER + 4096 + VU_HDR_SIZE + 1 },
    { "hdr-size-eof", "DEVICE_GET_INFO's reply says 96 bytes, has 32, EOF",
      .command = VU_DEVICE_GET_INFO, .reply = reply_size_eof,
      .a = 96, .b = 16 },
    { "hdr-truncated", "DEVICE_GET_INFO's reply has 8 of its 16 bytes",
      .command = VU_DEVICE_GET_INFO, .reply = reply_truncate, .a = 8 },
    { "hdr-wrong-command", "DEVICE_GET_INFO's reply is for another command",
      .command = VU_DEVICE_GET_INFO, .reply = reply_command,
      .a = VU_DEVICE_GET_REGION_INFO },
    { "hdr-unknown-id", "DEVICE_GET_INFO's reply has an id never used",
      .command = VU_DEVICE_GET_INFO, .reply = reply_id, .a = 1000 },
    { "hdr-dup-reply", "DEVICE_GET_INFO is answered twice",
      .command = VU_DEVICE_GET_INFO, .reply = reply_twice },
    { "hdr-bad-type", "DEVICE_GET_INFO's reply has message type 7",
      .command = VU_DEVICE_GET_INFO, .reply = reply_flags, .a = 7 },
    { "req-unknown-cmd", "before answering DEVICE_GET_INFO, send command 119",
      .command = VU_DEVICE_GET_INFO, .reply = request_first, .a = 119 },
    { "req-unknown-idle", "once realized, send command 119",
      .realized = unknown_request, .a = 119 },
    { "req-no-reply", "once realized, DMA_WRITE with NO_REPLY, then read it",
      .realized = no_reply_write },

    /* Fds */
    { "fds-get-info", "DEVICE_GET_INFO's reply carries 3 eventfds",
      .command = VU_DEVICE_GET_INFO, .reply = reply_fds, .a = 3 },
    { "fds-too-many", "DEVICE_GET_INFO's reply carries 9 eventfds",
      .command = VU_DEVICE_GET_INFO, .reply = reply_fds, .a = MAX_MSG_FDS + 1 },
    { "mmap-fd-socket", "BAR2's mmap() fd is a socket",
      .setup = offer_fd, .a = OFFER_SOCKET },
    { "mmap-fd-pipe", "BAR2's mmap() fd is a pipe",
      .setup = offer_fd, .a = OFFER_PIPE },
    { "mmap-fd-eventfd", "BAR2's mmap() fd is an eventfd",
      .setup = offer_fd, .a = OFFER_EVENTFD },
    { "mmap-fd-short", "BAR2's mmap() fd ends where its area starts",
      .setup = offer_fd, .a = OFFER_SHORT_MEMFD },
    { "mmap-fd-tmpfile", "BAR2's mmap() fd is an unsealed file in /tmp",
      .setup = offer_fd, .a = OFFER_TMPFILE },
    { "mmap-fd-sealed", "BAR2's mmap() fd is a memfd sealed against shrinking",
      .setup = offer_fd, .a = OFFER_SEALED_MEMFD },

    /* Region info */
    { "region-size-max", "BAR0 has 2^64 - 1 bytes",
      .index = INDEX(0), .region = region_size, .a = UINT64_MAX },
    { "region-size-2p63", "BAR0 has 2^63 + 1 bytes",
      .index = INDEX(0), .region = region_size, .a = (1ull << 63) + 1 },
    { "region-offset-max", "BAR2's offset wraps with its mmap() area's",
      .index = BAR2, .region = region_offset, .a = 0xfffffffffffff000ull },
    { "sparse-overlap", "BAR2's two mmap() areas overlap",
      .index = BAR2, .region = region_areas,
      .a = AREA(0x1000, 0x1000), .b = AREA(0x1800, 0x800) },
    { "sparse-beyond", "BAR2's mmap() area runs past the region",
      .index = BAR2, .region = region_areas, .a = AREA(0x1000, 0x2000) },
    { "region-argsz-huge", "BAR2's info has argsz 0xffffffff",
      .index = BAR2, .region = region_argsz, .a = UINT32_MAX },
    { "region-index-wrong", "BAR0's info says it is region 1's",
      .index = INDEX(0), .region = region_index, .a = 1 },
    { "bar-size-npot", "BAR0 has 0x1800 bytes, not a power of two",
      .index = INDEX(0), .region = region_size, .a = 0x1800 },
    { "bar-io-huge", "BAR1, an I/O BAR, has 128 KiB",
      .index = INDEX(1), .region = region_size, .a = 0x20000 },
    { "bar32-huge", "BAR0, a 32-bit memory BAR, has 4 GiB",
      .index = INDEX(0), .region = region_size, .a = 1ull << 32 },
    { "bar64-slot5", "BAR5 is a 64-bit BAR of 4 KiB",
      .setup = cfg_bar64, .b = 5,
      .index = INDEX(5), .region = region_size, .a = 0x1000 },
    { "bar64-upper-sized", "BAR0 is 64-bit, and BAR1 (its upper half) sized",
      .setup = cfg_bar64, .b = 0 },
    { "bar64", "BAR2 is a 64-bit BAR (BAR3, its upper half, has no size)",
      .setup = cfg_bar64, .b = 2 },
    { "cfg-size-0", "config space has 0 bytes",
      .setup = set_cfg_size, .a = 0 },
    { "cfg-size-16", "config space has 16 bytes",
      .setup = set_cfg_size, .a = 16 },
    { "cfg-size-255", "config space has 255 bytes",
      .setup = set_cfg_size, .a = 255 },
    { "cfg-size-1000", "config space has 1000 bytes",
      .setup = set_cfg_size, .a = 1000 },
    { "cfg-size-8192", "config space has 8192 bytes",
      .setup = set_cfg_size, .a = 8192 },

    /* Config space */
    { "cap-loop-self", "a capability that is its own next",
      .setup = cfg_caps, .a = 0x40, .b = CAP(0x40, CAP_ID_OTHER, 0x40) },
    { "cap-loop-two", "two capabilities that are each other's next",
      .setup = cfg_caps, .a = 0x40, .b = CAP(0x40, CAP_ID_OTHER, 0x50),
      .c = CAP(0x50, CAP_ID_OTHER, 0x40) },
    { "cap-ptr-ff", "the capability pointer is 0xff",
      .setup = cfg_caps, .a = 0xff },
    { "cap-ptr-3e", "the capability pointer is 0x3e, unaligned",
      .setup = cfg_caps, .a = 0x3e },
    { "cap-ptr-header", "the capability pointer is 0x20, in the header",
      .setup = cfg_caps, .a = 0x20 },
    { "cap-next-unaligned", "a capability's next is 0x45",
      .setup = cfg_caps, .a = 0x40, .b = CAP(0x40, CAP_ID_OTHER, 0x45) },
    { "msi-at-fc", "an MSI capability (24 bytes) at 0xfc",
      .setup = cfg_msi, .a = 0xfc },
    { "msix-bir-6", "MSI-X table BIR 6",
      .setup = cfg_msix, .a = 0x400 | 6, .b = 0x600, .c = 3 },
    { "msix-bir-7", "MSI-X table BIR 7",
      .setup = cfg_msix, .a = 0x400 | 7, .b = 0x600, .c = 3 },
    { "msix-bar-absent", "MSI-X table in BAR3, which has no size",
      .setup = cfg_msix, .a = 0x0 | 3, .b = 0x600, .c = 3 },
    { "msix-table-beyond", "MSI-X table (16 vectors) past the end of BAR0",
      .setup = cfg_msix, .a = 0xf80, .b = 0x600, .c = 15 },
    { "msix-pba-bir-7", "MSI-X PBA BIR 7",
      .setup = cfg_msix, .a = 0x400, .b = 0x600 | 7, .c = 3 },
    { "ecap-loop-self", "an extended capability that is its own next",
      .setup = cfg_ecaps,
      .b = ECAP(0x100, PCI_EXT_CAP_ID_DSN, 0x100) },
    { "ecap-loop-two", "two extended capabilities each other's next",
      .setup = cfg_ecaps,
      .b = ECAP(0x100, PCI_EXT_CAP_ID_DSN, 0x200),
      .c = ECAP(0x200, PCI_EXT_CAP_ID_DSN, 0x100) },
    { "ecap-below", "an extended capability's next is 0x80",
      .setup = cfg_ecaps, .b = ECAP(0x100, PCI_EXT_CAP_ID_DSN, 0x80) },
    { "rom-npot", "the ROM BAR sizes as 0x1800 bytes",
      .setup = rom, .a = 0xffffe800, .b = 0x2000 },

    /* IRQ info */
    { "irq-msi-count", "MSI has 0xffffffff vectors",
      .setup = cfg_msi_good, .command = VU_DEVICE_GET_IRQ_INFO,
      .index = INDEX(VFIO_PCI_MSI_IRQ_INDEX), .reply = reply_set32,
      .a = 12, .b = UINT32_MAX },
    { "irq-msix-count", "MSI-X has 0xffffffff vectors",
      .setup = cfg_msix_good, .command = VU_DEVICE_GET_IRQ_INFO,
      .index = MSIX_IRQ, .reply = reply_set32, .a = 12, .b = UINT32_MAX },
    { "irq-index-wrong", "MSI-X's IRQ info says it is MSI's",
      .setup = cfg_msix_good, .command = VU_DEVICE_GET_IRQ_INFO,
      .index = MSIX_IRQ, .reply = reply_set32,
      .a = 8, .b = VFIO_PCI_MSI_IRQ_INDEX },
    { "irq-flags-garbage", "every IRQ info has flags 0xffffffff",
      .setup = cfg_msix_good, .command = VU_DEVICE_GET_IRQ_INFO,
      .reply = reply_set32, .a = 4, .b = UINT32_MAX },
    { "irq-err-count", "the error IRQ has 0xffffffff vectors",
      .command = VU_DEVICE_GET_IRQ_INFO,
      .index = INDEX(VFIO_PCI_ERR_IRQ_INDEX), .reply = reply_set32,
      .a = 12, .b = UINT32_MAX },

    /* GET_REGION_IO_FDS */
    { "iofds-argsz-small", "BAR0's io fds: argsz holds 1 of the 2 entries",
      .setup = add_iofds,
      .text = "0,ioeventfd,offset=0x100;0,ioeventfd,offset=0x104",
      .command = VU_DEVICE_GET_REGION_IO_FDS, .index = INDEX(0),
      .reply = reply_set32, .a = 0, .b = IOFD_HDR_SIZE + ENTRY40_SIZE },
    { "iofds-count-huge", "BAR0's io fds: count 0xffffffff",
      .setup = add_iofds, .text = "0,ioeventfd,offset=0x100",
      .command = VU_DEVICE_GET_REGION_IO_FDS, .index = INDEX(0),
      .reply = reply_set32, .a = 12, .b = UINT32_MAX },
    { "iofds-beyond", "BAR0's io fd entry runs past the region",
      .setup = add_iofds, .text = "0,ioeventfd,offset=0xffe,size=4" },
    { "iofds-stride-44", "BAR0's io fd entries are 44 bytes apart",
      .setup = add_iofds, .text = "0,ioeventfd,offset=0x100", .a = 44 },

    /* DMA requests */
    { "dma-read-unmapped", "once realized, DMA_READ of unmapped 0xd0000000",
      .realized = dma_request, .c = VU_DMA_READ, .a = 0xd0000000, .b = 16 },
    { "dma-write-ram-end", "once realized, DMA_WRITE across RAM's end",
      .realized = dma_request, .c = VU_DMA_WRITE,
      .a = 128 * 1024 * 1024 - 8, .b = 16 },
    { "dma-read-count-max", "once realized, DMA_READ of 0xffffffff bytes",
      .realized = dma_request, .c = VU_DMA_READ, .a = DMA_ADDR,
      .b = UINT32_MAX },
    { "dma-write-wrap", "once realized, DMA_WRITE from 2^64 - 8 of 16 bytes",
      .realized = dma_request, .c = VU_DMA_WRITE, .a = UINT64_MAX - 7,
      .b = 16 },
    { "dma-read-too-big", "once realized, DMA_READ of 1 MiB + 1 bytes",
      .realized = dma_request, .c = VU_DMA_READ, .a = DMA_ADDR,
      .b = MAX_XFER + 1 },

    /* Capabilities in the VERSION reply */
    { "caps-no-nul", "capabilities without their NUL",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = VU_MINOR, .text = VU_CAPS_JSON, .c = 1 },
    { "caps-not-json", "capabilities that are not JSON",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = VU_MINOR, .text = "capabilities: none" },
    { "caps-max-fds-0", "max_msg_fds 0",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = VU_MINOR,
      .text = "{\"capabilities\":{\"max_msg_fds\":0}}" },
    { "caps-xfer-2p40", "max_data_xfer_size 2^40",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = VU_MINOR,
      .text = "{\"capabilities\":{\"max_data_xfer_size\":1099511627776}}" },
    { "caps-xfer-string", "max_data_xfer_size is a string",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = VU_MINOR,
      .text = "{\"capabilities\":{\"max_data_xfer_size\":\"1048576\"}}" },
    { "version-major-2", "protocol version 2.1",
      .command = VU_VERSION, .reply = reply_version,
      .a = 2, .b = VU_MINOR, .text = VU_CAPS_JSON },
    { "version-minor-9999", "protocol version 0.9999",
      .command = VU_VERSION, .reply = reply_version,
      .a = VU_MAJOR, .b = 9999, .text = VU_CAPS_JSON },
    { "version-short", "VERSION's reply has 2 bytes",
      .command = VU_VERSION, .reply = reply_truncate, .a = 2 },

    /* Liveness */
    { "flood-dma", "once realized, 8-byte DMA_READs without end",
      .realized = start_flood },
    { "stall-big-dma", "once realized, 4 DMA_READs of 1 MiB, then read "
      "nothing more", .realized = go_deaf, .a = MAX_XFER, .b = 4 },
    { "slow-replies", "answer every message 400 ms late (or --delay-ms)",
      .setup = set_delay, .a = 400 },
    { "mute-after-realize", "once realized, answer nothing more",
      .realized = go_mute },
};

static void list_misbehaviours(void)
{
    size_t i;

    for (i = 0; i < sizeof(misbehaviours) / sizeof(misbehaviours[0]); i++) {
        printf("%-20s %s\n", misbehaviours[i].name, misbehaviours[i].what);
    }
}

static const struct misbehaviour *find_misbehaviour(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(misbehaviours) / sizeof(misbehaviours[0]); i++) {
        if (!strcmp(misbehaviours[i].name, name)) {
            return &misbehaviours[i];
        }
    }
    return NULL;
}

/*
 * Options
 */

static void usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("vfio-user-raw-server: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nusage: vfio-user-raw-server [--iofd SPEC]... "
          "[--iofds-stride N] [--iofds-error ERRNO] [--fail-write OFFSET] "
          "[--hold-write-replies N] [--misbehave NAME] [--delay-ms N] "
          "[--log FILE] SOCKET_PATH\n", stderr);
    exit(2);
}

/* A number in C syntax (decimal, 0x hex, 0 octal), as strtoull() base 0 */
static uint64_t parse_number(const char *what, const char *s, uint64_t max)
{
    unsigned base = 10, digit;
    const char *p = s;
    uint64_t v = 0;

    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && p[2]) {
        base = 16;
        p += 2;
    } else if (p[0] == '0' && p[1]) {
        base = 8;
        p++;
    }
    if (!*p) {
        goto bad;
    }
    for (; *p; p++) {
        if (*p >= '0' && *p <= '9') {
            digit = *p - '0';
        } else if (*p >= 'a' && *p <= 'f') {
            digit = *p - 'a' + 10;
        } else if (*p >= 'A' && *p <= 'F') {
            digit = *p - 'A' + 10;
        } else {
            goto bad;
        }
        if (digit >= base || digit > max || v > (max - digit) / base) {
            goto bad;
        }
        v = v * base + digit;
    }
    return v;

bad:
    usage_error("%s: '%s' is not a number in [0, 0x%llx]", what, s,
                (unsigned long long)max);
}

static void parse_iofd(const char *arg)
{
    char *copy = strdup(arg), *save = NULL, *tok;
    struct iofd_spec *e = &iofds[nr_iofds];
    unsigned k = nr_iofds;
    bool has_flags = false, has_type = false, posted = false;
    bool has_datamatch = false;
    int share = -1;

    if (!copy) {
        usage_error("out of memory");
    }
    if (nr_iofds == MAX_ENTRIES) {
        usage_error("more than %d --iofd", MAX_ENTRIES);
    }
    memset(e, 0, sizeof(*e));
    tok = strtok_r(copy, ",", &save);
    e->region = parse_number("--iofd region", tok ? tok : "",
                             NR_BARS_USED - 1);
    tok = strtok_r(NULL, ",", &save);
    for (e->type = 0; tok && e->type < 3; e->type++) {
        if (!strcmp(tok, type_names[e->type])) {
            break;
        }
    }
    if (!tok || e->type == 3) {
        usage_error("--iofd %s: type must be ioeventfd, ioregionfd or "
                    "shadow", arg);
    }
    e->size = DEFAULT_ENTRY_SIZE;
    e->user_data = k;
    e->shadow_offset = 8 * k;

    while ((tok = strtok_r(NULL, ",", &save))) {
        char *value = strchr(tok, '=');

        if (!value) {
            usage_error("--iofd %s: '%s' is not KEY=VALUE", arg, tok);
        }
        *value++ = '\0';
        if (!strcmp(tok, "offset")) {
            e->offset = parse_number(tok, value, UINT64_MAX);
        } else if (!strcmp(tok, "size")) {
            e->size = parse_number(tok, value, UINT64_MAX);
        } else if (!strcmp(tok, "datamatch") &&
                   e->type != IOFD_TYPE_IOREGIONFD) {
            e->datamatch = parse_number(tok, value, UINT64_MAX);
            has_datamatch = true;
        } else if (!strcmp(tok, "posted") &&
                   e->type == IOFD_TYPE_IOREGIONFD) {
            posted = parse_number(tok, value, 1);
        } else if (!strcmp(tok, "user_data") &&
                   e->type == IOFD_TYPE_IOREGIONFD) {
            e->user_data = parse_number(tok, value, UINT64_MAX);
        } else if (!strcmp(tok, "shadow_offset") &&
                   e->type == IOFD_TYPE_SHADOW) {
            e->shadow_offset = parse_number(tok, value, UINT64_MAX);
        } else if (!strcmp(tok, "fd_index")) {
            e->fd_index = parse_number(tok, value, UINT32_MAX);
            e->has_fd_index = true;
        } else if (!strcmp(tok, "type")) {
            e->wire_type = parse_number(tok, value, UINT32_MAX);
            has_type = true;
        } else if (!strcmp(tok, "flags")) {
            e->flags = parse_number(tok, value, UINT32_MAX);
            has_flags = true;
        } else if (!strcmp(tok, "share")) {
            share = parse_number(tok, value, MAX_ENTRIES - 1);
        } else {
            usage_error("--iofd %s: no key '%s' for type %s", arg, tok,
                        type_names[e->type]);
        }
    }

    if (!has_type) {
        e->wire_type = e->type;
    }
    if (!has_flags) {
        if (e->type == IOFD_TYPE_IOREGIONFD) {
            e->flags = posted ? IOREGION_POSTED : 0;
        } else {
            e->flags = has_datamatch ? IOEVENTFD_DATAMATCH : 0;
        }
    }
    e->owner = k;
    if (share >= 0) {
        if ((unsigned)share >= k || iofds[share].region != e->region) {
            usage_error("--iofd %s: share=%d is not an earlier entry of "
                        "region %u", arg, share, e->region);
        }
        e->owner = iofds[share].owner;
    }
    nr_iofds++;
    free(copy);
}

/* Every GET_REGION_IO_FDS reply must fit in max_msg_fds */
static void check_iofds(void)
{
    unsigned region, k;

    for (region = 0; region < NR_BARS_USED; region++) {
        unsigned nfds = 0;
        bool shadow = false;

        for (k = 0; k < nr_iofds; k++) {
            if (iofds[k].region == region) {
                nfds += iofds[k].owner == (int)k;
                shadow |= iofds[k].type == IOFD_TYPE_SHADOW;
            }
        }
        if (nfds + shadow > MAX_MSG_FDS) {
            usage_error("region %u needs %u fds, more than %d in a message",
                        region, nfds + shadow, MAX_MSG_FDS);
        }
    }
}

static int listen_on(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        usage_error("socket path '%s' is too long", path);
    }
    strcpy(addr.sun_path, path);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(fd, 1) < 0) {
        perror("vfio-user-raw-server: listen");
        exit(EXIT_FAILURE);
    }
    return fd;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "iofd", required_argument, NULL, 'i' },
        { "iofds-stride", required_argument, NULL, 's' },
        { "iofds-error", required_argument, NULL, 'e' },
        { "fail-write", required_argument, NULL, 'f' },
        { "hold-write-replies", required_argument, NULL, 'h' },
        { "misbehave", required_argument, NULL, 'm' },
        { "delay-ms", required_argument, NULL, 'd' },
        { "log", required_argument, NULL, 'l' },
        { "migration", required_argument, NULL, 'M' },
        { "mig-fault", required_argument, NULL, 'F' },
        { "mig-extra-kib", required_argument, NULL, 'x' },
        { "mig-seed", required_argument, NULL, 'S' },
        { "dma-logging", no_argument, NULL, 'L' },
        { "dma-fill", required_argument, NULL, 'D' },
        { "msix", required_argument, NULL, 'X' },
        { "dma-fill-precopy", no_argument, NULL, 'P' },
        { "stop-on-set-irqs", no_argument, NULL, 'T' },
        { "dma-probe", no_argument, NULL, 'R' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t mig_extra_kib = 0, mig_seed = 0;
    int opt, listen_fd;
    unsigned i;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'i':
            parse_iofd(optarg);
            break;
        case 's':
            iofds_stride = parse_number("--iofds-stride", optarg, MAX_STRIDE);
            if (!iofds_stride) {
                usage_error("--iofds-stride must not be 0");
            }
            break;
        case 'e':
            iofds_error = parse_number("--iofds-error", optarg, 4095);
            break;
        case 'f':
            fail_write = true;
            fail_write_offset = parse_number("--fail-write", optarg,
                                             UINT64_MAX);
            break;
        case 'h':
            hold_write_replies = parse_number("--hold-write-replies", optarg,
                                              MAX_HELD_REPLIES);
            break;
        case 'm':
            if (misbehaviour) {
                usage_error("one --misbehave at a time");
            }
            if (!strcmp(optarg, "help")) {
                list_misbehaviours();
                exit(0);
            }
            misbehaviour = find_misbehaviour(optarg);
            if (!misbehaviour) {
                usage_error("no misbehaviour '%s'", optarg);
            }
            break;
        case 'd':
            delay_ms = parse_number("--delay-ms", optarg, 60000);
            break;
        case 'l':
            log_file = fopen(optarg, "a");
            if (!log_file) {
                usage_error("cannot open log '%s': %s", optarg,
                            strerror(errno));
            }
            break;
        case 'M':
            if (!strcmp(optarg, "stop-copy")) {
                mig_flags = MIG_FLAG_STOP_COPY;
            } else if (!strcmp(optarg, "pre-copy")) {
                mig_flags = MIG_FLAG_STOP_COPY | MIG_FLAG_PRE_COPY;
            } else {
                usage_error("--migration is stop-copy or pre-copy");
            }
            break;
        case 'F':
            for (i = 0; i < sizeof(mig_fault_names) / sizeof(char *); i++) {
                if (!strcmp(optarg, mig_fault_names[i])) {
                    break;
                }
            }
            if (i == sizeof(mig_fault_names) / sizeof(char *)) {
                usage_error("no --mig-fault '%s'", optarg);
            }
            mig_fault = i;
            break;
        case 'x':
            mig_extra_kib = parse_number("--mig-extra-kib", optarg,
                                         MIG_MAX_EXTRA_KIB);
            break;
        case 'S':
            mig_seed = parse_number("--mig-seed", optarg, UINT64_MAX);
            break;
        case 'L':
            dma_logging = true;
            break;
        case 'D':
            dma_fill_size = parse_number("--dma-fill", optarg, 1024) * 1024;
            break;
        case 'P':
            dma_fill_precopy = true;
            break;
        case 'X':
            msix_vectors = parse_number("--msix", optarg, MAX_MSIX);
            break;
        case 'T':
            stop_on_set_irqs = true;
            break;
        case 'R':
            dma_probe = true;
            break;
        default:
            usage_error("unknown option");
        }
    }
    mig_init(mig_extra_kib, mig_seed);
    if (optind != argc - 1) {
        usage_error("one SOCKET_PATH, please");
    }
    config_init();
    if (misbehaviour && misbehaviour->setup) {
        misbehaviour->setup(misbehaviour);
    }
    check_iofds();

    /* A client that drops us must not kill us: we serve the next one */
    signal(SIGPIPE, SIG_IGN);
    if (stop_on_set_irqs) {
        struct sigaction sa = { .sa_handler = arm_stop,
                                .sa_flags = SA_RESTART };

        sigaction(SIGUSR1, &sa, NULL);
    }
    /* A test that dies (or times out) must not leave us behind */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Sealed, as a server should: the client may map it */
    bar2_fd = memfd_create("vfio-user-raw-bar2",
                           MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (bar2_fd < 0 || ftruncate(bar2_fd, BAR2_SIZE) < 0 ||
        fcntl(bar2_fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
        perror("vfio-user-raw-server: memfd for BAR2");
        return EXIT_FAILURE;
    }
    bar2 = mmap(NULL, BAR2_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                bar2_fd, 0);
    if (bar2 == MAP_FAILED) {
        perror("vfio-user-raw-server: mmap BAR2");
        return EXIT_FAILURE;
    }
    listen_fd = listen_on(argv[optind]);

    for (;;) {
        int sock = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

        if (sock < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            perror("vfio-user-raw-server: accept");
            return EXIT_FAILURE;
        }
        conn_start(sock);
        serve();
        conn_end();
    }
}
