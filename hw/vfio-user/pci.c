/*
 * vfio-user-pci: a PCI device whose emulation runs in a vfio-user server.
 *
 * The guest-facing side is hw/vfio's PCI code (config space, BARs,
 * interrupts, reset); this file only connects to the server and attaches
 * the device to the vfio-user transport and its IOMMU backend.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include "hw/core/cpu.h"
#include "hw/pci/pci.h"
#include "hw/qdev-properties.h"
#include "hw/vfio/pci.h"
#include "hw/vfio-user/container.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/vfio-user/device.h"
#include "qapi/clone-visitor.h"
#include "qapi/error.h"
#include "qapi/qapi-events-vfio.h"
#include "qapi/qapi-visit-sockets.h"
#include "qapi/visitor.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "trace.h"

#define TYPE_VFIO_USER_PCI "vfio-user-pci"
OBJECT_DECLARE_TYPE(VFIOUserPCIDevice, VFIOUserPCIDeviceClass, VFIO_USER_PCI)

struct VFIOUserPCIDeviceClass {
    PCIDeviceClass parent_class;
    PCIUnregisterFunc *parent_exit;
    DeviceUnrealize parent_unrealize;
};

/* Long enough for a server that is busy, short enough to notice a hang */
#define VFIO_USER_DEFAULT_TIMEOUT_MS 5000

struct VFIOUserPCIDevice {
    VFIOPCIDevice parent_obj;

    SocketAddress *socket;
    /* -device's flat syntax: socket.type=...,socket.path=...|socket.str= */
    char *socket_type;
    char *socket_path;
    char *socket_str;
    uint32_t timeout_ms;
    bool no_posted_writes;
    bool no_io_fds;
    bool mmap_unsealed;
    uint32_t reconnect_ms;

    VFIOUserDevice udev;
    SocketAddress *addr;        /* connected to, and to reconnect to */
    Notifier lost;              /* of the connection: tell management */
    bool up;                    /* realized and connected: lost is news */
    bool reconnect_reported;    /* a failed attempt, in this outage */
    /*
     * Retries the connection; while @negotiating (VERSION sent on a new
     * connection, the device not back yet), ends the wait for the reply
     */
    QEMUTimer *reconnect_timer;
    bool negotiating;
    /* Unrealize has begun: a config access that let the BQL go stops */
    bool unplugging;
};

/*
 * The server is gone: management may want to restart it, or unplug the
 * device; with reconnect-ms, try again later.  While realize runs, its
 * error says it all.
 */
static void vfio_user_pci_lost(Notifier *notifier, void *data)
{
    VFIOUserPCIDevice *dev = container_of(notifier, VFIOUserPCIDevice, lost);
    VFIOUserProxy *proxy = data;
    DeviceState *d = DEVICE(dev);
    g_autofree char *path = NULL;

    if (!d->realized) {
        return;
    }
    /* A failed reconnection attempt is no news */
    if (dev->up) {
        dev->up = false;
        path = object_get_canonical_path(OBJECT(dev));
        qapi_event_send_vfio_user_disconnected(d->id ?: "", path,
                                               proxy->sockname,
                                               proxy->lost_reason);
    }
    if (dev->reconnect_timer) {
        dev->negotiating = false;
        timer_mod(dev->reconnect_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + dev->reconnect_ms);
    }
}

/*
 * The config space state a server acts on, as the guest left it: BARs,
 * MSI and MSI-X enables (QEMU emulates the rest of those capabilities),
 * and the command register last, which enables the rest.
 */
