/*
 * vfio-user client connection: one UNIX socket to a vfio-user server.
 *
 * Requests are sent from the thread that needs the answer (realize, a
 * vCPU's MMIO access, a memory listener), any number at once, and that
 * thread waits for its reply.  A receive thread of the connection's own
 * reads everything the server sends: it hands each reply to its waiter by
 * id, takes the replies to posted requests (sent without waiting), serves
 * the server's requests (DMA_READ, DMA_WRITE) and notices when the server
 * goes away.  A vCPU waiting for the reply to its access to a BAR lets the
 * BQL go meanwhile; other waiters keep it, bounded by the timeout.
 *
 * The server is not trusted to answer, to read what we send, or to stop
 * sending: every wait, in either direction, ends at a deadline, and a
 * server that misses one is disconnected rather than waited for again.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/un.h>

#include "hw/vfio-user/proxy.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qnum.h"
#include "qobject/qstring.h"
#include "hw/core/cpu.h"
#include "trace.h"

/*
 * The largest message a server may send us: a data transfer of the size we
 * advertised plus its header, or a region info reply with capabilities.
 */
#define VFIO_USER_MAX_RECV_SIZE  (VFIO_USER_CLIENT_MAX_XFER + 4096)


static const char *vfio_user_command_name(uint16_t command)
{
    static const char *const names[VFIO_USER_MAX] = {
        [VFIO_USER_VERSION] = "VERSION",
        [VFIO_USER_DMA_MAP] = "DMA_MAP",
        [VFIO_USER_DMA_UNMAP] = "DMA_UNMAP",
        [VFIO_USER_DEVICE_GET_INFO] = "DEVICE_GET_INFO",
        [VFIO_USER_DEVICE_GET_REGION_INFO] = "DEVICE_GET_REGION_INFO",
        [VFIO_USER_DEVICE_GET_REGION_IO_FDS] = "DEVICE_GET_REGION_IO_FDS",
        [VFIO_USER_DEVICE_GET_IRQ_INFO] = "DEVICE_GET_IRQ_INFO",
        [VFIO_USER_DEVICE_SET_IRQS] = "DEVICE_SET_IRQS",
        [VFIO_USER_REGION_READ] = "REGION_READ",
        [VFIO_USER_REGION_WRITE] = "REGION_WRITE",
        [VFIO_USER_DMA_READ] = "DMA_READ",
        [VFIO_USER_DMA_WRITE] = "DMA_WRITE",
        [VFIO_USER_DEVICE_RESET] = "DEVICE_RESET",
        [VFIO_USER_DIRTY_PAGES] = "DIRTY_PAGES",
        [VFIO_USER_REGION_WRITE_MULTI] = "REGION_WRITE_MULTI",
        [VFIO_USER_DEVICE_FEATURE] = "DEVICE_FEATURE",
        [VFIO_USER_MIG_DATA_READ] = "MIG_DATA_READ",
        [VFIO_USER_MIG_DATA_WRITE] = "MIG_DATA_WRITE",
    };

    if (command < VFIO_USER_MAX && names[command]) {
        return names[command];
    }
    return "UNKNOWN";
}

void vfio_user_msg_free(VFIOUserMsg *msg)
{
    size_t i;

    for (i = 0; i < msg->nfds; i++) {
        if (msg->fds[i] >= 0) {
            close(msg->fds[i]);
        }
    }
    g_free(msg->fds);
    g_free(msg->hdr);
    msg->fds = NULL;
    msg->nfds = 0;
    msg->hdr = NULL;
}

static int vfio_user_fd(VFIOUserProxy *proxy)
{
    return QIO_CHANNEL_SOCKET(proxy->ioc)->fd;
}

/* When a request sent now must have been answered */
static int64_t vfio_user_deadline(VFIOUserProxy *proxy)
{
    int64_t deadline = qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                       proxy->timeout_ms;

    return proxy->deadline_ms ? MIN(deadline, proxy->deadline_ms) : deadline;
}

static void vfio_user_set_timeout_error(VFIOUserProxy *proxy,
                                        const char *what, Error **errp)
{
    if (proxy->deadline_ms &&
        qemu_clock_get_ms(QEMU_CLOCK_REALTIME) >= proxy->deadline_ms) {
        error_setg(errp, "%s: setting up the device took longer than "
                   "%u ms", what, proxy->timeout_ms);
    } else {
        error_setg(errp, "%s within %u ms", what, proxy->timeout_ms);
    }
}

/*
 * The server went away, broke the protocol or missed a deadline: stop
 * talking to it, and pass @err on to @errp.  The device stays in place
 * and its accesses fail from now on; once the device is in use, that
 * deserves a report of its own, since its accesses have nobody to tell.
 * Callable from any thread; the lost notifiers run in the main loop.
 */
static bool vfio_user_connection_lost(VFIOUserProxy *proxy, Error *err,
                                      Error **errp)
{
    bool first = false;

    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        if (proxy->connected) {
            first = true;
            qatomic_set(&proxy->connected, false);
            proxy->lost_reason = g_strdup(error_get_pretty(err));
            /* Their replies will never come */
            proxy->nr_posted = 0;
            qemu_cond_broadcast(&proxy->cond);
        }
    }
    if (first) {
        /* Wakes the receive thread, and any sender, for good */
        qio_channel_shutdown(proxy->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
        trace_vfio_user_connection_lost(proxy->sockname,
                                        error_get_pretty(err));
        if (proxy->established) {
            error_report("vfio-user %s: %s; the device is disconnected",
                         proxy->sockname, error_get_pretty(err));
        }
        qemu_bh_schedule(proxy->lost_bh);
    }
    error_propagate(errp, err);
    return first;
}

static void vfio_user_lost_bh(void *opaque)
{
    VFIOUserProxy *proxy = opaque;

    notifier_list_notify(&proxy->lost_notifiers, proxy);
}

static void vfio_user_version_bh(void *opaque)
{
    VFIOUserProxy *proxy = opaque;

    if (proxy->version_answered) {
        proxy->version_answered(proxy->version_opaque);
    }
}

/*
 * Wait until the socket is readable (@events POLLIN) or writable
 * (POLLOUT); -ETIMEDOUT once @deadline_ms passes.
 */
static int vfio_user_wait_io(VFIOUserProxy *proxy, short events,
                             int64_t deadline_ms)
{
    struct pollfd pfd = { .fd = vfio_user_fd(proxy), .events = events };
    int64_t left;
    int ret;

    do {
        left = deadline_ms - qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        ret = poll(&pfd, 1, MIN(left, INT_MAX));
    } while (ret < 0 && errno == EINTR);

    if (ret < 0) {
        return -errno;
    }
    return ret ? 0 : -ETIMEDOUT;
}

