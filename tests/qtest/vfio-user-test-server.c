/*
 * A vfio-user server for vfio-user-test: a PCI device, built on
 * libvfio-user, that does on command what the library's samples cannot
 * (memory BARs, accesses of every size, INTx and DMA when asked).
 *
 * BAR0 (4 KiB, memory, reached through REGION_READ/REGION_WRITE):
 *   0x000  ID        ro  VFIO_USER_TEST_ID
 *   0x008  SCRATCH0  rw  64 bits, accesses of any size
 *   0x010  SCRATCH1  rw  64 bits
 *   0x100  DMA_ADDR  rw  guest address for the next DMA command
 *   0x108  DMA_LEN   rw  its length, at most 64 KiB
 *   0x110  DMA_FILL  rw  the byte CMD_DMA_WRITE writes
 *   0x118  DMA_SUM   ro  sum of the bytes CMD_DMA_READ read
 *   0x120  STATUS    ro  0, or the (positive) errno of the last command
 *   0x124  MAPPED    ro  1 if the last DMA went to memory mapped from an fd
 *   0x128  RESETS    ro  how many DEVICE_RESETs were received
 *   0x12c  VECTOR    rw  the MSI or MSI-X vector CMD_VECTOR triggers
 *   0x130  REGIONS   ro  how many DMA regions the client has mapped
 *   0x200  CMD       wo  CMD_* below
 * CMD_RAW_* send, past libvfio-user's own checks, requests a well-behaved
 * server would not: DMA_READ/DMA_WRITE of DMA_ADDR/DMA_LEN whatever was
 * mapped, and a message with more fds than the client accepts.  STATUS
 * then holds the errno the client replied with.
 *
 * BAR1 (8 KiB, memory): backed by a memfd sealed against shrinking, as
 *   clients that map it may require; its first page is offered for
 *   mmap(), its second is reached through messages.
 * BAR2 (4 KiB, memory): MSI-X table at 0, PBA at 0x800, for NR_MSIX
 *   vectors.
 * Config space: an MSI-X capability, and an MSI capability (NR_MSI
 *   vectors, 64-bit, per-vector masking) at MSI_CAP_POS, which this
 *   libvfio-user cannot add itself: we emulate it.
 *
 * usage: vfio-user-test-server [--state FILE] SOCKET_PATH
 * Serves one client after another until killed.  With --state, the
 * registers the client writes (SCRATCH0 up to DMA_SUM) are kept in FILE
 * and taken from it at start, as a device whose server crashed and was
 * restarted would keep them; everything else starts afresh.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <assert.h>
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "libvfio-user.h"
#include "pci_caps/msix.h"

#define VFIO_USER_TEST_VENDOR   0x1b36  /* Red Hat's range for QEMU tests */
#define VFIO_USER_TEST_DEVICE   0x00f0
#define VFIO_USER_TEST_ID       0x56555453u

#define REG_ID          0x000
#define REG_SCRATCH0    0x008
#define REG_SCRATCH1    0x010
#define REG_DMA_ADDR    0x100
#define REG_DMA_LEN     0x108
#define REG_DMA_FILL    0x110
#define REG_DMA_SUM     0x118
#define REG_STATUS      0x120
#define REG_MAPPED      0x124
#define REG_RESETS      0x128
#define REG_VECTOR      0x12c
#define REG_REGIONS     0x130
#define REG_CMD         0x200

#define CMD_INTX        1
#define CMD_DMA_WRITE   2
#define CMD_DMA_READ    3
#define CMD_VECTOR      4
#define CMD_RAW_DMA_READ  5
#define CMD_RAW_DMA_WRITE 6
#define CMD_RAW_FDS       7

/* The wire format, from the protocol specification */
#define VFIO_USER_DMA_READ_CMD  11
#define VFIO_USER_DMA_WRITE_CMD 12
#define VFIO_USER_F_REPLY       0x1
#define VFIO_USER_F_ERROR       0x20
#define RAW_MSG_ID              0xfff0
#define RAW_NR_FDS              10

struct raw_hdr {
    uint16_t id;
    uint16_t command;
    uint32_t size;
    uint32_t flags;
    uint32_t error;
} __attribute__((packed));

struct raw_dma {
    struct raw_hdr hdr;
    uint64_t addr;
    uint64_t count;
} __attribute__((packed));