static bool vfio_user_pci_replay_config(VFIOUserPCIDevice *dev, Error **errp)
{
    VFIOPCIDevice *vdev = VFIO_PCI_BASE(dev);
    PCIDevice *pdev = PCI_DEVICE(dev);
    struct {
        uint32_t offset;
        uint32_t size;
    } regs[PCI_ROM_SLOT + 4];
    unsigned int i, n = 0;

    for (i = 0; i < PCI_ROM_SLOT; i++) {
        regs[n++] = (typeof(regs[0])) { PCI_BASE_ADDRESS_0 + i * 4, 4 };
    }
    regs[n++] = (typeof(regs[0])) { PCI_ROM_ADDRESS, 4 };
    if (pdev->cap_present & QEMU_PCI_CAP_MSI) {
        regs[n++] = (typeof(regs[0])) { pdev->msi_cap + PCI_MSI_FLAGS, 2 };
    }
    if (pdev->cap_present & QEMU_PCI_CAP_MSIX) {
        regs[n++] = (typeof(regs[0])) { pdev->msix_cap + PCI_MSIX_FLAGS, 2 };
    }
    regs[n++] = (typeof(regs[0])) { PCI_COMMAND, 2 };

    for (i = 0; i < n; i++) {
        /* Config space is little-endian, in pdev->config as on the wire */
        if (vfio_device_region_write(&vdev->vbasedev,
                                     VFIO_PCI_CONFIG_REGION_INDEX,
                                     vdev->config_offset + regs[i].offset,
                                     regs[i].size,
                                     pdev->config + regs[i].offset) !=
            regs[i].size) {
            error_setg(errp, "cannot restore config space at 0x%x",
                       regs[i].offset);
            return false;
        }
    }
    return true;
}

/* A reconnection attempt failed: try again later */
static void vfio_user_pci_reconnect_failed(VFIOUserPCIDevice *dev,
                                           Error *err)
{
    VFIODevice *vbasedev = &VFIO_PCI_BASE(dev)->vbasedev;
    VFIOUserProxy *proxy = dev->udev.proxy;

    dev->negotiating = false;
    trace_vfio_user_pci_reconnect_failed(vbasedev->name,
                                         err ? error_get_pretty(err) :
                                         "the server went away");
    if (!dev->reconnect_reported) {
        dev->reconnect_reported = true;
        warn_report("vfio-user %s: cannot reconnect yet: %s; trying "
                    "again every %u ms", proxy->sockname,
                    err ? error_get_pretty(err) : "the server went away",
                    dev->reconnect_ms);
    }
    vfio_user_reconnect_cancel(proxy);
    /* If that closes the connection, its notifier tries again */
    if (!vfio_user_drop(proxy, err)) {
        timer_mod(dev->reconnect_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + dev->reconnect_ms);
    }
}

/*
 * The server answered VERSION on the new connection: check it serves the
 * same device, and give it the device's state (config space, DMA
 * mappings, interrupts, I/O fds) within one timeout.  Until then the
 * device stays disconnected.
 */
static void vfio_user_pci_reconnect_answered(void *opaque)
{
    VFIOUserPCIDevice *dev = opaque;
    VFIODevice *vbasedev = &VFIO_PCI_BASE(dev)->vbasedev;
    VFIOUserProxy *proxy = dev->udev.proxy;
    DeviceState *d = DEVICE(dev);
    g_autofree char *path = NULL;
    Error *err = NULL;
    bool ok;

    if (!dev->negotiating) {
        return;
    }
    dev->negotiating = false;
    timer_del(dev->reconnect_timer);
    vfio_user_set_deadline(proxy, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                                  dev->timeout_ms);
    ok = vfio_user_reconnect_finish(proxy, &err) &&
         vfio_user_device_check_same(vbasedev, &err) &&
         vfio_user_pci_replay_config(dev, &err) &&
         vfio_user_container_replay(VFIO_IOMMU_USER(vbasedev->bcontainer),
                                    &err) &&
         vfio_user_device_replay(vbasedev, &err);
    vfio_user_set_deadline(proxy, 0);
    if (!ok) {
        vfio_user_pci_reconnect_failed(dev, err);
        return;
    }
    dev->up = true;
    dev->reconnect_reported = false;
    info_report("vfio-user %s: the server is back; the device is "
                "reconnected", proxy->sockname);
    trace_vfio_user_pci_reconnected(vbasedev->name);
    path = object_get_canonical_path(OBJECT(dev));
    qapi_event_send_vfio_user_reconnected(d->id ?: "", path,
                                          proxy->sockname);
}

/*
 * Try the server again: connect and send VERSION, without waiting for
 * its reply (vfio_user_reconnect_start()), which has one timeout to come;
 * or, if that is what ran out, give up on this attempt.
 */
