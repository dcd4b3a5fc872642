/*
 * vfio-user I/O fds: doorbells and registers a server wants reached
 * through fds of their own (VFIO_USER_DEVICE_GET_REGION_IO_FDS) rather
 * than through REGION_READ/REGION_WRITE round trips on the socket.
 *
 * - ioeventfd: registered on the BAR's MemoryRegion.  Under KVM the kernel
 *   signals the eventfd without leaving the guest; under TCG the memory
 *   core signals it before the region's write handler would run.
 * - shadow ioeventfd (newer libvfio-user): no kernel implements it, so the
 *   write is intercepted here: the value goes into the shadow memory the
 *   server passed (with pwrite(), not through a mapping: a server that
 *   shrinks the file must not turn the guest's write into a SIGBUS), then
 *   the eventfd is signalled.
 * - ioregionfd: the proposed KVM ioregionfd never reached Linux; QEMU
 *   speaks its wire protocol on the server's socket for the sub-region.
 *   A vCPU waits for the response without the BQL, as for a BAR access
 *   through the vfio-user socket (see vfio_user_ioregionfd_access()).
 *
 * The contract with servers (formats, ordering) is in
 * docs/interop/vfio-user-io-fds.rst.  A server is not trusted: every entry
 * is checked before anything is registered, and what KVM would refuse
 * (QEMU aborts when KVM refuses an ioeventfd) is refused here first.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <glib-unix.h>
#include <poll.h>
#include <sys/socket.h>

#include "exec/memory.h"
#include "hw/vfio-user/check.h"
#include "hw/vfio-user/iofd.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/error-report.h"
#include "qemu/event_notifier.h"
#include "qemu/host-utils.h"
#include "qemu/main-loop.h"
#include "qemu/memfd.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "trace.h"

/*
 * An ioregionfd's socket, one per socket the server sent for the region:
 * entries sent on the same socket share it, so that their commands and
 * responses keep in step.  Accesses in flight hold a reference too: they
 * use it without the BQL, and a reset or the server's death may clear
 * the entries meanwhile, which then only drop theirs.  A channel is in
 * its region's list for as long as it lives, so that a socket sent again
 * after a reset, while an access still waits on it, is the same channel.
 * References are taken and dropped with the BQL held.
 */
typedef struct VFIOUserIORegionChan {
    VFIOUserIOFDs *owner;
    int refs;
    int fd;
    dev_t dev;                  /* with ino, tells a socket sent twice */
    ino_t ino;
    QemuMutex lock;             /* a command and its response at a time */
    bool failed;                /* a response went missing: out of step */
} VFIOUserIORegionChan;

struct VFIOUserIOFD {
    uint32_t type;
    uint64_t offset;
    uint64_t size;              /* access size; an ioregionfd's length */
    bool datamatch;
    uint64_t data;              /* as in VFIOUserIOFDDesc */
    bool posted;                /* ioregionfd writes need no response */
    bool registered;            /* with the MemoryRegion */
    EventNotifier notifier;     /* the eventfd types */
    VFIOUserIORegionChan *chan; /* an ioregionfd's socket */
    int shadow_fd;              /* a shadow ioeventfd's memory, or -1 */
    uint64_t shadow_offset;     /* where in it the value goes */
};

static const char *vfio_user_iofd_type_name(uint32_t type)
{
    switch (type) {
    case VFIO_USER_IO_FD_TYPE_IOEVENTFD:
        return "ioeventfd";
    case VFIO_USER_IO_FD_TYPE_IOREGIONFD:
        return "ioregionfd";
    case VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW:
        return "shadow ioeventfd";
    default:
        return "entry of unknown type";
    }
}

/* The part of the region an access must start in to be the entry's */
static uint64_t vfio_user_iofd_span(uint64_t size)
{
    /* An ioeventfd of size 0 takes accesses of any size at its offset */
    return size ? size : 1;
}

