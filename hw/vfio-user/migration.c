/*
 * vfio-user live migration: the device features hw/vfio's migration code
 * gets and sets (VFIO_USER_DEVICE_FEATURE) and the migration data it
 * moves (VFIO_USER_MIG_DATA_READ and VFIO_USER_MIG_DATA_WRITE), as
 * VFIODeviceIOOps operations.
 *
 * The kernel's feature structures carry pointers to more data (DMA
 * logging's ranges and bitmap); on the wire that data is inline, so each
 * feature is translated.  Only the features the specification lists are
 * sent: the rest fail here as a kernel without them would fail them.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/units.h"
#include "hw/vfio-user/device.h"
#include "hw/vfio-user/migration.h"
#include "trace.h"

#define VFIO_USER_MIG_SIZE_GUESS  (64 * KiB)

#define VFIO_USER_FEATURE_PAYLOAD \
    (sizeof(VFIOUserDeviceFeature) - sizeof(VFIOUserHdr))

static VFIOUserProxy *vfio_user_mig_proxy(VFIODevice *vbasedev)
{
    VFIOUserDevice *udev = vbasedev->io_opaque;

    return udev->proxy;
}

/*
 * A server that breaks the protocol in a reply: say what it did, as
 * hw/vfio will only report the errno.
 */
static int vfio_user_mig_refuse(Error *err)
{
    warn_report_err(err);
    return -EPROTO;
}

/*
 * Send a feature request with @len bytes of @data, and check that the
 * reply echoes the request's flags and carries at least @reply_len bytes
 * of data.  On success, the reply's data is in @reply (after the
 * VFIOUserDeviceFeature header).
 */
static int vfio_user_feature_exchange(VFIODevice *vbasedev, uint32_t flags,
                                      const void *data, size_t len,
                                      size_t reply_len, VFIOUserMsg *reply)
{
    VFIOUserProxy *proxy = vfio_user_mig_proxy(vbasedev);
    size_t size = sizeof(VFIOUserDeviceFeature) + len;
    g_autofree VFIOUserDeviceFeature *msg = g_malloc0(size);
    VFIOUserDeviceFeature *rmsg;
    Error *err = NULL;
    int ret;

    if (!vfio_user_connected(proxy)) {
        return -ENOTCONN;
    }
    vfio_user_request_init(&msg->hdr, VFIO_USER_DEVICE_FEATURE, size);
    msg->argsz = VFIO_USER_FEATURE_PAYLOAD + MAX(len, reply_len);
    msg->flags = flags;
    if (len) {
        memcpy(msg->data, data, len);
    }
    ret = vfio_user_request(proxy, &msg->hdr, NULL, 0, reply, &err);
    if (ret < 0) {
        trace_vfio_user_feature_failed(vbasedev->name, flags,
                                       error_get_pretty(err));
        error_free(err);
        return ret;
    }
    if (reply->hdr->size < sizeof(*rmsg) + reply_len) {
        error_setg(&err, "%s: DEVICE_FEATURE 0x%x reply of %u bytes is "
                   "too short", vbasedev->name, flags, reply->hdr->size);
        return vfio_user_mig_refuse(err);
    }
    rmsg = (VFIOUserDeviceFeature *)reply->hdr;
    if (rmsg->flags != flags) {
        error_setg(&err, "%s: DEVICE_FEATURE reply has flags 0x%x, not 0x%x",
                   vbasedev->name, rmsg->flags, flags);
        return vfio_user_mig_refuse(err);
    }
    trace_vfio_user_feature(vbasedev->name, flags);
    return 0;
}

/* A feature without data: PROBE, DMA_LOGGING_STOP */
static int vfio_user_feature_plain(VFIODevice *vbasedev, uint32_t flags)
{
    g_auto(VFIOUserMsg) reply = { };

    return vfio_user_feature_exchange(vbasedev, flags, NULL, 0, 0, &reply);
}

static int vfio_user_feature_migration(VFIODevice *vbasedev,
                                       struct vfio_device_feature *feature)
{
    struct vfio_device_feature_migration *mig = (void *)feature->data;
    g_auto(VFIOUserMsg) reply = { };
    int ret;

    if (!(feature->flags & VFIO_DEVICE_FEATURE_GET) ||
        feature->argsz < sizeof(*feature) + sizeof(*mig)) {
        return -EINVAL;
    }
    ret = vfio_user_feature_exchange(vbasedev, feature->flags, NULL, 0,
                                     sizeof(*mig), &reply);
    if (ret == -EPROTO || !vfio_user_connected(
            vfio_user_mig_proxy(vbasedev))) {
        return ret;
    }
    if (ret < 0) {
        /*
         * A server without migration, which may not know the command at
         * all (libvfio-user before migration v2 answers EINVAL): the
         * errno a kernel without the feature gives.
         */
        return -ENOTTY;
    }
    memcpy(&mig->flags, ((VFIOUserDeviceFeature *)reply.hdr)->data,
           sizeof(mig->flags));
    /* vfio-user has no P2P states: never let hw/vfio ask for them */
    if (mig->flags & VFIO_MIGRATION_P2P) {
        trace_vfio_user_mig_p2p_ignored(vbasedev->name);
        mig->flags &= ~(uint64_t)VFIO_MIGRATION_P2P;
    }
    return 0;
}

