/*
 * vfio-user wire format: the messages a vfio-user client and server
 * exchange over their UNIX socket.  See the protocol specification in
 * subprojects/libvfio-user/docs/vfio-user.rst.  Everything on the wire is
 * little-endian.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_PROTOCOL_H
#define HW_VFIO_USER_PROTOCOL_H

#include <linux/vfio.h>
#include "qemu/units.h"

enum VFIOUserCommand {
    VFIO_USER_VERSION = 1,
    VFIO_USER_DMA_MAP = 2,
    VFIO_USER_DMA_UNMAP = 3,
    VFIO_USER_DEVICE_GET_INFO = 4,
    VFIO_USER_DEVICE_GET_REGION_INFO = 5,
    VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6,
    VFIO_USER_DEVICE_GET_IRQ_INFO = 7,
    VFIO_USER_DEVICE_SET_IRQS = 8,
    VFIO_USER_REGION_READ = 9,
    VFIO_USER_REGION_WRITE = 10,
    VFIO_USER_DMA_READ = 11,
    VFIO_USER_DMA_WRITE = 12,
    VFIO_USER_DEVICE_RESET = 13,
    VFIO_USER_DIRTY_PAGES = 14,
    VFIO_USER_REGION_WRITE_MULTI = 15,
    VFIO_USER_DEVICE_FEATURE = 16,
    VFIO_USER_MIG_DATA_READ = 17,
    VFIO_USER_MIG_DATA_WRITE = 18,
    VFIO_USER_MAX,
};

/* The protocol version this client speaks, and the oldest it accepts */
#define VFIO_USER_MAJOR_VER 0
#define VFIO_USER_MINOR_VER 1

/* Flags of VFIOUserHdr */
#define VFIO_USER_TYPE_MASK  0xf
#define VFIO_USER_REQUEST    0x0
#define VFIO_USER_REPLY      0x1
#define VFIO_USER_NO_REPLY   0x10
#define VFIO_USER_ERROR      0x20

typedef struct VFIOUserHdr {
    uint16_t id;
    uint16_t command;
    uint32_t size;      /* of the whole message, header included */
    uint32_t flags;
    uint32_t error_reply;
} QEMU_PACKED VFIOUserHdr;

/* Defaults a peer assumes for capabilities the other side leaves out */
#define VFIO_USER_DEF_MAX_FDS      1
#define VFIO_USER_DEF_MAX_XFER     (1 * MiB)
#define VFIO_USER_DEF_PGSIZE       4096

typedef struct VFIOUserVersion {
    VFIOUserHdr hdr;
    uint16_t major;
    uint16_t minor;
    char capabilities[];    /* NUL-terminated JSON, optional */
} QEMU_PACKED VFIOUserVersion;

/* VFIO_USER_DMA_MAP */
#define VFIO_USER_DMA_READABLE  (1 << 0)
#define VFIO_USER_DMA_WRITEABLE (1 << 1)

typedef struct VFIOUserDMAMap {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint64_t offset;    /* into the fd sent with the message, if any */
    uint64_t iova;
    uint64_t size;
} QEMU_PACKED VFIOUserDMAMap;

/* VFIO_USER_DMA_UNMAP */
#define VFIO_USER_DMA_UNMAP_ALL (1 << 1)

typedef struct VFIOUserDMAUnmap {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint64_t iova;
    uint64_t size;
} QEMU_PACKED VFIOUserDMAUnmap;

/* VFIO_USER_DEVICE_GET_INFO: struct vfio_device_info's first 16 bytes */
typedef struct VFIOUserDeviceInfo {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint32_t num_regions;
    uint32_t num_irqs;
} QEMU_PACKED VFIOUserDeviceInfo;

/* VFIO_USER_DEVICE_GET_REGION_INFO: struct vfio_region_info and its caps */
typedef struct VFIOUserRegionInfo {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t cap_offset;
    uint64_t size;
    uint64_t offset;
} QEMU_PACKED VFIOUserRegionInfo;

/* VFIO_USER_DEVICE_GET_REGION_IO_FDS: entries follow the payload's header */
typedef struct VFIOUserRegionIOFDsMsg {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t count;
    uint8_t entries[];
} QEMU_PACKED VFIOUserRegionIOFDsMsg;

#define VFIO_USER_IO_FD_TYPE_IOEVENTFD          0
#define VFIO_USER_IO_FD_TYPE_IOREGIONFD         1
#define VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW   2

/* Entry flags of the eventfd types: KVM_IOEVENTFD's */
#define VFIO_USER_IOEVENTFD_FLAG_DATAMATCH      (1 << 0)
#define VFIO_USER_IOEVENTFD_FLAG_PIO            (1 << 1)
/* Entry flags of an ioregionfd: the proposed KVM_SET_IOREGION's */
#define VFIO_USER_IOREGIONFD_FLAG_PIO           (1 << 0)
#define VFIO_USER_IOREGIONFD_FLAG_POSTED_WRITES (1 << 1)

