/*
 * A vfio-user server for vfio-user tests that speaks the wire protocol
 * itself, without libvfio-user, so that it can offer what that library
 * cannot: VFIO_USER_DEVICE_GET_REGION_IO_FDS entries of every type
 * (ioeventfd, ioregionfd, newer libvfio-user's shadow ioeventfd), in the
 * 40- or 48-byte layout or a stride of any size, bad entries on request,
 * and a record of what arrives on each fd.
 *
 * The device: PCI 1b36:00f1, class 0xff0000, INTx pin A, no capabilities.
 *   BAR0  4 KiB memory (32-bit, non-prefetchable)
 *   BAR1  256 bytes I/O space
 *   BAR2  8 KiB memory; its second page is offered for mmap() (a memfd)
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
 *            [--hold-write-replies N] [--log FILE] SOCKET_PATH
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
 *   --log FILE  append a line per event: connect, disconnect, reset,
 *       "iofds region R count N nfds F", "iofds region R argsz-too-small
 *       need N", "eof entry K" (the client closed entry K's ioregionfd
 *       socket), and what this server refused.
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
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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
#define VU_DEVICE_RESET             13

#define VU_TYPE_MASK        0xf
#define VU_TYPE_REQUEST     0x0
#define VU_TYPE_REPLY       0x1
#define VU_NO_REPLY         0x10
#define VU_ERROR            0x20

#define VU_HDR_SIZE         16
#define VU_MAJOR            0
#define VU_MINOR            1
#define MAX_MSG_FDS         8       /* what we announce, and send at most */
#define MAX_XFER            (1024 * 1024)
#define MAX_MSG_SIZE        (VU_HDR_SIZE + 16 + MAX_XFER)
#define RECV_FDS            16      /* taken per recvmsg(); more are closed */
#define VU_CAPS_JSON \
    "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}"

/* Regions */
#define NR_REGIONS          VFIO_PCI_NUM_REGIONS
#define NR_IRQS             VFIO_PCI_NUM_IRQS
#define NR_BARS_USED        3
#define BAR0_SIZE           0x1000
#define BAR1_SIZE           0x100
#define BAR2_SIZE           0x2000
#define BAR2_MMAP_OFFSET    0x1000
#define BAR2_MMAP_SIZE      0x1000
#define CFG_SIZE            256