static void vfio_user_pci_reconnect(void *opaque)
{
    VFIOUserPCIDevice *dev = opaque;
    VFIOUserProxy *proxy = dev->udev.proxy;
    Error *err = NULL;

    if (dev->negotiating) {
        if (vfio_user_reconnect_answered(proxy)) {
            /* Just in time: its callback is on its way */
            vfio_user_pci_reconnect_answered(dev);
            return;
        }
        error_setg(&err, "no reply to VERSION within %u ms",
                   dev->timeout_ms);
        vfio_user_pci_reconnect_failed(dev, err);
        return;
    }
    if (!vfio_user_reconnect_start(proxy, dev->addr,
                                   vfio_user_pci_reconnect_answered, dev,
                                   &err)) {
        vfio_user_pci_reconnect_failed(dev, err);
        return;
    }
    dev->negotiating = true;
    timer_mod(dev->reconnect_timer,
              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + dev->timeout_ms);
}

/* The socket to connect to, from whichever syntax the user chose */
static SocketAddress *vfio_user_pci_socket(VFIOUserPCIDevice *dev,
                                           Error **errp)
{
    SocketAddress *addr;

    if (dev->socket) {
        if (dev->socket_type || dev->socket_path || dev->socket_str) {
            error_setg(errp, "use either 'socket' or 'socket.*', not both");
            return NULL;
        }
        return QAPI_CLONE(SocketAddress, dev->socket);
    }
    if (!dev->socket_type && !dev->socket_path && !dev->socket_str) {
        error_setg(errp, "'socket' is required");
        error_append_hint(errp, "Use socket=PATH, socket.type=unix,"
                          "socket.path=PATH or socket.type=fd,socket.str=FD\n");
        return NULL;
    }

    addr = g_new0(SocketAddress, 1);
    if (!dev->socket_type || !strcmp(dev->socket_type, "unix")) {
        if (!dev->socket_path || dev->socket_str) {
            error_setg(errp, "socket.type=unix needs socket.path (only)");
            goto fail;
        }
        addr->type = SOCKET_ADDRESS_TYPE_UNIX;
        addr->u.q_unix.path = g_strdup(dev->socket_path);
    } else if (!strcmp(dev->socket_type, "fd")) {
        if (!dev->socket_str || dev->socket_path) {
            error_setg(errp, "socket.type=fd needs socket.str (only)");
            goto fail;
        }
        addr->type = SOCKET_ADDRESS_TYPE_FD;
        addr->u.fd.str = g_strdup(dev->socket_str);
    } else {
        error_setg(errp, "socket.type must be 'unix' or 'fd', not '%s'",
                   dev->socket_type);
        goto fail;
    }
    return addr;

fail:
    qapi_free_SocketAddress(addr);
    return NULL;
}