/*
 * The entry layout the specification gives: @data is the ioeventfd's
 * datamatch or the ioregionfd's user_data.
 */
typedef struct VFIOUserIOFDEntry {
    uint64_t offset;
    uint64_t size;
    uint32_t fd_index;
    uint32_t type;
    uint32_t flags;
    uint32_t padding;
    uint64_t data;
} QEMU_PACKED VFIOUserIOFDEntry;

/*
 * The longer layout newer libvfio-user sends for every type once it has
 * shadow ioeventfds.  Its ioregionfd entries keep user_data at @data's
 * offset above (here @shadow_offset) and leave the last 8 bytes unused.
 */
typedef struct VFIOUserIOFDEntryShadow {
    uint64_t offset;
    uint64_t size;
    uint32_t fd_index;
    uint32_t type;
    uint32_t flags;
    uint32_t shadow_fd_index;
    uint64_t shadow_offset;
    uint64_t datamatch;
} QEMU_PACKED VFIOUserIOFDEntryShadow;

/*
 * What travels on an ioregionfd (not a vfio-user message: the proposed
 * KVM ioregionfd wire protocol, see docs/interop/vfio-user-io-fds.rst).
 */
#define VFIO_USER_IOREGIONFD_CMD_READ       0
#define VFIO_USER_IOREGIONFD_CMD_WRITE      1
#define VFIO_USER_IOREGIONFD_CMD_MASK       0xf
#define VFIO_USER_IOREGIONFD_SIZE_SHIFT     4   /* log2 of the size */
#define VFIO_USER_IOREGIONFD_RESP           (1 << 6)

typedef struct VFIOUserIORegionCmd {
    uint32_t info;
    uint32_t pad;
    uint64_t user_data;
    uint64_t offset;    /* from the start of the entry's sub-region */
    uint64_t data;
} QEMU_PACKED VFIOUserIORegionCmd;

typedef struct VFIOUserIORegionResp {
    uint64_t data;
    uint8_t pad[24];
} QEMU_PACKED VFIOUserIORegionResp;

/* VFIO_USER_DEVICE_GET_IRQ_INFO: struct vfio_irq_info */
typedef struct VFIOUserIRQInfo {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t count;
} QEMU_PACKED VFIOUserIRQInfo;

/* VFIO_USER_DEVICE_SET_IRQS: struct vfio_irq_set, eventfds as SCM_RIGHTS */
typedef struct VFIOUserIRQSet {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t start;
    uint32_t count;
} QEMU_PACKED VFIOUserIRQSet;

/* VFIO_USER_REGION_READ and VFIO_USER_REGION_WRITE */
typedef struct VFIOUserRegionRW {
    VFIOUserHdr hdr;
    uint64_t offset;
    uint32_t region;
    uint32_t count;
    uint8_t data[];
} QEMU_PACKED VFIOUserRegionRW;

/* VFIO_USER_DMA_READ and VFIO_USER_DMA_WRITE, sent by the server */
typedef struct VFIOUserDMARW {
    VFIOUserHdr hdr;
    uint64_t offset;
    uint64_t count;
    uint8_t data[];
} QEMU_PACKED VFIOUserDMARW;

/*
 * VFIO_USER_DEVICE_FEATURE: struct vfio_device_feature, with the feature's
 * data inline (where the kernel's structures hold pointers, the data
 * they point to follows instead).
 */
typedef struct VFIOUserDeviceFeature {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t flags;
    uint8_t data[];
} QEMU_PACKED VFIOUserDeviceFeature;

/* VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: @data_fd is not used */
typedef struct VFIOUserMigState {
    uint32_t device_state;
    int32_t data_fd;
} QEMU_PACKED VFIOUserMigState;

/* VFIO_DEVICE_FEATURE_DMA_LOGGING_START: @num_ranges ranges follow */
typedef struct VFIOUserDMALoggingControl {
    uint64_t page_size;
    uint32_t num_ranges;
    uint32_t reserved;
} QEMU_PACKED VFIOUserDMALoggingControl;

typedef struct VFIOUserDMALoggingRange {
    uint64_t iova;
    uint64_t length;
} QEMU_PACKED VFIOUserDMALoggingRange;

/* VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: the reply's bitmap follows */
typedef struct VFIOUserDMALoggingReport {
    uint64_t iova;
    uint64_t length;
    uint64_t page_size;
} QEMU_PACKED VFIOUserDMALoggingReport;

/* VFIO_USER_MIG_DATA_READ and VFIO_USER_MIG_DATA_WRITE */
typedef struct VFIOUserMigData {
    VFIOUserHdr hdr;
    uint32_t argsz;
    uint32_t size;
    uint8_t data[];
} QEMU_PACKED VFIOUserMigData;

#endif /* HW_VFIO_USER_PROTOCOL_H */