/* The same, saying what did not happen (@what) if it fails */
static int vfio_user_wait_io_or_fail(VFIOUserProxy *proxy, short events,
                                     int64_t deadline_ms, const char *what,
                                     Error **errp)
{
    int ret = vfio_user_wait_io(proxy, events, deadline_ms);

    if (ret == -ETIMEDOUT) {
        vfio_user_set_timeout_error(proxy, what, errp);
    } else if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot poll the socket");
    }
    return ret;
}

/*
 * Read exactly @len bytes into @buf, collecting any fds into @msg, by
 * @deadline_ms.  With @may_block false, return -EAGAIN if nothing at all
 * is there.
 */
static int vfio_user_read_all(VFIOUserProxy *proxy, void *buf, size_t len,
                              VFIOUserMsg *msg, bool may_block,
                              int64_t deadline_ms, Error **errp)
{
    size_t done = 0;

    while (done < len) {
        struct iovec iov = { .iov_base = buf + done, .iov_len = len - done };
        g_autofree int *fds = NULL;
        size_t nfds = 0;
        ssize_t ret;
        int wait;

        ret = qio_channel_readv_full(proxy->ioc, &iov, 1, &fds, &nfds, 0,
                                     errp);
        if (nfds) {
            msg->fds = g_renew(int, msg->fds, msg->nfds + nfds);
            memcpy(msg->fds + msg->nfds, fds, nfds * sizeof(int));
            msg->nfds += nfds;
        }
        if (ret == QIO_CHANNEL_ERR_BLOCK) {
            if (!done && !may_block) {
                return -EAGAIN;
            }
            wait = vfio_user_wait_io_or_fail(proxy, POLLIN, deadline_ms,
                                             "no reply from the server", errp);
            if (wait < 0) {
                return wait;
            }
            continue;
        }
        if (ret < 0) {
            return -EIO;
        }
        if (ret == 0) {
            error_setg(errp, "the server closed the connection");
            return -ECONNRESET;
        }
        done += ret;
    }
    return 0;
}

/* Receive one whole message; every length is checked before it is used */
static int vfio_user_recv(VFIOUserProxy *proxy, VFIOUserMsg *msg,
                          bool may_block, int64_t deadline_ms, Error **errp)
{
    VFIOUserHdr hdr;
    int ret;

    ret = vfio_user_read_all(proxy, &hdr, sizeof(hdr), msg, may_block,
                             deadline_ms, errp);
    if (ret < 0) {
        return ret;
    }
    if (hdr.size < sizeof(hdr) || hdr.size > VFIO_USER_MAX_RECV_SIZE) {
        error_setg(errp, "message %s (id %u) has invalid size %u",
                   vfio_user_command_name(hdr.command), hdr.id, hdr.size);
        return -EPROTO;
    }

    msg->hdr = g_malloc(hdr.size);
    *msg->hdr = hdr;
    ret = vfio_user_read_all(proxy, msg->hdr + 1, hdr.size - sizeof(hdr),
                             msg, true, deadline_ms, errp);
    if (ret < 0) {
        return ret;
    }
    /* Whichever part of the message they came with */
    if (msg->nfds > VFIO_USER_CLIENT_MAX_FDS) {
        error_setg(errp, "message %s (id %u) carries %zu fds, more than "
                   "the %u announced", vfio_user_command_name(hdr.command),
                   hdr.id, msg->nfds, VFIO_USER_CLIENT_MAX_FDS);
        return -EPROTO;
    }
    trace_vfio_user_recv(proxy->sockname, hdr.id,
                         vfio_user_command_name(hdr.command), hdr.size,
                         hdr.flags, msg->nfds);
    return 0;
}

/*
 * Send a whole message, its fds with its first byte, from any thread.  A
 * server that does not read gets as long as it gets to answer, then
 * -ETIMEDOUT.
 */
static int vfio_user_send(VFIOUserProxy *proxy, VFIOUserHdr *hdr,
                          const int *fds, size_t nfds, Error **errp)
{
    int64_t deadline = vfio_user_deadline(proxy);
    size_t done = 0;

    QEMU_LOCK_GUARD(&proxy->send_lock);
    trace_vfio_user_send(proxy->sockname, hdr->id,
                         vfio_user_command_name(hdr->command), hdr->size,
                         hdr->flags, nfds);
    while (done < hdr->size) {
        struct iovec iov = {
            .iov_base = (char *)hdr + done,
            .iov_len = hdr->size - done,
        };
        ssize_t ret;
        int wait;

        ret = qio_channel_writev_full(proxy->ioc, &iov, 1,
                                      done ? NULL : (int *)fds,
                                      done ? 0 : nfds, 0, errp);
        if (ret == QIO_CHANNEL_ERR_BLOCK) {
            wait = vfio_user_wait_io_or_fail(proxy, POLLOUT, deadline,
                                             "the server did not take our "
                                             "message", errp);
            if (wait < 0) {
                return wait;
            }
            continue;
        }
        if (ret < 0) {
            return -EIO;
        }
        done += ret;
    }
    return 0;
}

/*
 * Serve a request from the server and send its reply, in the receive
 * thread.  The handler may be replaced meanwhile; handler_lock makes
 * whoever replaces it wait for the request being served.
 */
static int vfio_user_serve_request(VFIOUserProxy *proxy, VFIOUserMsg *req,
                                   Error **errp)
{
    g_autofree VFIOUserHdr *reply = NULL;
    VFIOUserHdr error_reply;
    uint32_t error = ENOSYS;

    WITH_QEMU_LOCK_GUARD(&proxy->handler_lock) {
        if (proxy->request_handler) {
            reply = proxy->request_handler(proxy->request_opaque, req,
                                           &error);
        }
    }
    if (req->hdr->flags & VFIO_USER_NO_REPLY) {
        return 0;
    }
    if (!reply) {
        trace_vfio_user_request_failed(proxy->sockname, req->hdr->id,
                                   vfio_user_command_name(req->hdr->command),
                                   error);
        error_reply = (VFIOUserHdr) {
            .size = sizeof(error_reply),
            .flags = VFIO_USER_ERROR,
            .error_reply = error,
        };
        reply = g_memdup2(&error_reply, sizeof(error_reply));
    }
    reply->id = req->hdr->id;
    reply->command = req->hdr->command;
    reply->flags |= VFIO_USER_REPLY;
    return vfio_user_send(proxy, reply, NULL, 0, errp);
}

/*
 * The reply to a posted request, if @msg is one.  Nobody waits for it; a
 * failure is still worth knowing about, once per command: a guest that
 * keeps writing to a register the server refuses must not flood the log.
 * Called with proxy->lock held.
 */