#define BAR0_SIZE       0x1000
#define BAR1_SIZE       0x2000
#define BAR2_SIZE       0x1000
#define MSIX_PBA_OFFSET 0x800
#define NR_MSIX         12
#define NR_MSI          32      /* more than max_msg_fds: SET_IRQS in chunks */
#define MSI_CAP_POS     0x60
#define DMA_MAX         (64 * 1024)

static uint8_t regs[BAR0_SIZE];
static int state_fd = -1;
static uint8_t *bar1;
static uint8_t dma_buf[DMA_MAX];

static uint64_t reg64(unsigned off)
{
    uint64_t v;

    memcpy(&v, regs + off, sizeof(v));
    return v;
}

static void set_reg32(unsigned off, uint32_t v)
{
    memcpy(regs + off, &v, sizeof(v));
}

static void set_reg64(unsigned off, uint64_t v)
{
    memcpy(regs + off, &v, sizeof(v));
}

static void log_cb(vfu_ctx_t *ctx, int level, const char *msg)
{
    fprintf(stderr, "vfio-user-test-server: %s\n", msg);
}

/*
 * DMA through the mapping when the client gave an fd, else by messages.
 * Returns 0 or a negative errno.
 */
static int do_dma(vfu_ctx_t *ctx, bool write)
{
    uint64_t addr = reg64(REG_DMA_ADDR), len = reg64(REG_DMA_LEN);
    uint8_t sgbuf[256];
    dma_sg_t *sg = (dma_sg_t *)sgbuf;
    struct iovec iov;
    int ret;

    assert(dma_sg_size() <= sizeof(sgbuf));
    if (!len || len > DMA_MAX) {
        return -EINVAL;
    }
    ret = vfu_addr_to_sgl(ctx, (vfu_dma_addr_t)(uintptr_t)addr, len, sg, 1,
                          write ? PROT_WRITE : PROT_READ);
    if (ret != 1) {
        return ret < 0 ? -errno : -E2BIG;
    }
    if (write) {
        memset(dma_buf, regs[REG_DMA_FILL], len);
    }
    if (vfu_sg_is_mappable(ctx, sg)) {
        if (vfu_sgl_get(ctx, sg, &iov, 1, 0) < 0) {
            return -errno;
        }
        if (write) {
            memcpy(iov.iov_base, dma_buf, len);
            vfu_sgl_mark_dirty(ctx, sg, 1);
        } else {
            memcpy(dma_buf, iov.iov_base, len);
        }
        vfu_sgl_put(ctx, sg, &iov, 1);
        set_reg32(REG_MAPPED, 1);
    } else {
        ret = write ? vfu_sgl_write(ctx, sg, 1, dma_buf)
                    : vfu_sgl_read(ctx, sg, 1, dma_buf);
        if (ret < 0) {
            return -errno;
        }
        set_reg32(REG_MAPPED, 0);
    }
    if (!write) {
        uint64_t sum = 0, i;

        for (i = 0; i < len; i++) {
            sum += dma_buf[i];
        }
        set_reg64(REG_DMA_SUM, sum);
    }
    return 0;
}

static bool full_io(int fd, void *buf, size_t len, bool write)
{
    while (len) {
        ssize_t n = write ? send(fd, buf, len, MSG_NOSIGNAL)
                          : recv(fd, buf, len, 0);

        if (n <= 0) {
            return false;
        }
        buf = (char *)buf + n;
        len -= n;
    }
    return true;
}

/*
 * Send a DMA request of our own on the connection, and read its reply
 * before libvfio-user can: we run inside a REGION_WRITE callback, while
 * the client waits for that reply and serves requests meanwhile.
 */
