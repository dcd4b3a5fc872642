/*
 * vfio-user: what a server's message means, checked before anything in it
 * is used.  No I/O and no device state here: these take the bytes a
 * server sent and say whether, and how, they can be used, so that they
 * can be tested (and fuzzed) on their own.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_CHECK_H
#define HW_VFIO_USER_CHECK_H

#include <linux/vfio.h>
#include "hw/vfio-user/protocol.h"

/* What we accept from a server in one message */
/* Below what QIOChannelSocket takes in, so that excess fds can be seen */
#define VFIO_USER_CLIENT_MAX_FDS   8
#define VFIO_USER_CLIENT_MAX_XFER  VFIO_USER_DEF_MAX_XFER

/*
 * At most this many I/O fd entries per device: each may become a KVM
 * ioeventfd, of which KVM takes 1000 per bus, for all devices (and
 * refusing one makes QEMU abort).
 */
#define VFIO_USER_MAX_IO_FDS    64

/* What a server accepts, from its VERSION reply */
typedef struct VFIOUserServerCaps {
    uint16_t minor;
    uint32_t max_send_fds;
    uint64_t max_xfer_size;
    uint64_t migr_pgsize;
} VFIOUserServerCaps;

/* An entry as the server described it, whichever layout it came in */
typedef struct VFIOUserIOFDDesc {
    uint64_t offset;
    uint64_t size;
    uint32_t fd_index;
    uint32_t type;
    uint32_t flags;
    uint32_t shadow_fd_index;
    uint64_t shadow_offset;
    uint64_t data;              /* datamatch, or an ioregionfd's user_data */
} VFIOUserIOFDDesc;


int vfio_user_reply_errno(const VFIOUserHdr *hdr);
bool vfio_user_parse_version(const VFIOUserHdr *reply,
                             VFIOUserServerCaps *caps, Error **errp);
bool vfio_user_check_region_info(struct vfio_region_info *info, size_t len,
                                 Error **errp);
const uint8_t *vfio_user_iofds_layout(const VFIOUserHdr *reply, size_t nfds,
                                      uint32_t *count, size_t *stride,
                                      Error **errp);
bool vfio_user_iofd_decode(const uint8_t *entries, uint32_t i,
                           size_t stride, VFIOUserIOFDDesc *d,
                           Error **errp);

#endif /* HW_VFIO_USER_CHECK_H */