static bool vfio_user_posted_reply(VFIOUserProxy *proxy, VFIOUserMsg *msg)
{
    const char *name = vfio_user_command_name(msg->hdr->command);
    uint64_t command_bit = BIT_ULL(MIN(msg->hdr->command, 63));
    unsigned int i;
    bool quiet;

    for (i = 0; i < proxy->nr_posted; i++) {
        if (proxy->posted[i].id == msg->hdr->id) {
            break;
        }
    }
    if (i == proxy->nr_posted) {
        return false;
    }
    quiet = proxy->posted[i].quiet;
    proxy->nr_posted--;
    memmove(&proxy->posted[i], &proxy->posted[i + 1],
            (proxy->nr_posted - i) * sizeof(proxy->posted[0]));
    qemu_cond_broadcast(&proxy->cond);

    if (!(msg->hdr->flags & VFIO_USER_ERROR)) {
        return true;
    }
    trace_vfio_user_posted_failed(proxy->sockname, msg->hdr->id, name,
                                  msg->hdr->error_reply);
    if (!quiet && !(proxy->posted_errors_reported & command_bit)) {
        proxy->posted_errors_reported |= command_bit;
        error_report("vfio-user %s: posted %s (id %u) failed: %s (error %u);"
                     " further failures of %s are only traced",
                     proxy->sockname, name, msg->hdr->id,
                     strerror(-vfio_user_reply_errno(msg->hdr)),
                     msg->hdr->error_reply, name);
    }
    return true;
}

/* Hand a reply to whoever waits for it; false if it is not for them */
static bool vfio_user_complete(VFIOUserProxy *proxy, VFIOUserMsg *msg,
                               Error **errp)
{
    VFIOUserPending *pending;

    QEMU_LOCK_GUARD(&proxy->lock);
    QTAILQ_FOREACH(pending, &proxy->pending, next) {
        /* A waiter that has its reply may not have left the list yet */
        if (pending->id != msg->hdr->id || pending->done) {
            continue;
        }
        if (pending->command != msg->hdr->command) {
            error_setg(errp, "reply to %s (id %u) is for %s",
                       vfio_user_command_name(pending->command), pending->id,
                       vfio_user_command_name(msg->hdr->command));
            return false;
        }
        pending->reply = *msg;
        *msg = (VFIOUserMsg) { };
        pending->done = true;
        qemu_cond_broadcast(&proxy->cond);
        if (pending->notify) {
            qemu_bh_schedule(proxy->version_bh);
        }
        return true;
    }
    if (!vfio_user_posted_reply(proxy, msg)) {
        /* The reply to a request that timed out: its caller has gone */
        trace_vfio_user_stale_reply(proxy->sockname, msg->hdr->id,
                                    vfio_user_command_name(msg->hdr->command));
    }
    return true;
}

static int vfio_user_dispatch(VFIOUserProxy *proxy, VFIOUserMsg *msg,
                              Error **errp)
{
    switch (msg->hdr->flags & VFIO_USER_TYPE_MASK) {
    case VFIO_USER_REQUEST:
        return vfio_user_serve_request(proxy, msg, errp);
    case VFIO_USER_REPLY:
        return vfio_user_complete(proxy, msg, errp) ? 0 : -EPROTO;
    default:
        error_setg(errp, "message with unknown type 0x%x",
                   msg->hdr->flags & VFIO_USER_TYPE_MASK);
        return -EPROTO;
    }
}

/*
 * Take the next message and act on it: hand a reply to its waiter, serve
 * a request.  Called by whoever holds proxy->reading.  Returns 0, -EAGAIN
 * (nothing there, with @may_block false) or a negative errno.
 */
static int vfio_user_read_one(VFIOUserProxy *proxy, bool may_block,
                              int64_t deadline_ms, Error **errp)
{
    g_auto(VFIOUserMsg) msg = { };
    int ret;

    ret = vfio_user_recv(proxy, &msg, may_block, deadline_ms, errp);
    if (ret == 0) {
        ret = vfio_user_dispatch(proxy, &msg, errp);
    }
    return ret;
}

/*
 * While a waiter reads the socket itself, the receive thread need not
 * watch it: every reply and request that comes meanwhile is the waiter's
 * to read.  Left watching, it would wake for each of them only to find
 * the reader's token taken, then wake again when it is given back: two
 * thread switches per round trip, which on a host with few CPUs cost the
 * guest as much as the round trip itself.  Taking the socket out of the
 * thread's epoll set does not wake it; putting it back wakes it if
 * anything is left to read.
 */
static void vfio_user_recv_thread_rest(VFIOUserProxy *proxy, bool rest)
{
    struct epoll_event ev = { .events = rest ? 0 : EPOLLIN };

    if (proxy->recv_epfd >= 0 &&
        epoll_ctl(proxy->recv_epfd, EPOLL_CTL_MOD, vfio_user_fd(proxy),
                  &ev) < 0) {
        /* Only waiters would read the socket from now on */
        error_report_once("vfio-user %s: cannot %s the receive thread: %s",
                          proxy->sockname, rest ? "rest" : "wake",
                          strerror(errno));
    }
}