static int raw_dma(vfu_ctx_t *ctx, bool write, int nfds)
{
    uint64_t len = reg64(REG_DMA_LEN);
    size_t size = sizeof(struct raw_dma) + (write ? len : 0);
    struct raw_dma *req = calloc(1, size);
    char control[CMSG_SPACE(sizeof(int) * RAW_NR_FDS)] = { 0 };
    struct iovec iov = { .iov_base = req, .iov_len = size };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    int fd = vfu_get_poll_fd(ctx), fds[RAW_NR_FDS], i, ret = 0;
    struct raw_hdr reply;
    uint64_t sum = 0;

    if (!req || (write && len > DMA_MAX)) {
        free(req);
        return -EINVAL;
    }
    req->hdr.id = RAW_MSG_ID;
    req->hdr.command = write ? VFIO_USER_DMA_WRITE_CMD : VFIO_USER_DMA_READ_CMD;
    req->hdr.size = size;
    req->addr = reg64(REG_DMA_ADDR);
    req->count = len;
    if (write) {
        memset(req + 1, regs[REG_DMA_FILL], len);
    }
    if (nfds) {
        struct cmsghdr *cmsg;

        mh.msg_control = control;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cmsg = CMSG_FIRSTHDR(&mh);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        for (i = 0; i < nfds; i++) {
            fds[i] = memfd_create("vfio-user-test-extra-fd", 0);
        }
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)size) {
        ret = -EIO;
    }
    for (i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    free(req);
    if (ret || !full_io(fd, &reply, sizeof(reply), false)) {
        return -EIO;
    }
    if (reply.id != RAW_MSG_ID || !(reply.flags & VFIO_USER_F_REPLY) ||
        reply.size < sizeof(reply)) {
        return -EPROTO;
    }
    /* The rest of the reply: address and count, then the data read */
    size = reply.size - sizeof(reply);
    if (!(reply.flags & VFIO_USER_F_ERROR) && size >= 2 * sizeof(uint64_t)) {
        uint64_t echo[2];

        if (!full_io(fd, echo, sizeof(echo), false)) {
            return -EIO;
        }
        size -= sizeof(echo);
    }
    for (; size; size--) {
        uint8_t byte;

        if (!full_io(fd, &byte, 1, false)) {
            return -EIO;
        }
        sum += byte;
    }
    if (reply.flags & VFIO_USER_F_ERROR) {
        return reply.error ? -(int)reply.error : -EINVAL;
    }
    if (!write) {
        set_reg64(REG_DMA_SUM, sum);
    }
    return 0;
}

static int run_cmd(vfu_ctx_t *ctx, uint32_t cmd)
{
    switch (cmd) {
    case CMD_INTX:
        return vfu_irq_trigger(ctx, 0) < 0 ? -errno : 0;
    case CMD_DMA_WRITE:
        return do_dma(ctx, true);
    case CMD_DMA_READ:
        return do_dma(ctx, false);
    case CMD_RAW_DMA_READ:
        return raw_dma(ctx, false, 0);
    case CMD_RAW_DMA_WRITE:
        return raw_dma(ctx, true, 0);
    case CMD_RAW_FDS:
        return raw_dma(ctx, true, RAW_NR_FDS);
    case CMD_VECTOR:
        /* Masking is QEMU's business (it emulates MSI and MSI-X) */
        return vfu_irq_trigger(ctx, *(uint32_t *)(regs + REG_VECTOR)) < 0 ?
               -errno : 0;
    default:
        return -EINVAL;
    }
}

static ssize_t bar0_access(vfu_ctx_t *ctx, char *buf, size_t count,
                           loff_t offset, bool is_write)
{
    if (offset < 0 || offset + count > BAR0_SIZE) {
        errno = EINVAL;
        return -1;
    }
    if (!is_write) {
        memcpy(buf, regs + offset, count);
        return count;
    }
    if (offset == REG_CMD && count == 4) {
        uint32_t cmd;

        memcpy(&cmd, buf, sizeof(cmd));
        /* STATUS reads as a positive errno */
        set_reg32(REG_STATUS, -run_cmd(ctx, cmd));
        return count;
    }
    if ((offset < REG_SCRATCH0 || offset + count > REG_DMA_SUM) &&
        (offset < REG_VECTOR || offset + count > REG_VECTOR + 4)) {
        errno = EPERM;
        return -1;
    }
    memcpy(regs + offset, buf, count);
    if (state_fd >= 0 &&
        pwrite(state_fd, regs + REG_SCRATCH0, REG_DMA_SUM - REG_SCRATCH0,
               REG_SCRATCH0) < 0) {
        err(EXIT_FAILURE, "saving the state");
    }
    return count;
}

static ssize_t bar1_access(vfu_ctx_t *ctx, char *buf, size_t count,
                           loff_t offset, bool is_write)
{
    if (offset < 0 || offset + count > BAR1_SIZE) {
        errno = EINVAL;
        return -1;
    }
    if (is_write) {
        memcpy(bar1 + offset, buf, count);
    } else {
        memcpy(buf, bar1 + offset, count);
    }
    return count;
}

