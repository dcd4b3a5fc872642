/*
 * vfio-user device access: VFIODeviceIOOps over a vfio-user connection, so
 * that hw/vfio's device code reaches a vfio-user server the way it reaches
 * the kernel's VFIO driver.
 *
 * A server is not trusted: every reply is checked against the request and
 * against its own length before anything in it is used.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include "hw/core/cpu.h"
#include "hw/vfio-user/check.h"
#include "hw/vfio-user/device.h"
#include "hw/vfio-user/migration.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/main-loop.h"
#include "qemu/units.h"
#include "trace.h"

/* Room enough for any region's capabilities */
#define VFIO_USER_MAX_REGION_INFO   (64 * KiB)

/* What a PCI expansion ROM BAR can decode */
#define VFIO_USER_MAX_ROM_SIZE      (16 * MiB)

/*
 * GET_REGION_IO_FDS: first ask with room for a few entries of the longest
 * layout; a server that needs more says so, and gets one more try within
 * what we accept.
 */
#define VFIO_USER_IO_FDS_ARGSZ(n) \
    (sizeof(VFIOUserRegionIOFDsMsg) - sizeof(VFIOUserHdr) + \
     (n) * sizeof(VFIOUserIOFDEntryShadow))
#define VFIO_USER_IO_FDS_FIRST_ARGSZ  VFIO_USER_IO_FDS_ARGSZ(8)
#define VFIO_USER_IO_FDS_MAX_ARGSZ \
    VFIO_USER_IO_FDS_ARGSZ(VFIO_USER_MAX_IO_FDS)

static VFIOUserDevice *vfio_user_dev(VFIODevice *vbasedev)
{
    return vbasedev->io_opaque;
}

/*
 * A guest config space exchange that pci.c made ahead of hw/vfio's config
 * code (vfio_user_device_config_ahead()), on this thread, until hw/vfio
 * makes the same one and takes its result instead.
 */
typedef struct VFIOUserConfigAhead {
    VFIOUserDevice *udev;       /* NULL: none */
    bool write;
    off_t off;
    uint32_t size;
    int ret;
    uint8_t data[4];
} VFIOUserConfigAhead;

static __thread VFIOUserConfigAhead vfio_user_config_ahead;
/* Set while vfio_user_device_config_ahead() makes its exchange */
static __thread bool vfio_user_config_unlocked;

static int vfio_user_region_read(VFIODevice *vbasedev, uint8_t index,
                                 off_t off, uint32_t size, void *data);
static int vfio_user_region_write(VFIODevice *vbasedev, uint8_t index,
                                  off_t off, uint32_t size,
                                  const void *data);

/*
 * A guest's config space access, from a vCPU that holds the BQL: make
 * its exchange with the server (@size bytes at @off in the config region,
 * as hw/vfio's config code will ask for) now, letting the BQL go while
 * waiting, as for a BAR access.  pci.c calls this before hw/vfio's
 * vfio_pci_read_config() or vfio_pci_write_config(), whose own exchange
 * then takes this result; everything else they do holds the BQL as
 * usual.  The caller keeps the device referenced meanwhile, and checks
 * afterwards that it was not unplugged.
 */
void vfio_user_device_config_ahead(VFIODevice *vbasedev, bool write,
                                   off_t off, uint32_t size, void *data)
{
    VFIOUserConfigAhead *ahead = &vfio_user_config_ahead;
    int ret;

    assert(size <= sizeof(ahead->data));
    ahead->udev = NULL;
    vfio_user_config_unlocked = true;
    if (write) {
        ret = vfio_user_region_write(vbasedev, VFIO_PCI_CONFIG_REGION_INDEX,
                                     off, size, data);
    } else {
        ret = vfio_user_region_read(vbasedev, VFIO_PCI_CONFIG_REGION_INDEX,
                                    off, size, data);
    }
    vfio_user_config_unlocked = false;
    ahead->udev = vfio_user_dev(vbasedev);
    ahead->write = write;
    ahead->off = off;
    ahead->size = size;
    ahead->ret = ret;
    memcpy(ahead->data, data, size);
}

/* The access is over: an exchange made ahead and not taken is dropped */
void vfio_user_device_config_done(void)
{
    vfio_user_config_ahead.udev = NULL;
}

/* hw/vfio's exchange, if pci.c made it ahead: its result, and true */
static bool vfio_user_config_take(VFIOUserDevice *udev, uint8_t index,
                                  bool write, off_t off, uint32_t size,
                                  void *data, int *ret)
{
    VFIOUserConfigAhead *ahead = &vfio_user_config_ahead;

    if (ahead->udev != udev || index != VFIO_PCI_CONFIG_REGION_INDEX ||
        ahead->write != write || ahead->off != off || ahead->size != size) {
        return false;
    }
    ahead->udev = NULL;
    if (!write) {
        memcpy(data, ahead->data, size);
    }
    *ret = ahead->ret;
    return true;
}

/* The device an operation starts on: why the last one failed is old news */
static VFIOUserDevice *vfio_user_op_dev(VFIODevice *vbasedev)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);

    error_free(udev->last_error);
    udev->last_error = NULL;
    return udev;
}

/*
 * Once the server is gone, the device behaves like a PCI device that was
 * surprise-removed: reads return all ones, everything else does nothing.
 * The disconnection was reported once; a guest polling a register must not
 * flood the log with a failure per access.
 */
static bool vfio_user_dev_gone(VFIOUserDevice *udev)
{
    return !vfio_user_connected(udev->proxy);
}

/*
 * hw/vfio's callers only see the errno: trace why the operation failed,
 * and keep it for realize to tell (vfio_user_device_add_cause()).
 */
