/*
 * vfio-user: what a server's message means, checked before anything in it
 * is used (see include/hw/vfio-user/check.h).  hw/vfio walks what it is
 * given without bounds checks, and a server is another, less trusted,
 * process: lengths, offsets and counts are checked against what was
 * received, and loops are refused.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include "hw/vfio-user/check.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qnum.h"

/* Linux's errnos are below this; the error field is 32 bits wide */
#define VFIO_USER_MAX_ERRNO         4096

/* hw/vfio mmap()s each; servers use a few */
#define VFIO_USER_MAX_SPARSE_AREAS  256

/*
 * The failure an error reply stands for, as a negative errno: 0 and
 * numbers no errno has would otherwise read as success (or, negated, as
 * a byte count).
 */
int vfio_user_reply_errno(const VFIOUserHdr *hdr)
{
    if (hdr->error_reply && hdr->error_reply < VFIO_USER_MAX_ERRNO) {
        return -(int)hdr->error_reply;
    }
    return -EPROTO;
}

static bool vfio_user_cap_uint(QDict *caps, const char *key, uint64_t min,
                               uint64_t max, uint64_t *value, Error **errp)
{
    QObject *obj = qdict_get(caps, key);
    QNum *num = qobject_to(QNum, obj);

    if (!obj) {
        return true;
    }
    if (!num || !qnum_get_try_uint(num, value) ||
        *value < min || *value > max) {
        error_setg(errp, "capability '%s' must be an integer in "
                   "[%" PRIu64 ", %" PRIu64 "]", key, min, max);
        return false;
    }
    return true;
}

/* Take what the server can do from its VERSION reply's JSON */
static bool vfio_user_parse_caps(VFIOUserServerCaps *sc, const char *json,
                                 Error **errp)
{
    g_autoptr(QDict) top = NULL;
    QDict *caps, *migration;
    QObject *obj, *entry;
    uint64_t value;

    obj = qobject_from_json(json, errp);
    if (!obj) {
        return false;
    }
    top = qobject_to(QDict, obj);
    if (!top) {
        qobject_unref(obj);
        error_setg(errp, "version data is not a JSON object");
        return false;
    }
    entry = qdict_get(top, "capabilities");
    if (!entry) {
        return true;
    }
    caps = qobject_to(QDict, entry);
    if (!caps) {
        error_setg(errp, "'capabilities' is not a JSON object");
        return false;
    }

    value = sc->max_send_fds;
    if (!vfio_user_cap_uint(caps, "max_msg_fds", 1, UINT16_MAX, &value,
                            errp)) {
        return false;
    }
    sc->max_send_fds = value;

    value = sc->max_xfer_size;
    if (!vfio_user_cap_uint(caps, "max_data_xfer_size", 1, UINT32_MAX,
                            &value, errp)) {
        return false;
    }
    /* We never send more than we accept ourselves */
    sc->max_xfer_size = MIN(value, VFIO_USER_CLIENT_MAX_XFER);

    entry = qdict_get(caps, "migration");
    if (entry) {
        migration = qobject_to(QDict, entry);
        if (!migration) {
            error_setg(errp, "'migration' is not a JSON object");
            return false;
        }
        value = VFIO_USER_DEF_PGSIZE;
        if (!vfio_user_cap_uint(migration, "pgsize", 1, UINT32_MAX, &value,
                                errp)) {
            return false;
        }
        sc->migr_pgsize = value;
    }
    return true;
}

/*
 * The VERSION reply: a major version we speak, a minor no newer than
 * ours, and capabilities, if any, as a NUL-terminated JSON object.
 * @caps holds the defaults on entry.
 */
bool vfio_user_parse_version(const VFIOUserHdr *reply,
                             VFIOUserServerCaps *caps, Error **errp)
{
    const VFIOUserVersion *version = (const VFIOUserVersion *)reply;
    size_t caps_len;

    if (reply->size < sizeof(*version)) {
        error_setg(errp, "VERSION reply is too short (%u bytes)",
                   reply->size);
        return false;
    }
    if (version->major != VFIO_USER_MAJOR_VER ||
        version->minor > VFIO_USER_MINOR_VER) {
        error_setg(errp, "server speaks protocol version %u.%u, this client "
                   "speaks %u.%u", version->major, version->minor,
                   VFIO_USER_MAJOR_VER, VFIO_USER_MINOR_VER);
        return false;
    }
    caps->minor = version->minor;

    caps_len = reply->size - sizeof(*version);
    if (!caps_len) {
        return true;
    }
    if (version->capabilities[caps_len - 1] != '\0') {
        error_setg(errp, "capabilities are not NUL-terminated");
        return false;
    }
    if (!vfio_user_parse_caps(caps, version->capabilities, errp)) {
        error_prepend(errp, "malformed capabilities: ");
        return false;
    }
    return true;
}

/* Sparse area @i lies inside the region and overlaps no earlier one */
static bool vfio_user_check_sparse_area(struct vfio_region_info *info,
                              struct vfio_region_info_cap_sparse_mmap *sparse,
                              uint32_t i, Error **errp)
{
    struct vfio_region_sparse_mmap_area *area = &sparse->areas[i];
    uint32_t j;

    if (area->offset > info->size || area->size > info->size - area->offset) {
        error_setg(errp, "region %u sparse mmap area %u (0x%llx+0x%llx) "
                   "lies outside the region", info->index, i, area->offset,
                   area->size);
        return false;
    }
    for (j = 0; j < i; j++) {
        struct vfio_region_sparse_mmap_area *other = &sparse->areas[j];

        if (area->size && other->size &&
            area->offset < other->offset + other->size &&
            other->offset < area->offset + area->size) {
            error_setg(errp, "region %u sparse mmap areas %u and %u "
                       "overlap", info->index, j, i);
            return false;
        }
    }
    return true;
}