/* QEMU emulates the MSI-X table and PBA: nothing to do here */
static ssize_t bar2_access(vfu_ctx_t *ctx, char *buf, size_t count,
                           loff_t offset, bool is_write)
{
    if (offset < 0 || offset + count > BAR2_SIZE) {
        errno = EINVAL;
        return -1;
    }
    if (!is_write) {
        memset(buf, 0, count);
    }
    return count;
}

/*
 * The MSI capability's writable bits: enable, multiple message enable,
 * address, data, mask bits.  Pending bits are read-only.
 */
static const uint8_t msi_wmask[sizeof(struct msicap)] = {
    [offsetof(struct msicap, mc)] = 0x71,
    [offsetof(struct msicap, ma)] = 0xfc, 0xff, 0xff, 0xff,
    [offsetof(struct msicap, mua)] = 0xff, 0xff, 0xff, 0xff,
    [offsetof(struct msicap, md)] = 0xff, 0xff,
    [offsetof(struct msicap, mmask)] = 0xff, 0xff, 0xff, 0xff,
};

/*
 * Config space that is neither the header nor a capability libvfio-user
 * manages.  QEMU emulates MSI and reads it from its own copy, but writes
 * what the guest writes through to us as well, as to a kernel device: a
 * device takes them (refusing would make QEMU report errors), within the
 * capability's writable bits.
 */
static ssize_t cfg_access(vfu_ctx_t *ctx, char *buf, size_t count,
                          loff_t offset, bool is_write)
{
    uint8_t *cfg = vfu_pci_get_config_space(ctx)->raw;
    size_t i;

    if (offset < 0 || offset + count > PCI_CFG_SPACE_SIZE) {
        errno = EINVAL;
        return -1;
    }
    if (!is_write) {
        memcpy(buf, cfg + offset, count);
        return count;
    }
    if (offset < MSI_CAP_POS ||
        offset + count > MSI_CAP_POS + sizeof(struct msicap)) {
        errno = EPERM;
        return -1;
    }
    for (i = 0; i < count; i++) {
        uint8_t wmask = msi_wmask[offset + i - MSI_CAP_POS];

        cfg[offset + i] = (cfg[offset + i] & ~wmask) | (buf[i] & wmask);
    }
    return count;
}

static int reset_cb(vfu_ctx_t *ctx, vfu_reset_type_t type)
{
    set_reg32(REG_RESETS, ((uint32_t *)regs)[REG_RESETS / 4] + 1);
    return 0;
}

static void dma_register(vfu_ctx_t *ctx, vfu_dma_info_t *info)
{
    set_reg32(REG_REGIONS, *(uint32_t *)(regs + REG_REGIONS) + 1);
}

static void dma_unregister(vfu_ctx_t *ctx, vfu_dma_info_t *info)
{
    set_reg32(REG_REGIONS, *(uint32_t *)(regs + REG_REGIONS) - 1);
}