static int vfio_user_io_failed(VFIODevice *vbasedev, int ret, Error *err)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);

    trace_vfio_user_io_failed(vbasedev->name, error_get_pretty(err));
    error_free(udev->last_error);
    udev->last_error = err;
    return ret;
}

/*
 * hw/vfio made its own message of the last operation's errno: add why the
 * operation failed, if it did.
 */
void vfio_user_device_add_cause(VFIOUserDevice *udev, Error **errp)
{
    Error *cause = udev->last_error;
    Error *err = NULL;

    udev->last_error = NULL;
    if (cause && *errp) {
        error_setg(&err, "%s (%s)", error_get_pretty(*errp),
                   error_get_pretty(cause));
        error_free(*errp);
        *errp = err;
    }
    error_free(cause);
}

/* The payload of a reply, which must hold at least @min bytes */
static void *vfio_user_payload(VFIOUserMsg *reply, size_t min, size_t *len,
                               Error **errp)
{
    size_t payload = reply->hdr->size - sizeof(VFIOUserHdr);

    if (payload < min) {
        error_setg(errp, "reply to command %u is too short: %zu < %zu bytes",
                   reply->hdr->command, payload, min);
        return NULL;
    }
    if (len) {
        *len = payload;
    }
    return reply->hdr + 1;
}

/*
 * libvfio-user sends one fd per sparse mmap area; hw/vfio maps every area
 * of a region from one fd, which is right only if they are the same file.
 */
static bool vfio_user_same_file(const int *fds, size_t nfds)
{
    struct stat first, other;
    size_t i;

    if (nfds < 2) {
        return true;
    }
    if (fstat(fds[0], &first)) {
        return false;
    }
    for (i = 1; i < nfds; i++) {
        if (fstat(fds[i], &other) || other.st_dev != first.st_dev ||
            other.st_ino != first.st_ino) {
            return false;
        }
    }
    return true;
}

/*
 * Where the areas hw/vfio will mmap() from the region's fd end in it;
 * false if past 2^64.  The areas were checked to lie inside the region.
 */
static bool vfio_user_mmap_end(struct vfio_region_info *info, uint64_t *end)
{
    struct vfio_info_cap_header *hdr;
    struct vfio_region_info_cap_sparse_mmap *sparse;
    uint64_t last = 0;
    uint32_t i;

    hdr = vfio_get_region_info_cap(info, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    if (!hdr) {
        last = info->size;
    } else {
        sparse = container_of(hdr, struct vfio_region_info_cap_sparse_mmap,
                              header);
        for (i = 0; i < sparse->nr_areas; i++) {
            last = MAX(last, sparse->areas[i].offset + sparse->areas[i].size);
        }
    }
    return !uadd64_overflow(info->offset, last, end);
}

/*
 * hw/vfio maps a region's fd into the guest.  Once mapped, a file the
 * server shrinks makes the guest's next access to it SIGBUS QEMU: map
 * only memory files sealed against shrinking (F_SEAL_SHRINK) that cover
 * every mapped area, unless the user trusts the server's files.
 */
static bool vfio_user_check_mmap_fd(VFIOUserDevice *udev, int fd,
                                    struct vfio_region_info *info,
                                    Error **errp)
{
    struct stat st;
    uint64_t end;
    int seals;

    if (!vfio_user_mmap_end(info, &end)) {
        error_setg(errp, "its offset 0x%llx puts the mapped areas past the "
                   "end of any file", info->offset);
        return false;
    }
    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "cannot stat its fd");
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "its fd is not a file (mode 0%o)", st.st_mode);
        return false;
    }
    if (!udev->mmap_unsealed) {
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
            error_setg(errp, "its file is not sealed against shrinking "
                       "(F_SEAL_SHRINK)");
            return false;
        }
        /* Sealed: the size we see now is there to stay */
        if (fstat(fd, &st) < 0) {
            error_setg_errno(errp, errno, "cannot stat its fd");
            return false;
        }
    }
    if (st.st_size < end) {
        error_setg(errp, "its file has 0x%" PRIx64 " bytes, not the "
                   "0x%" PRIx64 " mapped", (uint64_t)st.st_size, end);
        return false;
    }
    return true;
}

static int vfio_user_get_region_info(VFIODevice *vbasedev,
                                     struct vfio_region_info *info)
{
    VFIOUserDevice *udev = vfio_user_op_dev(vbasedev);
    VFIOUserRegionInfo msg = { };
    g_auto(VFIOUserMsg) reply = { };
    struct vfio_region_info *rinfo;
    VFIOUserRegion *region;
    Error *err = NULL;
    size_t len;
    int ret;

    if (info->index >= udev->num_regions) {
        return -EINVAL;
    }
    vfio_user_request_init(&msg.hdr, VFIO_USER_DEVICE_GET_REGION_INFO,
                           sizeof(msg));
    msg.argsz = info->argsz;
    msg.index = info->index;
    ret = vfio_user_request(udev->proxy, &msg.hdr, NULL, 0, &reply, &err);
    if (ret < 0) {
        return vfio_user_io_failed(vbasedev, ret, err);
    }