static int vfio_user_feature_mig_state(VFIODevice *vbasedev,
                                       struct vfio_device_feature *feature)
{
    struct vfio_device_feature_mig_state *state = (void *)feature->data;
    VFIOUserDevice *udev = vbasedev->io_opaque;
    VFIOUserMigState wire = { .data_fd = -1 };
    g_auto(VFIOUserMsg) reply = { };
    VFIOUserMigState *rstate;
    Error *err = NULL;
    int ret;

    if (feature->argsz < sizeof(*feature) + sizeof(*state)) {
        return -EINVAL;
    }
    wire.device_state = state->device_state;
    ret = vfio_user_feature_exchange(vbasedev, feature->flags, &wire,
                                     sizeof(wire), sizeof(wire), &reply);
    if (ret < 0) {
        /* Where the device is now, hw/vfio finds out; not in PRE_COPY */
        udev->precopy = false;
        return ret;
    }
    rstate = (void *)((VFIOUserDeviceFeature *)reply.hdr)->data;
    if (feature->flags & VFIO_DEVICE_FEATURE_GET) {
        if (rstate->device_state > VFIO_DEVICE_STATE_PRE_COPY ||
            rstate->device_state == VFIO_DEVICE_STATE_RUNNING_P2P) {
            error_setg(&err, "%s: the server says its device is in state "
                       "%u, which vfio-user does not have", vbasedev->name,
                       rstate->device_state);
            return vfio_user_mig_refuse(err);
        }
        state->device_state = rstate->device_state;
    }
    /* Migration data travels on the socket: never an fd the server names */
    state->data_fd = -1;
    if (feature->flags & VFIO_DEVICE_FEATURE_SET) {
        udev->precopy = state->device_state == VFIO_DEVICE_STATE_PRE_COPY;
        udev->precopy_initial_sent = false;
        udev->precopy_more = true;
    }
    trace_vfio_user_mig_state(vbasedev->name, state->device_state);
    return 0;
}

static int vfio_user_feature_logging_start(VFIODevice *vbasedev,
                                           struct vfio_device_feature *feature)
{
    struct vfio_device_feature_dma_logging_control *control =
        (void *)feature->data;
    struct vfio_device_feature_dma_logging_range *ranges =
        (void *)(uintptr_t)control->ranges;
    VFIOUserDMALoggingControl *wire;
    VFIOUserDMALoggingRange *wranges;
    g_auto(VFIOUserMsg) reply = { };
    g_autofree void *buf = NULL;
    size_t len;
    uint32_t i;
    uint64_t page_size;
    int ret;

    if (feature->argsz < sizeof(*feature) + sizeof(*control) ||
        control->num_ranges > VFIO_USER_MAX_LOGGING_RANGES) {
        return -EINVAL;
    }
    len = sizeof(*wire) + control->num_ranges * sizeof(*wranges);
    buf = g_malloc0(len);
    wire = buf;
    wranges = (void *)(wire + 1);
    wire->page_size = control->page_size;
    wire->num_ranges = control->num_ranges;
    for (i = 0; i < control->num_ranges; i++) {
        wranges[i].iova = ranges[i].iova;
        wranges[i].length = ranges[i].length;
    }
    ret = vfio_user_feature_exchange(vbasedev, feature->flags, buf, len,
                                     sizeof(*wire), &reply);
    if (ret < 0) {
        return ret;
    }
    /* The server may pick another page size: a power of two, or ignored */
    wire = (void *)((VFIOUserDeviceFeature *)reply.hdr)->data;
    page_size = wire->page_size;
    if (is_power_of_2(page_size)) {
        control->page_size = page_size;
    }
    return 0;
}

/*
 * DMA_LOGGING_REPORT: the bitmap comes in the reply.  hw/vfio asks for a
 * whole RAM section at once; a reply carries at most max_data_xfer_size
 * bytes, so a bigger range is asked for in parts, each a whole number of
 * bitmap words.
 */
static int vfio_user_feature_logging_report(VFIODevice *vbasedev,
                                            struct vfio_device_feature *feature)
{
    struct vfio_device_feature_dma_logging_report *report =
        (void *)feature->data;
    VFIOUserProxy *proxy = vfio_user_mig_proxy(vbasedev);
    uint64_t *bitmap = (void *)(uintptr_t)report->bitmap;
    uint64_t page_size = report->page_size;
    uint64_t pages, done = 0, part_pages, room;

