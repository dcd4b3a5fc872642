/*
 * vfio-user client connection: one UNIX socket to a vfio-user server,
 * version negotiation, and request/reply exchange with fd passing.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_USER_PROXY_H
#define HW_VFIO_USER_PROXY_H

#include "hw/qdev-core.h"
#include "io/channel-socket.h"
#include "qemu/notify.h"
#include "qemu/queue.h"
#include "qemu/thread.h"
#include "qapi/qapi-types-sockets.h"
#include "hw/vfio-user/check.h"

/*
 * Requests sent without waiting for their reply (posted) that may be in
 * flight at once.  Their replies queue up in the socket until read: keep
 * that well below what a socket buffers, or server and client could both
 * block in a write.
 */
#define VFIO_USER_MAX_POSTED       64

/* How vfio_user_request_posted() may wait, and what a refusal means */
typedef enum VFIOUserPostedFlags {
    /*
     * While too many are in flight, a vCPU lets the BQL go: only for a
     * caller that keeps no device state across the call.
     */
    VFIO_USER_POSTED_RELEASE_BQL = 1 << 0,
    /* The server may refuse it, and that is no error: only traced */
    VFIO_USER_POSTED_QUIET = 1 << 1,
} VFIOUserPostedFlags;

typedef struct VFIOUserProxy VFIOUserProxy;

/* A message received from the server; fds are owned by the message */
typedef struct VFIOUserMsg {
    VFIOUserHdr *hdr;
    int *fds;
    size_t nfds;
} VFIOUserMsg;

void vfio_user_msg_free(VFIOUserMsg *msg);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(VFIOUserMsg, vfio_user_msg_free)

/*
 * Serves a request the server sent (DMA_READ, DMA_WRITE, ...).  Returns the
 * reply to send (with hdr.size set) or NULL and a positive errno in *error.
 */
typedef VFIOUserHdr *VFIOUserRequestHandler(void *opaque, VFIOUserMsg *req,
                                            uint32_t *error);

/* The device's own and its host bridge's (config space) */
#define VFIO_USER_ACCESS_GUARDS 2

/*
 * A request whose reply is awaited: on its sender's stack, or for a
 * reconnection's VERSION, on the heap (VFIOUserProxy's @version)
 */
typedef struct VFIOUserPending {
    uint16_t id;
    uint16_t command;
    bool done;                  /* the reply is in @reply */
    bool notify;                /* the reconnection's VERSION: tell */
    VFIOUserMsg reply;
    QTAILQ_ENTRY(VFIOUserPending) next;
} VFIOUserPending;

struct VFIOUserProxy {
    QIOChannel *ioc;
    char *sockname;             /* names the connection in messages */
    uint32_t timeout_ms;        /* for each request's reply */
    int64_t deadline_ms;        /* if not 0, for every reply (realize) */
    /* Negotiated: the device may be in use (qatomic_read() elsewhere) */
    bool established;
    QemuThread recv_thread;     /* reads everything the server sends */
    bool receiving;             /* @recv_thread is to be joined */
    int recv_epfd;              /* what @recv_thread waits on */

    /* What the server accepts, from its VERSION reply */
    uint16_t minor;
    uint32_t max_send_fds;
    uint64_t max_xfer_size;
    uint64_t migr_pgsize;

    /*
     * @lock protects what follows, up to @send_lock; @cond is broadcast
     * when a reply comes and when the connection is lost.
     */
    QemuMutex lock;
    QemuCond cond;
    bool connected;             /* read without @lock with qatomic_read() */
    bool reading;               /* someone reads the socket: one at a time */
    uint16_t next_id;
    QTAILQ_HEAD(, VFIOUserPending) pending;
    /* Waiters that read the socket themselves: the receive thread rests */
    unsigned int self_readers;
    /* Posted requests whose reply has not come yet, oldest first */
    struct {
        uint16_t id;
        bool quiet;             /* VFIO_USER_POSTED_QUIET */
        uint64_t seq;           /* in the order they were posted */
    } posted[VFIO_USER_MAX_POSTED];
    uint64_t posted_seq;        /* the last one posted */
    unsigned int nr_posted;
    uint64_t posted_errors_reported;    /* by command: once each */
    char *lost_reason;          /* set once the connection is lost */