    rinfo = vfio_user_payload(&reply, sizeof(*rinfo), &len, &err);
    if (!rinfo) {
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    if (rinfo->index != info->index) {
        error_setg(&err, "reply for region %u is for region %u",
                   info->index, rinfo->index);
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    if (!vfio_user_same_file(reply.fds, reply.nfds)) {
        error_setg(&err, "region %u: one fd per sparse mmap area, for "
                   "different files, is not supported", info->index);
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    if (rinfo->argsz < sizeof(*rinfo) ||
        rinfo->argsz > VFIO_USER_MAX_REGION_INFO) {
        error_setg(&err, "region %u info has invalid argsz %u",
                   info->index, rinfo->argsz);
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }

    if (rinfo->argsz > info->argsz) {
        /* No room for the capabilities: the caller retries with argsz */
        memcpy(info, rinfo, sizeof(*info));
        info->argsz = rinfo->argsz;
        info->flags &= ~VFIO_REGION_INFO_FLAG_CAPS;
        return 0;
    }
    len = MIN(len, rinfo->argsz);
    if (!vfio_user_check_region_info(rinfo, len, &err)) {
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    memset(info, 0, info->argsz);
    memcpy(info, rinfo, len);

    /*
     * PCI BARs are powers of two, and hw/pci asserts that they are; a
     * server may describe a BAR region of any size (libvfio-user does).
     * The guest gets the BAR rounded up; accesses past the region's end
     * are the server's to refuse.
     */
    if (info->index <= VFIO_PCI_ROM_REGION_INDEX &&
        info->size && !is_power_of_2(info->size)) {
        if (info->size > (1ULL << 63)) {
            error_setg(&err, "region %u is too large (0x%llx bytes)",
                       info->index, info->size);
            return vfio_user_io_failed(vbasedev, -EPROTO, err);
        }
        warn_report_once("vfio-user %s: BAR region %u size 0x%llx is not a "
                         "power of two; the guest sees 0x%" PRIx64,
                         udev->proxy->sockname, info->index, info->size,
                         pow2ceil(info->size));
        info->size = pow2ceil(info->size);
    }

    /* hw/vfio reads a ROM whole into memory */
    if (info->index == VFIO_PCI_ROM_REGION_INDEX &&
        info->size > VFIO_USER_MAX_ROM_SIZE) {
        error_setg(&err, "ROM region is 0x%llx bytes, more than the 16 MiB "
                   "of a PCI expansion ROM", info->size);
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }

    region = &udev->regions[info->index];
    region->offset = info->offset;
    if (region->fd >= 0) {
        close(region->fd);
        region->fd = -1;
    }
    /* With x-no-mmap=on, hw/vfio maps nothing: keep no fd either */
    if (reply.nfds && (info->flags & VFIO_REGION_INFO_FLAG_MMAP) &&
        !vbasedev->no_mmap) {
        if (vfio_user_check_mmap_fd(udev, reply.fds[0], info, &err)) {
            /* Keep the first; the message closes the others */
            region->fd = reply.fds[0];
            reply.fds[0] = -1;
        } else {
            warn_report("vfio-user %s: region %u is not mapped, its "
                        "accesses are messages: %s", udev->proxy->sockname,
                        info->index, error_get_pretty(err));
            error_free(err);
            err = NULL;
        }
    }
    if (region->fd < 0) {
        /* Nothing to mmap() from: every access goes through messages */
        info->flags &= ~VFIO_REGION_INFO_FLAG_MMAP;
    }
    trace_vfio_user_region_info(vbasedev->name, info->index, info->flags,
                                info->size, info->offset, region->fd);
    return 0;
}

static int vfio_user_region_mmap_fd(VFIODevice *vbasedev, int index)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);

    return index < udev->num_regions ? udev->regions[index].fd : -1;
}

static int vfio_user_get_irq_info(VFIODevice *vbasedev,
                                  struct vfio_irq_info *info)
{
    VFIOUserDevice *udev = vfio_user_op_dev(vbasedev);
    VFIOUserIRQInfo msg = { };
    g_auto(VFIOUserMsg) reply = { };
    struct vfio_irq_info *rinfo;
    Error *err = NULL;
    int ret;

    if (info->index >= vbasedev->num_irqs) {
        return -EINVAL;
    }
    vfio_user_request_init(&msg.hdr, VFIO_USER_DEVICE_GET_IRQ_INFO,
                           sizeof(msg));
    msg.argsz = sizeof(*info);
    msg.index = info->index;
    ret = vfio_user_request(udev->proxy, &msg.hdr, NULL, 0, &reply, &err);
    if (ret < 0) {
        return vfio_user_io_failed(vbasedev, ret, err);
    }
    rinfo = vfio_user_payload(&reply, sizeof(*rinfo), NULL, &err);
    if (!rinfo) {
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    if (rinfo->index != info->index) {
        error_setg(&err, "irq info reply for index %u, not %u",
                   rinfo->index, info->index);
        return vfio_user_io_failed(vbasedev, -EPROTO, err);
    }
    info->flags = rinfo->flags;
    info->count = rinfo->count;
    trace_vfio_user_irq_info(vbasedev->name, info->index, info->flags,
                             info->count);
    return 0;
}

/*
 * INTx's resample eventfd, which hw/vfio wires when KVM takes INTx: the
 * one SET_IRQS whose refusal hw/vfio acts on from a vCPU (it then falls
 * back to QEMU's own INTx handling).
 */
static bool vfio_user_irqs_resample(const struct vfio_irq_set *irq_set)
{
    return irq_set->index == VFIO_PCI_INTX_IRQ_INDEX &&
           (irq_set->flags & VFIO_IRQ_SET_ACTION_UNMASK) &&
           (irq_set->flags & VFIO_IRQ_SET_DATA_TYPE_MASK) ==
           VFIO_IRQ_SET_DATA_EVENTFD;
}

/*
 * A vCPU changes the device's interrupt state for the guest (MSI or MSI-X
 * enabled or disabled, a vector unmasked, INTx wired again as MSI goes
 * off, INTx unmasked at EOI): hw/vfio keeps pointers into its vector
 * state across the request, so the BQL cannot go while it waits, and a
 * stopped server would stop QEMU with it.  Such a request is posted
 * instead: the server takes requests in order, so whatever the guest does
 * next reaches the device after it, and what waits for a reply (a BAR
 * read, say) waits for this one first, without the BQL.  A refusal is
 * reported when it comes; hw/vfio would only have reported it too, and
 * let go of the vectors' eventfds, which it does anyway when the guest
 * turns the interrupt off.
 *
 * INTx's resample eventfd is the exception: hw/vfio falls back to QEMU's
 * own INTx handling when the server refuses it.  It is posted only if
 * this server took it the last time it was asked (at realize, from the
 * main loop, where the request waits, if INTx was routed then), and
 * refused at once, without asking, if it refused it then; the first
 * request to a server waits.
 */
static bool vfio_user_irqs_posted(VFIOUserDevice *udev,
                                  const struct vfio_irq_set *irq_set)
{
    if (!current_cpu || !bql_locked()) {
        return false;
    }
    if (vfio_user_irqs_resample(irq_set)) {
        return udev->intx_resample == VFIO_USER_RESAMPLE_TAKEN;
    }
    return true;
}

static int vfio_user_send_irq_set(VFIODevice *vbasedev,
                                  struct vfio_irq_set *irq_set,
                                  uint32_t start, uint32_t count,
                                  const void *data, size_t data_len,
                                  const int *fds, size_t nfds, bool quiet)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    size_t size = sizeof(VFIOUserIRQSet) + data_len;
    g_autofree VFIOUserIRQSet *msg = g_malloc0(size);
    Error *err = NULL;
    int ret;

    vfio_user_request_init(&msg->hdr, VFIO_USER_DEVICE_SET_IRQS, size);
    msg->argsz = size - sizeof(VFIOUserHdr);
    msg->flags = irq_set->flags;
    msg->index = irq_set->index;
    msg->start = start;
    msg->count = count;
    if (data_len) {
        memcpy(msg + 1, data, data_len);
    }
    if (vfio_user_irqs_posted(udev, irq_set)) {
        ret = vfio_user_request_posted(udev->proxy, &msg->hdr, fds, nfds,
                                       quiet ? VFIO_USER_POSTED_QUIET : 0,
                                       &err);
    } else if (current_cpu && vfio_user_irqs_resample(irq_set) &&
               udev->intx_resample == VFIO_USER_RESAMPLE_REFUSED) {
        error_setg(&err, "the server refused INTx's resample eventfd "
                   "before");
        ret = -EINVAL;
    } else {
        ret = vfio_user_request(udev->proxy, &msg->hdr, fds, nfds, NULL,
                                &err);
        if (vfio_user_irqs_resample(irq_set) && ret != -ENOTCONN) {
            udev->intx_resample = ret < 0 ? VFIO_USER_RESAMPLE_REFUSED :
                                  VFIO_USER_RESAMPLE_TAKEN;
        }
    }
    if (ret < 0) {
        return vfio_user_io_failed(vbasedev, ret, err);
    }
    return 0;
}

/*
 * A server masks its MSI and MSI-X vectors until told otherwise (its
 * device starts masked, as PCI devices do), while hw/vfio masks vectors on
 * the guest's behalf in QEMU and never asks a kernel device to unmask:
 * unmask on the server the vectors that get an eventfd.
 *
 * QEMU's own x-vfio-user-server treats count as an end index; unmasking
 * from vector 0 means the same to it and to a server that reads the spec.
 * Vectors below @end that have no eventfd stay silent either way.
 *
 * libvfio-user serves UNMASK without saying VFIO_IRQ_INFO_MASKABLE, so
 * this is tried on every server, and a server that refuses it (it then
 * has nothing masked to speak of) is not an error.
 */
static void vfio_user_unmask_vectors(VFIODevice *vbasedev,
                                     struct vfio_irq_set *irq_set,
                                     uint32_t end)
{
    struct vfio_irq_set unmask = {
        .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
        .index = irq_set->index,
    };

    if ((irq_set->index != VFIO_PCI_MSI_IRQ_INDEX &&
         irq_set->index != VFIO_PCI_MSIX_IRQ_INDEX) ||
        (irq_set->flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) !=
        VFIO_IRQ_SET_ACTION_TRIGGER) {
        return;
    }
    vfio_user_send_irq_set(vbasedev, &unmask, 0, end, NULL, 0, NULL, 0, true);
}

/*
 * The eventfds hw/vfio wired to the device's interrupts (trigger) and
 * INTx's resample (unmask), kept (dup()ed) for a server that comes back.
 */
static VFIOUserIRQFds *vfio_user_irq_fds(VFIOUserDevice *udev,
                                         struct vfio_irq_set *irq_set)
{
    uint32_t action = irq_set->flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;

    if (irq_set->index >= udev->num_irqs) {
        return NULL;
    }
    switch (action) {
    case VFIO_IRQ_SET_ACTION_TRIGGER:
        return &udev->irq_fds[irq_set->index * 2];
    case VFIO_IRQ_SET_ACTION_UNMASK:
        return &udev->irq_fds[irq_set->index * 2 + 1];
    default:
        return NULL;
    }
}

static void vfio_user_irq_fds_clear(VFIOUserIRQFds *irq)
{
    uint32_t i;

    for (i = 0; i < irq->nr; i++) {
        if (irq->fds[i] >= 0) {
            close(irq->fds[i]);
        }
    }
    g_free(irq->fds);
    irq->fds = NULL;
    irq->nr = 0;
}

static void vfio_user_record_irqs(VFIOUserDevice *udev,
                                  struct vfio_irq_set *irq_set)
{
    VFIOUserIRQFds *irq = vfio_user_irq_fds(udev, irq_set);
    const int32_t *fds = (const int32_t *)irq_set->data;
    uint32_t i, end;

    if (!irq) {
        return;
    }
    switch (irq_set->flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE:
        /* hw/vfio's "disable the index": trigger, no data, count 0 */
        if (!irq_set->count &&
            (irq_set->flags & VFIO_IRQ_SET_ACTION_TRIGGER)) {
            vfio_user_irq_fds_clear(irq);
            vfio_user_irq_fds_clear(irq + 1);
        }
        return;
    case VFIO_IRQ_SET_DATA_EVENTFD:
        break;
    default:
        return;
    }
    end = irq_set->start + irq_set->count;
    if (end > irq->nr) {
        irq->fds = g_renew(int, irq->fds, end);
        for (i = irq->nr; i < end; i++) {
            irq->fds[i] = -1;
        }
        irq->nr = end;
    }
    for (i = 0; i < irq_set->count; i++) {
        int *slot = &irq->fds[irq_set->start + i];

        if (*slot >= 0) {
            close(*slot);
        }
        *slot = fds[i] >= 0 ? qemu_dup(fds[i]) : -1;
    }
}

/*
 * Eventfds travel as SCM_RIGHTS, where -1 ("tear this vector down") cannot
 * be expressed and at most max_send_fds fit: send runs of real fds in
 * chunks the server accepts, and runs of -1 as "no fds" for their range.
 */
static int vfio_user_send_irqs(VFIODevice *vbasedev,
                               struct vfio_irq_set *irq_set)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    const int32_t *fds = (const int32_t *)irq_set->data;
    uint32_t max_fds = udev->proxy->max_send_fds;
    uint32_t i, run, assigned_end = 0;
    int ret;

    switch (irq_set->flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE:
        return vfio_user_send_irq_set(vbasedev, irq_set, irq_set->start,
                                      irq_set->count, NULL, 0, NULL, 0,
                                      false);
    case VFIO_IRQ_SET_DATA_BOOL:
        return vfio_user_send_irq_set(vbasedev, irq_set, irq_set->start,
                                      irq_set->count, irq_set->data,
                                      irq_set->count, NULL, 0, false);
    case VFIO_IRQ_SET_DATA_EVENTFD:
        break;
    default:
        return -EINVAL;
    }

    for (i = 0; i < irq_set->count; i += run) {
        bool assign = fds[i] >= 0;

        for (run = 1; i + run < irq_set->count; run++) {
            if ((fds[i + run] >= 0) != assign ||
                (assign && run == max_fds)) {
                break;
            }
        }
        ret = vfio_user_send_irq_set(vbasedev, irq_set, irq_set->start + i,
                                     run, NULL, 0, assign ? fds + i : NULL,
                                     assign ? run : 0, false);
        if (ret < 0) {
            return ret;
        }
        if (assign) {
            assigned_end = irq_set->start + i + run;
        }
    }
    if (assigned_end) {
        vfio_user_unmask_vectors(vbasedev, irq_set, assigned_end);
    }
    return 0;
}

static int vfio_user_set_irqs(VFIODevice *vbasedev,
                              struct vfio_irq_set *irq_set)
{
    VFIOUserDevice *udev = vfio_user_op_dev(vbasedev);
    VFIOUserIRQFds *recorded;
    int ret;