static bool vfio_user_ranges_overlap(uint64_t a, uint64_t alen,
                                     uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* What KVM and this region allow, before anything is registered */
static bool vfio_user_iofd_check(VFIOUserIOFDs *iofds,
                                 const VFIOUserIOFDDesc *d, size_t nfds,
                                 Error **errp)
{
    uint64_t region_size = iofds->region->size;
    uint64_t span = vfio_user_iofd_span(d->size);
    bool datamatch = d->flags & VFIO_USER_IOEVENTFD_FLAG_DATAMATCH;
    uint32_t i;

    switch (d->type) {
    case VFIO_USER_IO_FD_TYPE_IOEVENTFD:
    case VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW:
        if (d->flags & ~(VFIO_USER_IOEVENTFD_FLAG_DATAMATCH |
                         VFIO_USER_IOEVENTFD_FLAG_PIO)) {
            error_setg(errp, "unknown flags 0x%x", d->flags);
            return false;
        }
        if ((d->flags & VFIO_USER_IOEVENTFD_FLAG_PIO) && !iofds->pio) {
            error_setg(errp, "the PIO flag on a memory BAR");
            return false;
        }
        if (d->size == 0) {
            /* KVM's "any length": MMIO only, and nothing to match */
            if (d->type != VFIO_USER_IO_FD_TYPE_IOEVENTFD || iofds->pio ||
                datamatch) {
                error_setg(errp, "size 0 (any access size) needs a plain "
                           "ioeventfd on a memory BAR, without datamatch");
                return false;
            }
        } else if (d->size > 8 || !is_power_of_2(d->size) ||
                   (iofds->pio && d->size > 4)) {
            error_setg(errp, "access size %" PRIu64 " is not %s", d->size,
                       iofds->pio ? "1, 2 or 4" : "1, 2, 4 or 8");
            return false;
        }
        if (datamatch && d->size < 8 && d->data >> (d->size * 8)) {
            error_setg(errp, "datamatch 0x%" PRIx64 " does not fit in %"
                       PRIu64 " bytes", d->data, d->size);
            return false;
        }
        /* QEMU hands KVM 32 bits of datamatch: a wider one would not match */
        if (datamatch && d->type == VFIO_USER_IO_FD_TYPE_IOEVENTFD &&
            d->data > UINT32_MAX) {
            error_setg(errp, "datamatch 0x%" PRIx64 " is wider than 32 bits",
                       d->data);
            return false;
        }
        if (d->type == VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW &&
            d->shadow_fd_index >= nfds) {
            error_setg(errp, "shadow fd index %u, but the reply carries %zu "
                       "fds", d->shadow_fd_index, nfds);
            return false;
        }
        break;
    case VFIO_USER_IO_FD_TYPE_IOREGIONFD:
        if (d->flags & ~(VFIO_USER_IOREGIONFD_FLAG_PIO |
                         VFIO_USER_IOREGIONFD_FLAG_POSTED_WRITES)) {
            error_setg(errp, "unknown flags 0x%x", d->flags);
            return false;
        }
        if ((d->flags & VFIO_USER_IOREGIONFD_FLAG_PIO) && !iofds->pio) {
            error_setg(errp, "the PIO flag on a memory BAR");
            return false;
        }
        if (d->size == 0) {
            error_setg(errp, "a zero-length ioregionfd is not supported");
            return false;
        }
        break;
    default:
        error_setg(errp, "unknown type %u", d->type);
        return false;
    }

    if (d->fd_index >= nfds) {
        error_setg(errp, "fd index %u, but the reply carries %zu fds",
                   d->fd_index, nfds);
        return false;
    }
    if (d->offset >= region_size || span > region_size - d->offset) {
        error_setg(errp, "it lies outside the region (0x%" PRIx64 " bytes)",
                   region_size);
        return false;
    }
    for (i = 0; i < iofds->region->nr_mmaps; i++) {
        VFIOMmap *map = &iofds->region->mmaps[i];

        /* An mmap()ed area is never trapped: the entry could not work */
        if (map->mmap && vfio_user_ranges_overlap(d->offset, span,
                                                  map->offset, map->size)) {
            error_setg(errp, "it overlaps the mmap()ed area at 0x%" PRIx64,
                       (uint64_t)map->offset);
            return false;
        }
    }
    return true;
}

/*
 * Two entries may share bytes only as doorbells at one address that are
 * told apart by the value written (as virtio's queue notify register is);
 * KVM refuses the rest, or would pick one of them silently.
 */
static bool vfio_user_iofd_conflicts(const VFIOUserIOFD *e,
                                     const VFIOUserIOFDDesc *d)
{
    if (!vfio_user_ranges_overlap(e->offset, vfio_user_iofd_span(e->size),
                                  d->offset, vfio_user_iofd_span(d->size))) {
        return false;
    }
    return e->type == VFIO_USER_IO_FD_TYPE_IOREGIONFD ||
           d->type == VFIO_USER_IO_FD_TYPE_IOREGIONFD ||
           e->offset != d->offset || e->size != d->size || !e->size ||
           !e->datamatch || !(d->flags & VFIO_USER_IOEVENTFD_FLAG_DATAMATCH) ||
           e->data == d->data;
}

static bool vfio_user_fd_is_eventfd(int fd)
{
    g_autofree char *path = g_strdup_printf("/proc/self/fd/%d", fd);
    static const char eventfd[] = "anon_inode:[eventfd]";
    char target[sizeof(eventfd)];
    ssize_t len;

    len = readlink(path, target, sizeof(target));
    return len == sizeof(eventfd) - 1 && !memcmp(target, eventfd, len);
}

/* Take the memory a shadow ioeventfd's value goes to */
static bool vfio_user_iofd_take_shadow(VFIOUserIOFD *e, int fd,
                                       uint64_t shadow_offset, Error **errp)
{
    struct stat st;

    /*
     * Memory (memfd, tmpfs), the only kind to have seals: a write to it
     * cannot block the vCPU the way one to a network file could.
     */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        fcntl(fd, F_GET_SEALS) < 0) {
        error_setg(errp, "its shadow fd is not a memory file");
        return false;
    }
    if (shadow_offset > st.st_size || e->size > st.st_size - shadow_offset) {
        error_setg(errp, "shadow offset 0x%" PRIx64 " lies outside its "
                   "shadow file (0x%" PRIx64 " bytes)", shadow_offset,
                   (uint64_t)st.st_size);
        return false;
    }
    e->shadow_fd = qemu_dup_flags(fd, O_CLOEXEC);
    if (e->shadow_fd < 0) {
        error_setg_errno(errp, errno, "cannot take its shadow fd");
        return false;
    }
    e->shadow_offset = shadow_offset;
    return true;
}