/* Wait until the socket has something to read, or is shut down */
static int vfio_user_recv_thread_wait(VFIOUserProxy *proxy)
{
    struct epoll_event ev;
    int ret;

    if (proxy->recv_epfd < 0) {
        return vfio_user_wait_io(proxy, POLLIN, INT64_MAX);
    }
    do {
        ret = epoll_wait(proxy->recv_epfd, &ev, 1, -1);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : 0;
}

/*
 * The receive thread reads whatever nobody else is reading: a waiter
 * reads its own reply when it can (a thread switch less on every round
 * trip), else the receive thread hands each reply to the thread waiting
 * for it, takes posted replies, serves the server's requests (DMA by
 * message reaches guest RAM without the BQL) and notices EOF, so that
 * the main loop never waits for the server.
 */
static void *vfio_user_recv_thread(void *opaque)
{
    VFIOUserProxy *proxy = opaque;

    /* DMA by message reads and writes guest memory under RCU */
    rcu_register_thread();
    for (;;) {
        Error *err = NULL;
        int ret;

        ret = vfio_user_recv_thread_wait(proxy);
        qemu_mutex_lock(&proxy->lock);
        while (proxy->reading && proxy->connected) {
            qemu_cond_wait(&proxy->cond, &proxy->lock);
        }
        if (!proxy->connected) {
            qemu_mutex_unlock(&proxy->lock);
            break;
        }
        proxy->reading = true;
        qemu_mutex_unlock(&proxy->lock);

        if (ret < 0) {
            error_setg_errno(&err, -ret, "cannot poll the socket");
        } else {
            /* A waiter may have taken what woke us */
            ret = vfio_user_read_one(proxy, false, INT64_MAX, &err);
        }

        WITH_QEMU_LOCK_GUARD(&proxy->lock) {
            proxy->reading = false;
            qemu_cond_broadcast(&proxy->cond);
        }
        if (ret < 0 && ret != -EAGAIN) {
            /* If the link was shut down on purpose, that is old news */
            vfio_user_connection_lost(proxy, err, NULL);
            break;
        }
    }
    rcu_unregister_thread();
    return NULL;
}

/*
 * Whether the calling thread may let the BQL go while it waits for the
 * server: only a vCPU in its MMIO or port I/O dispatch, whose RCU
 * read-side section keeps the device alive until the access ends (the
 * main loop has nobody to let run).  Under TCG, a vCPU is inside such a
 * section for as long as it runs guest code, MMIO or not.
 */
bool vfio_user_vcpu_may_release_bql(void)
{
    return current_cpu && bql_locked() && get_ptr_rcu_reader()->depth > 0;
}

/*
 * memory.c lets one access at a time into a device's I/O regions (its
 * re-entrancy guard, engaged for the whole access), which holds because
 * the BQL serializes accesses.  A vCPU that lets the BQL go in the middle
 * of its access must let that guard go with it: other vCPUs would find
 * the device's other regions (its MSI-X table, say) refused meanwhile,
 * and for a config access, the host bridge's, so every device's config
 * space.  Nothing else runs our access's MMIO handler meanwhile, so there
 * is nothing for the guard to protect.  Set at realize.
 */
void vfio_user_set_access_guards(VFIOUserProxy *proxy,
                                 MemReentrancyGuard *device,
                                 MemReentrancyGuard *host)
{
    proxy->access_guards[0] = device;
    proxy->access_guards[1] = host;
}

/*
 * Let the BQL go, and the guards with it, saving in @saved whether this
 * thread's access had them engaged: only the thread that holds the BQL
 * can have, as accesses that let it go clear them first.
 */
void vfio_user_bql_unlock(VFIOUserProxy *proxy, VFIOUserGuardState *saved)
{
    unsigned int i;

    for (i = 0; i < VFIO_USER_ACCESS_GUARDS; i++) {
        MemReentrancyGuard *guard = proxy->access_guards[i];

        saved->engaged[i] = guard && guard->engaged_in_io;
        if (guard) {
            guard->engaged_in_io = false;
        }
    }
    bql_unlock();
}

/* Take the BQL again, and the guards as they were */
void vfio_user_bql_lock(VFIOUserProxy *proxy, const VFIOUserGuardState *saved)
{
    unsigned int i;

    bql_lock();
    for (i = 0; i < VFIO_USER_ACCESS_GUARDS; i++) {
        if (proxy->access_guards[i] && saved->engaged[i]) {
            proxy->access_guards[i]->engaged_in_io = true;
        }
    }
}

/* The same, for a caller that asked to (a guest's BAR or config access) */
static bool vfio_user_may_release_bql(bool release_bql)
{
    return release_bql && vfio_user_vcpu_may_release_bql();
}

/*
 * Wait on proxy->cond (with proxy->lock held) until woken or @deadline_ms;
 * the caller checks again what it waits for.  With @release_bql, a vCPU
 * thread lets the BQL go meanwhile, as hw/remote's mpqemu-link does: lock
 * order is BQL, then proxy->lock.
 */
static void vfio_user_wait(VFIOUserProxy *proxy, int64_t deadline_ms,
                           bool release_bql)
{
    int64_t left = deadline_ms - qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    bool unlocked = vfio_user_may_release_bql(release_bql);
    VFIOUserGuardState guards;

    if (left <= 0) {
        return;
    }
    /*
     * Let the BQL go with proxy->lock held: a reply that came in between
     * would otherwise be signalled before we wait, and missed.
     */
    if (unlocked) {
        vfio_user_bql_unlock(proxy, &guards);
    }
    qemu_cond_timedwait(&proxy->cond, &proxy->lock, MIN(left, INT_MAX));
    if (unlocked) {
        qemu_mutex_unlock(&proxy->lock);
        vfio_user_bql_lock(proxy, &guards);
        qemu_mutex_lock(&proxy->lock);
    }
}

/*
 * vfio_user_send(), the BQL let go meanwhile (as in vfio_user_wait()) for
 * a vCPU with @release_bql: a server that does not read must not stop
 * QEMU either.
 */
static int vfio_user_send_unlocked(VFIOUserProxy *proxy, VFIOUserHdr *hdr,
                                   const int *fds, size_t nfds,
                                   bool release_bql, Error **errp)
{
    bool unlocked = vfio_user_may_release_bql(release_bql);
    VFIOUserGuardState guards;
    int ret;

    if (unlocked) {
        vfio_user_bql_unlock(proxy, &guards);
    }
    ret = vfio_user_send(proxy, hdr, fds, nfds, errp);
    if (unlocked) {
        vfio_user_bql_lock(proxy, &guards);
    }
    return ret;
}

/*
 * Read one message as a waiter, while nobody else reads (proxy->lock held
 * on entry and on return), the BQL let go meanwhile for a vCPU with
 * @release_bql.  The reader's token goes back before the BQL is taken
 * again: whoever holds the BQL may be waiting for a reply that only the
 * next reader delivers.  A timeout is the caller's to notice; anything
 * else loses the connection.
 */
static void vfio_user_read_released(VFIOUserProxy *proxy,
                                    int64_t deadline_ms, bool release_bql)
{
    bool unlocked = vfio_user_may_release_bql(release_bql);
    VFIOUserGuardState guards;
    Error *err = NULL;
    int ret;

    proxy->reading = true;
    qemu_mutex_unlock(&proxy->lock);
    if (unlocked) {
        vfio_user_bql_unlock(proxy, &guards);
    }
    ret = vfio_user_read_one(proxy, true, deadline_ms, &err);
    /* Before the next reader parses what this one may have left half read */
    if (ret == -ETIMEDOUT) {
        error_free(err);
    } else if (ret < 0) {
        vfio_user_connection_lost(proxy, err, NULL);
    }
    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        proxy->reading = false;
        qemu_cond_broadcast(&proxy->cond);
    }
    if (unlocked) {
        vfio_user_bql_lock(proxy, &guards);
    }
    qemu_mutex_lock(&proxy->lock);
}

/*
 * Wait for the next message, with proxy->lock held: read it when nobody
 * else reads (the receive thread may be resting for a waiter that now
 * waits for a BQL we hold), else wait for whoever does.
 */
static void vfio_user_await(VFIOUserProxy *proxy, int64_t deadline_ms,
                            bool release_bql)
{
    if (proxy->reading) {
        vfio_user_wait(proxy, deadline_ms, release_bql);
    } else {
        vfio_user_read_released(proxy, deadline_ms, release_bql);
    }
}