    /* Even without a server: one may come back, and get them then */
    vfio_user_record_irqs(udev, irq_set);
    if (vfio_user_dev_gone(udev)) {
        return 0;
    }
    ret = vfio_user_send_irqs(vbasedev, irq_set);
    recorded = vfio_user_irq_fds(udev, irq_set);
    if (ret < 0 && vfio_user_irqs_resample(irq_set) && recorded) {
        /* hw/vfio handles INTx itself instead: nothing to give back */
        vfio_user_irq_fds_clear(recorded);
    }
    return ret;
}

/* A server that came back: wire the interrupts hw/vfio wired before */
static bool vfio_user_replay_irqs(VFIODevice *vbasedev, Error **errp)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    unsigned int i;

    for (i = 0; i < udev->num_irqs * 2; i++) {
        VFIOUserIRQFds *irq = &udev->irq_fds[i];
        size_t size = sizeof(struct vfio_irq_set) + irq->nr * sizeof(int32_t);
        g_autofree struct vfio_irq_set *irq_set = NULL;

        if (!irq->nr) {
            continue;
        }
        irq_set = g_malloc0(size);
        irq_set->argsz = size;
        irq_set->flags = VFIO_IRQ_SET_DATA_EVENTFD |
                         (i % 2 ? VFIO_IRQ_SET_ACTION_UNMASK :
                                  VFIO_IRQ_SET_ACTION_TRIGGER);
        irq_set->index = i / 2;
        irq_set->count = irq->nr;
        memcpy(irq_set->data, irq->fds, irq->nr * sizeof(int32_t));
        if (vfio_user_send_irqs(vbasedev, irq_set) < 0) {
            error_setg(errp, "cannot wire the interrupts of index %u again",
                       irq_set->index);
            return false;
        }
    }
    return true;
}

