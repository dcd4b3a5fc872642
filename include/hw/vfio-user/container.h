/*
 * vfio-user IOMMU backend: guest memory as a vfio-user server sees it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_CONTAINER_H
#define HW_VFIO_USER_CONTAINER_H

#include "qemu/iova-tree.h"
#include "hw/vfio/vfio-common.h"
#include "hw/vfio-user/proxy.h"

typedef struct VFIOUserContainer {
    VFIOContainerBase bcontainer;
    VFIOUserProxy *proxy;
    QemuMutex lock;         /* for the receive thread's DMA checks */
    IOVATree *mappings;     /* what the server was given, by IOVA */
    unsigned nr_mappings;   /* how many: servers may cap it */
} VFIOUserContainer;

#define TYPE_VFIO_IOMMU_USER TYPE_VFIO_IOMMU "-user"
OBJECT_DECLARE_SIMPLE_TYPE(VFIOUserContainer, VFIO_IOMMU_USER)

bool vfio_user_container_replay(VFIOUserContainer *container, Error **errp);

#endif /* HW_VFIO_USER_CONTAINER_H */