    if (feature->argsz < sizeof(*feature) + sizeof(*report) ||
        !is_power_of_2(page_size) || !report->length) {
        return -EINVAL;
    }
    /* A section need not end on a host page, as the kernel allows */
    pages = DIV_ROUND_UP(report->length, page_size);
    /* The reply's payload, its headers and the bitmap, fits max_xfer_size */
    room = proxy->max_xfer_size - MIN(proxy->max_xfer_size,
                                      VFIO_USER_FEATURE_PAYLOAD +
                                      sizeof(VFIOUserDMALoggingReport));
    part_pages = MAX(ROUND_DOWN(room * BITS_PER_BYTE, 64), 64);
    while (done < pages) {
        uint64_t n = MIN(pages - done, part_pages);
        size_t words = DIV_ROUND_UP(n, 64);
        VFIOUserDMALoggingReport wire = {
            .iova = report->iova + done * page_size,
            .length = MIN(n * page_size, report->length - done * page_size),
            .page_size = page_size,
        };
        g_auto(VFIOUserMsg) reply = { };
        VFIOUserDeviceFeature *rmsg;
        int ret;

        ret = vfio_user_feature_exchange(vbasedev, feature->flags, &wire,
                                         sizeof(wire),
                                         sizeof(wire) + words * 8, &reply);
        if (ret < 0) {
            return ret;
        }
        rmsg = (VFIOUserDeviceFeature *)reply.hdr;
        memcpy(bitmap + done / 64, rmsg->data + sizeof(wire), words * 8);
        done += n;
    }
    /* Bits past the range are the server's to clear; make sure they are */
    if (pages % 64) {
        bitmap[(pages - 1) / 64] &= MAKE_64BIT_MASK(0, pages % 64);
    }
    return 0;
}

/* What hw/vfio reads at a time: the unit of the estimates below */
static uint64_t vfio_user_mig_guess(VFIODevice *vbasedev)
{
    return MIN(VFIO_USER_MIG_SIZE_GUESS,
               vfio_user_mig_proxy(vbasedev)->max_xfer_size);
}

/*
 * vfio-user has no message for how much PRE_COPY data the server holds:
 * estimate it from its reads, for hw/vfio decides from it whether the
 * device needs more iterations before the VM stops.  Until a read comes
 * back short, the server has not sent its initial data; after that, a
 * read that brought data may have more behind it.
 */
static void vfio_user_precopy_estimate(VFIODevice *vbasedev,
                                       uint64_t *initial, uint64_t *dirty)
{
    VFIOUserDevice *udev = vbasedev->io_opaque;
    uint64_t guess = vfio_user_mig_guess(vbasedev);

    /*
     * More than one read's worth: hw/vfio takes what it read off the
     * initial estimate, and says the initial data is out (switchover-ack)
     * once that is 0
     */
    *initial = udev->precopy && !udev->precopy_initial_sent ? 2 * guess : 0;
    *dirty = udev->precopy && udev->precopy_initial_sent &&
             udev->precopy_more ? guess : 0;
}

/*
 * vfio-user has no message for the size of the device's remaining state.
 * Without one, hw/vfio assumes 100 GiB, and a migration with a downtime
 * limit never converges; with a big guess, the bandwidth QEMU measures on
 * a quiet guest (a few Mbit/s) never lets it either.  Guess
 * VFIO_USER_MIG_SIZE_GUESS: hw/vfio also reads the state in pieces of
 * that size.
 */
static int vfio_user_feature_mig_data_size(VFIODevice *vbasedev,
                                           struct vfio_device_feature *feature)
{
    struct vfio_device_feature_mig_data_size *size = (void *)feature->data;
    uint64_t initial, dirty;

    if (!(feature->flags & VFIO_DEVICE_FEATURE_GET) ||
        feature->argsz < sizeof(*feature) + sizeof(*size)) {
        return -EINVAL;
    }
    /* Like the kernel's, it counts what PRE_COPY has still to send */
    vfio_user_precopy_estimate(vbasedev, &initial, &dirty);
    size->stop_copy_length = vfio_user_mig_guess(vbasedev) + initial + dirty;
    return 0;
}

int vfio_user_device_feature(VFIODevice *vbasedev,
                             struct vfio_device_feature *feature)
{
    uint32_t index = feature->flags & VFIO_DEVICE_FEATURE_MASK;
    uint32_t ops = feature->flags & ~VFIO_DEVICE_FEATURE_MASK;