static int vfio_user_region_offset(VFIODevice *vbasedev, uint8_t index,
                                   off_t off, uint32_t size, uint64_t *rel)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);

    if (index >= udev->num_regions || off < udev->regions[index].offset) {
        return -EINVAL;
    }
    *rel = off - udev->regions[index].offset;
    return 0;
}

static int vfio_user_region_read(VFIODevice *vbasedev, uint8_t index,
                                 off_t off, uint32_t size, void *data)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    /* A guest's BAR or config read: a vCPU waits without the BQL */
    bool bar = index < VFIO_PCI_ROM_REGION_INDEX;
    bool unlocked = bar || vfio_user_config_unlocked;
    uint32_t done = 0;
    uint64_t rel;
    int ret;

    if (vfio_user_config_take(udev, index, false, off, size, data, &ret)) {
        return ret;
    }
    udev = vfio_user_op_dev(vbasedev);

    ret = vfio_user_region_offset(vbasedev, index, off, size, &rel);
    if (ret < 0) {
        return ret;
    }
    if (vfio_user_dev_gone(udev)) {
        memset(data, 0xff, size);
        return size;
    }
    if (udev->regions[index].iofds &&
        vfio_user_iofds_read(udev->regions[index].iofds, udev->proxy, rel,
                             size, data, &ret)) {
        return ret;
    }
    while (done < size) {
        uint32_t count = MIN(size - done, udev->proxy->max_xfer_size);
        VFIOUserRegionRW msg = { };
        g_auto(VFIOUserMsg) reply = { };
        VFIOUserRegionRW *rw;
        Error *err = NULL;

        vfio_user_request_init(&msg.hdr, VFIO_USER_REGION_READ, sizeof(msg));
        msg.offset = rel + done;
        msg.region = index;
        msg.count = count;
        if (unlocked) {
            ret = vfio_user_request_unlocked(udev->proxy, &msg.hdr, &reply,
                                             &err);
        } else {
            ret = vfio_user_request(udev->proxy, &msg.hdr, NULL, 0, &reply,
                                    &err);
        }
        if (ret < 0) {
            return vfio_user_io_failed(vbasedev, ret, err);
        }
        if (!vfio_user_payload(&reply, sizeof(msg) - sizeof(msg.hdr) + count,
                               NULL, &err)) {
            return vfio_user_io_failed(vbasedev, -EPROTO, err);
        }
        rw = (VFIOUserRegionRW *)reply.hdr;
        if (rw->count != count) {
            error_setg(&err, "REGION_READ returned %u bytes, not %u",
                       rw->count, count);
            return vfio_user_io_failed(vbasedev, -EPROTO, err);
        }
        memcpy(data + done, rw->data, count);
        done += count;
    }
    return done;
}