/*
 * The channel for ioregionfd socket @fd: an earlier entry's if it came on
 * the same socket.  (Entries of other regions keep their own; a server
 * that shares one socket among regions may get its responses crossed.)
 */
static VFIOUserIORegionChan *vfio_user_ioregion_chan_get(VFIOUserIOFDs *iofds,
                                                         int fd, Error **errp)
{
    VFIOUserIORegionChan *chan;
    struct stat st;
    GSList *l;

    /* Commands go one way and responses the other */
    if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        error_setg(errp, "its fd is not a socket");
        return NULL;
    }
    for (l = iofds->chans; l; l = l->next) {
        chan = l->data;
        if (chan->dev == st.st_dev && chan->ino == st.st_ino) {
            chan->refs++;
            return chan;
        }
    }
    fd = qemu_dup_flags(fd, O_CLOEXEC);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot take its fd");
        return NULL;
    }
    chan = g_new0(VFIOUserIORegionChan, 1);
    chan->owner = iofds;
    chan->refs = 1;
    chan->fd = fd;
    chan->dev = st.st_dev;
    chan->ino = st.st_ino;
    qemu_mutex_init(&chan->lock);
    iofds->chans = g_slist_prepend(iofds->chans, chan);
    return chan;
}

static void vfio_user_ioregion_chan_unref(VFIOUserIORegionChan *chan)
{
    assert(bql_locked());
    if (chan && !--chan->refs) {
        chan->owner->chans = g_slist_remove(chan->owner->chans, chan);
        close(chan->fd);
        qemu_mutex_destroy(&chan->lock);
        g_free(chan);
    }
}