/* Config space */
#define CFG_VENDOR_ID       0x00
#define CFG_DEVICE_ID       0x02
#define CFG_CLASS_REVISION  0x08
#define CFG_BAR0            0x10
#define CFG_BAR1            0x14
#define CFG_BAR2            0x18
#define CFG_INTERRUPT_PIN   0x3d
#define CFG_BAR_IO          0x1

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
static uint8_t config[CFG_SIZE];

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
    uint8_t *req;           /* the payload */
    size_t req_len;
    int fds[RECV_FDS];      /* a handler keeps one by setting it to -1 */
    size_t nfds;
    uint8_t *rep;           /* the reply's payload */
    size_t rep_len;
    int rep_fds[MAX_MSG_FDS];
    bool rep_fd_close[MAX_MSG_FDS];     /* ours to close once sent */
    size_t rep_nfds;
};

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
static bool config_writable(unsigned off)
{
    return (off >= 0x04 && off < 0x06) ||      /* command */
           (off >= 0x0c && off < 0x0e) ||      /* cache line, latency */
           (off >= 0x10 && off < 0x28) ||      /* BARs */
           off == 0x3c ||                      /* interrupt line */
           off >= 0x40;
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
        char buf[CMSG_SPACE(sizeof(int) * MAX_MSG_FDS)];
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
    if (x->rep_nfds == MAX_MSG_FDS) {
        if (close_after) {
            close(fd);
        }
        return -1;
    }
    x->rep_fds[x->rep_nfds] = fd;
    x->rep_fd_close[x->rep_nfds] = close_after;
    return x->rep_nfds++;
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

static int handle_dma_map(struct exchange *x)
{
    log_event("dma_map iova 0x%llx size 0x%llx fds %zu",
              (unsigned long long)rd64(x->req + 16),
              (unsigned long long)rd64(x->req + 24), x->nfds);
    return 0;
}

static int handle_dma_unmap(struct exchange *x)
{
    log_event("dma_unmap iova 0x%llx size 0x%llx",
              (unsigned long long)rd64(x->req + 8),
              (unsigned long long)rd64(x->req + 16));
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
    struct vfio_region_info info = { .argsz = sizeof(info) };
    struct vfio_region_info_cap_sparse_mmap sparse = {
        .header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP,
        .header.version = 1,
        .nr_areas = 1,
    };
    struct vfio_region_sparse_mmap_area area = {
        .offset = BAR2_MMAP_OFFSET,
        .size = BAR2_MMAP_SIZE,
    };
    uint32_t argsz = rd32(x->req);
    uint64_t size;

    info.index = rd32(x->req + 8);
    if (argsz < sizeof(info) || info.index >= NR_REGIONS) {
        return -EINVAL;
    }
    switch (info.index) {
    case VFIO_PCI_BAR0_REGION_INDEX:
    case VFIO_PCI_BAR1_REGION_INDEX:
    case VFIO_PCI_BAR2_REGION_INDEX:
    case VFIO_PCI_CONFIG_REGION_INDEX:
        info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        break;
    }
    if (info.index == VFIO_PCI_CONFIG_REGION_INDEX) {
        info.size = CFG_SIZE;
    } else {
        region_mem(info.index, &size);
        info.size = size;
    }
    x->rep_len = sizeof(info);
    if (info.index == VFIO_PCI_BAR2_REGION_INDEX) {
        /* As the kernel does: CAPS always, the list only if it fits */
        info.flags |= VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
        info.argsz = sizeof(info) + sizeof(sparse) + sizeof(area);
        if (argsz >= info.argsz) {
            info.cap_offset = sizeof(info);
            memcpy(x->rep + sizeof(info), &sparse, sizeof(sparse));
            memcpy(x->rep + sizeof(info) + sizeof(sparse), &area,
                   sizeof(area));
            x->rep_len = info.argsz;
        }
        add_reply_fd(x, bar2_fd, false);
    }
    memcpy(x->rep, &info, sizeof(info));
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
    bool intx = index == VFIO_PCI_INTX_IRQ_INDEX;

    if (rd32(x->req) < 16 || index >= NR_IRQS) {
        return -EINVAL;
    }
    wr32(x->rep, 16);
    wr32(x->rep + 4, intx ? VFIO_IRQ_INFO_EVENTFD : 0);
    wr32(x->rep + 8, index);
    wr32(x->rep + 12, intx ? 1 : 0);
    x->rep_len = 16;
    return 0;
}

static int handle_set_irqs(struct exchange *x)
{
    uint32_t flags = rd32(x->req + 4);
    uint32_t index = rd32(x->req + 8);
    uint32_t start = rd32(x->req + 12);
    uint32_t count = rd32(x->req + 16);

    log_event("set_irqs index %u flags 0x%x start %u count %u fds %zu",
              index, flags, start, count, x->nfds);
    if (index >= NR_IRQS) {
        return -EINVAL;
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
        size = CFG_SIZE;
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
        return 0;
    }
    if (fail_write && region == 0 && offset == fail_write_offset) {
        return -EIO;
    }
    scratch_store(region, offset, x->req + 16, count);
    stat_add64(ST_WRITES, 1);
    stat_set64(ST_WR_OFFSET, offset);
    stat_set64(ST_WR_VALUE, ld_le(x->req + 16, count < 8 ? count : 8));
    stat_set32(ST_WR_REGION, region);
    stat_set32(ST_WR_SIZE, count);
    return 0;
}

static int handle_device_reset(struct exchange *x)
{
    stat_add64(ST_RESETS, 1);
    log_event("reset");
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

/* Handle @x and send its reply; false if the connection is gone */
static bool dispatch(struct exchange *x)
{
    const struct command *cmd = find_command(x->command);
    uint8_t *hdr = rep_buf;
    bool ok = true;
    size_t i;
    int ret;

    x->rep = rep_buf + VU_HDR_SIZE;
    x->rep_len = 0;
    x->rep_nfds = 0;
    if ((x->flags & VU_TYPE_MASK) != VU_TYPE_REQUEST) {
        /* We send no requests: nothing can be a reply to one */
        log_event("unexpected message type 0x%x, command %u",
                  x->flags & VU_TYPE_MASK, x->command);
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
            /* An error reply is the header alone */
            x->rep_len = 0;
        }
        wr16(hdr, x->id);
        wr16(hdr + 2, x->command);
        wr32(hdr + 4, VU_HDR_SIZE + x->rep_len);
        wr32(hdr + 8, VU_TYPE_REPLY | (ret ? VU_ERROR : 0));
        wr32(hdr + 12, -ret);
        if (hold_write_replies && x->command == VU_REGION_WRITE &&
            rd32(x->req + 8) != VFIO_PCI_CONFIG_REGION_INDEX &&
            VU_HDR_SIZE + x->rep_len <= sizeof(held_replies[0]) &&
            nr_held_replies + 1 < hold_write_replies) {
            memcpy(held_replies[nr_held_replies++], rep_buf,
                   VU_HDR_SIZE + x->rep_len);
        } else {
            for (i = 0; i < nr_held_replies && ok; i++) {
                ok = send_full(conn.sock, held_replies[i],
                               rd32(held_replies[i] + 4), NULL, 0);
            }
            nr_held_replies = 0;
            ok = ok && send_full(conn.sock, rep_buf,
                                 VU_HDR_SIZE + x->rep_len, x->rep_fds,
                                 ret ? 0 : x->rep_nfds);
        }
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
    nr_held_replies = 0;
    log_event("connect");
}

static void conn_end(void)
{
    unsigned i;

    close(conn.sock);
    if (conn.intx_fd >= 0) {
        close(conn.intx_fd);
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
        nfds_t n;

        pfds[0] = (struct pollfd) { .fd = conn.sock, .events = POLLIN };
        n = 1 + io_pollfds(pfds + 1, what);
        if (poll(pfds, n, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("vfio-user-raw-server: poll");
            exit(EXIT_FAILURE);
        }
        drain_io();
        if (pfds[0].revents && !serve_message()) {
            return;
        }
    }
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
          "[--hold-write-replies N] [--log FILE] SOCKET_PATH\n", stderr);
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
        { "log", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    int opt, listen_fd;

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
        case 'l':
            log_file = fopen(optarg, "a");
            if (!log_file) {
                usage_error("cannot open log '%s': %s", optarg,
                            strerror(errno));
            }
            break;
        default:
            usage_error("unknown option");
        }
    }
    if (optind != argc - 1) {
        usage_error("one SOCKET_PATH, please");
    }
    check_iofds();

    /* A client that drops us must not kill us: we serve the next one */
    signal(SIGPIPE, SIG_IGN);
    config_init();
    bar2_fd = memfd_create("vfio-user-raw-bar2", MFD_CLOEXEC);
    if (bar2_fd < 0 || ftruncate(bar2_fd, BAR2_SIZE) < 0) {
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
