/*
 * vfio-user live migration: device features and migration data, as
 * VFIODeviceIOOps operations.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_MIGRATION_H
#define HW_VFIO_USER_MIGRATION_H

#include "hw/vfio/vfio-common.h"
#include "hw/vfio-user/check.h"

/* DMA logging ranges that fit in one message */
#define VFIO_USER_MAX_LOGGING_RANGES \
    ((VFIO_USER_CLIENT_MAX_XFER - sizeof(VFIOUserDMALoggingControl)) / \
     sizeof(VFIOUserDMALoggingRange))

int vfio_user_device_feature(VFIODevice *vbasedev,
                             struct vfio_device_feature *feature);
ssize_t vfio_user_mig_data_read(VFIODevice *vbasedev, void *buf,
                                size_t size);
ssize_t vfio_user_mig_data_write(VFIODevice *vbasedev, const void *buf,
                                 size_t size);
int vfio_user_mig_precopy_info(VFIODevice *vbasedev,
                               struct vfio_precopy_info *info);

#endif /* HW_VFIO_USER_MIGRATION_H */