/* Take the fds @d names (duplicated: entries may share them) */
static bool vfio_user_iofd_open(VFIOUserIOFDs *iofds, VFIOUserIOFD *e,
                                const VFIOUserIOFDDesc *d, const int *fds,
                                Error **errp)
{
    int fd = fds[d->fd_index];

    if (d->type == VFIO_USER_IO_FD_TYPE_IOREGIONFD) {
        e->chan = vfio_user_ioregion_chan_get(iofds, fd, errp);
        return e->chan;
    }

    /* Anything else could block QEMU's write, and KVM would refuse it */
    if (!vfio_user_fd_is_eventfd(fd)) {
        error_setg(errp, "its fd is not an eventfd");
        return false;
    }
    if (d->type == VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW &&
        !vfio_user_iofd_take_shadow(e, fds[d->shadow_fd_index],
                                    d->shadow_offset, errp)) {
        return false;
    }
    fd = qemu_dup_flags(fd, O_CLOEXEC);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot take its fd");
        return false;
    }
    /*
     * Fds arrive blocking (QIOChannelSocket makes them so), and a write to
     * an eventfd whose count the server drove to the top would block the
     * vCPU for good.  The flag is the server's too, which it can take.
     */
    if (!g_unix_set_fd_nonblocking(fd, TRUE, NULL)) {
        close(fd);
        error_setg(errp, "cannot make its eventfd non-blocking");
        return false;
    }
    event_notifier_init_fd(&e->notifier, fd);
    return true;
}

/*
 * Take an entry out of its MemoryRegion.  KVM unregisters the eventfd when
 * the memory transaction is committed: its fd must still be open then.
 */
static void vfio_user_iofd_unregister(VFIOUserIOFDs *iofds, VFIOUserIOFD *e)
{
    if (e->registered) {
        memory_region_del_eventfd(iofds->region->mem, e->offset, e->size,
                                  e->datamatch, e->data, &e->notifier);
        e->registered = false;
    }
}

static void vfio_user_iofd_release(VFIOUserIOFD *e)
{
    event_notifier_cleanup(&e->notifier);
    vfio_user_ioregion_chan_unref(e->chan);
    e->chan = NULL;
    if (e->shadow_fd >= 0) {
        close(e->shadow_fd);
        e->shadow_fd = -1;
    }
}

VFIOUserIOFDs *vfio_user_iofds_new(const char *name, VFIORegion *region,
                                   bool pio, uint32_t timeout_ms,
                                   unsigned int *budget)
{
    VFIOUserIOFDs *iofds = g_new0(VFIOUserIOFDs, 1);

    iofds->name = name;
    iofds->region = region;
    iofds->pio = pio;
    iofds->timeout_ms = timeout_ms;
    iofds->budget = budget;
    return iofds;
}

/*
 * Say why (part of) what the server offered for this region is not used:
 * an error the first time; a guest that resets the device over and over
 * must not flood the log with it.
 */
void vfio_user_iofds_report(VFIOUserIOFDs *iofds, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (iofds->reported) {
        trace_vfio_user_iofds_refused(iofds->name, iofds->region->nr, msg);
    } else {
        error_report("%s: BAR %u %s; its accesses go through the socket",
                     iofds->name, iofds->region->nr, msg);
    }
}