static void vfio_user_pci_realize(PCIDevice *pdev, Error **errp)
{
    ERRP_GUARD();
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(pdev);
    VFIOPCIDevice *vdev = VFIO_PCI_BASE(pdev);
    VFIODevice *vbasedev = &vdev->vbasedev;
    g_autoptr(SocketAddress) addr = NULL;
    DeviceState *host;
    int i;
    const VFIOIOMMUClass *ops =
        VFIO_IOMMU_CLASS(object_class_by_name(TYPE_VFIO_IOMMU_USER));

    addr = vfio_user_pci_socket(dev, errp);
    if (!addr) {
        error_prepend(errp, TYPE_VFIO_USER_PCI ": ");
        return;
    }
    if (!dev->timeout_ms) {
        error_setg(errp, TYPE_VFIO_USER_PCI ": x-request-timeout-ms must "
                   "not be 0");
        return;
    }
    if (dev->reconnect_ms && addr->type == SOCKET_ADDRESS_TYPE_FD) {
        error_setg(errp, TYPE_VFIO_USER_PCI ": reconnect-ms needs a socket "
                   "path: a passed fd cannot be connected again");
        return;
    }

    dev->udev.proxy = vfio_user_connect(addr, dev->timeout_ms, errp);
    if (!dev->udev.proxy) {
        return;
    }
    /* Config accesses come through the root bus's host bridge */
    host = BUS(pci_device_root_bus(pdev))->parent;
    vfio_user_set_access_guards(dev->udev.proxy,
                                &DEVICE(pdev)->mem_reentrancy_guard,
                                host ? &host->mem_reentrancy_guard : NULL);
    vbasedev->name = g_strdup_printf("vfio-user:%s",
                                     dev->udev.proxy->sockname);
    trace_vfio_user_pci_realize(vbasedev->name);
    dev->lost.notify = vfio_user_pci_lost;
    vfio_user_add_lost_notifier(dev->udev.proxy, &dev->lost);
    vfio_user_set_deadline(dev->udev.proxy,
                           qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                           dev->timeout_ms);

    if (!vfio_user_negotiate(dev->udev.proxy, errp)) {
        return;
    }
    dev->udev.mmap_unsealed = dev->mmap_unsealed;
    if (!vfio_user_device_attach(vbasedev, &dev->udev, errp)) {
        goto error;
    }
    if (!ops->attach_device(vbasedev->name, vbasedev,
                            pci_device_iommu_address_space(pdev), errp)) {
        goto error;
    }
    if (!vfio_pci_device_setup(vdev, errp)) {
        goto error;
    }

    /*
     * The interrupt pin is read-only and hw/vfio has its value by now;
     * keeping it saves a vCPU that turns MSI off (hw/vfio re-enables INTx
     * and reads the pin first) a wait for the server with the BQL held.
     */
    vdev->emulated_config_bits[PCI_INTERRUPT_PIN] = 0xff;
    dev->udev.posted_writes = !dev->no_posted_writes;
    for (i = 0; i < PCI_ROM_SLOT && !dev->no_io_fds; i++) {
        VFIOBAR *bar = &vdev->bars[i];

        if (bar->region.size) {
            vfio_user_device_setup_io_fds(vbasedev, &bar->region, bar->ioport);
        }
    }
    vfio_user_set_deadline(dev->udev.proxy, 0);
    dev->addr = g_steal_pointer(&addr);
    if (dev->reconnect_ms) {
        dev->reconnect_timer = timer_new_ms(QEMU_CLOCK_REALTIME,
                                            vfio_user_pci_reconnect, dev);
    }
    dev->up = true;
    return;

error:
    vfio_user_device_add_cause(&dev->udev, errp);
    error_prepend(errp, VFIO_MSG_PREFIX, vbasedev->name);
}

/*
 * A guest's config space access waits for the server without the BQL, as
 * a BAR access does.  hw/vfio's config code acts on device state around
 * its exchange with the device, so the exchange is made first, here
 * (vfio_user_device_config_ahead()), and hw/vfio's code then runs, with
 * the BQL, on its result.  Meanwhile the device may have been unplugged
 * (its config space and BARs are gone then): the reference keeps the
 * object, and the access ends there, as on a removed device.
 */
static bool vfio_user_pci_config_ahead(VFIOUserPCIDevice *dev, bool write,
                                       uint32_t addr, int len, void *data)
{
    VFIOPCIDevice *vdev = VFIO_PCI_BASE(dev);
    bool gone;

    object_ref(OBJECT(dev));
    vfio_user_device_config_ahead(&vdev->vbasedev, write,
                                  vdev->config_offset + addr, len, data);
    gone = dev->unplugging;
    if (gone) {
        vfio_user_device_config_done();
    }
    object_unref(OBJECT(dev));
    return !gone;
}

/*
 * Only a vCPU lets the BQL go (the main loop has nobody to let run), and
 * only inside an RCU read-side section, as its port I/O and MMIO
 * dispatch are: that is what keeps the device, unplugged meanwhile,
 * valid for the caller (pci_host_config_read_common()) once the access
 * ends.  Under KVM, config accesses that come another way (a hypercall)
 * wait with the BQL held; under TCG, a vCPU runs inside such a section
 * throughout, so they would not, but x86 has no such hypercall.
 */
static bool vfio_user_pci_config_unlocked(VFIOUserPCIDevice *dev)
{
    return vfio_user_vcpu_may_release_bql() && !dev->unplugging;
}

static uint32_t vfio_user_pci_read_config(PCIDevice *pdev, uint32_t addr,
                                          int len)
{
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(pdev);
    VFIOPCIDevice *vdev = VFIO_PCI_BASE(pdev);
    uint32_t emu_bits = 0, phys = 0, val;

    /* hw/vfio asks the device only for bits it does not emulate */
    memcpy(&emu_bits, vdev->emulated_config_bits + addr, len);
    emu_bits = le32_to_cpu(emu_bits);
    if (vfio_user_pci_config_unlocked(dev) &&
        (~emu_bits & (0xffffffffU >> (32 - len * 8))) &&
        !vfio_user_pci_config_ahead(dev, false, addr, len, &phys)) {
        return 0xffffffffU >> (32 - len * 8);
    }
    val = vfio_pci_read_config(pdev, addr, len);
    vfio_user_device_config_done();
    return val;
}