static bool vfio_user_posted_pending(VFIOUserProxy *proxy,
                                     unsigned int limit, uint64_t before)
{
    if (limit) {
        return proxy->nr_posted > limit;
    }
    /* Oldest first: later ones may keep coming from other vCPUs */
    return proxy->nr_posted && proxy->posted[0].seq <= before;
}

/*
 * Wait, with proxy->lock held, until at most @limit posted requests await
 * their reply; with @limit 0, until those posted before the call have
 * theirs (with the BQL let go, other vCPUs may post more meanwhile).
 * Returns 0, or a negative errno with the link lost (and proxy->lock
 * released, in that case only).
 */
static int vfio_user_wait_posted_locked(VFIOUserProxy *proxy,
                                        unsigned int limit, bool release_bql,
                                        Error **errp)
{
    int64_t deadline = vfio_user_deadline(proxy);
    uint64_t before = proxy->posted_seq;
    Error *err = NULL;

    while (proxy->connected &&
           vfio_user_posted_pending(proxy, limit, before)) {
        if (qemu_clock_get_ms(QEMU_CLOCK_REALTIME) >= deadline) {
            trace_vfio_user_posted_timeout(proxy->sockname,
                                           proxy->nr_posted);
            vfio_user_set_timeout_error(proxy, "no reply to posted requests",
                                        &err);
            qemu_mutex_unlock(&proxy->lock);
            vfio_user_connection_lost(proxy, err, NULL);
            error_setg(errp, "vfio-user %s: %s", proxy->sockname,
                       proxy->lost_reason);
            return -ETIMEDOUT;
        }
        vfio_user_await(proxy, deadline, release_bql);
    }
    return 0;
}

void vfio_user_request_init(VFIOUserHdr *hdr, uint16_t command, uint32_t size)
{
    *hdr = (VFIOUserHdr) {
        .command = command,
        .size = size,
        .flags = VFIO_USER_REQUEST,
    };
}

/* What a request that will not get its reply tells its caller */
static int vfio_user_request_lost(VFIOUserProxy *proxy, const char *name,
                                  uint16_t id, Error **errp)
{
    error_setg(errp, "vfio-user %s: %s (id %u) failed: %s", proxy->sockname,
               name, id, proxy->lost_reason ?: "not connected");
    return -ENOTCONN;
}

/* Whether the server takes @nfds fds with one message */
static bool vfio_user_fds_fit(VFIOUserProxy *proxy, const char *name,
                              size_t nfds, Error **errp)
{
    if (nfds > proxy->max_send_fds) {
        error_setg(errp, "vfio-user %s: %s needs %zu fds, the server "
                   "accepts %u", proxy->sockname, name, nfds,
                   proxy->max_send_fds);
        return false;
    }
    return true;
}

static int vfio_user_exchange(VFIOUserProxy *proxy, VFIOUserHdr *req,
                              const int *fds, size_t nfds,
                              VFIOUserMsg *reply, bool release_bql,
                              Error **errp)
{
    const char *name = vfio_user_command_name(req->command);
    VFIOUserPending pending = { .command = req->command };
    g_auto(VFIOUserMsg) msg = { };
    int64_t deadline;
    Error *err = NULL;
    int ret;

    if (!vfio_user_fds_fit(proxy, name, nfds, errp)) {
        return -E2BIG;
    }

    qemu_mutex_lock(&proxy->lock);
    if (!proxy->connected) {
        qemu_mutex_unlock(&proxy->lock);
        return vfio_user_request_lost(proxy, name, proxy->next_id, errp);
    }
    /*
     * Whoever waits for a reply comes after the posted writes, and hears
     * of their failure first.  It also keeps this request from crossing a
     * DMA request the server makes while it handles one of them, which
     * servers built on libvfio-user cannot take (they read the next
     * message as the reply to theirs).
     */
    ret = vfio_user_wait_posted_locked(proxy, 0, release_bql, errp);
    if (ret < 0) {
        return ret;
    }
    if (!proxy->connected) {
        qemu_mutex_unlock(&proxy->lock);
        return vfio_user_request_lost(proxy, name, proxy->next_id, errp);
    }
    req->id = pending.id = proxy->next_id++;
    QTAILQ_INSERT_TAIL(&proxy->pending, &pending, next);
    if (!proxy->self_readers++) {
        vfio_user_recv_thread_rest(proxy, true);
    }
    qemu_mutex_unlock(&proxy->lock);

    ret = vfio_user_send_unlocked(proxy, req, fds, nfds, release_bql, &err);
    deadline = vfio_user_deadline(proxy);

    /*
     * A server that does not answer in time is treated as gone: waiting
     * the full timeout again for every later request would freeze the
     * guest (and an unplug with many DMA mappings) for as long as it has
     * requests to make.  The deadline is the reply's, however many
     * messages the server sends meanwhile.
     */
    qemu_mutex_lock(&proxy->lock);
    while (ret == 0 && !pending.done && proxy->connected &&
           qemu_clock_get_ms(QEMU_CLOCK_REALTIME) < deadline) {
        vfio_user_await(proxy, deadline, release_bql);
    }
    QTAILQ_REMOVE(&proxy->pending, &pending, next);
    if (!--proxy->self_readers) {
        vfio_user_recv_thread_rest(proxy, false);
    }
    msg = pending.reply;
    qemu_mutex_unlock(&proxy->lock);

    if (ret < 0) {
        /* The link is unusable */
        error_prepend(&err, "%s (id %u): ", name, req->id);
        vfio_user_connection_lost(proxy, err, NULL);
        return vfio_user_request_lost(proxy, name, req->id, errp);
    }
    if (!pending.done) {
        if (qatomic_read(&proxy->connected)) {
            vfio_user_set_timeout_error(proxy, "no reply from the server",
                                        &err);
            vfio_user_connection_lost(proxy, err, NULL);
        }
        return vfio_user_request_lost(proxy, name, req->id, errp);
    }
    if (msg.hdr->flags & VFIO_USER_ERROR) {
        ret = vfio_user_reply_errno(msg.hdr);
        error_setg_errno(errp, -ret, "vfio-user %s: server failed %s "
                         "(error %u)", proxy->sockname, name,
                         msg.hdr->error_reply);
        return ret;
    }
    if (reply) {
        *reply = msg;
        msg = (VFIOUserMsg) { };
    }
    return 0;
}

/*
 * Send @req with @fds and wait for its reply, while the receive thread
 * serves the server's own requests.  On success, the reply is in @reply
 * (if not NULL; free it with vfio_user_msg_free()).  Returns 0 or a
 * negative errno.
 */
int vfio_user_request(VFIOUserProxy *proxy, VFIOUserHdr *req,
                      const int *fds, size_t nfds, VFIOUserMsg *reply,
                      Error **errp)
{
    return vfio_user_exchange(proxy, req, fds, nfds, reply, false, errp);
}