/*
 * hw/vfio walks region capability chains without bounds checks: make sure
 * every capability the server sent lies inside what it sent.
 */
bool vfio_user_check_region_info(struct vfio_region_info *info, size_t len,
                                 Error **errp)
{
    uint32_t off = info->cap_offset;
    uint32_t min = sizeof(*info);

    if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS)) {
        return true;
    }
    while (off) {
        struct vfio_info_cap_header *hdr = (void *)info + off;

        if (off < min || off > len || len - off < sizeof(*hdr)) {
            error_setg(errp, "region %u capability at %u is out of bounds",
                       info->index, off);
            return false;
        }
        /* As the kernel lays them out: hw/vfio reads their u64 fields */
        if (off % sizeof(uint64_t)) {
            error_setg(errp, "region %u capability at %u is not 8-byte "
                       "aligned", info->index, off);
            return false;
        }
        if (hdr->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
            struct vfio_region_info_cap_sparse_mmap *sparse = (void *)hdr;
            uint32_t i;

            if (len - off < sizeof(*sparse) ||
                sparse->nr_areas > (len - off - sizeof(*sparse)) /
                                   sizeof(sparse->areas[0])) {
                error_setg(errp, "region %u sparse mmap areas are out of "
                           "bounds", info->index);
                return false;
            }
            if (sparse->nr_areas > VFIO_USER_MAX_SPARSE_AREAS) {
                error_setg(errp, "region %u has %u sparse mmap areas, more "
                           "than the %u accepted", info->index,
                           sparse->nr_areas, VFIO_USER_MAX_SPARSE_AREAS);
                return false;
            }
            for (i = 0; i < sparse->nr_areas; i++) {
                if (!vfio_user_check_sparse_area(info, sparse, i, errp)) {
                    return false;
                }
            }
        }
        /* Strictly increasing offsets: no loops */
        min = off + sizeof(*hdr);
        off = hdr->next;
    }
    return true;
}

/*
 * The entry array of a GET_REGION_IO_FDS reply (@reply->size checked to
 * hold the message's fixed part), if it can be interpreted at all: NULL
 * with *count 0 when there is none.
 */
const uint8_t *vfio_user_iofds_layout(const VFIOUserHdr *reply, size_t nfds,
                                      uint32_t *count, size_t *stride,
                                      Error **errp)
{
    const VFIOUserRegionIOFDsMsg *msg = (const VFIOUserRegionIOFDsMsg *)reply;
    size_t header = sizeof(*msg) - sizeof(msg->hdr);
    size_t len = reply->size - sizeof(msg->hdr);
    uint32_t argsz = le32_to_cpu(msg->argsz);

    *count = le32_to_cpu(msg->count);
    if (!*count) {
        return NULL;
    }
    if (*count > VFIO_USER_MAX_IO_FDS) {
        error_setg(errp, "%u entries, more than the %u accepted", *count,
                   VFIO_USER_MAX_IO_FDS);
        return NULL;
    }
    if (argsz < header || argsz > len || (argsz - header) % *count) {
        error_setg(errp, "argsz %u does not hold %u entries in %zu bytes",
                   argsz, *count, len);
        return NULL;
    }
    /* The stride is whatever the server made it: derive it */
    *stride = (argsz - header) / *count;
    if (*stride != sizeof(VFIOUserIOFDEntry) &&
        *stride != sizeof(VFIOUserIOFDEntryShadow)) {
        error_setg(errp, "entries of %zu bytes are neither of the known "
                   "layouts (%zu or %zu bytes)", *stride,
                   sizeof(VFIOUserIOFDEntry), sizeof(VFIOUserIOFDEntryShadow));
        return NULL;
    }
    if (!nfds) {
        error_setg(errp, "%u entries but no fds", *count);
        return NULL;
    }
    return msg->entries;
}

/* Entry @i of a reply whose entries are @stride bytes apart */
bool vfio_user_iofd_decode(const uint8_t *entries, uint32_t i,
                           size_t stride, VFIOUserIOFDDesc *d,
                           Error **errp)
{
    const VFIOUserIOFDEntry *e = (const void *)(entries + i * stride);
    const VFIOUserIOFDEntryShadow *s = (const void *)e;

    *d = (VFIOUserIOFDDesc) {
        .offset = le64_to_cpu(e->offset),
        .size = le64_to_cpu(e->size),
        .fd_index = le32_to_cpu(e->fd_index),
        .type = le32_to_cpu(e->type),
        .flags = le32_to_cpu(e->flags),
        .data = le64_to_cpu(e->data),
    };
    if (stride == sizeof(VFIOUserIOFDEntry)) {
        if (d->type == VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW) {
            error_setg(errp, "a shadow ioeventfd needs the %zu-byte entry "
                       "layout, not the %zu-byte one",
                       sizeof(VFIOUserIOFDEntryShadow), stride);
            return false;
        }
        return true;
    }
    /* The longer layout: the eventfd types carry shadow fields */
    if (d->type != VFIO_USER_IO_FD_TYPE_IOREGIONFD) {
        d->shadow_fd_index = le32_to_cpu(s->shadow_fd_index);
        d->shadow_offset = le64_to_cpu(s->shadow_offset);
        d->data = le64_to_cpu(s->datamatch);
    }
    return true;
}