static int vfio_user_region_write(VFIODevice *vbasedev, uint8_t index,
                                  off_t off, uint32_t size, const void *data)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    bool unlocked = vfio_user_config_unlocked;
    uint32_t done = 0;
    uint64_t rel;
    bool bar, posted;
    int ret;

    if (vfio_user_config_take(udev, index, true, off, size, (void *)data,
                              &ret)) {
        return ret;
    }
    udev = vfio_user_op_dev(vbasedev);

    ret = vfio_user_region_offset(vbasedev, index, off, size, &rel);
    if (ret < 0) {
        return ret;
    }
    if (vfio_user_dev_gone(udev)) {
        return size;
    }
    if (udev->regions[index].iofds &&
        vfio_user_iofds_write(udev->regions[index].iofds, udev->proxy, rel,
                              size, data, &ret)) {
        return ret;
    }
    /*
     * A guest's write to a BAR has nobody to hear of its failure: post it
     * (or, if not, wait without the BQL).  Config space writes wait, as
     * hw/vfio acts on what follows them; a guest's waits without the BQL.
     */
    bar = index < VFIO_PCI_ROM_REGION_INDEX;
    posted = udev->posted_writes && bar;
    unlocked |= bar;
    while (done < size) {
        uint32_t count = MIN(size - done, udev->proxy->max_xfer_size);
        size_t msg_size = sizeof(VFIOUserRegionRW) + count;
        g_autofree VFIOUserRegionRW *msg = g_malloc0(msg_size);
        Error *err = NULL;

        vfio_user_request_init(&msg->hdr, VFIO_USER_REGION_WRITE, msg_size);
        msg->offset = rel + done;
        msg->region = index;
        msg->count = count;
        memcpy(msg->data, data + done, count);
        if (posted) {
            ret = vfio_user_request_posted(udev->proxy, &msg->hdr, NULL, 0,
                                           VFIO_USER_POSTED_RELEASE_BQL,
                                           &err);
        } else if (unlocked) {
            ret = vfio_user_request_unlocked(udev->proxy, &msg->hdr, NULL,
                                             &err);
        } else {
            ret = vfio_user_request(udev->proxy, &msg->hdr, NULL, 0, NULL,
                                    &err);
        }
        if (ret < 0) {
            return vfio_user_io_failed(vbasedev, ret, err);
        }
        done += count;
    }
    return done;
}

/*
 * Ask the server which parts of region @index it wants reached through
 * fds of their own, and hand them to iofd.c.  A server without
 * GET_REGION_IO_FDS, or with nothing for this region, is fine: accesses
 * keep going through the socket.
 */