/*
 * The same, for a guest's access to a BAR or config space from a vCPU
 * thread: the BQL goes while the reply is awaited, so that the monitor,
 * the main loop and the other vCPUs run meanwhile.  The caller keeps no
 * device state across the call (hw/vfio's BAR accesses, and the first
 * exchange of its config accesses, which pci.c makes ahead); the device
 * cannot go away meanwhile, as the access holds the RCU read lock that
 * keeps it alive, and a config access that finds it unplugged afterwards
 * ends there (pci.c).
 */
int vfio_user_request_unlocked(VFIOUserProxy *proxy, VFIOUserHdr *req,
                               VFIOUserMsg *reply, Error **errp)
{
    return vfio_user_exchange(proxy, req, NULL, 0, reply, true, errp);
}

/*
 * Send @req with @fds and return without waiting for its reply.  The
 * server handles requests in the order they arrive (the specification's
 * "Command Concurrency"), so anything sent later, whose reply is awaited,
 * is done after it; its reply is matched by id whenever it comes, and a
 * failure is reported then.  Only for requests whose failure the caller
 * could not act on anyway, such as a guest's write to a BAR.  When too
 * many are in flight, this waits, the BQL let go meanwhile with
 * VFIO_USER_POSTED_RELEASE_BQL as for vfio_user_request_unlocked().
 */
int vfio_user_request_posted(VFIOUserProxy *proxy, VFIOUserHdr *req,
                             const int *fds, size_t nfds,
                             VFIOUserPostedFlags flags, Error **errp)
{
    const char *name = vfio_user_command_name(req->command);
    bool release_bql = flags & VFIO_USER_POSTED_RELEASE_BQL;
    Error *err = NULL;
    int ret;

    if (!vfio_user_fds_fit(proxy, name, nfds, errp)) {
        return -E2BIG;
    }
    qemu_mutex_lock(&proxy->lock);
    if (!proxy->connected) {
        qemu_mutex_unlock(&proxy->lock);
        return vfio_user_request_lost(proxy, name, proxy->next_id, errp);
    }
    ret = vfio_user_wait_posted_locked(proxy, VFIO_USER_MAX_POSTED - 1,
                                       release_bql, errp);
    if (ret < 0) {
        return ret;
    }
    if (!proxy->connected) {
        qemu_mutex_unlock(&proxy->lock);
        return vfio_user_request_lost(proxy, name, proxy->next_id, errp);
    }
    /* Before it is sent: the reply may come before we look again */
    req->id = proxy->next_id++;
    proxy->posted[proxy->nr_posted].id = req->id;
    proxy->posted[proxy->nr_posted].seq = ++proxy->posted_seq;
    proxy->posted[proxy->nr_posted].quiet = flags & VFIO_USER_POSTED_QUIET;
    proxy->nr_posted++;
    qemu_mutex_unlock(&proxy->lock);

    ret = vfio_user_send_unlocked(proxy, req, fds, nfds, release_bql, &err);
    if (ret < 0) {
        error_prepend(&err, "posted %s (id %u): ", name, req->id);
        vfio_user_connection_lost(proxy, err, NULL);
        return vfio_user_request_lost(proxy, name, req->id, errp);
    }
    return 0;
}

/*
 * Wait until the server has answered every posted request; with
 * @release_bql, a vCPU lets the BQL go meanwhile, as for
 * vfio_user_request_unlocked().
 */
void vfio_user_flush_posted(VFIOUserProxy *proxy, bool release_bql)
{
    Error *err = NULL;

    qemu_mutex_lock(&proxy->lock);
    if (vfio_user_wait_posted_locked(proxy, 0, release_bql, &err) < 0) {
        trace_vfio_user_flush_failed(proxy->sockname,
                                     error_get_pretty(err));
        error_free(err);
        return;
    }
    qemu_mutex_unlock(&proxy->lock);
}

void vfio_user_add_lost_notifier(VFIOUserProxy *proxy, Notifier *notifier)
{
    notifier_list_add(&proxy->lost_notifiers, notifier);
}

/*
 * Until @deadline_ms (QEMU_CLOCK_REALTIME; 0: none), every request must
 * be answered by then, however many there are: realize has one deadline,
 * not one per message, or a server answering each just in time could
 * hold it for as long as it likes.
 */
void vfio_user_set_deadline(VFIOUserProxy *proxy, int64_t deadline_ms)
{
    proxy->deadline_ms = deadline_ms;
}

/* Once this returns, the previous handler is not running, nor will it */
void vfio_user_set_request_handler(VFIOUserProxy *proxy,
                                   VFIOUserRequestHandler *handler,
                                   void *opaque)
{
    QEMU_LOCK_GUARD(&proxy->handler_lock);
    proxy->request_handler = handler;
    proxy->request_opaque = opaque;
}

/* A non-blocking channel connected to @addr, that can pass fds */
/*
 * Connect to a UNIX socket without waiting: a server that is stopped (or
 * not accepting) and whose listen queue is full would otherwise make
 * connect() block, for as long as it stays so, the thread that holds the
 * BQL.  Returns the connected fd, or -1.
 */
static int vfio_user_connect_unix(const UnixSocketAddress *un, Error **errp)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    size_t len = strlen(un->path);
    socklen_t addrlen = sizeof(sun);
    size_t off = 0;
    int fd;

#ifdef CONFIG_LINUX
    if (un->has_abstract && un->abstract) {
        /* A leading NUL; tight (the default): no padding after the name */
        off = 1;
        if (!un->has_tight || un->tight) {
            addrlen = offsetof(struct sockaddr_un, sun_path) + 1 + len;
        }
    }
#endif
    if (off + len >= sizeof(sun.sun_path)) {
        error_setg(errp, "UNIX socket path '%s' is too long", un->path);
        return -1;
    }
    memcpy(sun.sun_path + off, un->path, len);

    fd = qemu_socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Failed to create socket");
        return -1;
    }
    qemu_socket_set_nonblock(fd);
    while (connect(fd, (struct sockaddr *)&sun, addrlen) < 0) {
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            error_setg(errp, "the socket takes no more connections (is "
                       "the server stopped?)");
        } else {
            error_setg_errno(errp, errno, "Failed to connect to '%s'",
                             un->path);
        }
        close(fd);
        return -1;
    }
    return fd;
}