int main(int argc, char **argv)
{
    struct iovec bar1_mmap = { .iov_base = 0, .iov_len = 0x1000 };
    struct msixcap msix = {
        .hdr.id = PCI_CAP_ID_MSIX,
        .mxc.ts = NR_MSIX - 1,
        .mtab.tbir = VFU_PCI_DEV_BAR2_REGION_IDX,
        .mtab.to = 0,
        .mpba.pbir = VFU_PCI_DEV_BAR2_REGION_IDX,
        .mpba.pbao = MSIX_PBA_OFFSET >> 3,
    };
    struct msicap msi = {
        .hdr.id = PCI_CAP_ID_MSI,
        .mc.mmc = __builtin_ctz(NR_MSI),
        .mc.c64 = 1,
        .mc.pvm = 1,
    };
    vfu_pci_config_space_t *cfg;
    vfu_ctx_t *ctx;
    ssize_t msix_pos;
    int fd;

    if (argc == 4 && !strcmp(argv[1], "--state")) {
        state_fd = open(argv[2], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (state_fd < 0 ||
            pread(state_fd, regs + REG_SCRATCH0, REG_DMA_SUM - REG_SCRATCH0,
                  REG_SCRATCH0) < 0) {
            err(EXIT_FAILURE, "state file %s", argv[2]);
        }
        argv += 2;
        argc -= 2;
    }
    if (argc != 2) {
        errx(EXIT_FAILURE, "usage: %s [--state FILE] SOCKET_PATH", argv[0]);
    }
    /* A client that drops us must not kill us: we serve the next one */
    signal(SIGPIPE, SIG_IGN);

    fd = memfd_create("vfio-user-test-bar1", MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, BAR1_SIZE) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
        err(EXIT_FAILURE, "memfd for BAR1");
    }
    bar1 = mmap(NULL, BAR1_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (bar1 == MAP_FAILED) {
        err(EXIT_FAILURE, "mmap BAR1");
    }
    set_reg32(REG_ID, VFIO_USER_TEST_ID);

    ctx = vfu_create_ctx(VFU_TRANS_SOCK, argv[1], 0, NULL, VFU_DEV_TYPE_PCI);
    if (!ctx) {
        err(EXIT_FAILURE, "vfu_create_ctx");
    }
    if (vfu_setup_log(ctx, log_cb, LOG_ERR) < 0 ||
        vfu_pci_init(ctx, VFU_PCI_TYPE_CONVENTIONAL, PCI_HEADER_TYPE_NORMAL,
                     0) < 0) {
        err(EXIT_FAILURE, "vfu_pci_init");
    }
    vfu_pci_set_id(ctx, VFIO_USER_TEST_VENDOR, VFIO_USER_TEST_DEVICE, 0, 0);
    if (vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX, BAR0_SIZE,
                         bar0_access, VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM,
                         NULL, 0, -1, 0) < 0 ||
        vfu_setup_region(ctx, VFU_PCI_DEV_BAR1_REGION_IDX, BAR1_SIZE,
                         bar1_access, VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM,
                         &bar1_mmap, 1, fd, 0) < 0 ||
        vfu_setup_region(ctx, VFU_PCI_DEV_BAR2_REGION_IDX, BAR2_SIZE,
                         bar2_access, VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM,
                         NULL, 0, -1, 0) < 0 ||
        vfu_setup_region(ctx, VFU_PCI_DEV_CFG_REGION_IDX, PCI_CFG_SPACE_SIZE,
                         cfg_access, VFU_REGION_FLAG_RW, NULL, 0, -1, 0) < 0) {
        err(EXIT_FAILURE, "vfu_setup_region");
    }
    msix_pos = vfu_pci_add_capability(ctx, 0, 0, &msix);
    if (msix_pos < 0) {
        err(EXIT_FAILURE, "vfu_pci_add_capability");
    }
    if (msix_pos + sizeof(msix) > MSI_CAP_POS) {
        errx(EXIT_FAILURE, "MSI-X capability at 0x%zx overlaps MSI's",
             (size_t)msix_pos);
    }
    /* MSI: written into config space and chained after MSI-X by hand */
    cfg = vfu_pci_get_config_space(ctx);
    memcpy(cfg->raw + MSI_CAP_POS, &msi, sizeof(msi));
    cfg->raw[msix_pos + PCI_CAP_LIST_NEXT] = MSI_CAP_POS;
    if (vfu_setup_device_nr_irqs(ctx, VFU_DEV_INTX_IRQ, 1) < 0 ||
        vfu_setup_device_nr_irqs(ctx, VFU_DEV_MSIX_IRQ, NR_MSIX) < 0 ||
        vfu_setup_device_nr_irqs(ctx, VFU_DEV_MSI_IRQ, NR_MSI) < 0 ||
        vfu_setup_device_dma(ctx, dma_register, dma_unregister) < 0 ||
        vfu_setup_device_reset_cb(ctx, reset_cb) < 0) {
        err(EXIT_FAILURE, "vfu_setup_device");
    }
    if (vfu_realize_ctx(ctx) < 0) {
        err(EXIT_FAILURE, "vfu_realize_ctx");
    }

    for (;;) {
        if (vfu_attach_ctx(ctx) < 0) {
            err(EXIT_FAILURE, "vfu_attach_ctx");
        }
        while (vfu_run_ctx(ctx) >= 0 || errno == EINTR) {
            continue;
        }
        if (errno != ENOTCONN && errno != ECONNRESET && errno != EPIPE) {
            err(EXIT_FAILURE, "vfu_run_ctx");
        }
    }
}