static void vfio_user_fetch_io_fds(VFIODevice *vbasedev, unsigned int index)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    VFIOUserIOFDs *iofds = udev->regions[index].iofds;
    uint32_t argsz = VFIO_USER_IO_FDS_FIRST_ARGSZ;
    int attempt;

    for (attempt = 0; attempt < 2; attempt++) {
        VFIOUserRegionIOFDsMsg msg = { };
        g_auto(VFIOUserMsg) reply = { };
        VFIOUserRegionIOFDsMsg *rmsg;
        Error *err = NULL;

        vfio_user_request_init(&msg.hdr, VFIO_USER_DEVICE_GET_REGION_IO_FDS,
                               sizeof(msg));
        msg.argsz = argsz;
        msg.index = index;
        if (vfio_user_request(udev->proxy, &msg.hdr, NULL, 0, &reply,
                              &err) < 0) {
            trace_vfio_user_iofds_none(vbasedev->name, index,
                                       error_get_pretty(err));
            error_free(err);
            break;
        }
        if (!vfio_user_payload(&reply, sizeof(msg) - sizeof(msg.hdr), NULL,
                               &err)) {
            goto refuse;
        }
        rmsg = (VFIOUserRegionIOFDsMsg *)reply.hdr;
        if (rmsg->index != index || rmsg->flags) {
            error_setg(&err, "reply for region %u with flags 0x%x",
                       rmsg->index, rmsg->flags);
            goto refuse;
        }
        if (rmsg->argsz <= argsz || !rmsg->count) {
            vfio_user_iofds_install(iofds, &reply);
            break;
        }
        /* Too little room: the server said how much, and sent nothing */
        if (rmsg->argsz > VFIO_USER_IO_FDS_MAX_ARGSZ) {
            error_setg(&err, "%u entries need argsz %u, more than the %zu "
                       "accepted", rmsg->count, rmsg->argsz,
                       VFIO_USER_IO_FDS_MAX_ARGSZ);
            goto refuse;
        }
        if (attempt) {
            error_setg(&err, "the server asks for more room than it said "
                       "it needs (argsz %u)", argsz);
            goto refuse;
        }
        argsz = rmsg->argsz;
        continue;

refuse:
        vfio_user_iofds_report(iofds, "I/O fds refused: %s",
                               error_get_pretty(err));
        error_free(err);
        break;
    }
    iofds->reported = true;
}

void vfio_user_device_setup_io_fds(VFIODevice *vbasedev, VFIORegion *region,
                                   bool pio)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    VFIOUserRegion *uregion = &udev->regions[region->nr];

    if (!uregion->iofds) {
        uregion->iofds = vfio_user_iofds_new(vbasedev->name, region, pio,
                                             udev->proxy->timeout_ms,
                                             &udev->io_fds_budget);
    }
    if (!vfio_user_dev_gone(udev)) {
        vfio_user_fetch_io_fds(vbasedev, region->nr);
    }
}

static void vfio_user_clear_io_fds(VFIOUserDevice *udev)
{
    unsigned int i;

    for (i = 0; i < udev->num_regions; i++) {
        if (udev->regions[i].iofds) {
            vfio_user_iofds_clear(udev->regions[i].iofds);
        }
    }
}

/* Unregister every I/O fd and close it, for good */
void vfio_user_device_drop_io_fds(VFIODevice *vbasedev)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);

    if (udev) {
        vfio_user_clear_io_fds(udev);
    }
}

/*
 * The server is gone: unregister its fds and close them.  From a bottom
 * half, as the connection may be lost in the middle of an access that is
 * using them.
 */
static void vfio_user_lost_bh(void *opaque)
{
    vfio_user_clear_io_fds(opaque);
}

static void vfio_user_lost(Notifier *notifier, void *data)
{
    VFIOUserDevice *udev = container_of(notifier, VFIOUserDevice, lost);

    qemu_bh_schedule(udev->lost_bh);
}

static int vfio_user_device_reset(VFIODevice *vbasedev)
{
    VFIOUserDevice *udev = vfio_user_op_dev(vbasedev);
    VFIOUserHdr msg;
    Error *err = NULL;
    unsigned int i;
    int ret;

    if (vfio_user_dev_gone(udev)) {
        return 0;
    }
    /* A reset device may want other fds, or none: ask again after it */
    vfio_user_clear_io_fds(udev);
    vfio_user_request_init(&msg, VFIO_USER_DEVICE_RESET, sizeof(msg));
    ret = vfio_user_request(udev->proxy, &msg, NULL, 0, NULL, &err);
    for (i = 0; i < udev->num_regions && !vfio_user_dev_gone(udev); i++) {
        if (udev->regions[i].iofds) {
            vfio_user_fetch_io_fds(vbasedev, i);
        }
    }
    if (ret < 0) {
        return vfio_user_io_failed(vbasedev, ret, err);
    }
    return 0;
}

const VFIODeviceIOOps vfio_user_device_io_ops = {
    .provider = "the vfio-user server",
    .get_region_info = vfio_user_get_region_info,
    .region_mmap_fd = vfio_user_region_mmap_fd,
    .get_irq_info = vfio_user_get_irq_info,
    .set_irqs = vfio_user_set_irqs,
    .region_read = vfio_user_region_read,
    .region_write = vfio_user_region_write,
    .device_reset = vfio_user_device_reset,
    .device_feature = vfio_user_device_feature,
    .mig_data_read = vfio_user_mig_data_read,
    .mig_data_write = vfio_user_mig_data_write,
    .mig_precopy_info = vfio_user_mig_precopy_info,
};

/*
 * Make @vbasedev reach its device through @udev's connection, learning the
 * device's shape (what VFIO_DEVICE_GET_INFO tells for a kernel device).
 */