static void vfio_user_pci_write_config(PCIDevice *pdev, uint32_t addr,
                                       uint32_t val, int len)
{
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(pdev);
    uint32_t val_le = cpu_to_le32(val);

    if (vfio_user_pci_config_unlocked(dev) &&
        !vfio_user_pci_config_ahead(dev, true, addr, len, &val_le)) {
        return;
    }
    vfio_pci_write_config(pdev, addr, val, len);
    vfio_user_device_config_done();
}

/* From here on, config accesses keep the BQL, and those waiting stop */
static void vfio_user_pci_unrealize(DeviceState *d)
{
    VFIOUserPCIDeviceClass *k = VFIO_USER_PCI_GET_CLASS(d);

    VFIO_USER_PCI(d)->unplugging = true;
    k->parent_unrealize(d);
}

/*
 * The I/O fds are registered on the BARs' memory regions, which are gone
 * by the time the device is finalized: give them back on unplug.
 */
static void vfio_user_pci_exit(PCIDevice *pdev)
{
    VFIOUserPCIDeviceClass *k = VFIO_USER_PCI_GET_CLASS(pdev);
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(pdev);

    if (dev->reconnect_timer) {
        vfio_user_reconnect_cancel(dev->udev.proxy);
        timer_free(dev->reconnect_timer);
        dev->reconnect_timer = NULL;
    }
    dev->up = false;
    vfio_user_device_drop_io_fds(&VFIO_PCI_BASE(pdev)->vbasedev);
    k->parent_exit(pdev);
}

static void vfio_user_pci_instance_init(Object *obj)
{
    /* Display support is for kernel vGPUs (dma-bufs, gfx planes) */
    VFIO_PCI_BASE(obj)->display = ON_OFF_AUTO_OFF;
}

/*
 * Runs before vfio-pci-base's finalize: detach from the backend while the
 * connection its DMA_UNMAPs travel on still exists, then close it.
 */
static void vfio_user_pci_instance_finalize(Object *obj)
{
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(obj);
    VFIODevice *vbasedev = &VFIO_PCI_BASE(obj)->vbasedev;

    if (dev->udev.proxy) {
        /* A realize that failed early leaves it set; unmaps get their own */
        vfio_user_set_deadline(dev->udev.proxy, 0);
    }
    vfio_detach_device(vbasedev);
    vfio_user_device_detach(vbasedev);
    if (dev->udev.proxy) {
        notifier_remove(&dev->lost);
        vfio_user_disconnect(dev->udev.proxy);
        dev->udev.proxy = NULL;
    }
    qapi_free_SocketAddress(dev->socket);
    qapi_free_SocketAddress(dev->addr);
}

/* socket=PATH, or a SocketAddress object (JSON -device, QMP device_add) */
static void vfio_user_pci_set_socket(Object *obj, Visitor *v,
                                     const char *name, void *opaque,
                                     Error **errp)
{
    VFIOUserPCIDevice *dev = VFIO_USER_PCI(obj);
    g_autoptr(SocketAddress) addr = NULL;
    GenericAlternate *alt = NULL;
    QType type;
    char *path;

    if (!visit_start_alternate(v, name, &alt, sizeof(*alt), errp)) {
        return;
    }
    type = alt ? alt->type : QTYPE_NONE;
    visit_end_alternate(v, (void **)&alt);
    g_free(alt);

    if (type == QTYPE_QSTRING) {
        if (!visit_type_str(v, name, &path, errp)) {
            return;
        }
        addr = g_new0(SocketAddress, 1);
        addr->type = SOCKET_ADDRESS_TYPE_UNIX;
        addr->u.q_unix.path = path;
    } else if (!visit_type_SocketAddress(v, name, &addr, errp)) {
        return;
    }
    qapi_free_SocketAddress(dev->socket);
    dev->socket = g_steal_pointer(&addr);
}