static QIOChannel *vfio_user_open(SocketAddress *addr, const char *sockname,
                                  Error **errp)
{
    g_autoptr(QIOChannelSocket) sioc = NULL;
    int fd;

    if (addr->type == SOCKET_ADDRESS_TYPE_UNIX) {
        fd = vfio_user_connect_unix(&addr->u.q_unix, errp);
        sioc = fd < 0 ? NULL : qio_channel_socket_new_fd(fd, errp);
        if (fd >= 0 && !sioc) {
            close(fd);
        }
    } else {
        sioc = qio_channel_socket_new();
        if (qio_channel_socket_connect_sync(sioc, addr, errp) < 0) {
            g_clear_pointer(&sioc, object_unref);
        }
    }
    if (!sioc) {
        error_prepend(errp, "vfio-user %s: ", sockname);
        return NULL;
    }
    if (!qio_channel_has_feature(QIO_CHANNEL(sioc),
                                 QIO_CHANNEL_FEATURE_FD_PASS)) {
        error_setg(errp, "vfio-user %s: not a UNIX socket", sockname);
        return NULL;
    }
    qio_channel_set_name(QIO_CHANNEL(sioc), "vfio-user");
    if (qio_channel_set_blocking(QIO_CHANNEL(sioc), false, errp) < 0) {
        return NULL;
    }
    return QIO_CHANNEL(g_steal_pointer(&sioc));
}

static void vfio_user_start_receiving(VFIOUserProxy *proxy)
{
    g_autofree char *thread_name = g_strdup_printf("vfio-user-%d",
                                                   vfio_user_fd(proxy));
    struct epoll_event ev = { .events = EPOLLIN };
    int epfd = epoll_create1(EPOLL_CLOEXEC);

    if (epfd >= 0 &&
        epoll_ctl(epfd, EPOLL_CTL_ADD, vfio_user_fd(proxy), &ev) < 0) {
        close(epfd);
        epfd = -1;
    }
    /* Without it, the thread polls the socket itself, and never rests */
    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        proxy->recv_epfd = epfd;
    }
    qemu_thread_create(&proxy->recv_thread, thread_name,
                       vfio_user_recv_thread, proxy, QEMU_THREAD_JOINABLE);
    proxy->receiving = true;
}

static void vfio_user_stop_receiving(VFIOUserProxy *proxy)
{
    if (proxy->receiving) {
        qio_channel_shutdown(proxy->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
        /* A resting thread sees the hang-up all the same */
        qemu_thread_join(&proxy->recv_thread);
        proxy->receiving = false;
        /* Waiters of this connection may still be on their way out */
        WITH_QEMU_LOCK_GUARD(&proxy->lock) {
            if (proxy->recv_epfd >= 0) {
                close(proxy->recv_epfd);
                proxy->recv_epfd = -1;
            }
        }
    }
}

VFIOUserProxy *vfio_user_connect(SocketAddress *addr, uint32_t timeout_ms,
                                 Error **errp)
{
    g_autofree char *sockname = NULL;
    VFIOUserProxy *proxy;
    QIOChannel *ioc;

    switch (addr->type) {
    case SOCKET_ADDRESS_TYPE_UNIX:
        sockname = g_strdup(addr->u.q_unix.path);
        break;
    case SOCKET_ADDRESS_TYPE_FD:
        sockname = g_strdup_printf("fd:%s", addr->u.fd.str);
        break;
    default:
        error_setg(errp, "vfio-user: the socket must be a UNIX socket "
                   "(type 'unix' or 'fd')");
        return NULL;
    }

    ioc = vfio_user_open(addr, sockname, errp);
    if (!ioc) {
        return NULL;
    }

    proxy = g_new0(VFIOUserProxy, 1);
    proxy->ioc = ioc;
    proxy->sockname = g_steal_pointer(&sockname);
    proxy->timeout_ms = timeout_ms;
    proxy->connected = true;
    qemu_mutex_init(&proxy->lock);
    qemu_mutex_init(&proxy->send_lock);
    qemu_mutex_init(&proxy->handler_lock);
    qemu_cond_init(&proxy->cond);
    QTAILQ_INIT(&proxy->pending);
    notifier_list_init(&proxy->lost_notifiers);
    proxy->lost_bh = qemu_bh_new(vfio_user_lost_bh, proxy);
    /*
     * Not in nested event loops (a drain, say): what it runs gives the
     * server the device's state, as the timer that started it would
     */
    proxy->version_bh = aio_bh_new(iohandler_get_aio_context(),
                                   vfio_user_version_bh, proxy);
    /* Until the server says otherwise */
    proxy->max_send_fds = VFIO_USER_DEF_MAX_FDS;
    proxy->max_xfer_size = VFIO_USER_DEF_MAX_XFER;
    trace_vfio_user_connect(proxy->sockname);
    vfio_user_start_receiving(proxy);
    return proxy;
}

static char *vfio_user_caps_json(void)
{
    g_autoptr(QDict) top = qdict_new();
    QDict *caps = qdict_new();
    g_autoptr(GString) json = NULL;

    qdict_put_int(caps, "max_msg_fds", VFIO_USER_CLIENT_MAX_FDS);
    qdict_put_int(caps, "max_data_xfer_size", VFIO_USER_CLIENT_MAX_XFER);
    qdict_put(top, "capabilities", caps);
    json = qobject_to_json(QOBJECT(top));
    return g_string_free(g_steal_pointer(&json), false);
}

/* The VERSION request: ours, and what we accept */
static VFIOUserVersion *vfio_user_version_msg(void)
{
    g_autofree char *json = vfio_user_caps_json();
    size_t size = sizeof(VFIOUserVersion) + strlen(json) + 1;
    VFIOUserVersion *msg = g_malloc0(size);

    vfio_user_request_init(&msg->hdr, VFIO_USER_VERSION, size);
    msg->major = VFIO_USER_MAJOR_VER;
    msg->minor = VFIO_USER_MINOR_VER;
    memcpy(msg->capabilities, json, strlen(json) + 1);
    return msg;
}

/* Learn what the server accepts from its VERSION @reply */
static bool vfio_user_version_reply(VFIOUserProxy *proxy,
                                    const VFIOUserMsg *reply, Error **errp)
{
    /* What a server that says nothing accepts */
    VFIOUserServerCaps caps = {
        .max_send_fds = VFIO_USER_DEF_MAX_FDS,
        .max_xfer_size = VFIO_USER_DEF_MAX_XFER,
    };

    if (reply->hdr->flags & VFIO_USER_ERROR) {
        error_setg_errno(errp, -vfio_user_reply_errno(reply->hdr),
                         "vfio-user %s: server failed VERSION (error %u)",
                         proxy->sockname, reply->hdr->error_reply);
        return false;
    }
    if (!vfio_user_parse_version(reply->hdr, &caps, errp)) {
        error_prepend(errp, "vfio-user %s: ", proxy->sockname);
        return false;
    }
    proxy->minor = caps.minor;
    proxy->max_send_fds = caps.max_send_fds;
    proxy->max_xfer_size = caps.max_xfer_size;
    proxy->migr_pgsize = caps.migr_pgsize;
    trace_vfio_user_version(proxy->sockname, VFIO_USER_MAJOR_VER, caps.minor,
                            proxy->max_send_fds, proxy->max_xfer_size);

    qatomic_set(&proxy->established, true);
    return true;
}

/*
 * After the server went away: connect to @addr again.  The proxy stays
 * the same object, so that what points at it need not know; requests of
 * the old connection have all failed by now.
 */
static bool vfio_user_reopen(VFIOUserProxy *proxy, SocketAddress *addr,
                             Error **errp)
{
    QIOChannel *ioc;

    assert(!qatomic_read(&proxy->connected));
    ioc = vfio_user_open(addr, proxy->sockname, errp);
    if (!ioc) {
        return false;
    }
    vfio_user_stop_receiving(proxy);
    qio_channel_close(proxy->ioc, NULL);
    object_unref(OBJECT(proxy->ioc));
    proxy->ioc = ioc;
    qatomic_set(&proxy->established, false);

    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        g_free(proxy->lost_reason);
        proxy->lost_reason = NULL;
        proxy->nr_posted = 0;
        proxy->posted_errors_reported = 0;
        /* Until the new server says otherwise */
        proxy->max_send_fds = VFIO_USER_DEF_MAX_FDS;
        proxy->max_xfer_size = VFIO_USER_DEF_MAX_XFER;
        qatomic_set(&proxy->connected, true);
    }
    trace_vfio_user_connect(proxy->sockname);
    vfio_user_start_receiving(proxy);
    return true;
}