void vfio_user_iofds_install(VFIOUserIOFDs *iofds, VFIOUserMsg *reply)
{
    unsigned int bar = iofds->region->nr;
    const uint8_t *entries;
    Error *err = NULL;
    size_t stride;
    uint32_t count, i, j;

    vfio_user_iofds_clear(iofds);
    if (!le32_to_cpu(((VFIOUserRegionIOFDsMsg *)reply->hdr)->count)) {
        trace_vfio_user_iofds(iofds->name, bar, 0, 0, reply->nfds);
        return;
    }
    entries = vfio_user_iofds_layout(reply->hdr, reply->nfds, &count,
                                     &stride, &err);
    if (!entries) {
        vfio_user_iofds_report(iofds, "I/O fds refused: %s",
                               error_get_pretty(err));
        error_free(err);
        return;
    }
    trace_vfio_user_iofds(iofds->name, bar, count, stride, reply->nfds);

    /* Check every entry before any of them is registered */
    iofds->entries = g_new0(VFIOUserIOFD, count);
    for (i = 0; i < count; i++) {
        VFIOUserIOFD *e = &iofds->entries[iofds->nr];
        VFIOUserIOFDDesc d;

        if (!vfio_user_iofd_decode(entries, i, stride, &d, &err) ||
            !vfio_user_iofd_check(iofds, &d, reply->nfds, &err)) {
            goto refuse;
        }
        for (j = 0; j < iofds->nr; j++) {
            if (vfio_user_iofd_conflicts(&iofds->entries[j], &d)) {
                error_setg(&err, "it overlaps the %s at 0x%" PRIx64,
                           vfio_user_iofd_type_name(iofds->entries[j].type),
                           iofds->entries[j].offset);
                goto refuse;
            }
        }
        if (!*iofds->budget) {
            error_setg(&err, "the device has %u I/O fds already",
                       VFIO_USER_MAX_IO_FDS);
            goto refuse;
        }
        *e = (VFIOUserIOFD) {
            .type = d.type,
            .offset = d.offset,
            .size = d.size,
            .datamatch = d.flags & VFIO_USER_IOEVENTFD_FLAG_DATAMATCH &&
                         d.type != VFIO_USER_IO_FD_TYPE_IOREGIONFD,
            .data = d.data,
            .posted = d.type == VFIO_USER_IO_FD_TYPE_IOREGIONFD &&
                      (d.flags & VFIO_USER_IOREGIONFD_FLAG_POSTED_WRITES),
            .shadow_fd = -1,
        };
        if (!vfio_user_iofd_open(iofds, e, &d, reply->fds, &err)) {
            vfio_user_iofd_release(e);
            goto refuse;
        }
        iofds->nr++;
        (*iofds->budget)--;
        continue;

refuse:
        vfio_user_iofds_report(iofds, "I/O fd entry %u (%s at 0x%" PRIx64
                               ", size %" PRIu64 ") refused: %s", i,
                               vfio_user_iofd_type_name(d.type), d.offset,
                               d.size, error_get_pretty(err));
        error_free(err);
        err = NULL;
    }

    memory_region_transaction_begin();
    for (i = 0; i < iofds->nr; i++) {
        VFIOUserIOFD *e = &iofds->entries[i];

        /* (KVM as QEMU requires it has ioeventfds) */
        if (e->type == VFIO_USER_IO_FD_TYPE_IOEVENTFD) {
            memory_region_add_eventfd(iofds->region->mem, e->offset, e->size,
                                      e->datamatch, e->data, &e->notifier);
            e->registered = true;
        } else {
            iofds->intercept = true;
        }
        trace_vfio_user_iofd_add(iofds->name, bar,
                                 vfio_user_iofd_type_name(e->type), e->offset,
                                 e->size, e->datamatch || e->posted, e->data,
                                 e->registered);
    }
    memory_region_transaction_commit();
}

void vfio_user_iofds_clear(VFIOUserIOFDs *iofds)
{
    unsigned int i;

    if (!iofds->entries) {
        return;
    }
    trace_vfio_user_iofds_clear(iofds->name, iofds->region->nr, iofds->nr);
    memory_region_transaction_begin();
    for (i = 0; i < iofds->nr; i++) {
        vfio_user_iofd_unregister(iofds, &iofds->entries[i]);
    }
    memory_region_transaction_commit();
    for (i = 0; i < iofds->nr; i++) {
        vfio_user_iofd_release(&iofds->entries[i]);
    }
    *iofds->budget += iofds->nr;
    g_free(iofds->entries);
    iofds->entries = NULL;
    iofds->nr = 0;
    iofds->intercept = false;
}

void vfio_user_iofds_free(VFIOUserIOFDs *iofds)
{
    if (iofds) {
        vfio_user_iofds_clear(iofds);
        /* No access is in flight once the device is finalized */
        assert(!iofds->chans);
        g_free(iofds);
    }
}

