/*
 * libFuzzer target for hw/vfio-user/check.c: what a vfio-user server
 * sends, taken apart and checked without a connection, a device or the
 * QEMU main loop.  Each input is one message: its first byte says which
 * check it goes to, the rest is the message as the receive path hands it
 * over (whole, its size field matching its length).
 *
 * Beyond "no crash, no sanitizer report", each check's promise is
 * asserted: an error reply is always a negative errno; what passes the
 * region info check can be walked the way hw/vfio walks it; the I/O fd
 * entries found lie inside the message.
 *
 * Built and run by the repository's Makefile (make fuzz, and a bounded
 * run in make check) with clang's -fsanitize=fuzzer,address,undefined.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include "hw/vfio-user/check.h"
#include "qapi/error.h"

enum {
    FUZZ_VERSION,
    FUZZ_REGION_INFO,
    FUZZ_ERRNO,
    FUZZ_IO_FDS,
    FUZZ_NR,
};

/* A message as received: a buffer of exactly its size */
static VFIOUserHdr *fuzz_msg(const uint8_t *data, size_t size)
{
    VFIOUserHdr *hdr;

    if (size < sizeof(*hdr) || size > VFIO_USER_CLIENT_MAX_XFER + 4096) {
        return NULL;
    }
    hdr = g_malloc(size);
    memcpy(hdr, data, size);
    hdr->size = size;
    return hdr;
}

static void fuzz_version(const uint8_t *data, size_t size)
{
    g_autofree VFIOUserHdr *hdr = fuzz_msg(data, size);
    VFIOUserServerCaps caps = {
        .max_send_fds = VFIO_USER_DEF_MAX_FDS,
        .max_xfer_size = VFIO_USER_DEF_MAX_XFER,
    };
    Error *err = NULL;

    if (!hdr) {
        return;
    }
    if (vfio_user_parse_version(hdr, &caps, &err)) {
        assert(caps.max_send_fds >= 1);
        assert(caps.max_xfer_size >= 1 &&
               caps.max_xfer_size <= VFIO_USER_CLIENT_MAX_XFER);
    } else {
        assert(err);
    }
    error_free(err);
}

/* Walk the capabilities as hw/vfio's vfio_get_region_info_cap() does */
static void fuzz_walk_caps(struct vfio_region_info *info)
{
    struct vfio_info_cap_header *cap;
    uint64_t sum = 0;
    void *base = info;
    uint32_t i;

    if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS)) {
        return;
    }
    for (cap = base + info->cap_offset; cap != base;
         cap = base + cap->next) {
        if (cap->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
            struct vfio_region_info_cap_sparse_mmap *sparse =
                container_of(cap, struct vfio_region_info_cap_sparse_mmap,
                             header);

            for (i = 0; i < sparse->nr_areas; i++) {
                sum += sparse->areas[i].offset + sparse->areas[i].size;
            }
        }
    }
    /* Keep the reads: they are the point */
    asm volatile("" : : "r"(sum));
}

static void fuzz_region_info(const uint8_t *data, size_t size)
{
    g_autofree struct vfio_region_info *info = NULL;
    Error *err = NULL;

    if (size < sizeof(*info) || size > 64 * KiB) {
        return;
    }
    info = g_memdup2(data, size);
    if (vfio_user_check_region_info(info, size, &err)) {
        fuzz_walk_caps(info);
    } else {
        assert(err);
    }
    error_free(err);
}

static void fuzz_errno(const uint8_t *data, size_t size)
{
    VFIOUserHdr hdr = { };

    memcpy(&hdr, data, MIN(size, sizeof(hdr)));
    assert(vfio_user_reply_errno(&hdr) < 0);
}

static void fuzz_io_fds(const uint8_t *data, size_t size)
{
    g_autofree VFIOUserHdr *hdr = NULL;
    VFIOUserIOFDDesc d;
    const uint8_t *entries;
    Error *err = NULL;
    uint32_t count, i;
    size_t stride, nfds;

    if (size < 1) {
        return;
    }
    /* The fds the message came with: only their number matters here */
    nfds = data[0] % (VFIO_USER_CLIENT_MAX_FDS + 1);
    if (size - 1 < sizeof(VFIOUserRegionIOFDsMsg)) {
        return;
    }
    hdr = fuzz_msg(data + 1, size - 1);
    if (!hdr) {
        return;
    }
    entries = vfio_user_iofds_layout(hdr, nfds, &count, &stride, &err);
    if (!entries) {
        error_free(err);
        return;
    }
    assert(count <= VFIO_USER_MAX_IO_FDS);
    assert(entries + count * stride <= (uint8_t *)hdr + hdr->size);
    for (i = 0; i < count; i++) {
        if (!vfio_user_iofd_decode(entries, i, stride, &d, &err)) {
            error_free(err);
            err = NULL;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    switch (data[0] % FUZZ_NR) {
    case FUZZ_VERSION:
        fuzz_version(data + 1, size - 1);
        break;
    case FUZZ_REGION_INFO:
        fuzz_region_info(data + 1, size - 1);
        break;
    case FUZZ_ERRNO:
        fuzz_errno(data + 1, size - 1);
        break;
    case FUZZ_IO_FDS:
        fuzz_io_fds(data + 1, size - 1);
        break;
    }
    return 0;
}
