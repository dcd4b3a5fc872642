/*
 * vfio-user I/O fds: the parts of a region a server wants reached through
 * fds of their own (GET_REGION_IO_FDS) instead of REGION_READ/WRITE.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_IOFD_H
#define HW_VFIO_USER_IOFD_H

#include "hw/vfio/vfio-common.h"
#include "hw/vfio-user/proxy.h"

typedef struct VFIOUserIOFD VFIOUserIOFD;

/* The I/O fds of one region, and where they were registered */
typedef struct VFIOUserIOFDs {
    const char *name;           /* the device's, for messages */
    VFIORegion *region;
    bool pio;                   /* an I/O port BAR */
    uint32_t timeout_ms;        /* for an ioregionfd's response */
    unsigned int *budget;       /* entries the device may still take */
    VFIOUserIOFD *entries;
    unsigned int nr;
    /* ioregionfd sockets in use, by entries or by accesses in flight */
    GSList *chans;
    /* Some entries need vfio_user_iofds_write() or _read() to see accesses */
    bool intercept;
    /* What the server sends was reported once; after a reset it is traced */
    bool reported;
} VFIOUserIOFDs;

VFIOUserIOFDs *vfio_user_iofds_new(const char *name, VFIORegion *region,
                                   bool pio, uint32_t timeout_ms,
                                   unsigned int *budget);
void G_GNUC_PRINTF(2, 3) vfio_user_iofds_report(VFIOUserIOFDs *iofds,
                                                const char *fmt, ...);

/*
 * Take the entries of a GET_REGION_IO_FDS reply in place of the ones
 * before.  Valid entries are registered (with copies of their fds); the
 * others are reported, and their accesses keep going through the socket.
 */
void vfio_user_iofds_install(VFIOUserIOFDs *iofds, VFIOUserMsg *reply);

/* Unregister every entry and close its fds */
void vfio_user_iofds_clear(VFIOUserIOFDs *iofds);
void vfio_user_iofds_free(VFIOUserIOFDs *iofds);

/*
 * Serve an access of @size bytes at @offset in the region if an entry
 * takes it: true, with the result (bytes done or a negative errno) in
 * @ret.  false: the access goes to the socket.
 */
bool vfio_user_iofds_write(VFIOUserIOFDs *iofds, VFIOUserProxy *proxy,
                           uint64_t offset, uint32_t size, const void *data,
                           int *ret);
bool vfio_user_iofds_read(VFIOUserIOFDs *iofds, VFIOUserProxy *proxy,
                          uint64_t offset, uint32_t size, void *data,
                          int *ret);

#endif /* HW_VFIO_USER_IOFD_H */
