/*
 * The floor under a vfio-user register access: two processes play
 * request/reply over an AF_UNIX stream socket with the message sizes of a
 * 4-byte REGION_READ (request 32 bytes, reply 36) and of a 4-byte
 * REGION_WRITE (request 36 bytes, reply 32), and nothing else: no
 * parsing, no locks, no guest.  harness/bench/run.sh builds it and
 * compares the guest's REGION_READ with it.
 *
 * usage: unix-pingpong [ROUND_TRIPS]
 * Prints one line per shape:
 *   pingpong name=region_read req=32 reply=36 n=N ns=TOTAL per_ns=X.Y
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP  1000

static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = send(fd, p, len, 0);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

static int recv_all(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len) {
        ssize_t n = recv(fd, p, len, MSG_WAITALL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The "server": answer every request of req bytes with reply bytes */
static void serve(int fd, size_t req, size_t reply)
{
    char buf[64];

    memset(buf, 0, sizeof(buf));
    while (recv_all(fd, buf, req) == 0) {
        if (send_all(fd, buf, reply) < 0) {
            break;
        }
    }
    _exit(0);
}

static int shape(const char *name, size_t req, size_t reply, long n)
{
    char buf[64];
    int sv[2];
    pid_t pid;
    uint64_t t0 = 0, ns;
    long i;
    int status;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        perror("unix-pingpong: socketpair");
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        perror("unix-pingpong: fork");
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        serve(sv[1], req, reply);
    }
    close(sv[1]);
    memset(buf, 0, sizeof(buf));

    for (i = 0; i < WARMUP + n; i++) {
        if (i == WARMUP) {
            t0 = now_ns();
        }
        if (send_all(sv[0], buf, req) < 0 || recv_all(sv[0], buf, reply) < 0) {
            fprintf(stderr, "unix-pingpong: %s: the peer went away\n", name);
            close(sv[0]);
            waitpid(pid, &status, 0);
            return -1;
        }
    }
    ns = now_ns() - t0;
    close(sv[0]);
    waitpid(pid, &status, 0);

    printf("pingpong name=%s req=%zu reply=%zu n=%ld ns=%llu per_ns=%.1f\n",
           name, req, reply, n, (unsigned long long)ns, (double)ns / n);
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;

    if (n <= 0) {
        fprintf(stderr, "usage: unix-pingpong [ROUND_TRIPS]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (shape("region_read", 32, 36, n) < 0 ||
        shape("region_write", 36, 32, n) < 0) {
        return 1;
    }
    return 0;
}