static const Property vfio_user_pci_properties[] = {
    DEFINE_PROP_STRING("socket.type", VFIOUserPCIDevice, socket_type),
    DEFINE_PROP_STRING("socket.path", VFIOUserPCIDevice, socket_path),
    DEFINE_PROP_STRING("socket.str", VFIOUserPCIDevice, socket_str),
    DEFINE_PROP_UINT32("x-request-timeout-ms", VFIOUserPCIDevice,
                       timeout_ms, VFIO_USER_DEFAULT_TIMEOUT_MS),
    DEFINE_PROP_BOOL("x-no-posted-writes", VFIOUserPCIDevice,
                     no_posted_writes, false),
    DEFINE_PROP_BOOL("x-no-io-fds", VFIOUserPCIDevice, no_io_fds, false),
    DEFINE_PROP_BOOL("x-mmap-unsealed", VFIOUserPCIDevice, mmap_unsealed,
                     false),
    DEFINE_PROP_UINT32("reconnect-ms", VFIOUserPCIDevice, reconnect_ms, 0),
    /* hw/vfio's migration, as vfio-pci has them */
    DEFINE_PROP_ON_OFF_AUTO("enable-migration", VFIOPCIDevice,
                            vbasedev.enable_migration, ON_OFF_AUTO_AUTO),
    DEFINE_PROP_BOOL("migration-events", VFIOPCIDevice,
                     vbasedev.migration_events, false),
};

static void vfio_user_pci_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *pdc = PCI_DEVICE_CLASS(klass);
    VFIOUserPCIDeviceClass *k = VFIO_USER_PCI_CLASS(klass);

    device_class_set_props(dc, vfio_user_pci_properties);
    object_class_property_add(klass, "socket", "SocketAddress", NULL,
                              vfio_user_pci_set_socket, NULL, NULL);
    object_class_property_set_description(klass, "socket",
        "UNIX socket of the vfio-user server: a path, or a SocketAddress "
        "of type 'unix' or 'fd'");
    object_class_property_set_description(klass, "socket.type",
        "'unix' or 'fd', for -device's flat syntax");
    object_class_property_set_description(klass, "socket.path",
        "Path of the server's socket, with socket.type=unix");
    object_class_property_set_description(klass, "socket.str",
        "Name of an fd passed with getfd, or its number, with "
        "socket.type=fd");
    object_class_property_set_description(klass, "x-request-timeout-ms",
        "How long to wait for the server's reply to each request, and "
        "for all of realize (ms); a server that misses it is disconnected");
    object_class_property_set_description(klass, "x-no-posted-writes",
        "Wait for the server's reply to every BAR write");
    object_class_property_set_description(klass, "x-no-io-fds",
        "Do not ask the server for ioeventfds or ioregionfds: every BAR "
        "access goes through the socket");
    object_class_property_set_description(klass, "reconnect-ms",
        "If not 0, when the server goes away, connect to its socket path "
        "again every this many ms and give it the device's state back");
    object_class_property_set_description(klass, "enable-migration",
        "Migrate the device if the server supports migration (auto: else "
        "block migration; on: else fail; off: always block migration)");
    object_class_property_set_description(klass, "migration-events",
        "Emit a VFIO_MIGRATION event when the device's migration state "
        "changes");
    object_class_property_set_description(klass, "x-mmap-unsealed",
        "Map region files the server has not sealed against shrinking "
        "(F_SEAL_SHRINK): faster with such servers, but one that shrinks "
        "a mapped file crashes QEMU");
    dc->desc = "vfio-user PCI device: device emulated by a vfio-user server";
    pdc->realize = vfio_user_pci_realize;
    k->parent_exit = pdc->exit;
    pdc->exit = vfio_user_pci_exit;
    pdc->config_read = vfio_user_pci_read_config;
    pdc->config_write = vfio_user_pci_write_config;
    device_class_set_parent_unrealize(dc, vfio_user_pci_unrealize,
                                      &k->parent_unrealize);
}

static const TypeInfo vfio_user_pci_info = {
    .name = TYPE_VFIO_USER_PCI,
    .parent = TYPE_VFIO_PCI_BASE,
    .instance_size = sizeof(VFIOUserPCIDevice),
    .class_size = sizeof(VFIOUserPCIDeviceClass),
    .class_init = vfio_user_pci_class_init,
    .instance_init = vfio_user_pci_instance_init,
    .instance_finalize = vfio_user_pci_instance_finalize,
};

static void register_vfio_user_pci(void)
{
    type_register_static(&vfio_user_pci_info);
}

type_init(register_vfio_user_pci)