    QemuMutex send_lock;        /* one message at a time on the socket */

    /* Serves the server's requests, in the receive thread */
    QemuMutex handler_lock;
    VFIOUserRequestHandler *request_handler;
    void *request_opaque;

    /* Told in the main loop once the connection is lost */
    NotifierList lost_notifiers;
    QEMUBH *lost_bh;

    /*
     * A reconnection's VERSION request, on @pending (with @lock) until
     * vfio_user_reconnect_finish() takes it; @version_bh calls
     * @version_answered in the main loop once its reply is in.
     */
    VFIOUserPending *version;
    QEMUBH *version_bh;
    QEMUBHFunc *version_answered;
    void *version_opaque;

    /* What a guest's access engages: see vfio_user_bql_unlock() */
    MemReentrancyGuard *access_guards[VFIO_USER_ACCESS_GUARDS];
};

/* Whether each of the proxy's access guards was engaged, to put back */
typedef struct VFIOUserGuardState {
    bool engaged[VFIO_USER_ACCESS_GUARDS];
} VFIOUserGuardState;

VFIOUserProxy *vfio_user_connect(SocketAddress *addr, uint32_t timeout_ms,
                                 Error **errp);
bool vfio_user_negotiate(VFIOUserProxy *proxy, Error **errp);
void vfio_user_set_request_handler(VFIOUserProxy *proxy,
                                   VFIOUserRequestHandler *handler,
                                   void *opaque);
void vfio_user_disconnect(VFIOUserProxy *proxy);
bool vfio_user_reconnect_start(VFIOUserProxy *proxy, SocketAddress *addr,
                               QEMUBHFunc *answered, void *opaque,
                               Error **errp);
bool vfio_user_reconnect_answered(VFIOUserProxy *proxy);
bool vfio_user_reconnect_finish(VFIOUserProxy *proxy, Error **errp);
void vfio_user_reconnect_cancel(VFIOUserProxy *proxy);
bool vfio_user_drop(VFIOUserProxy *proxy, Error *err);

void vfio_user_request_init(VFIOUserHdr *hdr, uint16_t command,
                            uint32_t size);
int vfio_user_request(VFIOUserProxy *proxy, VFIOUserHdr *req,
                      const int *fds, size_t nfds, VFIOUserMsg *reply,
                      Error **errp);
int vfio_user_request_unlocked(VFIOUserProxy *proxy, VFIOUserHdr *req,
                               VFIOUserMsg *reply, Error **errp);
int vfio_user_request_posted(VFIOUserProxy *proxy, VFIOUserHdr *req,
                             const int *fds, size_t nfds,
                             VFIOUserPostedFlags flags, Error **errp);
void vfio_user_flush_posted(VFIOUserProxy *proxy, bool release_bql);
bool vfio_user_vcpu_may_release_bql(void);
void vfio_user_set_access_guards(VFIOUserProxy *proxy,
                                 MemReentrancyGuard *device,
                                 MemReentrancyGuard *host);
void vfio_user_bql_unlock(VFIOUserProxy *proxy, VFIOUserGuardState *saved);
void vfio_user_bql_lock(VFIOUserProxy *proxy,
                        const VFIOUserGuardState *saved);
void vfio_user_add_lost_notifier(VFIOUserProxy *proxy, Notifier *notifier);
void vfio_user_set_deadline(VFIOUserProxy *proxy, int64_t deadline_ms);

/*
 * Whether the server is still there, from any thread; one that is being
 * reconnected to is not, until it has answered VERSION (its device state
 * is then given back, in the same main loop callback).
 */
static inline bool vfio_user_connected(VFIOUserProxy *proxy)
{
    return qatomic_read(&proxy->connected) &&
           qatomic_read(&proxy->established);
}

#endif /* HW_VFIO_USER_PROXY_H */