/* DEVICE_GET_INFO: the device's shape, what VFIO_DEVICE_GET_INFO tells */
static bool vfio_user_get_device_info(VFIODevice *vbasedev,
                                      VFIOUserDevice *udev,
                                      struct vfio_device_info *info,
                                      Error **errp)
{
    VFIOUserDeviceInfo msg = { };
    g_auto(VFIOUserMsg) reply = { };
    struct vfio_device_info *rinfo;
    size_t len;

    vfio_user_request_init(&msg.hdr, VFIO_USER_DEVICE_GET_INFO, sizeof(msg));
    msg.argsz = sizeof(msg) - sizeof(msg.hdr);
    if (vfio_user_request(udev->proxy, &msg.hdr, NULL, 0, &reply, errp) < 0) {
        return false;
    }
    rinfo = vfio_user_payload(&reply, msg.argsz, &len, errp);
    if (!rinfo) {
        return false;
    }
    /* A PCI device has at least its config region and MSI-X index */
    if (rinfo->num_regions > VFIO_PCI_NUM_REGIONS + 64 ||
        rinfo->num_irqs > VFIO_PCI_NUM_IRQS + 64) {
        error_setg(errp, "implausible device: %u regions, %u irq types",
                   rinfo->num_regions, rinfo->num_irqs);
        return false;
    }
    trace_vfio_user_device_info(vbasedev->name, rinfo->flags,
                                rinfo->num_regions, rinfo->num_irqs);
    /* The reply may be shorter than the kernel's struct: the rest is 0 */
    memset(info, 0, sizeof(*info));
    memcpy(info, rinfo, MIN(len, sizeof(*info)));
    return true;
}

/*
 * A server that came back must serve the same device, and one whose BARs
 * hw/vfio did not map from the old server's files: the guest would still
 * see the old server's memory there.
 */
bool vfio_user_device_check_same(VFIODevice *vbasedev, Error **errp)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    struct vfio_device_info info;
    unsigned int i;

    for (i = 0; i < udev->num_regions; i++) {
        if (udev->regions[i].fd >= 0) {
            error_setg(errp, "region %u is mapped from the old server's "
                       "file (use x-no-mmap=on with reconnect-ms)", i);
            return false;
        }
    }
    if (!vfio_user_get_device_info(vbasedev, udev, &info, errp)) {
        return false;
    }
    if (info.num_regions != udev->num_regions ||
        info.num_irqs != udev->num_irqs || info.flags != vbasedev->flags) {
        error_setg(errp, "the server now serves another device (%u regions, "
                   "%u irq types, flags 0x%x; before: %u, %u, 0x%x)",
                   info.num_regions, info.num_irqs, info.flags,
                   udev->num_regions, udev->num_irqs, vbasedev->flags);
        return false;
    }
    return true;
}

/*
 * The rest of what the server had, after config space and DMA mappings:
 * the interrupts' eventfds, and the I/O fds it may offer again.
 */
bool vfio_user_device_replay(VFIODevice *vbasedev, Error **errp)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    unsigned int i;

    /* A new server: what the last one said of INTx's resample is moot */
    udev->intx_resample = VFIO_USER_RESAMPLE_UNKNOWN;
    if (!vfio_user_replay_irqs(vbasedev, errp)) {
        return false;
    }
    vfio_user_clear_io_fds(udev);
    for (i = 0; i < udev->num_regions; i++) {
        if (udev->regions[i].iofds) {
            vfio_user_fetch_io_fds(vbasedev, i);
        }
    }
    return vfio_user_connected(udev->proxy);
}

/*
 * Make @vbasedev reach its device through @udev's connection, learning the
 * device's shape (what VFIO_DEVICE_GET_INFO tells for a kernel device).
 */
bool vfio_user_device_attach(VFIODevice *vbasedev, VFIOUserDevice *udev,
                             Error **errp)
{
    struct vfio_device_info info;
    unsigned int i;

    if (!vfio_user_get_device_info(vbasedev, udev, &info, errp)) {
        return false;
    }

    vbasedev->num_regions = info.num_regions;
    vbasedev->num_irqs = info.num_irqs;
    vbasedev->flags = info.flags;
    vbasedev->reset_works = !!(info.flags & VFIO_DEVICE_FLAGS_RESET);

    udev->num_irqs = info.num_irqs;
    udev->irq_fds = g_new0(VFIOUserIRQFds, udev->num_irqs * 2);
    udev->num_regions = info.num_regions;
    udev->regions = g_new0(VFIOUserRegion, udev->num_regions);
    for (i = 0; i < udev->num_regions; i++) {
        udev->regions[i].fd = -1;
    }
    udev->io_fds_budget = VFIO_USER_MAX_IO_FDS;
    udev->lost_bh = qemu_bh_new_guarded(vfio_user_lost_bh, udev,
                                        &vbasedev->dev->mem_reentrancy_guard);
    udev->lost.notify = vfio_user_lost;
    vfio_user_add_lost_notifier(udev->proxy, &udev->lost);
    vbasedev->io_ops = &vfio_user_device_io_ops;
    vbasedev->io_opaque = udev;
    return true;
}

void vfio_user_device_detach(VFIODevice *vbasedev)
{
    VFIOUserDevice *udev = vfio_user_dev(vbasedev);
    unsigned int i;

    if (!udev) {
        return;
    }
    notifier_remove(&udev->lost);
    qemu_bh_delete(udev->lost_bh);
    udev->lost_bh = NULL;
    for (i = 0; i < udev->num_regions; i++) {
        vfio_user_iofds_free(udev->regions[i].iofds);
        if (udev->regions[i].fd >= 0) {
            close(udev->regions[i].fd);
        }
    }
    g_free(udev->regions);
    udev->regions = NULL;
    for (i = 0; i < udev->num_irqs * 2; i++) {
        vfio_user_irq_fds_clear(&udev->irq_fds[i]);
    }
    g_free(udev->irq_fds);
    udev->irq_fds = NULL;
    udev->num_irqs = 0;
    error_free(udev->last_error);
    udev->last_error = NULL;
    udev->num_regions = 0;
    vbasedev->io_ops = &vfio_device_io_ops_ioctl;
    vbasedev->io_opaque = NULL;
}
