/*
 * vfio-user IOMMU backend: the DMA view a vfio-user server gets of guest
 * memory.  hw/vfio's memory listener drives it like the kernel backends;
 * mappings become DMA_MAP/DMA_UNMAP messages, passing the RAM's fd when it
 * has one, and the server's DMA_READ/DMA_WRITE requests are served for the
 * ranges it was given.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include "exec/ramblock.h"
#include "hw/vfio-user/container.h"
#include "hw/vfio-user/device.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "exec/memory.h"
#include "trace.h"

/* The server's view of the mapping's protection, for DMA_READ/DMA_WRITE */
static IOMMUAccessFlags vfio_user_map_perm(bool readonly)
{
    return readonly ? IOMMU_RO : IOMMU_RW;
}

/*
 * Announce @map to the server, with its RAM's fd where it has one (the
 * host address it maps is in map->translated_addr).
 */
static int vfio_user_send_map(VFIOUserContainer *container,
                              const DMAMap *map, Error **errp)
{
    void *vaddr = (void *)(uintptr_t)map->translated_addr;
    bool readonly = map->perm == IOMMU_RO;
    VFIOUserDMAMap msg = { };
    ram_addr_t offset = 0;
    MemoryRegion *mr;
    int fd = -1;

    mr = memory_region_from_host(vaddr, &offset);
    if (mr && mr->ram_block) {
        fd = memory_region_get_fd(mr);
    }

    vfio_user_request_init(&msg.hdr, VFIO_USER_DMA_MAP, sizeof(msg));
    msg.argsz = sizeof(msg) - sizeof(msg.hdr);
    msg.flags = VFIO_USER_DMA_READABLE |
                (readonly ? 0 : VFIO_USER_DMA_WRITEABLE);
    msg.iova = map->iova;
    msg.size = map->size + 1;
    if (fd >= 0) {
        msg.offset = mr->ram_block->fd_offset + offset;
    }
    trace_vfio_user_dma_map(container->proxy->sockname, msg.iova, msg.size,
                            msg.offset, fd, readonly);

    return vfio_user_request(container->proxy, &msg.hdr,
                             fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0, NULL,
                             errp);
}

static int vfio_user_dma_map(const VFIOContainerBase *bcontainer, hwaddr iova,
                             ram_addr_t size, void *vaddr, bool readonly)
{
    VFIOUserContainer *container = VFIO_IOMMU_USER(bcontainer);
    DMAMap map = {
        .iova = iova,
        .translated_addr = (uintptr_t)vaddr,
        .size = size - 1,
        .perm = vfio_user_map_perm(readonly),
    };
    Error *err = NULL;
    int ret;

    /* Without a server, keep it for when one comes back */
    if (vfio_user_connected(container->proxy)) {
        ret = vfio_user_send_map(container, &map, &err);
    } else {
        ret = 0;
    }
    if (ret < 0 && !bcontainer->initialized) {
        error_free(err);
        return ret;
    }
    if (ret < 0 && vfio_user_connected(container->proxy)) {
        /*
         * hw/vfio treats a failed mapping after realize as fatal for the
         * VM; a vfio-user server that fails one must not take the guest
         * down with it.  The device loses DMA to that range.
         */
        error_append_hint(&err, "The device cannot reach IOVA 0x%"
                          HWADDR_PRIx "+0x" RAM_ADDR_FMT " (%u other "
                          "mappings are live; a server may cap them, "
                          "and a vIOMMU maps page by page).\n",
                          iova, size, container->nr_mappings);
        error_report_err(err);
        return 0;
    }
    /* The server went away meanwhile: it may come back */
    error_free(err);

    /* hw/vfio never maps over a live mapping: there is no overlap */
    WITH_QEMU_LOCK_GUARD(&container->lock) {
        if (iova_tree_insert(container->mappings, &map) == IOVA_OK) {
            container->nr_mappings++;
        }
    }
    return 0;
}

/*
 * A server that came back knows no mappings: announce them all again.
 * IOVATree's iterator takes no opaque, so take them out and put them
 * back to list them.
 */
bool vfio_user_container_replay(VFIOUserContainer *container, Error **errp)
{
    g_autoptr(GArray) maps = g_array_new(false, false, sizeof(DMAMap));
    DMAMap all = { .iova = 0, .size = HWADDR_MAX };
    const DMAMap *found;
    unsigned int i;

    WITH_QEMU_LOCK_GUARD(&container->lock) {
        while ((found = iova_tree_find(container->mappings, &all))) {
            DMAMap map = *found;

            g_array_append_val(maps, map);
            iova_tree_remove(container->mappings, map);
        }
        for (i = 0; i < maps->len; i++) {
            iova_tree_insert(container->mappings,
                             &g_array_index(maps, DMAMap, i));
        }
    }
    for (i = 0; i < maps->len; i++) {
        if (vfio_user_send_map(container, &g_array_index(maps, DMAMap, i),
                               errp) < 0) {
            return false;
        }
    }
    return true;
}

