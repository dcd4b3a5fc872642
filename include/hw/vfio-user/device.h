/*
 * vfio-user device access: VFIODeviceIOOps over a vfio-user connection.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_DEVICE_H
#define HW_VFIO_USER_DEVICE_H

#include "hw/vfio/vfio-common.h"
#include "hw/vfio-user/iofd.h"
#include "hw/vfio-user/proxy.h"

/* What the server said of one region */
typedef struct VFIOUserRegion {
    off_t offset;       /* info->offset: where the region's offsets start */
    int fd;             /* to mmap() the region from, or -1 */
    VFIOUserIOFDs *iofds;   /* parts reached through fds of their own */
} VFIOUserRegion;

/* An interrupt index's eventfds, by vector (-1: none), for replay */
typedef struct VFIOUserIRQFds {
    int *fds;
    uint32_t nr;
} VFIOUserIRQFds;

/* What the server said when last asked for INTx's resample eventfd */
typedef enum VFIOUserResample {
    VFIO_USER_RESAMPLE_UNKNOWN,
    VFIO_USER_RESAMPLE_TAKEN,
    VFIO_USER_RESAMPLE_REFUSED,
} VFIOUserResample;

typedef struct VFIOUserDevice {
    VFIOUserProxy *proxy;
    VFIOUserRegion *regions;
    unsigned int num_regions;
    /* By index, trigger then unmask: what hw/vfio wired, for replay */
    VFIOUserIRQFds *irq_fds;
    unsigned int num_irqs;
    bool posted_writes;     /* BAR writes do not wait for their reply */
    VFIOUserResample intx_resample;
    bool mmap_unsealed;     /* map region files the server may shrink */
    unsigned int io_fds_budget; /* I/O fds the regions may still take */
    Notifier lost;          /* of the connection */
    Error *last_error;      /* why the last operation failed, if it did */
    QEMUBH *lost_bh;
    /* PRE_COPY: what the server's reads said, for hw/vfio's estimates */
    bool precopy;               /* the device is in PRE_COPY */
    bool precopy_initial_sent;  /* a read came back short */
    bool precopy_more;          /* the last read brought data */
} VFIOUserDevice;

extern const VFIODeviceIOOps vfio_user_device_io_ops;

bool vfio_user_device_attach(VFIODevice *vbasedev, VFIOUserDevice *udev,
                             Error **errp);
void vfio_user_device_detach(VFIODevice *vbasedev);
void vfio_user_device_config_ahead(VFIODevice *vbasedev, bool write,
                                   off_t off, uint32_t size, void *data);
void vfio_user_device_config_done(void);
void vfio_user_device_add_cause(VFIOUserDevice *udev, Error **errp);
bool vfio_user_device_check_same(VFIODevice *vbasedev, Error **errp);
bool vfio_user_device_replay(VFIODevice *vbasedev, Error **errp);
void vfio_user_device_setup_io_fds(VFIODevice *vbasedev, VFIORegion *region,
                                   bool pio);
void vfio_user_device_drop_io_fds(VFIODevice *vbasedev);

#endif /* HW_VFIO_USER_DEVICE_H */