/*
 * Reconnection runs in the main loop, which must not wait for a server
 * that accepts connections but does not answer (a stopped process's
 * socket still does, from its backlog): every attempt would stop the
 * monitor for a whole request timeout.  So it comes in two steps.  This
 * one connects to @addr again and sends VERSION; once the reply is in,
 * @answered(@opaque) runs in the main loop, and takes it with
 * vfio_user_reconnect_finish().  Waiting for it, and giving up, is the
 * caller's (vfio_user_drop()).  Replaying the device's state is the
 * caller's too: the server has shown it answers by then.
 */
bool vfio_user_reconnect_start(VFIOUserProxy *proxy, SocketAddress *addr,
                               QEMUBHFunc *answered, void *opaque,
                               Error **errp)
{
    g_autofree VFIOUserVersion *msg = NULL;
    VFIOUserPending *pending;
    Error *err = NULL;

    vfio_user_reconnect_cancel(proxy);
    if (!vfio_user_reopen(proxy, addr, errp)) {
        return false;
    }
    msg = vfio_user_version_msg();
    pending = g_new0(VFIOUserPending, 1);
    pending->command = VFIO_USER_VERSION;
    pending->notify = true;
    proxy->version_answered = answered;
    proxy->version_opaque = opaque;
    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        msg->hdr.id = pending->id = proxy->next_id++;
        QTAILQ_INSERT_TAIL(&proxy->pending, pending, next);
        proxy->version = pending;
    }
    if (vfio_user_send(proxy, &msg->hdr, NULL, 0, &err) < 0) {
        vfio_user_reconnect_cancel(proxy);
        error_prepend(&err, "VERSION (id %u): ", msg->hdr.id);
        vfio_user_connection_lost(proxy, err, errp);
        return false;
    }
    return true;
}

/* Whether the reconnection's VERSION has its reply (its callback is due) */
bool vfio_user_reconnect_answered(VFIOUserProxy *proxy)
{
    QEMU_LOCK_GUARD(&proxy->lock);
    return proxy->version && proxy->version->done;
}

/* Take the reconnection's VERSION request off the list: NULL if none */
static VFIOUserPending *vfio_user_take_version(VFIOUserProxy *proxy)
{
    VFIOUserPending *pending;

    QEMU_LOCK_GUARD(&proxy->lock);
    pending = g_steal_pointer(&proxy->version);
    if (pending) {
        QTAILQ_REMOVE(&proxy->pending, pending, next);
    }
    return pending;
}

/* The reconnection's VERSION has its reply: negotiate with it */
bool vfio_user_reconnect_finish(VFIOUserProxy *proxy, Error **errp)
{
    g_autofree VFIOUserPending *pending = vfio_user_take_version(proxy);
    g_auto(VFIOUserMsg) reply = { };

    proxy->version_answered = NULL;
    if (!pending || !pending->done) {
        error_setg(errp, "vfio-user %s: VERSION got no reply: %s",
                   proxy->sockname, proxy->lost_reason ?: "not connected");
        return false;
    }
    reply = pending->reply;
    return vfio_user_version_reply(proxy, &reply, errp);
}

/* Forget a reconnection in progress: its reply, if it comes, is stale */
void vfio_user_reconnect_cancel(VFIOUserProxy *proxy)
{
    g_autofree VFIOUserPending *pending = vfio_user_take_version(proxy);

    proxy->version_answered = NULL;
    if (pending) {
        vfio_user_msg_free(&pending->reply);
    }
}

/*
 * Give up on the server, as if it had gone away, @err saying why; without
 * a report of its own, the caller's to make.  Returns whether the
 * connection was still there (its lost notifiers then run).
 */
bool vfio_user_drop(VFIOUserProxy *proxy, Error *err)
{
    qatomic_set(&proxy->established, false);
    return vfio_user_connection_lost(proxy, err, NULL);
}

void vfio_user_disconnect(VFIOUserProxy *proxy)
{
    /* Let the guest's last writes land, and hear of their failures */
    vfio_user_flush_posted(proxy, false);
    WITH_QEMU_LOCK_GUARD(&proxy->lock) {
        qatomic_set(&proxy->connected, false);
    }
    vfio_user_stop_receiving(proxy);
    trace_vfio_user_disconnect(proxy->sockname);
    vfio_user_reconnect_cancel(proxy);
    qemu_bh_delete(proxy->version_bh);
    qemu_bh_delete(proxy->lost_bh);
    qio_channel_close(proxy->ioc, NULL);
    object_unref(OBJECT(proxy->ioc));
    qemu_cond_destroy(&proxy->cond);
    qemu_mutex_destroy(&proxy->handler_lock);
    qemu_mutex_destroy(&proxy->send_lock);
    qemu_mutex_destroy(&proxy->lock);
    g_free(proxy->lost_reason);
    g_free(proxy->sockname);
    g_free(proxy);
}

/*
 * Agree on the protocol version and learn what the server accepts, waiting
 * for the reply (realize).
 */
bool vfio_user_negotiate(VFIOUserProxy *proxy, Error **errp)
{
    g_autofree VFIOUserVersion *msg = vfio_user_version_msg();
    g_auto(VFIOUserMsg) reply = { };

    if (vfio_user_request(proxy, &msg->hdr, NULL, 0, &reply, errp) < 0) {
        return false;
    }
    return vfio_user_version_reply(proxy, &reply, errp);
}