static int vfio_user_send_unmap(VFIOUserContainer *container,
                                const DMAMap *map)
{
    VFIOUserDMAUnmap msg = { };
    Error *err = NULL;
    int ret;

    vfio_user_request_init(&msg.hdr, VFIO_USER_DMA_UNMAP, sizeof(msg));
    msg.argsz = sizeof(msg) - sizeof(msg.hdr);
    msg.iova = map->iova;
    msg.size = map->size + 1;
    trace_vfio_user_dma_unmap(container->proxy->sockname, msg.iova,
                              msg.size);
    ret = vfio_user_request(container->proxy, &msg.hdr, NULL, 0, NULL, &err);
    if (ret < 0) {
        error_report_err(err);
    }
    return ret;
}

/*
 * hw/vfio unmaps ranges the way the kernel's type1 IOMMU allows: any
 * range, covering any number of mappings (a vIOMMU invalidating its whole
 * address space, say).  A vfio-user server only unmaps what was mapped, as
 * it was mapped: unmap each mapping the range touches.
 */
static int vfio_user_dma_unmap(const VFIOContainerBase *bcontainer,
                               hwaddr iova, ram_addr_t size,
                               IOMMUTLBEntry *iotlb)
{
    VFIOUserContainer *container = VFIO_IOMMU_USER(bcontainer);
    DMAMap range = { .iova = iova, .size = size - 1 };
    const DMAMap *found;
    DMAMap map;
    int ret = 0;

    if (!size) {
        return 0;
    }
    for (;;) {
        WITH_QEMU_LOCK_GUARD(&container->lock) {
            found = iova_tree_find(container->mappings, &range);
            if (found) {
                map = *found;
                /* Whatever the server says, it may no longer DMA there */
                iova_tree_remove(container->mappings, map);
                container->nr_mappings--;
            }
        }
        if (!found) {
            break;
        }
        if (vfio_user_connected(container->proxy) &&
            vfio_user_send_unmap(container, &map) < 0) {
            ret = -EIO;
        }
    }
    return ret;
}

/*
 * Whether [@addr, @addr + @count) lies within what was mapped (a request
 * may span adjacent mappings), writable if @write.  The receive thread
 * asks while the memory listener maps and unmaps under the BQL.
 */
static bool vfio_user_dma_allowed(VFIOUserContainer *container,
                                  uint64_t addr, uint64_t count, bool write)
{
    uint64_t done = 0;

    QEMU_LOCK_GUARD(&container->lock);
    while (done < count) {
        DMAMap want = { .iova = addr + done, .size = 0 };
        const DMAMap *map = iova_tree_find(container->mappings, &want);
        uint64_t left_in_map;

        if (!map || (write && map->perm == IOMMU_RO)) {
            return false;
        }
        /* Inclusive sizes: this cannot overflow even for a map to 2^64 - 1 */
        left_in_map = map->iova + map->size - want.iova;
        if (count - done - 1 <= left_in_map) {
            break;
        }
        done += left_in_map + 1;
    }
    return true;
}

/*
 * Whether all of [@addr, @addr + @count) is memory that address_space_rw()
 * reaches directly, without the BQL: guest RAM.  What else the memory
 * listener maps (another device's BAR, mapped for peer-to-peer DMA) it
 * reaches as MMIO, with the BQL: a request served by the receive thread
 * would wait for it while whoever holds it may wait for a reply that the
 * server sends only once its request is served.  (The memory map changes
 * only with the BQL held; one that changes between this check and the
 * access makes the access take it, no worse than before.)
 */
static bool vfio_user_dma_is_ram(AddressSpace *as, uint64_t addr,
                                 uint64_t count, bool write)
{
    RCU_READ_LOCK_GUARD();
    while (count) {
        hwaddr len = count, xlat;
        MemoryRegion *mr;

        mr = address_space_translate(as, addr, &xlat, &len, write,
                                     MEMTXATTRS_UNSPECIFIED);
        if (!len || !memory_access_is_direct(mr, write,
                                             MEMTXATTRS_UNSPECIFIED)) {
            return false;
        }
        addr += len;
        count -= len;
    }
    return true;
}

/*
 * Serve DMA_READ/DMA_WRITE, in the connection's receive thread (or a
 * waiter's): only within what was mapped, never more than we announced
 * we accept, and only to guest RAM, which is reached without the BQL.
 */