    if (ops & ~(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET |
                VFIO_DEVICE_FEATURE_PROBE)) {
        return -EINVAL;
    }
    if (ops & VFIO_DEVICE_FEATURE_PROBE) {
        switch (index) {
        case VFIO_DEVICE_FEATURE_MIGRATION:
        case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
            return vfio_user_feature_plain(vbasedev, feature->flags);
        default:
            return -ENOTTY;
        }
    }
    switch (index) {
    case VFIO_DEVICE_FEATURE_MIGRATION:
        return vfio_user_feature_migration(vbasedev, feature);
    case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
        return vfio_user_feature_mig_state(vbasedev, feature);
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
        return vfio_user_feature_logging_start(vbasedev, feature);
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
        return vfio_user_feature_plain(vbasedev, feature->flags);
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
        return vfio_user_feature_logging_report(vbasedev, feature);
    case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE:
        return vfio_user_feature_mig_data_size(vbasedev, feature);
    default:
        return -ENOTTY;
    }
}

/*
 * MIG_DATA_READ: the migration data is a stream; a reply with less than
 * was asked for means there is no more for now (all of it, once the
 * device is in STOP_COPY).
 */
ssize_t vfio_user_mig_data_read(VFIODevice *vbasedev, void *buf, size_t size)
{
    VFIOUserDevice *udev = vbasedev->io_opaque;
    VFIOUserProxy *proxy = vfio_user_mig_proxy(vbasedev);
    size_t done = 0;

    while (done < size) {
        uint32_t count = MIN(size - done, proxy->max_xfer_size);
        VFIOUserMigData msg = { };
        g_auto(VFIOUserMsg) reply = { };
        VFIOUserMigData *rmsg;
        Error *err = NULL;
        int ret;

        vfio_user_request_init(&msg.hdr, VFIO_USER_MIG_DATA_READ,
                               sizeof(msg));
        msg.argsz = sizeof(msg) - sizeof(msg.hdr) + count;
        msg.size = count;
        ret = vfio_user_request(proxy, &msg.hdr, NULL, 0, &reply, &err);
        if (ret < 0) {
            trace_vfio_user_mig_data_failed(vbasedev->name, "read",
                                            error_get_pretty(err));
            error_free(err);
            return ret;
        }
        if (reply.hdr->size < sizeof(*rmsg)) {
            error_setg(&err, "%s: MIG_DATA_READ reply of %u bytes is too "
                       "short", vbasedev->name, reply.hdr->size);
            return vfio_user_mig_refuse(err);
        }
        rmsg = (VFIOUserMigData *)reply.hdr;
        if (rmsg->size > count ||
            reply.hdr->size - sizeof(*rmsg) < rmsg->size) {
            error_setg(&err, "%s: MIG_DATA_READ reply of %u bytes says it "
                       "has %u bytes of the %u asked for", vbasedev->name,
                       reply.hdr->size, rmsg->size, count);
            return vfio_user_mig_refuse(err);
        }
        memcpy(buf + done, rmsg->data, rmsg->size);
        done += rmsg->size;
        if (rmsg->size < count) {
            break;
        }
    }
    udev->precopy_initial_sent |= done < size;
    udev->precopy_more = done > 0;
    trace_vfio_user_mig_data(vbasedev->name, "read", done);
    return done;
}

ssize_t vfio_user_mig_data_write(VFIODevice *vbasedev, const void *buf,
                                 size_t size)
{
    VFIOUserProxy *proxy = vfio_user_mig_proxy(vbasedev);
    size_t done = 0;

    while (done < size) {
        uint32_t count = MIN(size - done, proxy->max_xfer_size);
        size_t msg_size = sizeof(VFIOUserMigData) + count;
        g_autofree VFIOUserMigData *msg = g_malloc(msg_size);
        Error *err = NULL;
        int ret;

        vfio_user_request_init(&msg->hdr, VFIO_USER_MIG_DATA_WRITE, msg_size);
        msg->argsz = msg_size - sizeof(msg->hdr);
        msg->size = count;
        memcpy(msg->data, buf + done, count);
        ret = vfio_user_request(proxy, &msg->hdr, NULL, 0, NULL, &err);
        if (ret < 0) {
            trace_vfio_user_mig_data_failed(vbasedev->name, "write",
                                            error_get_pretty(err));
            error_free(err);
            return ret;
        }
        done += count;
    }
    trace_vfio_user_mig_data(vbasedev->name, "write", done);
    return done;
}

/* See vfio_user_precopy_estimate() */
int vfio_user_mig_precopy_info(VFIODevice *vbasedev,
                               struct vfio_precopy_info *info)
{
    uint64_t initial, dirty;

    if (!vfio_user_connected(vfio_user_mig_proxy(vbasedev))) {
        return -ENOTCONN;
    }
    vfio_user_precopy_estimate(vbasedev, &initial, &dirty);
    info->initial_bytes = initial;
    info->dirty_bytes = dirty;
    return 0;
}