/* Send or receive all of @buf on an ioregionfd before @deadline_ms */
static int vfio_user_ioregionfd_xfer(int fd, void *buf, size_t len,
                                     bool send_it, int64_t deadline_ms)
{
    size_t done = 0;

    while (done < len) {
        struct pollfd pfd = { .fd = fd, .events = send_it ? POLLOUT : POLLIN };
        int64_t left;
        ssize_t ret;

        if (send_it) {
            ret = send(fd, buf + done, len - done,
                       MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            ret = recv(fd, buf + done, len - done, MSG_DONTWAIT);
        }
        if (ret > 0) {
            done += ret;
            continue;
        }
        if (ret == 0) {
            return -ECONNRESET;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -errno;
        }
        left = deadline_ms - qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        if (poll(&pfd, 1, MIN(left, INT_MAX)) < 0 && errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* The entry, if any, that takes this access instead of the socket */
static VFIOUserIOFD *vfio_user_iofds_find(VFIOUserIOFDs *iofds, bool write,
                                          uint64_t offset, uint32_t size,
                                          const void *data)
{
    unsigned int i;

    /* hw/vfio's BAR accesses are of these sizes; anything else is not ours */
    if (size > 8 || !is_power_of_2(size)) {
        return NULL;
    }
    for (i = 0; i < iofds->nr; i++) {
        VFIOUserIOFD *e = &iofds->entries[i];

        switch (e->type) {
        case VFIO_USER_IO_FD_TYPE_IOEVENTFD:
        case VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW:
            /* A registered one saw this access first and let it pass */
            if (!write || e->registered || offset != e->offset ||
                (e->size && size != e->size) ||
                (e->datamatch && ldn_le_p(data, size) != e->data)) {
                continue;
            }
            return e;
        case VFIO_USER_IO_FD_TYPE_IOREGIONFD:
            if (qatomic_read(&e->chan->failed) || offset < e->offset ||
                offset - e->offset + size > e->size) {
                continue;
            }
            return e;
        }
    }
    return NULL;
}

/*
 * One guest access as an ioregionfd command, and its response if any.
 * Returns false, with nothing done, when the sub-region is no longer an
 * ioregionfd's once posted writes are done: the access then goes through
 * the socket.
 *
 * With the BQL let go, the entry may be cleared (a reset, the server's
 * death, unplug) or replaced by the time the response comes: the access
 * looks it up once, before, and then uses only its channel, which it
 * holds a reference to, and what it copied.  A channel found out of step
 * is the access's own to report; the entries that share it skip it from
 * then on.
 */
static bool vfio_user_ioregionfd_access(VFIOUserIOFDs *iofds,
                                        VFIOUserProxy *proxy, VFIOUserIOFD *e,
                                        bool write, uint64_t offset,
                                        uint32_t size, void *data,
                                        int *result)
{
    /* As for a BAR access through the socket; RCU keeps iofds alive */
    bool unlock = vfio_user_vcpu_may_release_bql();
    bool wait = !write || !e->posted;
    VFIOUserGuardState guards;
    VFIOUserIORegionCmd cmd;
    VFIOUserIORegionResp resp;
    VFIOUserIORegionChan *chan;
    uint64_t entry_offset;
    bool skipped = false;
    int64_t deadline;
    int ret = 0;

    /*
     * Whatever waits for the server must come after the guest's earlier
     * writes, posted ones on the socket included: see that they are done.
     * That may let the BQL go: look for the entry again.
     */
    if (wait) {
        vfio_user_flush_posted(proxy, unlock);
        /* A server that did not answer them is gone: no use waiting again */
        if (!vfio_user_connected(proxy)) {
            return false;
        }
        e = vfio_user_iofds_find(iofds, write, offset, size, data);
        if (!e || e->type != VFIO_USER_IO_FD_TYPE_IOREGIONFD) {
            return false;
        }
        wait = !write || !e->posted;
    }
    cmd = (VFIOUserIORegionCmd) {
        .info = cpu_to_le32((write ? VFIO_USER_IOREGIONFD_CMD_WRITE :
                                     VFIO_USER_IOREGIONFD_CMD_READ) |
                            ctz32(size) << VFIO_USER_IOREGIONFD_SIZE_SHIFT |
                            (wait ? VFIO_USER_IOREGIONFD_RESP : 0)),
        .user_data = cpu_to_le64(e->data),
        .offset = cpu_to_le64(offset - e->offset),
        .data = cpu_to_le64(write ? ldn_le_p(data, size) : 0),
    };
    entry_offset = e->offset;
    chan = e->chan;
    chan->refs++;
    e = NULL;
    trace_vfio_user_ioregionfd(iofds->name, iofds->region->nr, write,
                               offset, size, le64_to_cpu(cmd.data));

    if (unlock) {
        vfio_user_bql_unlock(proxy, &guards);
    }
    qemu_mutex_lock(&chan->lock);
    if (chan->failed) {
        /* Another access's response went missing meanwhile */
        skipped = true;
    } else {
        deadline = qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + iofds->timeout_ms;
        ret = vfio_user_ioregionfd_xfer(chan->fd, &cmd, sizeof(cmd), true,
                                        deadline);
        if (!ret && wait) {
            ret = vfio_user_ioregionfd_xfer(chan->fd, &resp, sizeof(resp),
                                            false, deadline);
        }
        if (ret < 0) {
            /*
             * A late response would be taken for the next one: this
             * socket is done for, and the server sees it so.
             */
            qatomic_set(&chan->failed, true);
            shutdown(chan->fd, SHUT_RDWR);
        }
    }
    qemu_mutex_unlock(&chan->lock);
    if (unlock) {
        vfio_user_bql_lock(proxy, &guards);
    }
    vfio_user_ioregion_chan_unref(chan);

    if (skipped) {
        return false;
    }
    if (ret < 0) {
        /* The region is still the server's through the socket */
        error_report("%s: BAR %u ioregionfd at 0x%" PRIx64 " failed: %s; "
                     "its accesses go through the socket from now on",
                     iofds->name, iofds->region->nr, entry_offset,
                     strerror(-ret));
        *result = ret;
        return true;
    }
    if (!write) {
        stn_le_p(data, size, le64_to_cpu(resp.data));
    }
    *result = size;
    return true;
}

bool vfio_user_iofds_write(VFIOUserIOFDs *iofds, VFIOUserProxy *proxy,
                           uint64_t offset, uint32_t size, const void *data,
                           int *ret)
{
    VFIOUserIOFD *e;

    if (!iofds->intercept) {
        return false;
    }
    e = vfio_user_iofds_find(iofds, true, offset, size, data);
    if (!e) {
        return false;
    }
    if (e->type == VFIO_USER_IO_FD_TYPE_IOREGIONFD) {
        return vfio_user_ioregionfd_access(iofds, proxy, e, true, offset,
                                           size, (void *)data, ret);
    }
    if (e->shadow_fd >= 0) {
        trace_vfio_user_iofd_shadow(iofds->name, iofds->region->nr, offset,
                                    ldn_le_p(data, size));
        /* In memory before the eventfd wakes the server to read it */
        if (pwrite(e->shadow_fd, data, size, e->shadow_offset) != size) {
            error_report_once("%s: BAR %u shadow ioeventfd at 0x%" PRIx64
                              ": cannot store the value written: %s",
                              iofds->name, iofds->region->nr, e->offset,
                              strerror(errno));
        }
    }
    event_notifier_set(&e->notifier);
    *ret = size;
    return true;
}

bool vfio_user_iofds_read(VFIOUserIOFDs *iofds, VFIOUserProxy *proxy,
                          uint64_t offset, uint32_t size, void *data,
                          int *ret)
{
    VFIOUserIOFD *e;

    if (!iofds->intercept) {
        return false;
    }
    e = vfio_user_iofds_find(iofds, false, offset, size, NULL);
    if (!e) {
        return false;
    }
    return vfio_user_ioregionfd_access(iofds, proxy, e, false, offset, size,
                                       data, ret);
}