static VFIOUserHdr *vfio_user_dma_rw(VFIOUserContainer *container,
                                     VFIOUserMsg *req, uint32_t *error)
{
    AddressSpace *as = container->bcontainer.space->as;
    bool write = req->hdr->command == VFIO_USER_DMA_WRITE;
    VFIOUserDMARW *rw = (VFIOUserDMARW *)req->hdr;
    g_autofree VFIOUserDMARW *reply = NULL;
    size_t reply_size;
    MemTxResult res;

    if (req->hdr->size < sizeof(*rw) || req->nfds ||
        rw->count > VFIO_USER_CLIENT_MAX_XFER ||
        (write && req->hdr->size - sizeof(*rw) != rw->count) ||
        rw->offset + rw->count < rw->offset) {
        *error = EINVAL;
        return NULL;
    }
    /*
     * A server being reconnected to has not shown yet that it serves the
     * same device, nor been given its mappings again
     */
    if (!vfio_user_connected(container->proxy) ||
        !vfio_user_dma_allowed(container, rw->offset, rw->count, write)) {
        trace_vfio_user_dma_denied(container->proxy->sockname, rw->offset,
                                   rw->count);
        *error = EFAULT;
        return NULL;
    }
    if (!vfio_user_dma_is_ram(as, rw->offset, rw->count, write)) {
        trace_vfio_user_dma_not_ram(container->proxy->sockname, rw->offset,
                                    rw->count);
        *error = EFAULT;
        return NULL;
    }

    reply_size = sizeof(*reply) + (write ? 0 : rw->count);
    reply = g_malloc0(reply_size);
    reply->hdr.size = reply_size;
    reply->offset = rw->offset;
    reply->count = rw->count;
    if (write) {
        res = address_space_write(as, rw->offset, MEMTXATTRS_UNSPECIFIED,
                                  rw->data, rw->count);
    } else {
        res = address_space_read(as, rw->offset, MEMTXATTRS_UNSPECIFIED,
                                 reply->data, rw->count);
    }
    if (res != MEMTX_OK) {
        *error = EFAULT;
        return NULL;
    }
    trace_vfio_user_dma_rw(container->proxy->sockname, write, rw->offset,
                           rw->count);
    return (VFIOUserHdr *)g_steal_pointer(&reply);
}

static VFIOUserHdr *vfio_user_container_request(void *opaque,
                                                VFIOUserMsg *req,
                                                uint32_t *error)
{
    switch (req->hdr->command) {
    case VFIO_USER_DMA_READ:
    case VFIO_USER_DMA_WRITE:
        return vfio_user_dma_rw(opaque, req, error);
    default:
        *error = ENOSYS;
        return NULL;
    }
}

static void vfio_user_container_detach(VFIODevice *vbasedev);

static bool vfio_user_container_attach(const char *name, VFIODevice *vbasedev,
                                       AddressSpace *as, Error **errp)
{
    VFIOUserDevice *udev = vbasedev->io_opaque;
    VFIOContainerBase *bcontainer;
    VFIOUserContainer *container;
    VFIOAddressSpace *space;

    space = vfio_get_address_space(as);
    container = VFIO_IOMMU_USER(object_new(TYPE_VFIO_IOMMU_USER));
    container->proxy = udev->proxy;
    container->mappings = iova_tree_new();
    qemu_mutex_init(&container->lock);
    bcontainer = &container->bcontainer;
    bcontainer->pgsizes = qemu_real_host_page_size();
    vfio_address_space_insert(space, bcontainer);
    vfio_user_set_request_handler(udev->proxy, vfio_user_container_request,
                                  container);

    /* Devices are attached before mappings, like the kernel backends */
    vbasedev->bcontainer = bcontainer;
    QLIST_INSERT_HEAD(&bcontainer->device_list, vbasedev, container_next);
    QLIST_INSERT_HEAD(&vfio_device_list, vbasedev, global_next);

    bcontainer->listener = vfio_memory_listener;
    memory_listener_register(&bcontainer->listener, space->as);
    if (bcontainer->error) {
        error_propagate_prepend(errp, bcontainer->error,
                                "vfio-user %s: DMA mapping failed: ",
                                udev->proxy->sockname);
        bcontainer->error = NULL;
        vfio_user_container_detach(vbasedev);
        return false;
    }
    bcontainer->initialized = true;
    return true;
}

static void vfio_user_container_detach(VFIODevice *vbasedev)
{
    VFIOContainerBase *bcontainer = vbasedev->bcontainer;
    VFIOUserContainer *container = VFIO_IOMMU_USER(bcontainer);
    VFIOAddressSpace *space = bcontainer->space;

    memory_listener_unregister(&bcontainer->listener);
    vfio_user_set_request_handler(container->proxy, NULL, NULL);
    QLIST_REMOVE(vbasedev, global_next);
    QLIST_REMOVE(vbasedev, container_next);
    vbasedev->bcontainer = NULL;
    iova_tree_destroy(container->mappings);
    qemu_mutex_destroy(&container->lock);
    object_unref(container);
    vfio_put_address_space(space);
}

static int vfio_user_pci_hot_reset(VFIODevice *vbasedev, bool single)
{
    /* A vfio-user device has no bus to reset beyond DEVICE_RESET */
    return -ENOTSUP;
}

static void vfio_iommu_user_class_init(ObjectClass *klass, void *data)
{
    VFIOIOMMUClass *vioc = VFIO_IOMMU_CLASS(klass);

    vioc->dma_map = vfio_user_dma_map;
    vioc->dma_unmap = vfio_user_dma_unmap;
    vioc->attach_device = vfio_user_container_attach;
    vioc->detach_device = vfio_user_container_detach;
    vioc->pci_hot_reset = vfio_user_pci_hot_reset;
}

static const TypeInfo types[] = {
    {
        .name = TYPE_VFIO_IOMMU_USER,
        .parent = TYPE_VFIO_IOMMU,
        .instance_size = sizeof(VFIOUserContainer),
        .class_init = vfio_iommu_user_class_init,
    },
};

DEFINE_TYPES(types)
