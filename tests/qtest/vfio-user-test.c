/*
 * qtest for vfio-user-pci against real vfio-user servers: the sample
 * servers of libvfio-user (built from subprojects/libvfio-user) and, for
 * what they cannot do (misbehaving peers), a small server in this file.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "libqtest.h"
#include "qemu/bswap.h"
#include "standard-headers/linux/pci_regs.h"
#include "libqos/pci-pc.h"
#include "libqos/generic-pcihost.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qstring.h"

#define GPIO_VENDOR_ID   0x494f
#define GPIO_DEVICE_ID   0x0dc8
#define TEST_SLOT        5
#define TEST_DEVFN       QPCI_DEVFN(TEST_SLOT, 0)

/* How long a server gets to do what the test waits for */
#define WAIT_MS          10000

/* One server process and the socket it listens on */
typedef struct TestServer {
    GPid pid;
    int stdin_fd;       /* kept open: the null sample exits on EOF */
    char *dir;
    char *sock;
} TestServer;

static char *sample_path(const char *name)
{
    const char *dir = g_getenv("VFIO_USER_SAMPLES");

    return g_build_filename(dir ? dir : "subprojects/libvfio-user/samples",
                            name, NULL);
}

static bool wait_for_file(const char *path)
{
    int i;

    for (i = 0; i < WAIT_MS / 10; i++) {
        if (g_file_test(path, G_FILE_TEST_EXISTS)) {
            return true;
        }
        g_usleep(10 * 1000);
    }
    return false;
}

/*
 * Start the server program @path (a @what) with options @args (NULL or
 * NULL-terminated) on a socket of its own; NULL, and the test skipped, if
 * it was not built.
 */
static TestServer *server_start_args(const char *path, const char *what,
                                     bool quiet, const char *const *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    TestServer *s;

    if (!g_file_test(path, G_FILE_TEST_IS_EXECUTABLE)) {
        g_autofree char *why = g_strdup_printf("%s %s not built", what, path);

        g_test_skip(why);
        return NULL;
    }
    s = g_new0(TestServer, 1);
    s->dir = g_dir_make_tmp("vfio-user-test-XXXXXX", &err);
    g_assert_no_error(err);
    s->sock = g_build_filename(s->dir, "sock", NULL);
    g_ptr_array_add(argv, (char *)path);
    while (args && *args) {
        g_ptr_array_add(argv, (char *)*args++);
    }
    g_ptr_array_add(argv, s->sock);
    g_ptr_array_add(argv, NULL);
    g_spawn_async_with_pipes(NULL, (char **)argv->pdata, NULL,
                             G_SPAWN_DO_NOT_REAP_CHILD |
                             G_SPAWN_STDOUT_TO_DEV_NULL |
                             (quiet ? G_SPAWN_STDERR_TO_DEV_NULL : 0),
                             NULL, NULL, &s->pid, &s->stdin_fd, NULL, NULL,
                             &err);
    g_assert_no_error(err);
    g_assert_true(wait_for_file(s->sock));
    return s;
}

/* Kill @s, as a crash would: its socket is free for another */
static void server_kill(TestServer *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    g_spawn_close_pid(s->pid);
    close(s->stdin_fd);
    unlink(s->sock);
}

/* Start @path @args on the socket of @s, which server_kill() freed */
static void server_respawn(TestServer *s, const char *path,
                           const char *const *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();

    g_ptr_array_add(argv, (char *)path);
    while (args && *args) {
        g_ptr_array_add(argv, (char *)*args++);
    }
    g_ptr_array_add(argv, s->sock);
    g_ptr_array_add(argv, NULL);
    g_spawn_async_with_pipes(NULL, (char **)argv->pdata, NULL,
                             G_SPAWN_DO_NOT_REAP_CHILD |
                             G_SPAWN_STDOUT_TO_DEV_NULL,
                             NULL, NULL, &s->pid, &s->stdin_fd, NULL, NULL,
                             &err);
    g_assert_no_error(err);
    g_assert_true(wait_for_file(s->sock));
}

/* Kill @s, as a crash would, and start @path @args on the same socket */
static void server_restart(TestServer *s, const char *path,
                           const char *const *args)
{
    server_kill(s);
    server_respawn(s, path, args);
}

static TestServer *server_start(const char *path, const char *what,
                                bool quiet)
{
    return server_start_args(path, what, quiet, NULL);
}

/* libvfio-user's sample server @name */
static TestServer *sample_start(const char *name, bool quiet)
{
    g_autofree char *path = sample_path(name);

    return server_start(path, "libvfio-user sample", quiet);
}

static void server_stop(TestServer *s)
{
    if (!s) {
        return;
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    g_spawn_close_pid(s->pid);
    close(s->stdin_fd);
    unlink(s->sock);
    rmdir(s->dir);
    g_free(s->sock);
    g_free(s->dir);
    g_free(s);
}

static QPCIDevice *find_device(QPCIBus *bus)
{
    QPCIDevice *dev = qpci_device_find(bus, TEST_DEVFN);

    g_assert_nonnull(dev);
    qpci_device_enable(dev);
    return dev;
}

/* A server, and a QEMU whose vfio-user-pci device is connected to it */
typedef struct TestDev {
    TestServer *server;
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar0;
} TestDev;

/* Start QEMU for @t->server, with @extra device properties; false if none */
static bool guest_start(TestDev *t, const char *machine, const char *extra)
{
    if (!t->server) {
        return false;
    }
    t->qts = qtest_initf("-M %s -nodefaults -device vfio-user-pci,socket=%s,"
                         "addr=%d%s", machine, t->server->sock, TEST_SLOT,
                         extra);
    t->bus = qpci_new_pc(t->qts, NULL);
    t->dev = find_device(t->bus);
    return true;
}

static void test_dev_stop(TestDev *t)
{
    g_free(t->dev);
    qpci_free_pc(t->bus);
    qtest_quit(t->qts);
    server_stop(t->server);
}

/* Config space comes from the server */
static void test_gpio_config(void)
{
    TestDev t = { .server = sample_start("gpio-pci-idio-16", false) };

    if (!guest_start(&t, "pc", "")) {
        return;
    }
    g_assert_cmphex(qpci_config_readw(t.dev, PCI_VENDOR_ID), ==,
                    GPIO_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(t.dev, PCI_DEVICE_ID), ==,
                    GPIO_DEVICE_ID);
    test_dev_stop(&t);
}

/*
 * BAR2 reads are REGION_READs the server answers: the sample returns
 * pin++ / 3 at offset 0, so the values climb every third read.
 */
static void test_gpio_bar2(void)
{
    TestDev t = { .server = sample_start("gpio-pci-idio-16", false) };
    QPCIBar bar2;
    uint64_t size;
    int i;

    if (!guest_start(&t, "pc", "")) {
        return;
    }
    bar2 = qpci_iomap(t.dev, 2, &size);
    g_assert_cmpuint(size, ==, 0x100);
    for (i = 0; i < 9; i++) {
        g_assert_cmpuint(qpci_io_readb(t.dev, bar2, 0), ==, i / 3);
    }
    qpci_iounmap(t.dev, bar2);
    test_dev_stop(&t);
}

/* Every spelling of the socket reaches the same server */
static void check_socket_syntax(TestServer *s, const char *fmt)
{
    g_autofree char *arg = g_strdup_printf(fmt, s->sock);
    QTestState *qts = qtest_initf("-M pc -nodefaults %s", arg);
    QPCIBus *bus = qpci_new_pc(qts, NULL);
    QPCIDevice *dev = find_device(bus);

    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==,
                    GPIO_VENDOR_ID);
    g_free(dev);
    qpci_free_pc(bus);
    qtest_quit(qts);
}

static void test_socket_syntax(void)
{
    TestServer *s = sample_start("gpio-pci-idio-16", false);

    if (!s) {
        return;
    }
    check_socket_syntax(s, "-device vfio-user-pci,addr=5,"
                        "socket.type=unix,socket.path=%s");
    check_socket_syntax(s, "-device '{\"driver\":\"vfio-user-pci\","
                        "\"addr\":\"5\",\"socket\":{\"type\":\"unix\","
                        "\"path\":\"%s\"}}'");
    server_stop(s);
}

static int connect_unix(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    g_assert_cmpint(fd, >=, 0);
    g_strlcpy(addr.sun_path, path, sizeof(addr.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), ==,
                    0);
    return fd;
}

/* An fd handed over with getfd, the way libvirt passes sockets */
static void test_socket_fd_hotplug(void)
{
    TestServer *s = sample_start("gpio-pci-idio-16", false);
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    int fd;

    if (!s) {
        return;
    }
    qts = qtest_init("-M pc -nodefaults");
    fd = connect_unix(s->sock);
    qtest_qmp_fds_assert_success(qts, &fd, 1,
        "{'execute': 'getfd', 'arguments': {'fdname': 'vfu'}}");
    close(fd);
    qtest_qmp_device_add(qts, "vfio-user-pci", "vu0",
                         "{'addr': '5', 'socket': {'type': 'fd', "
                         "'str': 'vfu'}}");
    bus = qpci_new_pc(qts, NULL);
    dev = find_device(bus);
    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==,
                    GPIO_VENDOR_ID);
    g_free(dev);
    qpci_unplug_acpi_device_test(qts, "vu0", TEST_SLOT);
    qpci_free_pc(bus);
    qtest_quit(qts);
    server_stop(s);
}

/* The null sample has config space and nothing else */
static void test_null_config_only(void)
{
    TestDev t = { .server = sample_start("null", true) };
    int bar;

    if (!guest_start(&t, "pc", "")) {
        return;
    }
    g_assert_cmphex(qpci_config_readb(t.dev, PCI_HEADER_TYPE) & 0x7f, ==,
                    PCI_HEADER_TYPE_NORMAL);
    for (bar = 0; bar < 6; bar++) {
        uint8_t reg = PCI_BASE_ADDRESS_0 + bar * 4;

        qpci_config_writel(t.dev, reg, 0xffffffff);
        g_assert_cmphex(qpci_config_readl(t.dev, reg), ==, 0);
    }
    test_dev_stop(&t);
}

/*
 * The server sample offers its BAR1 first and last pages for mmap(), from
 * a file it cannot seal against shrinking: mapped only when the user
 * trusts the server's files, else reached with messages.
 */
static void check_server_sparse_mmap(bool unsealed)
{
    TestDev t = { .server = sample_start("server", true) };
    g_autofree char *mtree = NULL;
    QPCIBar bar1;

    if (!guest_start(&t, "pc", unsealed ? ",x-mmap-unsealed=on" : "")) {
        return;
    }
    bar1 = qpci_iomap(t.dev, 1, NULL);

    mtree = qtest_hmp(t.qts, "info mtree");
    if (unsealed) {
        g_assert_nonnull(strstr(mtree, "BAR 1 mmaps[0]"));
        g_assert_nonnull(strstr(mtree, "BAR 1 mmaps[1]"));
        g_assert_null(strstr(mtree, "BAR 1 mmaps[2]"));
    } else {
        g_assert_null(strstr(mtree, "BAR 1 mmaps"));
    }

    /* An I/O BAR: 4 bytes at most */
    qpci_io_writel(t.dev, bar1, 0, 0x89abcdef);
    g_assert_cmphex(qpci_io_readl(t.dev, bar1, 0), ==, 0x89abcdef);
    test_dev_stop(&t);
}

static void test_server_sparse_mmap(void)
{
    check_server_sparse_mmap(true);
}

static void test_server_unsealed_not_mapped(void)
{
    check_server_sparse_mmap(false);
}

/*
 * libvfio-user's "server" sample DMAs on its own: an 8-byte write of a
 * time to BAR0, an I/O BAR, arms a timer; when it fires, the server raises
 * INTx, writes 4 KiB of 'A' with DMA_WRITE to the start of the first
 * region the client mapped, reads them back with DMA_READ, and exits if
 * the two differ.  x86 cannot make 8-byte I/O accesses; the Arm virt
 * machine reaches I/O BARs through an MMIO window, where it can.
 *
 * libvfio-user's DMA calls take the next message on the socket for their
 * reply: a request of ours crossing its DMA_WRITE or DMA_READ makes the
 * sample fail (the protocol allows the crossing; we serve the server's
 * request while we wait).  So this test sends nothing while the server
 * DMAs: x-no-mmap=on, because INTx makes QEMU turn BAR mmaps off, and on
 * virt the sample's I/O BAR mmaps are in the memory address space, so that
 * would unmap them (DMA_UNMAP) just as the DMA starts.
 *
 * The sample's DMA always travels as messages; with shared memory, its
 * DMA_MAP carries the RAM's fd as well (and the sample maps it).
 */
#define VIRT_RAM_BASE   0x40000000
#define SAMPLE_DMA_LEN  4096

static bool sample_dma_done(QTestState *qts)
{
    g_autofree uint8_t *buf = g_malloc(SAMPLE_DMA_LEN);
    int i, j;

    for (i = 0; i < WAIT_MS / 10; i++) {
        qtest_memread(qts, VIRT_RAM_BASE, buf, SAMPLE_DMA_LEN);
        for (j = 0; j < SAMPLE_DMA_LEN && buf[j] == 'A'; j++) {
            continue;
        }
        if (j == SAMPLE_DMA_LEN) {
            return true;
        }
        g_usleep(10 * 1000);
    }
    return false;
}

static void test_server_sample_dma(const void *opaque)
{
    bool shared = GPOINTER_TO_INT(opaque);
    TestServer *server = sample_start("server", false);
    QGenericPCIBus bus;
    QPCIDevice *dev;
    QTestState *qts;
    QPCIBar bar0;
    int64_t delta;
    int status;

    if (!server) {
        return;
    }
    qts = qtest_initf("-M virt%s -cpu max -m 128M -nodefaults %s "
                      "-device vfio-user-pci,socket=%s,addr=%d,x-no-mmap=on",
                      shared ? ",memory-backend=mem0" : "",
                      shared ? "-object memory-backend-memfd,id=mem0,"
                               "size=128M,share=on" : "",
                      server->sock, TEST_SLOT);
    qpci_init_generic(&bus, qts, NULL, false);
    dev = find_device(&bus.bus);
    bar0 = qpci_iomap(dev, 0, NULL);
    g_assert_true(bar0.is_io);

    qtest_memset(qts, VIRT_RAM_BASE, 0x55, SAMPLE_DMA_LEN);
    /* Seconds from now: the sample disarms its timer on a time not ahead */
    qpci_io_writeq(dev, bar0, 0, time(NULL) + 3);
    g_assert_true(sample_dma_done(qts));

    /*
     * The server reads the bytes back right after, and exits if they are
     * not those it wrote.  Give it time to, before we send a request.
     */
    g_usleep(500 * 1000);
    g_assert_cmpint(waitpid(server->pid, &status, WNOHANG), ==, 0);
    /*
     * BAR0 reads as the seconds since the time written: an answer proves
     * the server came back from its DMA (QEMU reads all-ones from a
     * server that is gone or stuck).
     */
    delta = qpci_io_readq(dev, bar0, 0);
    g_assert_cmpint(delta, >=, -3);
    g_assert_cmpint(delta, <, WAIT_MS / 1000);
    g_assert_cmpint(waitpid(server->pid, &status, WNOHANG), ==, 0);

    g_free(dev);
    qtest_quit(qts);
    server_stop(server);
}

static int count_fds(pid_t pid);

/* Our own server: tests/qtest/vfio-user-test-server.c */
#define TS_VENDOR_ID    0x1b36
#define TS_DEVICE_ID    0x00f0
#define TS_ID           0x56555453u
#define TS_SCRATCH0     0x008
#define TS_SCRATCH1     0x010
#define TS_DMA_ADDR     0x100
#define TS_DMA_LEN      0x108
#define TS_DMA_FILL     0x110
#define TS_DMA_SUM      0x118
#define TS_STATUS       0x120
#define TS_MAPPED       0x124
#define TS_RESETS       0x128
#define TS_VECTOR       0x12c
#define TS_REGIONS      0x130
#define TS_CMD          0x200
#define TS_CMD_INTX     1
#define TS_CMD_DMA_WRITE 2
#define TS_CMD_DMA_READ 3
#define TS_CMD_VECTOR   4
#define TS_CMD_RAW_DMA_READ  5
#define TS_CMD_RAW_DMA_WRITE 6
#define TS_CMD_RAW_FDS       7
#define TS_NR_MSIX      12
#define TS_NR_MSI       32

/* Our tests/qtest/vfio-user-test-server */
static TestServer *test_server_start(void)
{
    const char *path = g_getenv("VFIO_USER_TEST_SERVER");

    return server_start(path ? path : "tests/qtest/vfio-user-test-server",
                        "vfio-user test server", false);
}

static bool test_dev_start(TestDev *t, const char *machine, const char *extra)
{
    t->server = test_server_start();
    if (!guest_start(t, machine, extra)) {
        return false;
    }
    g_assert_cmphex(qpci_config_readw(t->dev, PCI_VENDOR_ID), ==,
                    TS_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(t->dev, PCI_DEVICE_ID), ==,
                    TS_DEVICE_ID);
    t->bar0 = qpci_iomap(t->dev, 0, NULL);
    g_assert_false(t->bar0.is_io);
    g_assert_cmphex(qpci_io_readl(t->dev, t->bar0, 0), ==, TS_ID);
    return true;
}

static uint32_t test_dev_cmd(TestDev *t, uint32_t cmd)
{
    qpci_io_writel(t->dev, t->bar0, TS_CMD, cmd);
    return qpci_io_readl(t->dev, t->bar0, TS_STATUS);
}

/* Accesses of 1, 2, 4 and 8 bytes, forwarded as REGION_READ/WRITE */
static void test_access_sizes(void)
{
    TestDev t;

    if (!test_dev_start(&t, "pc", "")) {
        return;
    }
    qpci_io_writeq(t.dev, t.bar0, TS_SCRATCH0, 0x1122334455667788ULL);
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_SCRATCH0), ==,
                    0x1122334455667788ULL);
    g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, TS_SCRATCH0 + 4), ==,
                    0x11223344);
    g_assert_cmphex(qpci_io_readw(t.dev, t.bar0, TS_SCRATCH0 + 2), ==,
                    0x5566);
    g_assert_cmphex(qpci_io_readb(t.dev, t.bar0, TS_SCRATCH0 + 1), ==, 0x77);

    qpci_io_writeb(t.dev, t.bar0, TS_SCRATCH1 + 7, 0xa5);
    qpci_io_writew(t.dev, t.bar0, TS_SCRATCH1 + 4, 0xbeef);
    qpci_io_writel(t.dev, t.bar0, TS_SCRATCH1, 0xcafef00d);
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_SCRATCH1), ==,
                    0xa500beefcafef00dULL);
    test_dev_stop(&t);
}

/* BAR1's first page is mmapped from the server's fd, its second is not */
static void check_bar1(bool no_mmap)
{
    g_autofree char *mtree = NULL;
    QPCIBar bar1;
    TestDev t;

    if (!test_dev_start(&t, "pc", no_mmap ? ",x-no-mmap=on" : "")) {
        return;
    }
    bar1 = qpci_iomap(t.dev, 1, NULL);
    mtree = qtest_hmp(t.qts, "info mtree");
    g_assert_true((strstr(mtree, "BAR 1 mmaps[0]") != NULL) == !no_mmap);
    g_assert_null(strstr(mtree, "BAR 1 mmaps[1]"));

    qpci_io_writeq(t.dev, bar1, 0x10, 0x0123456789abcdefULL);
    qpci_io_writeq(t.dev, bar1, 0x1ff8, 0xfedcba9876543210ULL);
    g_assert_cmphex(qpci_io_readq(t.dev, bar1, 0x10), ==,
                    0x0123456789abcdefULL);
    g_assert_cmphex(qpci_io_readq(t.dev, bar1, 0x1ff8), ==,
                    0xfedcba9876543210ULL);
    test_dev_stop(&t);
}

static void test_bar_mmap(void)
{
    check_bar1(false);
}

static void test_bar_no_mmap(void)
{
    check_bar1(true);
}

static int wait_for_intx(QTestState *qts, bool level)
{
    int i, gsi;

    for (i = 0; i < WAIT_MS / 10; i++) {
        /* Any command lets libqtest take in pending IRQ notifications */
        qtest_readb(qts, 0);
        for (gsi = 16; gsi < 24; gsi++) {
            if (qtest_get_irq(qts, gsi) == level && level) {
                return gsi;
            }
        }
        if (!level) {
            for (gsi = 16; gsi < 24 && !qtest_get_irq(qts, gsi); gsi++) {
                continue;
            }
            if (gsi == 24) {
                return 0;
            }
        }
        g_usleep(10 * 1000);
    }
    return -1;
}

/*
 * The server raises INTx through its eventfd; a BAR access (the guest
 * servicing the interrupt) de-asserts and unmasks it, so it can fire again.
 */
static void test_intx(void)
{
    TestDev t;
    int gsi, i;

    if (!test_dev_start(&t, "q35", "")) {
        return;
    }
    qtest_irq_intercept_in(t.qts, "ioapic");
    g_assert_cmpint(wait_for_intx(t.qts, false), ==, 0);
    for (i = 0; i < 3; i++) {
        /* Not test_dev_cmd(): its STATUS read would be taken as the EOI */
        qpci_io_writel(t.dev, t.bar0, TS_CMD, TS_CMD_INTX);
        gsi = wait_for_intx(t.qts, true);
        g_assert_cmpint(gsi, >=, 16);
        /* Servicing: any BAR access is taken as the EOI */
        g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_STATUS), ==, 0);
        g_assert_cmpint(wait_for_intx(t.qts, false), ==, 0);
    }
    test_dev_stop(&t);
}

static uint64_t sum_of(QTestState *qts, uint64_t addr, size_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);
    uint64_t sum = 0;
    size_t i;

    qtest_memread(qts, addr, buf, len);
    for (i = 0; i < len; i++) {
        sum += buf[i];
    }
    return sum;
}

/*
 * The server DMA-reads guest memory it checksums, and DMA-writes a fill
 * byte.  With RAM that has an fd, it maps the RAM; without, the bytes
 * travel as DMA_READ/DMA_WRITE messages that QEMU serves.
 */
static void check_dma(bool shared_memory)
{
    const uint64_t addr = 0x100000, len = 0x3000;
    g_autofree uint8_t *pattern = g_malloc(len);
    g_autofree uint8_t *back = g_malloc(len);
    TestDev t;
    size_t i;

    if (!test_dev_start(&t, shared_memory ? "q35,memory-backend=mem0" : "q35",
                        shared_memory ? " -object memory-backend-memfd,"
                        "id=mem0,size=128M,share=on" : "")) {
        return;
    }
    for (i = 0; i < len; i++) {
        pattern[i] = i * 7 + (i >> 8);
    }
    qtest_memwrite(t.qts, addr, pattern, len);

    qpci_io_writeq(t.dev, t.bar0, TS_DMA_ADDR, addr);
    qpci_io_writeq(t.dev, t.bar0, TS_DMA_LEN, len);
    g_assert_cmpuint(test_dev_cmd(&t, TS_CMD_DMA_READ), ==, 0);
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_DMA_SUM), ==,
                    sum_of(t.qts, addr, len));
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_MAPPED), ==,
                     shared_memory);

    qpci_io_writeb(t.dev, t.bar0, TS_DMA_FILL, 0x5a);
    qpci_io_writeq(t.dev, t.bar0, TS_DMA_LEN, len - 1);
    g_assert_cmpuint(test_dev_cmd(&t, TS_CMD_DMA_WRITE), ==, 0);
    qtest_memread(t.qts, addr, back, len);
    for (i = 0; i < len - 1; i++) {
        g_assert_cmphex(back[i], ==, 0x5a);
    }
    /* Not a byte more */
    g_assert_cmphex(back[len - 1], ==, pattern[len - 1]);
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_MAPPED), ==,
                     shared_memory);
    test_dev_stop(&t);
}

static void test_dma_messages(void)
{
    check_dma(false);
}

static void test_dma_shared(void)
{
    check_dma(true);
}

#define MSIX_RAM        0x200000    /* where the vectors' messages land */

static void msix_program(TestDev *t, int vector, bool masked)
{
    uint64_t entry = t->dev->msix_table_off + vector * PCI_MSIX_ENTRY_SIZE;

    qpci_io_writel(t->dev, t->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_LOWER_ADDR, MSIX_RAM + vector * 4);
    qpci_io_writel(t->dev, t->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_UPPER_ADDR, 0);
    qpci_io_writel(t->dev, t->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_DATA, 0xcafe0000 + vector);
    qpci_io_writel(t->dev, t->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_VECTOR_CTRL,
                   masked ? PCI_MSIX_ENTRY_CTRL_MASKBIT : 0);
}

/* Have the server signal @vector's eventfd; its errno */
static uint32_t vector_fire(TestDev *t, int vector)
{
    qpci_io_writel(t->dev, t->bar0, TS_VECTOR, vector);
    return test_dev_cmd(t, TS_CMD_VECTOR);
}

static void msix_fire(TestDev *t, int vector)
{
    g_assert_cmpuint(vector_fire(t, vector), ==, 0);
}

/* Wait for an interrupt message: @value written to guest RAM at @addr */
static bool message_arrived(TestDev *t, uint64_t addr, uint32_t value)
{
    int i;

    for (i = 0; i < WAIT_MS / 10; i++) {
        if (qtest_readl(t->qts, addr) == value) {
            return true;
        }
        g_usleep(10 * 1000);
    }
    return false;
}

static bool msix_arrived(TestDev *t, int vector)
{
    return message_arrived(t, MSIX_RAM + vector * 4, 0xcafe0000 + vector);
}

/*
 * MSI-X through eventfds passed with SET_IRQS (without KVM, QEMU delivers
 * them: a message lands in guest RAM).  Any mix of vectors works; masking
 * holds a message back as pending, unmasking delivers it.
 */
/*
 * A server that dies and comes back (reconnect-ms): the test server keeps
 * its registers in a file, and gets the rest from QEMU: config space
 * (MSI-X enabled), DMA mappings and the vectors' eventfds.  The guest sees
 * its registers, its interrupts and DMA work as before, and QEMU holds
 * the same fds as before the crash.
 */
static void test_reconnect(void)
{
    const char *path = g_getenv("VFIO_USER_TEST_SERVER") ?:
                       "tests/qtest/vfio-user-test-server";
    g_autofree char *state_dir = g_dir_make_tmp("vfio-user-state-XXXXXX",
                                                NULL);
    g_autofree char *state = g_build_filename(state_dir, "regs", NULL);
    const char *args[] = { "--state", state, NULL };
    /*
     * This libvfio-user DMAs by message to the start of the mapping that
     * holds the address (it drops the offset in it): use a start.
     */
    const uint64_t dma_addr = 0x100000;
    QDict *ev;
    TestDev t;
    pid_t pid;
    int fds, i;

    t.server = server_start_args(path, "vfio-user test server", false, args);
    if (!guest_start(&t, "pc", ",id=vu0,reconnect-ms=50,x-no-mmap=on")) {
        return;
    }
    t.bar0 = qpci_iomap(t.dev, 0, NULL);
    qpci_io_writeq(t.dev, t.bar0, TS_SCRATCH0, 0x0123456789abcdefULL);
    qpci_msix_enable(t.dev);
    msix_program(&t, 3, false);
    qtest_memset(t.qts, MSIX_RAM, 0, TS_NR_MSIX * 4);
    msix_fire(&t, 3);
    g_assert_true(msix_arrived(&t, 3));
    pid = qtest_pid(t.qts);
    fds = count_fds(pid);

    /* Twice over: a replayed device must survive the next crash too */
    for (i = 0; i < 2; i++) {
        server_restart(t.server, path, args);
        ev = qtest_qmp_eventwait_ref(t.qts, "VFIO_USER_DISCONNECTED");
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"),
                                      "device-id"), ==, "vu0");
        qobject_unref(ev);
        ev = qtest_qmp_eventwait_ref(t.qts, "VFIO_USER_RECONNECTED");
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"),
                                      "socket"), ==, t.server->sock);
        qobject_unref(ev);

        g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, 0), ==, TS_ID);
        g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_SCRATCH0), ==,
                        0x0123456789abcdefULL);
        qtest_memset(t.qts, MSIX_RAM, 0, TS_NR_MSIX * 4);
        msix_fire(&t, 3);
        g_assert_true(msix_arrived(&t, 3));

        qtest_memset(t.qts, dma_addr, 0, 64);
        qpci_io_writeq(t.dev, t.bar0, TS_DMA_ADDR, dma_addr);
        qpci_io_writeq(t.dev, t.bar0, TS_DMA_LEN, 64);
        qpci_io_writeb(t.dev, t.bar0, TS_DMA_FILL, 0x5a + i);
        g_assert_cmpuint(test_dev_cmd(&t, TS_CMD_DMA_WRITE), ==, 0);
        g_assert_cmphex(qtest_readb(t.qts, dma_addr + 63), ==, 0x5a + i);
        g_assert_cmpint(count_fds(pid), ==, fds);
    }
    test_dev_stop(&t);
    unlink(state);
    rmdir(state_dir);
}

static void test_msix(void)
{
    TestDev t;
    int v;

    if (!test_dev_start(&t, "pc", "")) {
        return;
    }
    qpci_msix_enable(t.dev);
    g_assert_cmpuint(qpci_msix_table_size(t.dev), ==, TS_NR_MSIX);
    qtest_memset(t.qts, MSIX_RAM, 0, TS_NR_MSIX * 4);

    /* A mix: every third vector only, then all of them */
    for (v = 0; v < TS_NR_MSIX; v += 3) {
        msix_program(&t, v, false);
    }
    for (v = 0; v < TS_NR_MSIX; v += 3) {
        msix_fire(&t, v);
        g_assert_true(msix_arrived(&t, v));
    }
    for (v = 0; v < TS_NR_MSIX; v++) {
        msix_program(&t, v, false);
    }
    qtest_memset(t.qts, MSIX_RAM, 0, TS_NR_MSIX * 4);
    for (v = 0; v < TS_NR_MSIX; v++) {
        msix_fire(&t, v);
        g_assert_true(msix_arrived(&t, v));
    }

    /* Masked: pending, not delivered; unmasked: delivered */
    msix_program(&t, 5, true);
    qtest_writel(t.qts, MSIX_RAM + 5 * 4, 0);
    msix_fire(&t, 5);
    g_usleep(100 * 1000);
    qtest_readb(t.qts, 0);
    g_assert_cmphex(qtest_readl(t.qts, MSIX_RAM + 5 * 4), ==, 0);
    g_assert_true(qpci_msix_pending(t.dev, 5));
    msix_program(&t, 5, false);
    g_assert_true(msix_arrived(&t, 5));
    g_assert_false(qpci_msix_pending(t.dev, 5));

    qpci_msix_disable(t.dev);
    test_dev_stop(&t);
}

#define MSI_RAM         0x300000    /* where MSI messages land */
#define MSI_DATA        0xca00      /* its low 5 bits carry the vector */

static bool msi_arrived(TestDev *t, int vector)
{
    return message_arrived(t, MSI_RAM, MSI_DATA | vector);
}

/* Enable MSI with 1 << @log2 vectors, or disable it (@log2 < 0) */
static void msi_set(TestDev *t, uint8_t cap, int log2)
{
    uint16_t ctrl = qpci_config_readw(t->dev, cap + PCI_MSI_FLAGS);

    ctrl &= ~(PCI_MSI_FLAGS_QSIZE | PCI_MSI_FLAGS_ENABLE);
    if (log2 >= 0) {
        ctrl |= (log2 << 4) | PCI_MSI_FLAGS_ENABLE;
    }
    qpci_config_writew(t->dev, cap + PCI_MSI_FLAGS, ctrl);
}

/*
 * MSI, 32 vectors: more eventfds than the server takes in one message (8,
 * for libvfio-user), so SET_IRQS goes in chunks, and a vector of the last
 * chunk arrives only if every chunk did.  Per-vector masking holds a
 * message back as pending; disabling MSI takes the eventfds back.
 */
static void test_msi(void)
{
    static const int vectors[] = { 0, 7, 8, 15, 16, 23, 24, 31 };
    TestDev t;
    uint16_t ctrl;
    uint8_t cap;
    int i;

    if (!test_dev_start(&t, "pc", "")) {
        return;
    }
    cap = qpci_find_capability(t.dev, PCI_CAP_ID_MSI, 0);
    g_assert_cmpuint(cap, !=, 0);
    ctrl = qpci_config_readw(t.dev, cap + PCI_MSI_FLAGS);
    g_assert_cmphex(ctrl & PCI_MSI_FLAGS_QMASK, ==, 5 << 1);
    g_assert_true(ctrl & PCI_MSI_FLAGS_64BIT);
    g_assert_true(ctrl & PCI_MSI_FLAGS_MASKBIT);

    qpci_config_writel(t.dev, cap + PCI_MSI_ADDRESS_LO, MSI_RAM);
    qpci_config_writel(t.dev, cap + PCI_MSI_ADDRESS_HI, 0);
    qpci_config_writew(t.dev, cap + PCI_MSI_DATA_64, MSI_DATA);
    qpci_config_writel(t.dev, cap + PCI_MSI_MASK_64, 0);
    msi_set(&t, cap, 5);
    for (i = 0; i < ARRAY_SIZE(vectors); i++) {
        qtest_writel(t.qts, MSI_RAM, 0);
        g_assert_cmpuint(vector_fire(&t, vectors[i]), ==, 0);
        g_assert_true(msi_arrived(&t, vectors[i]));
    }

    /* Masked: pending, not delivered; unmasked: delivered */
    qpci_config_writel(t.dev, cap + PCI_MSI_MASK_64, 1u << 9);
    qtest_writel(t.qts, MSI_RAM, 0);
    g_assert_cmpuint(vector_fire(&t, 9), ==, 0);
    g_usleep(100 * 1000);
    qtest_readb(t.qts, 0);
    g_assert_cmphex(qtest_readl(t.qts, MSI_RAM), ==, 0);
    g_assert_cmphex(qpci_config_readl(t.dev, cap + PCI_MSI_PENDING_64), ==,
                    1u << 9);
    qpci_config_writel(t.dev, cap + PCI_MSI_MASK_64, 0);
    g_assert_true(msi_arrived(&t, 9));
    g_assert_cmphex(qpci_config_readl(t.dev, cap + PCI_MSI_PENDING_64), ==,
                    0);

    /*
     * Disabled: the server has no eventfd left to signal (but vector 0's,
     * which QEMU gives INTx again; libvfio-user shares one table for both).
     */
    msi_set(&t, cap, -1);
    g_assert_cmpuint(vector_fire(&t, 9), ==, ENOENT);

    /* Fewer vectors than the device offers: only those get eventfds */
    msi_set(&t, cap, 2);
    qtest_writel(t.qts, MSI_RAM, 0);
    g_assert_cmpuint(vector_fire(&t, 3), ==, 0);
    g_assert_true(msi_arrived(&t, 3));
    g_assert_cmpuint(vector_fire(&t, 4), ==, ENOENT);

    msi_set(&t, cap, -1);
    test_dev_stop(&t);
}

static uint32_t raw_dma(TestDev *t, uint32_t cmd, uint64_t addr,
                        uint64_t len)
{
    qpci_io_writeq(t->dev, t->bar0, TS_DMA_ADDR, addr);
    qpci_io_writeq(t->dev, t->bar0, TS_DMA_LEN, len);
    return test_dev_cmd(t, cmd);
}

/*
 * DMA requests QEMU must refuse, with an error reply and nothing else:
 * outside guest RAM, past its end, larger than announced, writes to
 * read-only memory.  (Guest RAM has no fd here: every DMA is a message.)
 */
static void test_hostile_dma(void)
{
    const uint64_t ram_end = 128 * 1024 * 1024;
    QDict *resp;
    TestDev t;

    if (!test_dev_start(&t, "pc", "")) {
        return;
    }
    qtest_memset(t.qts, 0x100000, 0x11, 16);
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_READ, 0x100000, 16), ==, 0);
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_DMA_SUM), ==, 16 * 0x11);

    /* The PCI hole is not guest RAM */
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_READ, 0xe0000000, 16), ==,
                     EFAULT);
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_WRITE, 0xe0000000, 16), ==,
                     EFAULT);
    /* Straddling the end of RAM */
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_READ, ram_end - 8, 16), ==,
                     EFAULT);
    /* Wrapping around */
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_READ, UINT64_MAX - 7, 16),
                     ==, EINVAL);
    /* More than the 1 MiB QEMU announced */
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_READ, 0, 2 * 1024 * 1024),
                     ==, EINVAL);
    /* The BIOS is mapped read-only */
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_WRITE, 0xfffc0000, 16), ==,
                     EFAULT);

    /* None of this hurt the device or the guest */
    g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, 0), ==, TS_ID);
    g_assert_cmpuint(raw_dma(&t, TS_CMD_RAW_DMA_WRITE, 0x100000, 16), ==, 0);
    g_assert_cmphex(qtest_readq(t.qts, 0x100000), ==, 0);

    /* More fds than QEMU accepts in a message: QEMU drops the server */
    raw_dma(&t, TS_CMD_RAW_FDS, 0x100000, 4);
    g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, 0), ==, 0xffffffff);
    resp = qtest_qmp(t.qts, "{'execute': 'query-status'}");
    g_assert_true(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    test_dev_stop(&t);
}

/*
 * Hot-added memory is announced with DMA_MAP (with its fd, so the server
 * maps it); hot-removed memory is withdrawn with DMA_UNMAP.
 */
static void test_memory_hotplug(void)
{
    const uint64_t dimm_size = 64 * 1024 * 1024;
    uint32_t regions;
    uint64_t addr;
    QDict *resp;
    TestDev t;

    if (!test_dev_start(&t, "pc -m 128M,slots=2,maxmem=1G", "")) {
        return;
    }
    regions = qpci_io_readl(t.dev, t.bar0, TS_REGIONS);
    g_assert_cmpuint(regions, >, 0);

    qtest_qmp_assert_success(t.qts, "{'execute': 'object-add', 'arguments': "
                             "{'qom-type': 'memory-backend-memfd', "
                             "'id': 'm1', 'size': %" PRId64 ", "
                             "'share': true}}", (int64_t)dimm_size);
    qtest_qmp_device_add(t.qts, "pc-dimm", "dimm1", "{'memdev': 'm1'}");
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_REGIONS), ==,
                     regions + 1);

    resp = qtest_qmp(t.qts, "{'execute': 'qom-get', 'arguments': "
                     "{'path': 'dimm1', 'property': 'addr'}}");
    addr = qdict_get_int(resp, "return");
    qobject_unref(resp);
    qpci_io_writeb(t.dev, t.bar0, TS_DMA_FILL, 0x3c);
    qpci_io_writeq(t.dev, t.bar0, TS_DMA_ADDR, addr + 0x1000);
    qpci_io_writeq(t.dev, t.bar0, TS_DMA_LEN, 0x1000);
    g_assert_cmpuint(test_dev_cmd(&t, TS_CMD_DMA_WRITE), ==, 0);
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_MAPPED), ==, 1);
    g_assert_cmphex(qtest_readq(t.qts, addr + 0x1ff8), ==,
                    0x3c3c3c3c3c3c3c3cULL);

    /* Unplug, with the ACPI eject the guest's OSPM would do */
    qtest_qmp_device_del_send(t.qts, "dimm1");
    qtest_outl(t.qts, 0xa00, 0);            /* DIMM slot selector */
    qtest_outb(t.qts, 0xa14, 8);            /* eject */
    qtest_qmp_eventwait(t.qts, "DEVICE_DELETED");
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_REGIONS), ==, regions);
    /* The server can no longer reach it */
    g_assert_cmpuint(test_dev_cmd(&t, TS_CMD_DMA_WRITE), !=, 0);
    test_dev_stop(&t);
}

/* A system reset resets the device: DEVICE_RESET */
static void test_reset(void)
{
    uint32_t before;
    TestDev t;

    if (!test_dev_start(&t, "pc", "")) {
        return;
    }
    before = qpci_io_readl(t.dev, t.bar0, TS_RESETS);
    qtest_qmp_assert_success(t.qts, "{'execute': 'system_reset'}");
    qtest_qmp_eventwait(t.qts, "RESET");
    /* The reset cleared the BARs: map them again */
    qpci_device_enable(t.dev);
    t.bar0 = qpci_iomap(t.dev, 0, NULL);
    g_assert_cmpuint(qpci_io_readl(t.dev, t.bar0, TS_RESETS), ==,
                     before + 1);
    test_dev_stop(&t);
}

/*
 * The server dies under a running guest: QEMU says so once, keeps
 * running, the device reads as all ones (like a surprise-removed PCI
 * device) and can still be unplugged with every fd given back.
 */
static void test_server_death(void)
{
    TestServer *s = test_server_start();
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar0;
    QDict *resp;
    int before;

    if (!s) {
        return;
    }
    qts = qtest_init("-M pc -nodefaults");
    bus = qpci_new_pc(qts, NULL);
    before = count_fds(qtest_pid(qts));
    qtest_qmp_device_add(qts, "vfio-user-pci", "vu0",
                         "{'addr': '5', 'socket': %s}", s->sock);
    dev = find_device(bus);
    bar0 = qpci_iomap(dev, 0, NULL);
    g_assert_cmphex(qpci_io_readl(dev, bar0, 0), ==, TS_ID);

    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    g_assert_cmphex(qpci_io_readl(dev, bar0, 0), ==, 0xffffffff);
    g_assert_cmphex(qpci_io_readl(dev, bar0, TS_SCRATCH0), ==, 0xffffffff);

    resp = qtest_qmp(qts, "{'execute': 'query-status'}");
    g_assert_true(qdict_haskey(resp, "return"));
    qobject_unref(resp);

    qpci_unplug_acpi_device_test(qts, "vu0", TEST_SLOT);
    g_assert_cmpint(count_fds(qtest_pid(qts)), ==, before);
    g_free(dev);
    qpci_free_pc(bus);
    qtest_quit(qts);
    server_stop(s);
}

/* Entries of /proc/PID/@what: "fd" for open fds, "task" for threads */
static int count_proc_entries(pid_t pid, const char *what)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/%s", pid, what);
    GDir *dir = g_dir_open(path, 0, NULL);
    int n = 0;

    g_assert_nonnull(dir);
    while (g_dir_read_name(dir)) {
        n++;
    }
    g_dir_close(dir);
    return n;
}

static int count_fds(pid_t pid)
{
    return count_proc_entries(pid, "fd");
}

static void plug_cycle(QTestState *qts, QPCIBus *bus, TestServer *s)
{
    QPCIDevice *dev;

    qtest_qmp_device_add(qts, "vfio-user-pci", "vu0",
                         "{'addr': '5', 'socket': {'type': 'unix', "
                         "'path': %s}}", s->sock);
    dev = find_device(bus);
    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==,
                    GPIO_VENDOR_ID);
    g_free(dev);
    qpci_unplug_acpi_device_test(qts, "vu0", TEST_SLOT);
}

/* Unplug gives back every fd the device took */
static void test_hotplug_no_fd_leak(void)
{
    TestServer *s = sample_start("gpio-pci-idio-16", false);
    QTestState *qts;
    QPCIBus *bus;
    int before, after, i;

    if (!s) {
        return;
    }
    qts = qtest_init("-M pc -nodefaults");
    bus = qpci_new_pc(qts, NULL);
    /* A first cycle sets up what QEMU keeps for any later hotplug */
    plug_cycle(qts, bus, s);
    before = count_fds(qtest_pid(qts));
    for (i = 0; i < 20; i++) {
        plug_cycle(qts, bus, s);
    }
    after = count_fds(qtest_pid(qts));
    g_assert_cmpint(after, ==, before);
    qpci_free_pc(bus);
    qtest_quit(qts);
    server_stop(s);
}

/*
 * A server of our own for what the samples will not do: misbehave during
 * version negotiation.
 */
typedef enum {
    BAD_CLOSE,          /* read the VERSION request, close without reply */
    BAD_MAJOR,          /* answer with another major version */
    BAD_JSON,           /* answer with capabilities that are not JSON */
    BAD_CAPS_TYPE,      /* max_msg_fds is a string */
    BAD_SILENT,         /* never answer */
} BadMode;

typedef struct BadServer {
    BadMode mode;
    char *dir;
    char *sock;
    int listen_fd;
    GThread *thread;
} BadServer;

static bool read_full(int fd, void *buf, size_t len)
{
    while (len) {
        ssize_t n = read(fd, buf, len);

        if (n <= 0) {
            return false;
        }
        buf += n;
        len -= n;
    }
    return true;
}

static void bad_server_reply(int fd, uint16_t id, uint16_t major,
                             uint16_t minor, const char *caps)
{
    size_t len = 16 + 4 + strlen(caps) + 1;
    g_autofree uint8_t *msg = g_malloc0(len);

    stw_le_p(msg, id);
    stw_le_p(msg + 2, 1);           /* VERSION */
    stl_le_p(msg + 4, len);
    stl_le_p(msg + 8, 1);           /* reply */
    stw_le_p(msg + 16, major);
    stw_le_p(msg + 18, minor);
    memcpy(msg + 20, caps, strlen(caps) + 1);
    g_assert_cmpint(write(fd, msg, len), ==, len);
}

static gpointer bad_server_run(gpointer opaque)
{
    BadServer *b = opaque;
    uint8_t hdr[16], rest[4096];
    int fd = accept(b->listen_fd, NULL, NULL);
    uint32_t size;
    char c;

    g_assert_cmpint(fd, >=, 0);
    if (!read_full(fd, hdr, sizeof(hdr))) {
        goto out;
    }
    size = ldl_le_p(hdr + 4);
    g_assert_cmpuint(lduw_le_p(hdr + 2), ==, 1);
    g_assert_cmpuint(size, >, 16);
    g_assert_cmpuint(size - 16, <=, sizeof(rest));
    g_assert_true(read_full(fd, rest, size - 16));

    switch (b->mode) {
    case BAD_CLOSE:
        goto out;
    case BAD_MAJOR:
        bad_server_reply(fd, lduw_le_p(hdr), 1, 0, "{}");
        break;
    case BAD_JSON:
        bad_server_reply(fd, lduw_le_p(hdr), 0, 1, "{\"capabilities\": [");
        break;
    case BAD_CAPS_TYPE:
        bad_server_reply(fd, lduw_le_p(hdr), 0, 1,
                         "{\"capabilities\": {\"max_msg_fds\": \"8\"}}");
        break;
    case BAD_SILENT:
        break;
    }
    /* Until the client hangs up */
    while (read(fd, &c, 1) > 0) {
        continue;
    }
out:
    close(fd);
    return NULL;
}

/* A UNIX stream socket bound to @path, not listening yet */
static int bind_unix(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    g_assert_cmpint(fd, >=, 0);
    g_strlcpy(addr.sun_path, path, sizeof(addr.sun_path));
    g_assert_cmpint(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), ==, 0);
    return fd;
}

/*
 * A socket listening on @path whose queue is full, as a stopped server's
 * may be: a backlog of 0 holds one connection, ours (in *@filler)
 */
static int listen_full(const char *path, int *filler)
{
    int fd = bind_unix(path);

    g_assert_cmpint(listen(fd, 0), ==, 0);
    *filler = connect_unix(path);
    return fd;
}

static BadServer *bad_server_start(BadMode mode)
{
    BadServer *b = g_new0(BadServer, 1);

    b->mode = mode;
    b->dir = g_dir_make_tmp("vfio-user-test-XXXXXX", NULL);
    g_assert_nonnull(b->dir);
    b->sock = g_build_filename(b->dir, "sock", NULL);
    b->listen_fd = bind_unix(b->sock);
    g_assert_cmpint(listen(b->listen_fd, 1), ==, 0);
    b->thread = g_thread_new("bad-server", bad_server_run, b);
    return b;
}

static void bad_server_stop(BadServer *b)
{
    g_thread_join(b->thread);
    close(b->listen_fd);
    unlink(b->sock);
    rmdir(b->dir);
    g_free(b->sock);
    g_free(b->dir);
    g_free(b);
}

/*
 * QEMU started with @devargs must exit with status 1, saying @expect (and
 * @expect2) on stderr.
 */
static void expect_cmdline_failure(const char *devargs, const char *expect,
                                   const char *expect2)
{
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *out = NULL;
    g_autoptr(GError) err = NULL;
    GPid pid;
    int err_fd, status = -1, i;
    char *argv[] = {
        (char *)qemu, (char *)"-M", (char *)"pc", (char *)"-nodefaults",
        (char *)"-display", (char *)"none", (char *)"-accel", (char *)"qtest",
        (char *)"-device", (char *)devargs, NULL
    };
    GString *errs = g_string_new(NULL);
    char buf[256];
    ssize_t n;

    g_assert_nonnull(qemu);
    g_spawn_async_with_pipes(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD |
                             G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, &pid,
                             NULL, NULL, &err_fd, &err);
    g_assert_no_error(err);
    for (i = 0; i < WAIT_MS / 10; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            break;
        }
        g_usleep(10 * 1000);
    }
    if (i == WAIT_MS / 10) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        g_assert_not_reached();
    }
    while ((n = read(err_fd, buf, sizeof(buf))) > 0) {
        g_string_append_len(errs, buf, n);
    }
    close(err_fd);
    g_spawn_close_pid(pid);
    out = g_string_free(errs, false);
    if (g_test_verbose()) {
        g_test_message("stderr: %s", out);
    }
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 1);
    g_assert_nonnull(strstr(out, expect));
    if (expect2) {
        g_assert_nonnull(strstr(out, expect2));
    }
}

/* Hot-plugging with @args must fail with @expect; QEMU stays up */
static void expect_hotplug_failure(const char *args, const char *expect,
                                   const char *expect2)
{
    QTestState *qts = qtest_init("-M pc -nodefaults");
    QDict *resp, *error, *arguments;
    const char *desc;

    arguments = qobject_to(QDict, qobject_from_json(args, &error_abort));
    g_assert_nonnull(arguments);
    resp = qtest_qmp(qts, "{'execute': 'device_add', 'arguments': %p}",
                     arguments);
    g_assert_nonnull(resp);
    error = qdict_get_qdict(resp, "error");
    g_assert_nonnull(error);
    desc = qdict_get_str(error, "desc");
    if (g_test_verbose()) {
        g_test_message("error: %s", desc);
    }
    g_assert_nonnull(strstr(desc, expect));
    if (expect2) {
        g_assert_nonnull(strstr(desc, expect2));
    }
    qobject_unref(resp);

    resp = qtest_qmp(qts, "{'execute': 'query-status'}");
    g_assert_true(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    qtest_quit(qts);
}

static void test_error_no_socket(void)
{
    expect_cmdline_failure("vfio-user-pci", "'socket' is required", NULL);
    expect_hotplug_failure("{'driver': 'vfio-user-pci'}",
                           "'socket' is required", NULL);
}

static void test_error_missing_path(void)
{
    g_autofree char *dir = g_dir_make_tmp("vfio-user-test-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "nothing-here", NULL);
    g_autofree char *dev = g_strdup_printf("vfio-user-pci,socket=%s", path);
    g_autofree char *args = g_strdup_printf(
        "{'driver': 'vfio-user-pci', 'socket': '%s'}", path);

    expect_cmdline_failure(dev, path, "No such file or directory");
    expect_hotplug_failure(args, path, "No such file or directory");
    rmdir(dir);
}

/* Accept a connection on @listen_fd within WAIT_MS */
static int accept_within(int listen_fd)
{
    struct pollfd pfd = { .fd = listen_fd, .events = POLLIN };

    g_assert_cmpint(poll(&pfd, 1, WAIT_MS), ==, 1);
    return accept(listen_fd, NULL, NULL);
}

/*
 * What a stopped server's socket does: it takes connections (into its
 * backlog) and never answers, and once its backlog is full, connect()
 * would block.  Reconnecting must wait for neither, or every attempt
 * would stop the monitor and the vCPUs for a whole request timeout (and a
 * full backlog, for good).  The device stays disconnected until the reply
 * to VERSION (its reads give all ones, and nothing is sent but VERSION);
 * once the timeout passes, QEMU gives up on that connection and tries
 * again; a server that answers gets the device back.
 */
static void test_reconnect_unanswered(void)
{
    const char *path = g_getenv("VFIO_USER_TEST_SERVER") ?:
                       "tests/qtest/vfio-user-test-server";
    g_autofree char *state_dir = g_dir_make_tmp("vfio-user-state-XXXXXX",
                                                NULL);
    g_autofree char *state = g_build_filename(state_dir, "regs", NULL);
    const char *args[] = { "--state", state, NULL };
    g_autofree char *full = g_build_filename(state_dir, "full", NULL);
    struct pollfd pfd = { .events = POLLIN };
    uint8_t hdr[16], rest[4096];
    uint32_t size;
    QDict *rsp;
    TestDev t;
    int lfd, cfd, filler, fds;
    pid_t pid;
    char c;

    t.server = server_start_args(path, "vfio-user test server", false, args);
    if (!guest_start(&t, "pc", ",id=vu0,reconnect-ms=50,"
                     "x-request-timeout-ms=3000,x-no-mmap=on")) {
        return;
    }
    t.bar0 = qpci_iomap(t.dev, 0, NULL);
    qpci_io_writeq(t.dev, t.bar0, TS_SCRATCH0, 0x0123456789abcdefULL);
    /* The write is posted: in the server's file once this read is back */
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_SCRATCH0), ==,
                    0x0123456789abcdefULL);
    pid = qtest_pid(t.qts);
    fds = count_fds(pid);

    server_kill(t.server);
    qobject_unref(qtest_qmp_eventwait_ref(t.qts, "VFIO_USER_DISCONNECTED"));

    /* Full before it takes the server's place, so that QEMU finds it so */
    lfd = listen_full(full, &filler);
    g_assert_cmpint(rename(full, t.server->sock), ==, 0);
    /* Several attempts (every 50 ms) meet the full backlog meanwhile */
    g_usleep(300 * 1000);
    rsp = qtest_qmp(t.qts, "{'execute': 'query-status'}");
    g_assert_true(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    cfd = accept_within(lfd);
    g_assert_cmpint(cfd, >=, 0);
    close(cfd);
    close(filler);

    cfd = accept_within(lfd);
    g_assert_cmpint(cfd, >=, 0);
    /* VERSION (command 1), whole */
    g_assert_true(read_full(cfd, hdr, sizeof(hdr)));
    g_assert_cmpuint(lduw_le_p(hdr + 2), ==, 1);
    size = ldl_le_p(hdr + 4);
    g_assert_cmpuint(size, >, sizeof(hdr));
    g_assert_cmpuint(size - sizeof(hdr), <=, sizeof(rest));
    g_assert_true(read_full(cfd, rest, size - sizeof(hdr)));

    /*
     * QEMU runs on while VERSION waits: the monitor answers, the guest's
     * reads give all ones, and the connection has neither seen more nor
     * been given up on (what a main loop that waited would have done by
     * the time it answered).
     */
    rsp = qtest_qmp(t.qts, "{'execute': 'query-status'}");
    g_assert_true(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, 0), ==, 0xffffffff);
    pfd.fd = cfd;
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);

    /* The timeout: QEMU closes that connection, and connects again */
    g_assert_cmpint(poll(&pfd, 1, WAIT_MS), ==, 1);
    while (read(cfd, &c, 1) > 0) {
        continue;
    }
    g_assert_cmpint(read(cfd, &c, 1), ==, 0);
    close(cfd);
    cfd = accept_within(lfd);
    g_assert_cmpint(cfd, >=, 0);
    close(cfd);
    close(lfd);
    unlink(t.server->sock);

    /* A server that answers: the device is back, as it was */
    server_respawn(t.server, path, args);
    qobject_unref(qtest_qmp_eventwait_ref(t.qts, "VFIO_USER_RECONNECTED"));
    g_assert_cmphex(qpci_io_readl(t.dev, t.bar0, 0), ==, TS_ID);
    g_assert_cmphex(qpci_io_readq(t.dev, t.bar0, TS_SCRATCH0), ==,
                    0x0123456789abcdefULL);
    g_assert_cmpint(count_fds(pid), ==, fds);
    test_dev_stop(&t);
    unlink(state);
    rmdir(state_dir);
}

/* Creating a device on @path fails with @expect, by -device and device_add */
static void expect_connect_failure(const char *path, const char *expect)
{
    g_autofree char *dev = g_strdup_printf("vfio-user-pci,socket=%s", path);
    g_autofree char *args = g_strdup_printf(
        "{'driver': 'vfio-user-pci', 'socket': '%s'}", path);

    expect_cmdline_failure(dev, path, expect);
    expect_hotplug_failure(args, path, expect);
}

/* A socket file nobody listens on */
static void test_error_not_listening(void)
{
    g_autofree char *dir = g_dir_make_tmp("vfio-user-test-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    int fd = bind_unix(path);

    expect_connect_failure(path, "Connection refused");
    close(fd);
    unlink(path);
    rmdir(dir);
}

/*
 * A server that does not accept, its listen queue full (a stopped one):
 * creating the device fails at once rather than blocking in connect()
 */
static void test_error_backlog_full(void)
{
    g_autofree char *dir = g_dir_make_tmp("vfio-user-test-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    int filler;
    int fd = listen_full(path, &filler);

    expect_connect_failure(path, "takes no more connections");
    close(filler);
    close(fd);
    unlink(path);
    rmdir(dir);
}

static void check_bad_server(BadMode mode, const char *extra,
                             const char *expect)
{
    BadServer *b = bad_server_start(mode);
    g_autofree char *dev = g_strdup_printf("vfio-user-pci,socket=%s%s",
                                           b->sock, extra);

    expect_cmdline_failure(dev, b->sock, expect);
    bad_server_stop(b);

    b = bad_server_start(mode);
    {
        g_autofree char *args = g_strdup_printf(
            "{'driver': 'vfio-user-pci', 'socket': '%s'%s}", b->sock,
            *extra ? ", 'x-request-timeout-ms': 300" : "");

        expect_hotplug_failure(args, b->sock, expect);
    }
    bad_server_stop(b);
}

static void test_error_closed_in_negotiation(void)
{
    check_bad_server(BAD_CLOSE, "", "the server closed the connection");
}

static void test_error_major_version(void)
{
    check_bad_server(BAD_MAJOR, "", "server speaks protocol version 1.0");
}

static void test_error_malformed_json(void)
{
    check_bad_server(BAD_JSON, "", "malformed capabilities");
}

static void test_error_caps_type(void)
{
    check_bad_server(BAD_CAPS_TYPE, "", "'max_msg_fds' must be an integer");
}

static void test_error_timeout(void)
{
    check_bad_server(BAD_SILENT, ",x-request-timeout-ms=300",
                     "setting up the device took longer than 300 ms");
}

/*
 * Our tests/qtest/vfio-user-raw-server: a server without libvfio-user that
 * offers every kind of I/O fd (GET_REGION_IO_FDS), in both entry layouts,
 * bad entries on request, and counts what arrives on each fd in a stats
 * window of BAR0.  It drains its I/O fds before it handles each message,
 * so the stats read through the socket include every earlier access.
 */
#define RS_VENDOR_ID        0x1b36
#define RS_DEVICE_ID        0x00f1
#define RS_STATS(k)         (0x800 + (k) * 0x20)
#define RS_COUNT            0x00
#define RS_LAST_VALUE       0x08
#define RS_LAST_SIZE        0x10
#define RS_LAST_OFFSET      0x14
#define RS_WRITES           0xc00
#define RS_IOFDS_REQUESTS   0xc28

typedef struct RawDev {
    TestServer *server;
    char *log;          /* the server's event log */
    char *qemu_err;     /* QEMU's stderr */
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar0;
    QPCIBar bar1;
} RawDev;

static const char *raw_server_path(void)
{
    const char *path = g_getenv("VFIO_USER_RAW_SERVER");

    return path ? path : "tests/qtest/vfio-user-raw-server";
}

static TestServer *raw_server_start(const char *log, const char *const *args)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();

    g_ptr_array_add(argv, (char *)"--log");
    g_ptr_array_add(argv, (char *)log);
    while (args && *args) {
        g_ptr_array_add(argv, (char *)*args++);
    }
    g_ptr_array_add(argv, NULL);
    return server_start_args(raw_server_path(), "vfio-user raw test server",
                             false, (const char *const *)argv->pdata);
}

/*
 * The raw server with @args, and a QEMU with more options @opts whose
 * device has @extra; raw_dev_attach() finds the device.
 */
static bool raw_dev_launch(RawDev *r, const char *extra, const char *opts,
                           const char *const *args)
{
    g_autofree char *dir = g_dir_make_tmp("vfio-user-raw-XXXXXX", NULL);

    memset(r, 0, sizeof(*r));
    g_assert_nonnull(dir);
    r->log = g_build_filename(dir, "server.log", NULL);
    r->qemu_err = g_build_filename(dir, "qemu.err", NULL);
    r->server = raw_server_start(r->log, args);
    if (!r->server) {
        return false;
    }
    /* libqtest runs QEMU through sh: its stderr can go to a file */
    r->qts = qtest_initf("-M pc -nodefaults -device vfio-user-pci,socket=%s,"
                         "addr=%d%s %s 2>%s", r->server->sock, TEST_SLOT,
                         extra, opts, r->qemu_err);
    return true;
}

static void raw_dev_attach(RawDev *r)
{
    r->bus = qpci_new_pc(r->qts, NULL);
    r->dev = find_device(r->bus);
    g_assert_cmphex(qpci_config_readw(r->dev, PCI_VENDOR_ID), ==,
                    RS_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(r->dev, PCI_DEVICE_ID), ==,
                    RS_DEVICE_ID);
    r->bar0 = qpci_iomap(r->dev, 0, NULL);
    r->bar1 = qpci_iomap(r->dev, 1, NULL);
    g_assert_false(r->bar0.is_io);
    g_assert_true(r->bar1.is_io);
}

/* The raw server with @args, and a QEMU whose device has @extra */
static bool raw_dev_start(RawDev *r, const char *extra,
                          const char *const *args)
{
    if (!raw_dev_launch(r, extra, "", args)) {
        return false;
    }
    raw_dev_attach(r);
    return true;
}

static void raw_dev_stop(RawDev *r)
{
    g_autofree char *dir = g_path_get_dirname(r->log);

    if (r->qts) {
        g_free(r->dev);
        if (r->bus) {
            qpci_free_pc(r->bus);
        }
        qtest_quit(r->qts);
    }
    server_stop(r->server);
    unlink(r->log);
    unlink(r->qemu_err);
    rmdir(dir);
    g_free(r->log);
    g_free(r->qemu_err);
}

static uint64_t raw_stat(RawDev *r, int entry, int field)
{
    return qpci_io_readq(r->dev, r->bar0, RS_STATS(entry) + field);
}

static uint64_t raw_socket_writes(RawDev *r)
{
    return qpci_io_readq(r->dev, r->bar0, RS_WRITES);
}

static char *raw_qemu_stderr(RawDev *r)
{
    char *text = NULL;

    g_assert_true(g_file_get_contents(r->qemu_err, &text, NULL, NULL));
    return text;
}

/* How many lines of the server's log say @event */
static int raw_log_count(RawDev *r, const char *event)
{
    g_autofree char *log = NULL;
    g_auto(GStrv) lines = NULL;
    int i, n = 0;

    g_assert_true(g_file_get_contents(r->log, &log, NULL, NULL));
    lines = g_strsplit(log, "\n", -1);
    for (i = 0; lines[i]; i++) {
        n += !strcmp(lines[i], event);
    }
    return n;
}

static void raw_expect_stderr(RawDev *r, const char *expect)
{
    g_autofree char *text = raw_qemu_stderr(r);

    if (!strstr(text, expect)) {
        g_test_message("QEMU's stderr: %s", text);
    }
    g_assert_nonnull(strstr(text, expect));
}

/*
 * ioeventfds (40-byte entries): a write of the entry's size (and value,
 * with datamatch) signals the eventfd and sends no message; any other
 * access goes through the socket.
 */
static void test_raw_ioeventfd(void)
{
    static const char *const args[] = {
        "--iofd", "0,ioeventfd,offset=0x100,size=4",
        "--iofd", "0,ioeventfd,offset=0x104,size=4,datamatch=0x2a",
        "--iofd", "0,ioeventfd,offset=0x108,size=0",
        "--iofd", "1,ioeventfd,offset=0x10,size=2",
        NULL
    };
    uint64_t writes;
    RawDev r;
    int i;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    for (i = 0; i < 3; i++) {
        qpci_io_writel(r.dev, r.bar0, 0x100, i);
    }
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 3);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes);

    /* Another size, a read: the socket */
    qpci_io_writew(r.dev, r.bar0, 0x100, 0x1234);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 1);
    g_assert_cmphex(qpci_io_readw(r.dev, r.bar0, 0x100), ==, 0x1234);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 3);

    /* Datamatch: only the value signals */
    qpci_io_writel(r.dev, r.bar0, 0x104, 0x2a);
    g_assert_cmpuint(raw_stat(&r, 1, RS_COUNT), ==, 1);
    qpci_io_writel(r.dev, r.bar0, 0x104, 0x2b);
    g_assert_cmpuint(raw_stat(&r, 1, RS_COUNT), ==, 1);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 2);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x104), ==, 0x2b);

    /* Size 0: any access size at that offset */
    qpci_io_writeb(r.dev, r.bar0, 0x108, 1);
    qpci_io_writel(r.dev, r.bar0, 0x108, 2);
    qpci_io_writeq(r.dev, r.bar0, 0x108, 3);
    g_assert_cmpuint(raw_stat(&r, 2, RS_COUNT), ==, 3);

    /* An I/O port BAR */
    qpci_io_writew(r.dev, r.bar1, 0x10, 5);
    qpci_io_writew(r.dev, r.bar1, 0x10, 6);
    g_assert_cmpuint(raw_stat(&r, 3, RS_COUNT), ==, 2);
    qpci_io_writel(r.dev, r.bar1, 0x10, 0x01020304);
    g_assert_cmpuint(raw_stat(&r, 3, RS_COUNT), ==, 2);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar1, 0x10), ==, 0x01020304);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 3);
    raw_dev_stop(&r);
}

/*
 * Shadow ioeventfds (48-byte entries, newer libvfio-user): the value
 * written lands in the server's shadow memory before the eventfd fires;
 * the other types work in that layout too.
 */
static void test_raw_shadow(void)
{
    static const char *const args[] = {
        "--iofd", "0,shadow,offset=0x100,size=4",
        "--iofd", "0,shadow,offset=0x110,size=8,datamatch=0x1122334455667788",
        "--iofd", "0,ioeventfd,offset=0x120,size=4,datamatch=0x55",
        "--iofd", "0,ioregionfd,offset=0x200,size=0x20",
        NULL
    };
    uint64_t writes;
    RawDev r;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    qpci_io_writel(r.dev, r.bar0, 0x100, 0x12345678);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 1);
    g_assert_cmphex(raw_stat(&r, 0, RS_LAST_VALUE), ==, 0x12345678);
    qpci_io_writel(r.dev, r.bar0, 0x100, 0x9abcdef0);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 2);
    g_assert_cmphex(raw_stat(&r, 0, RS_LAST_VALUE), ==, 0x9abcdef0);
    /* The server keeps what the doorbell said where a read finds it */
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x100), ==, 0x9abcdef0);

    qpci_io_writeq(r.dev, r.bar0, 0x110, 0x1122334455667788ULL);
    g_assert_cmpuint(raw_stat(&r, 1, RS_COUNT), ==, 1);
    g_assert_cmphex(raw_stat(&r, 1, RS_LAST_VALUE), ==,
                    0x1122334455667788ULL);
    qpci_io_writeq(r.dev, r.bar0, 0x110, 5);
    g_assert_cmpuint(raw_stat(&r, 1, RS_COUNT), ==, 1);

    /* datamatch sits at byte 40 of a 48-byte entry */
    qpci_io_writel(r.dev, r.bar0, 0x120, 0x55);
    g_assert_cmpuint(raw_stat(&r, 2, RS_COUNT), ==, 1);
    qpci_io_writel(r.dev, r.bar0, 0x120, 0x56);
    g_assert_cmpuint(raw_stat(&r, 2, RS_COUNT), ==, 1);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 2);

    /* and user_data at byte 32 */
    qpci_io_writel(r.dev, r.bar0, 0x204, 0xabcd);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x204), ==, 0xabcd);
    g_assert_cmpuint(raw_stat(&r, 3, RS_COUNT), ==, 2);
    raw_dev_stop(&r);
}

/*
 * ioregionfds: every access inside the sub-region is a command on the
 * entry's socket; reads wait for the response, writes too unless posted.
 */
static void test_raw_ioregionfd(void)
{
    static const char *const args[] = {
        "--iofd", "0,ioregionfd,offset=0x200,size=0x100",
        "--iofd", "0,ioregionfd,offset=0x300,size=0x10,posted=1",
        "--iofd", "1,ioregionfd,offset=0x20,size=0x20",
        "--iofd", "0,ioregionfd,offset=0x3f0,size=6",
        NULL
    };
    uint64_t writes;
    RawDev r;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    qpci_io_writel(r.dev, r.bar0, 0x210, 0xdeadbeef);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 1);
    g_assert_cmphex(raw_stat(&r, 0, RS_LAST_VALUE), ==, 0xdeadbeef);
    g_assert_cmpuint(qpci_io_readl(r.dev, r.bar0,
                                   RS_STATS(0) + RS_LAST_SIZE), ==, 4);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0,
                                  RS_STATS(0) + RS_LAST_OFFSET), ==, 0x10);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x210), ==, 0xdeadbeef);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 2);

    qpci_io_writeb(r.dev, r.bar0, 0x220, 0x5a);
    g_assert_cmphex(qpci_io_readb(r.dev, r.bar0, 0x220), ==, 0x5a);
    qpci_io_writew(r.dev, r.bar0, 0x222, 0xbeef);
    g_assert_cmphex(qpci_io_readw(r.dev, r.bar0, 0x222), ==, 0xbeef);
    qpci_io_writeq(r.dev, r.bar0, 0x228, 0x0102030405060708ULL);
    g_assert_cmpuint(qpci_io_readl(r.dev, r.bar0,
                                   RS_STATS(0) + RS_LAST_SIZE), ==, 8);
    g_assert_cmphex(qpci_io_readq(r.dev, r.bar0, 0x228), ==,
                    0x0102030405060708ULL);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 8);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes);

    /* Not all of it inside the sub-region: the socket */
    qpci_io_writel(r.dev, r.bar0, 0x3f0, 0x55667788);
    qpci_io_writel(r.dev, r.bar0, 0x3f4, 0x11223344);
    g_assert_cmpuint(raw_stat(&r, 3, RS_COUNT), ==, 1);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 1);

    /* Posted: no response; drained by the server before our next read */
    qpci_io_writel(r.dev, r.bar0, 0x304, 0x11223344);
    g_assert_cmpuint(raw_stat(&r, 1, RS_COUNT), ==, 1);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x304), ==, 0x11223344);

    /* An I/O port BAR */
    qpci_io_writel(r.dev, r.bar1, 0x24, 0x77);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar1, 0x24), ==, 0x77);
    g_assert_cmpuint(raw_stat(&r, 2, RS_COUNT), ==, 2);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 1);
    raw_dev_stop(&r);
}

/*
 * Bad entries are refused, each with a message naming it, while the good
 * ones work; their accesses go through the socket.  Ten entries do not
 * fit in the room QEMU first offers: the server asks for more.
 */
static void test_raw_bad_entries(void)
{
    static const char *const args[] = {
        "--iofd", "0,ioeventfd,offset=0x100,size=4",
        "--iofd", "0,ioeventfd,offset=0x110,size=3,share=0",
        "--iofd", "0,ioeventfd,offset=0x120,size=4,share=0,fd_index=9",
        "--iofd", "0,ioeventfd,offset=0xffe,size=4,share=0",
        "--iofd", "0,ioeventfd,offset=0x130,size=8,share=0,"
                  "datamatch=0x100000000",
        "--iofd", "0,ioeventfd,offset=0x140,size=4,share=0,type=7",
        "--iofd", "0,ioeventfd,offset=0x150,size=4,share=0,flags=0x10",
        "--iofd", "0,ioeventfd,offset=0x100,size=4,share=0",
        "--iofd", "0,ioregionfd,offset=0x160,size=0x10,flags=0x1",
        "--iofd", "0,ioregionfd,offset=0x200,size=0x10",
        NULL
    };
    static const char *const refused[] = {
        "entry 1 (ioeventfd at 0x110, size 3) refused: access size 3 is not "
        "1, 2, 4 or 8",
        "entry 2 (ioeventfd at 0x120, size 4) refused: fd index 9, but the "
        "reply carries 3 fds",
        "entry 3 (ioeventfd at 0xffe, size 4) refused: it lies outside the "
        "region (0x1000 bytes)",
        "entry 4 (ioeventfd at 0x130, size 8) refused: datamatch 0x100000000 "
        "is wider than 32 bits",
        "entry 5 (entry of unknown type at 0x140, size 4) refused: unknown "
        "type 7",
        "entry 6 (ioeventfd at 0x150, size 4) refused: unknown flags 0x10",
        "entry 7 (ioeventfd at 0x100, size 4) refused: it overlaps the "
        "ioeventfd at 0x100",
        "entry 8 (ioregionfd at 0x160, size 16) refused: the PIO flag on a "
        "memory BAR",
    };
    g_autofree char *log = NULL;
    uint64_t writes;
    RawDev r;
    int i;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    qpci_io_writel(r.dev, r.bar0, 0x100, 1);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 1);
    qpci_io_writel(r.dev, r.bar0, 0x204, 2);
    g_assert_cmpuint(raw_stat(&r, 9, RS_COUNT), ==, 1);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes);

    qpci_io_writel(r.dev, r.bar0, 0x120, 3);
    qpci_io_writeq(r.dev, r.bar0, 0x130, 0x100000000ULL);
    qpci_io_writel(r.dev, r.bar0, 0x140, 4);
    qpci_io_writel(r.dev, r.bar0, 0x150, 5);
    qpci_io_writel(r.dev, r.bar0, 0x160, 6);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 5);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x160), ==, 6);
    for (i = 1; i < 9; i++) {
        g_assert_cmpuint(raw_stat(&r, i, RS_COUNT), ==, 0);
    }
    for (i = 0; i < ARRAY_SIZE(refused); i++) {
        raw_expect_stderr(&r, refused[i]);
    }
    g_assert_true(g_file_get_contents(r.log, &log, NULL, NULL));
    g_assert_nonnull(strstr(log, "iofds region 0 argsz-too-small need 416"));
    g_assert_nonnull(strstr(log, "iofds region 0 count 10 nfds 3"));
    raw_dev_stop(&r);
}

/* Replies that cannot be interpreted at all refuse the whole BAR */
static void check_raw_bad_reply(const char *const *args, const char *expect)
{
    g_autofree char *text = NULL;
    uint64_t writes;
    RawDev r;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    qpci_io_writel(r.dev, r.bar0, 0x100, 1);
    g_assert_cmpuint(raw_stat(&r, 0, RS_COUNT), ==, 0);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 1);
    text = raw_qemu_stderr(&r);
    if (expect) {
        raw_expect_stderr(&r, expect);
    } else {
        g_assert_null(strstr(text, "refused"));
    }
    raw_dev_stop(&r);
}

static void test_raw_bad_layouts(void)
{
    static const char *const stride44[] = {
        "--iofds-stride", "44", "--iofd", "0,ioeventfd,offset=0x100,size=4",
        NULL
    };
    static const char *const shadow40[] = {
        "--iofds-stride", "40", "--iofd", "0,shadow,offset=0x100,size=4",
        NULL
    };
    static const char *const unsupported[] = {
        "--iofds-error", "38", "--iofd", "0,ioeventfd,offset=0x100,size=4",
        NULL
    };
    static const char *const mmapped[] = {
        "--iofd", "0,ioeventfd,offset=0x100,size=4,type=9",
        "--iofd", "1,ioeventfd,offset=0x10,size=8",
        "--iofd", "2,ioeventfd,offset=0x1008,size=4",
        NULL
    };

    check_raw_bad_reply(stride44, "BAR 0 I/O fds refused: entries of 44 "
                        "bytes are neither of the known layouts");
    check_raw_bad_reply(shadow40, "entry 0 (shadow ioeventfd at 0x100, size "
                        "4) refused: a shadow ioeventfd needs the 48-byte "
                        "entry layout");
    /* A server without GET_REGION_IO_FDS is no error */
    check_raw_bad_reply(unsupported, NULL);
    check_raw_bad_reply(mmapped, "BAR 2 I/O fd entry 0 (ioeventfd at 0x1008, "
                        "size 4) refused: it overlaps the mmap()ed area at "
                        "0x1000");
    check_raw_bad_reply(mmapped, "BAR 1 I/O fd entry 0 (ioeventfd at 0x10, "
                        "size 8) refused: access size 8 is not 1, 2 or 4");
}

/*
 * BAR writes are posted: with a server that answers writes only once 16
 * of them wait, the guest's 16 writes complete at once (were QEMU
 * waiting, each would time out); the read that follows sees the last.
 */
static void test_raw_posted_writes(void)
{
    static const char *const args[] = { "--hold-write-replies", "16", NULL };
    g_autofree char *text = NULL;
    uint64_t writes;
    RawDev r;
    int i;

    if (!raw_dev_start(&r, ",x-request-timeout-ms=2000", args)) {
        return;
    }
    writes = raw_socket_writes(&r);
    for (i = 0; i < 16; i++) {
        qpci_io_writel(r.dev, r.bar0, 0x40 + i * 4, i + 1);
    }
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x40 + 15 * 4), ==, 16);
    g_assert_cmpuint(raw_socket_writes(&r), ==, writes + 16);
    text = raw_qemu_stderr(&r);
    g_assert_null(strstr(text, "failed"));
    raw_dev_stop(&r);
}

/* A posted write that fails is reported once; a waited-for one each time */
static void check_failed_writes(bool posted)
{
    static const char *const args[] = { "--fail-write", "0x80", NULL };
    g_autofree char *text = NULL;
    const char *expect = posted ?
        "posted REGION_WRITE (id " :
        "region0+0x80, 0x3,4) failed: Input/output error";
    RawDev r;
    int i, n;

    if (!raw_dev_start(&r, posted ? "" : ",x-no-posted-writes=on", args)) {
        return;
    }
    for (i = 1; i <= 3; i++) {
        qpci_io_writel(r.dev, r.bar0, 0x80, i);
    }
    /* Ordered after the writes: their replies are in when it returns */
    qpci_io_writel(r.dev, r.bar0, 0x84, 4);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x84), ==, 4);
    text = raw_qemu_stderr(&r);
    for (n = 0, i = 0; text[i]; i++) {
        n += g_str_has_prefix(text + i, "REGION_WRITE (id ") ||
             g_str_has_prefix(text + i, "region0+0x80,");
    }
    raw_expect_stderr(&r, expect);
    if (posted) {
        raw_expect_stderr(&r, "failed: Input/output error (error 5); further "
                          "failures of REGION_WRITE are only traced");
    }
    g_assert_cmpint(n, ==, posted ? 1 : 3);
    raw_dev_stop(&r);
}

/*
 * Wait up to 5 s for a line of the server's log that starts with @prefix
 * and contains @part; returns it (g_free()), or NULL.
 */
static char *raw_log_wait(RawDev *r, const char *prefix, const char *part)
{
    int i, j;

    for (i = 0; i < 500; i++) {
        g_autofree char *log = NULL;
        g_auto(GStrv) lines = NULL;

        g_assert_true(g_file_get_contents(r->log, &log, NULL, NULL));
        lines = g_strsplit(log, "\n", -1);
        for (j = 0; lines[j]; j++) {
            if (g_str_has_prefix(lines[j], prefix) &&
                strstr(lines[j], part)) {
                return g_strdup(lines[j]);
            }
        }
        g_usleep(10 * 1000);
    }
    return NULL;
}

/*
 * DMA by message reaches guest RAM only.  A second vfio-user device (a
 * raw server of its own, at slot 6) has the mmap()ed page of its BAR2
 * mapped into guest memory, which the first device's memory listener
 * maps for DMA (peer to peer, without an fd: by message).  Served, such
 * a DMA_READ would be an MMIO access that takes the BQL in the receive
 * thread; it is refused with EFAULT, while one to guest RAM is served.
 */
static void test_raw_dma_p2p(void)
{
    static const char *const args[] = { "--dma-probe", NULL };
    g_autofree char *dir = g_dir_make_tmp("vfio-user-p2p-XXXXXX", NULL);
    g_autofree char *peer_log = g_build_filename(dir, "peer.log", NULL);
    g_autofree char *opts = NULL;
    g_autofree char *line = NULL;
    g_autofree char *want = NULL;
    TestServer *peer;
    QPCIDevice *pdev;
    QPCIBar pbar2;
    uint64_t page;
    RawDev r;

    peer = raw_server_start(peer_log, NULL);
    if (!peer) {
        return;
    }
    opts = g_strdup_printf("-device vfio-user-pci,socket=%s,addr=6",
                           peer->sock);
    if (!raw_dev_launch(&r, "", opts, args)) {
        server_stop(peer);
        return;
    }
    raw_dev_attach(&r);
    pdev = qpci_device_find(r.bus, QPCI_DEVFN(6, 0));
    g_assert_nonnull(pdev);
    qpci_device_enable(pdev);
    pbar2 = qpci_iomap(pdev, 2, NULL);
    /* BAR2's second page is the mmap()ed one (the raw server's memfd) */
    page = pbar2.addr + 0x1000;
    qpci_io_writel(pdev, pbar2, 0x1000, 0x600dcafe);
    want = g_strdup_printf("dma_map iova 0x%" PRIx64 " size 0x1000 fds 0",
                           page);
    line = raw_log_wait(&r, want, "");
    g_assert_nonnull(line);
    g_clear_pointer(&line, g_free);

    /* Guest RAM: served */
    qtest_writeq(r.qts, 0x100000, 0x1234567890abcdefULL);
    qpci_io_writeq(r.dev, r.bar0, 0x7e8, 0x100000);
    line = raw_log_wait(&r, "reply to DMA_READ id ", ": ok data ");
    g_assert_nonnull(line);
    g_assert_nonnull(strstr(line, "ok data 0x1234567890abcdef"));
    g_clear_pointer(&line, g_free);

    /* The peer's BAR: refused, and the device goes on */
    qpci_io_writeq(r.dev, r.bar0, 0x7e8, page);
    line = raw_log_wait(&r, "reply to DMA_READ id ", ": error ");
    g_assert_nonnull(line);
    g_assert_nonnull(strstr(line, ": error 14"));
    g_assert_cmphex(qpci_io_readl(pdev, pbar2, 0x1000), ==, 0x600dcafe);
    qpci_io_writel(r.dev, r.bar0, 0x40, 0x5a5a);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x40), ==, 0x5a5a);

    g_free(pdev);
    raw_dev_stop(&r);
    server_stop(peer);
    unlink(peer_log);
    rmdir(dir);
}

static void test_raw_failed_writes(void)
{
    check_failed_writes(true);
    check_failed_writes(false);
}

/* How many of @pid's fds are eventfds, or sockets */
static int count_fds_of_kind(pid_t pid, const char *kind)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fd", pid);
    GDir *dir = g_dir_open(path, 0, NULL);
    const char *name;
    int n = 0;

    g_assert_nonnull(dir);
    while ((name = g_dir_read_name(dir))) {
        g_autofree char *link = g_build_filename(path, name, NULL);
        g_autofree char *target = g_file_read_link(link, NULL);

        if (target && g_str_has_prefix(target, kind)) {
            n++;
        }
    }
    g_dir_close(dir);
    return n;
}

#define EVENTFD "anon_inode:[eventfd]"
#define SOCKET  "socket:"

/* Three eventfds and two sockets from the server, for lifecycle tests */
static const char *const raw_lifecycle_args[] = {
    "--iofd", "0,ioeventfd,offset=0x100,size=4",
    "--iofd", "0,shadow,offset=0x108,size=4",
    "--iofd", "0,ioregionfd,offset=0x200,size=0x10",
    "--iofd", "0,ioregionfd,offset=0x300,size=0x10,posted=1",
    "--iofd", "1,ioeventfd,offset=0x10,size=1",
    NULL
};

static void raw_hotplug(RawDev *r)
{
    qtest_qmp_device_add(r->qts, "vfio-user-pci", "vu0",
                         "{'addr': '5', 'socket': %s}", r->server->sock);
    r->dev = find_device(r->bus);
    r->bar0 = qpci_iomap(r->dev, 0, NULL);
    r->bar1 = qpci_iomap(r->dev, 1, NULL);
}

/* Every kind of fd takes its accesses */
static void raw_ring_all(RawDev *r, uint64_t expect)
{
    uint64_t writes = raw_socket_writes(r);

    qpci_io_writel(r->dev, r->bar0, 0x100, 1);
    qpci_io_writel(r->dev, r->bar0, 0x108, 2);
    qpci_io_writel(r->dev, r->bar0, 0x200, 3);
    qpci_io_writel(r->dev, r->bar0, 0x300, 4);
    qpci_io_writeb(r->dev, r->bar1, 0x10, 5);
    g_assert_cmpuint(raw_stat(r, 0, RS_COUNT), ==, expect);
    g_assert_cmpuint(raw_stat(r, 1, RS_COUNT), ==, expect);
    g_assert_cmpuint(raw_stat(r, 2, RS_COUNT), ==, expect);
    g_assert_cmpuint(raw_stat(r, 3, RS_COUNT), ==, expect);
    g_assert_cmpuint(raw_stat(r, 4, RS_COUNT), ==, expect);
    g_assert_cmpuint(raw_socket_writes(r), ==, writes);
}

/*
 * A reset gives back every fd and asks the server again; unplug gives
 * back every fd for good (the server sees its ioregionfd sockets close).
 */
static void test_raw_reset_unplug(void)
{
    g_autofree char *dir = g_dir_make_tmp("vfio-user-raw-XXXXXX", NULL);
    int eventfds, sockets, closed, i;
    uint64_t requests;
    RawDev r = { };
    pid_t pid;

    r.log = g_build_filename(dir, "server.log", NULL);
    r.qemu_err = g_build_filename(dir, "qemu.err", NULL);
    r.server = raw_server_start(r.log, raw_lifecycle_args);
    if (!r.server) {
        return;
    }
    r.qts = qtest_initf("-M pc -nodefaults 2>%s", r.qemu_err);
    r.bus = qpci_new_pc(r.qts, NULL);
    pid = qtest_pid(r.qts);
    eventfds = count_fds_of_kind(pid, EVENTFD);
    sockets = count_fds_of_kind(pid, SOCKET);

    raw_hotplug(&r);
    raw_ring_all(&r, 1);
    requests = qpci_io_readq(r.dev, r.bar0, RS_IOFDS_REQUESTS);
    /* (at least) our copies of three eventfds and two sockets */
    g_assert_cmpint(count_fds_of_kind(pid, EVENTFD), >=, eventfds + 3);
    g_assert_cmpint(count_fds_of_kind(pid, SOCKET), >=, sockets + 3);

    /* Every BAR (three) is asked again; resetting the bus unmapped them */
    qtest_system_reset(r.qts);
    qpci_device_enable(r.dev);
    r.bar0 = qpci_iomap(r.dev, 0, NULL);
    r.bar1 = qpci_iomap(r.dev, 1, NULL);
    g_assert_cmpuint(qpci_io_readq(r.dev, r.bar0, RS_IOFDS_REQUESTS), ==,
                     requests + 3);
    raw_ring_all(&r, 2);
    g_free(r.dev);
    r.dev = NULL;

    /* Each reset closed the sockets fetched before it, and so does unplug */
    closed = raw_log_count(&r, "eof entry 2");
    g_assert_cmpint(closed, >=, 1);
    g_assert_cmpint(raw_log_count(&r, "eof entry 3"), ==, closed);
    qpci_unplug_acpi_device_test(r.qts, "vu0", TEST_SLOT);
    g_assert_cmpint(count_fds_of_kind(pid, EVENTFD), ==, eventfds);
    g_assert_cmpint(count_fds_of_kind(pid, SOCKET), ==, sockets);
    for (i = 0; i < WAIT_MS / 10 &&
                raw_log_count(&r, "eof entry 3") == closed; i++) {
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(raw_log_count(&r, "eof entry 2"), ==, closed + 1);
    g_assert_cmpint(raw_log_count(&r, "eof entry 3"), ==, closed + 1);
    raw_dev_stop(&r);
}

/* A server that dies takes its fds with it, while the device stays */
/* Management hears of a lost server: which device, which socket, why */
static void raw_expect_disconnected(RawDev *r, const char *reason)
{
    QDict *ev = qtest_qmp_eventwait_ref(r->qts, "VFIO_USER_DISCONNECTED");
    QDict *data = qdict_get_qdict(ev, "data");

    g_assert_cmpstr(qdict_get_str(data, "device-id"), ==, "rawdev");
    g_assert_cmpstr(qdict_get_str(data, "qom-path"), ==,
                    "/machine/peripheral/rawdev");
    g_assert_cmpstr(qdict_get_str(data, "socket"), ==, r->server->sock);
    if (!strstr(qdict_get_str(data, "reason"), reason)) {
        g_error("reason '%s' does not say '%s'",
                qdict_get_str(data, "reason"), reason);
    }
    qobject_unref(ev);
}

static void test_raw_server_death(void)
{
    int eventfds, sockets, i;
    RawDev r;
    pid_t pid;

    if (!raw_dev_start(&r, ",id=rawdev", raw_lifecycle_args)) {
        return;
    }
    raw_ring_all(&r, 1);
    pid = qtest_pid(r.qts);
    eventfds = count_fds_of_kind(pid, EVENTFD);
    sockets = count_fds_of_kind(pid, SOCKET);

    kill(r.server->pid, SIGKILL);
    waitpid(r.server->pid, NULL, 0);
    raw_expect_disconnected(&r, "the server closed the connection");
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0x200), ==, 0xffffffff);
    qpci_io_writel(r.dev, r.bar0, 0x108, 1);
    /* The fds go from a bottom half, once the main loop sees the EOF */
    for (i = 0; i < WAIT_MS / 10; i++) {
        if (count_fds_of_kind(pid, EVENTFD) == eventfds - 3 &&
            count_fds_of_kind(pid, SOCKET) == sockets - 2) {
            break;
        }
        qpci_io_readl(r.dev, r.bar0, 0x100);
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(count_fds_of_kind(pid, EVENTFD), ==, eventfds - 3);
    g_assert_cmpint(count_fds_of_kind(pid, SOCKET), ==, sockets - 2);
    raw_expect_stderr(&r, "the device is disconnected");
    raw_dev_stop(&r);
}

/*
 * A server that stops answering is disconnected at its first missed
 * reply: the guest's access that waited gets all ones, and so do the
 * following ones, at once, without a timeout each.
 */
static void test_raw_server_hang(void)
{
    g_autofree char *text = NULL;
    const char *p;
    int said = 0;
    RawDev r;

    if (!raw_dev_start(&r, ",id=rawdev,x-request-timeout-ms=300", NULL)) {
        return;
    }
    qpci_io_writel(r.dev, r.bar0, 0, 0x12345678);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0), ==, 0x12345678);

    kill(r.server->pid, SIGSTOP);
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0), ==, 0xffffffff);
    raw_expect_disconnected(&r, "within 300 ms");
    g_assert_cmphex(qpci_io_readl(r.dev, r.bar0, 0), ==, 0xffffffff);
    qpci_io_writel(r.dev, r.bar0, 0, 1);
    g_assert_cmphex(qpci_config_readw(r.dev, PCI_VENDOR_ID), ==, 0xffff);
    /* Said once, not once per access */
    text = raw_qemu_stderr(&r);
    for (p = text; (p = strstr(p, "the device is disconnected")); p++) {
        said++;
    }
    g_assert_cmpint(said, ==, 1);
    kill(r.server->pid, SIGCONT);
    raw_dev_stop(&r);
}

/*
 * Hostile servers: the raw server with --misbehave NAME, one row of the
 * table below per misbehaviour (its list is in vfio-user-raw-server.c).
 * Each row hot-plugs vfio-user-pci on a PCIe root port of a q35 machine
 * (ACPI hotplug, so that unplug needs no guest) with a short request
 * timeout, checks the outcome the row expects, unplugs, and then checks
 * that QEMU runs, answers query-status within a second and holds as many
 * fds as before the row.
 *
 * Each row runs in a subprocess of its own, with its own QEMU: a row that
 * crashes QEMU, or loops it with the BQL held, fails alone, by its
 * timeout, instead of taking the rows after it down; and the fd count of
 * a QEMU that saw one device is exact.  The parent prints what the row
 * left behind (its last stage, QEMU's stderr, the server's log) when it
 * fails.
 *
 * Rows marked NEW expect behaviour or wording that came with the
 * hardening against hostile servers (a bad value gives an error naming
 * the field and its value, or a feature disabled with a warning); the
 * others held before it.  Expected texts may list alternatives,
 * separated by '|'.
 */
#define HOSTILE_TIMEOUT_MS  500
#define HOSTILE_ROW_US      (30 * G_USEC_PER_SEC)
#define HOSTILE_RP_DEVFN    QPCI_DEVFN(2, 0)
#define HOSTILE_DEVFN       (1 << 8)        /* bus 1, behind the port */
#define HOSTILE_RAM         (128 * 1024 * 1024)
#define HOSTILE_DMA_ADDR    0x100000        /* where the server's DMA goes */
#define HOSTILE_DMA_PATTERN 0x1122334455667788ull
#define ACPI_PCIHP_ICH9     0x0cc0
#define ACPI_PCIHP_EJ       0x08
#define ACPI_PCIHP_SEL      0x10

/*
 * Migration v2: the raw server with --migration saves its BARs, config
 * space and --mig-extra-kib of state besides, and says in its statistics
 * window what it loaded.
 */
#define RS_MIG_STATE        0xc40
#define RS_MIG_LOADS        0xc44
#define RS_MIG_SUM          0xc48
#define RS_MIG_PRECOPY      0xc50
#define RS_MIG_STOP         1
#define RS_MIG_RUNNING      2

/* hw/vfio dirties all of guest RAM for a device without dirty tracking */
#define MIG_DEVICE_OPTS     ",id=rawdev,enable-migration=on"

/* A source VM and a destination VM, each with a raw server of its own */
typedef struct MigPair {
    RawDev src;
    RawDev dst;
    char *path;         /* the migration stream's socket */
    char *uri;
} MigPair;

/* Both QEMUs get @qemu_opts, the source's device @src_extra */
static bool mig_pair_start_opts(MigPair *m, const char *qemu_opts,
                                const char *src_extra, const char *dst_extra,
                                const char *const *src_args,
                                const char *const *dst_args)
{
    g_autofree char *dir = NULL;
    g_autofree char *opts = NULL;

    memset(m, 0, sizeof(*m));
    if (!raw_dev_launch(&m->src, src_extra, qemu_opts, src_args)) {
        return false;
    }
    raw_dev_attach(&m->src);
    dir = g_path_get_dirname(m->src.log);
    m->path = g_build_filename(dir, "migration", NULL);
    m->uri = g_strdup_printf("unix:%s", m->path);
    opts = g_strdup_printf("%s -incoming %s", qemu_opts, m->uri);
    g_assert_true(raw_dev_launch(&m->dst, dst_extra, opts, dst_args));
    return true;
}

static bool mig_pair_start(MigPair *m, const char *src_extra,
                           const char *const *src_args,
                           const char *const *dst_args)
{
    return mig_pair_start_opts(m, "", src_extra, MIG_DEVICE_OPTS, src_args,
                               dst_args);
}

static void mig_pair_stop(MigPair *m)
{
    if (m->path) {
        unlink(m->path);
    }
    raw_dev_stop(&m->dst);
    raw_dev_stop(&m->src);
    g_free(m->path);
    g_free(m->uri);
}

static char *qmp_status(QTestState *qts)
{
    QDict *rsp = qtest_qmp(qts, "{'execute': 'query-status'}");
    char *status = g_strdup(qdict_get_str(qdict_get_qdict(rsp, "return"),
                                          "status"));

    qobject_unref(rsp);
    return status;
}

/*
 * Wait for the migration of @m's source VM to end: its final status on
 * the source, and in @desc its error, if any.
 */
static char *mig_run_wait(MigPair *m, char **desc)
{
    int i;

    for (i = 0; i < 3 * WAIT_MS / 10; i++) {
        QDict *rsp = qtest_qmp(m->src.qts, "{'execute': 'query-migrate'}");
        QDict *ret = qdict_get_qdict(rsp, "return");
        const char *status = qdict_get_try_str(ret, "status");
        char *done = NULL;

        if (status && (!strcmp(status, "completed") ||
                       !strcmp(status, "failed") ||
                       !strcmp(status, "cancelled"))) {
            done = g_strdup(status);
            *desc = g_strdup(qdict_get_try_str(ret, "error-desc"));
        }
        qobject_unref(rsp);
        if (done) {
            if (g_test_verbose()) {
                g_test_message("migration %s: %s", done, *desc ?: "");
            }
            return done;
        }
        g_usleep(10 * 1000);
    }
    g_assert_not_reached();
}

static char *mig_run(MigPair *m, char **desc)
{
    qtest_qmp_assert_success(m->src.qts, "{'execute': 'migrate', "
                             "'arguments': {'uri': %s}}", m->uri);
    return mig_run_wait(m, desc);
}

/* @r's QEMU leaves on its own, with status 1 */
static void mig_expect_exit(RawDev *r, const char *expect)
{
    int i;

    for (i = 0; i < WAIT_MS / 10 && qtest_probe_child(r->qts); i++) {
        g_usleep(10 * 1000);
    }
    g_assert_false(qtest_probe_child(r->qts));
    qtest_set_expected_status(r->qts, 1);
    raw_expect_stderr(r, expect);
}

static void mig_wait_running(RawDev *r)
{
    int i;

    for (i = 0; i < WAIT_MS / 10; i++) {
        g_autofree char *status = qmp_status(r->qts);

        if (!strcmp(status, "running")) {
            return;
        }
        g_usleep(10 * 1000);
    }
    g_assert_not_reached();
}

/* A migration that completed: the destination runs, its device found */
static void mig_check_completed(MigPair *m, const char *status)
{
    g_assert_cmpstr(status, ==, "completed");
    mig_wait_running(&m->dst);
    raw_dev_attach(&m->dst);
}

/*
 * Let the VM stop only once the device's PRE_COPY data is out: the
 * client guesses 64 KiB for the state left in STOP_COPY, and more while
 * the server's reads bring PRE_COPY data.  10 ms at 10 MiB/s lies in
 * between.  QEMU sets that threshold 100 ms into the migration, and stops
 * the VM before then if it estimates that nothing is left, as it may
 * between two reads: a slow RAM copy gets past that.
 */
static void mig_set_precopy_params(QTestState *qts)
{
    qtest_qmp_assert_success(qts, "{'execute': 'migrate-set-parameters', "
                             "'arguments': {'downtime-limit': 10, "
                             "'avail-switchover-bandwidth': %d, "
                             "'max-bandwidth': %d}}",
                             10 * 1024 * 1024, 1024 * 1024);
}

/* Registers in every region and config space, for mig_check_state() */
static void mig_set_state(RawDev *r)
{
    QPCIBar bar2 = qpci_iomap(r->dev, 2, NULL);

    qpci_io_writeq(r->dev, r->bar0, 0x100, 0x1122334455667788ULL);
    qpci_io_writel(r->dev, r->bar1, 0x10, 0xa5a55a5a);
    qpci_io_writel(r->dev, bar2, 0x20, 0xc0ffee);       /* by message */
    qpci_io_writel(r->dev, bar2, 0x1040, 0xfeedface);   /* mapped */
    qpci_config_writel(r->dev, 0x40, 0x87654321);
}

static void mig_check_state(RawDev *r)
{
    QPCIBar bar2 = qpci_iomap(r->dev, 2, NULL);

    g_assert_cmphex(qpci_io_readq(r->dev, r->bar0, 0x100), ==,
                    0x1122334455667788ULL);
    g_assert_cmphex(qpci_io_readl(r->dev, r->bar1, 0x10), ==, 0xa5a55a5a);
    g_assert_cmphex(qpci_io_readl(r->dev, bar2, 0x20), ==, 0xc0ffee);
    g_assert_cmphex(qpci_io_readl(r->dev, bar2, 0x1040), ==, 0xfeedface);
    g_assert_cmphex(qpci_config_readl(r->dev, 0x40), ==, 0x87654321);
}

/* The raw server's --msix: a write to BAR0 signals a vector's eventfd */
#define RS_MSIX_FIRE_REG    0x7f0
#define RS_MSIX_FIRED       0xc68
#define MIG_MSIX_VECTOR     2

/*
 * Have @r's server signal MIG_MSIX_VECTOR, and wait for its message in
 * guest RAM, where the vector's address points (qtest has no APIC)
 */
static void raw_msix_check(RawDev *r, uint64_t fired)
{
    uint64_t addr = MSIX_RAM + MIG_MSIX_VECTOR * 4;
    int i;

    qtest_writel(r->qts, addr, 0);
    qpci_io_writel(r->dev, r->bar0, RS_MSIX_FIRE_REG, MIG_MSIX_VECTOR);
    g_assert_cmpuint(qpci_io_readq(r->dev, r->bar0, RS_MSIX_FIRED), ==,
                     fired);
    for (i = 0; i < WAIT_MS / 10; i++) {
        if (qtest_readl(r->qts, addr) == 0xcafe0000 + MIG_MSIX_VECTOR) {
            return;
        }
        g_usleep(10 * 1000);
    }
    g_assert_cmphex(qtest_readl(r->qts, addr), ==,
                    0xcafe0000 + MIG_MSIX_VECTOR);
}

static void raw_msix_setup(RawDev *r)
{
    uint64_t entry;

    qpci_msix_enable(r->dev);
    entry = r->dev->msix_table_off + MIG_MSIX_VECTOR * PCI_MSIX_ENTRY_SIZE;
    qpci_io_writel(r->dev, r->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_LOWER_ADDR,
                   MSIX_RAM + MIG_MSIX_VECTOR * 4);
    qpci_io_writel(r->dev, r->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_UPPER_ADDR, 0);
    qpci_io_writel(r->dev, r->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_DATA, 0xcafe0000 + MIG_MSIX_VECTOR);
    qpci_io_writel(r->dev, r->dev->msix_table_bar,
                   entry + PCI_MSIX_ENTRY_VECTOR_CTRL, 0);
}

static uint32_t mig_state(RawDev *r)
{
    return qpci_io_readl(r->dev, r->bar0, RS_MIG_STATE);
}

/* After a failed migration, the source VM runs, and so does its device */
static void mig_check_source_back(MigPair *m)
{
    g_autofree char *status = qmp_status(m->src.qts);

    g_assert_cmpstr(status, ==, "running");
    g_assert_cmpuint(mig_state(&m->src), ==, RS_MIG_RUNNING);
    mig_check_state(&m->src);
    qpci_io_writel(m->src.dev, m->src.bar0, 0x104, 0x5a5a);
    g_assert_cmphex(qpci_io_readl(m->src.dev, m->src.bar0, 0x104), ==,
                    0x5a5a);
}

/*
 * A migration with @mode's states: what the source's device had, the
 * destination's has; the source's device stops, the destination's runs.
 */
static void check_migration(const char *mode)
{
    const char *const src_args[] = {
        "--migration", mode, "--mig-extra-kib", "256", "--mig-seed", "7",
        "--msix", "4", NULL
    };
    const char *const dst_args[] = {
        "--migration", mode, "--mig-extra-kib", "256", "--msix", "4", NULL
    };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *src_status = NULL;
    uint64_t sum;
    MigPair m;

    if (!mig_pair_start(&m, MIG_DEVICE_OPTS, src_args, dst_args)) {
        return;
    }
    mig_set_state(&m.src);
    qpci_device_enable(m.src.dev);
    raw_msix_setup(&m.src);
    raw_msix_check(&m.src, 1);
    sum = qpci_io_readq(m.src.dev, m.src.bar0, RS_MIG_SUM);
    g_assert_cmpuint(mig_state(&m.src), ==, RS_MIG_RUNNING);
    if (!strcmp(mode, "pre-copy")) {
        mig_set_precopy_params(m.src.qts);
    }

    status = mig_run(&m, &desc);
    mig_check_completed(&m, status);

    g_assert_cmpuint(qpci_io_readl(m.dst.dev, m.dst.bar0, RS_MIG_LOADS), ==,
                     1);
    g_assert_cmphex(qpci_io_readq(m.dst.dev, m.dst.bar0, RS_MIG_SUM), ==,
                    sum);
    g_assert_cmpuint(mig_state(&m.dst), ==, RS_MIG_RUNNING);
    mig_check_state(&m.dst);
    /* The MSI-X table came with the VM, the vector's eventfd from QEMU */
    qpci_msix_enable(m.dst.dev);
    raw_msix_check(&m.dst, 1);
    g_assert_cmphex(qpci_config_readw(m.dst.dev, PCI_COMMAND) &
                    (PCI_COMMAND_MEMORY | PCI_COMMAND_IO), ==,
                    PCI_COMMAND_MEMORY | PCI_COMMAND_IO);

    src_status = qmp_status(m.src.qts);
    g_assert_cmpstr(src_status, ==, "postmigrate");
    g_assert_cmpuint(mig_state(&m.src), ==, RS_MIG_STOP);
    if (!strcmp(mode, "pre-copy")) {
        /* 64 KiB of the extra state in each PRE_COPY iteration */
        g_assert_cmpuint(qpci_io_readq(m.src.dev, m.src.bar0,
                                       RS_MIG_PRECOPY), ==, 4);
    } else {
        g_assert_cmpuint(qpci_io_readq(m.src.dev, m.src.bar0,
                                       RS_MIG_PRECOPY), ==, 0);
    }
    mig_pair_stop(&m);
}

static void test_migration_stop_copy(void)
{
    check_migration("stop-copy");
}

static void test_migration_pre_copy(void)
{
    check_migration("pre-copy");
}

/*
 * A migration that fails because of the device: @fault on the source's
 * server or, with @on_dst, the destination's.  The source VM and its
 * device go on running.  @expect is in the error: on the source or, with
 * @seen_on_dst, in the destination's stderr.
 */
typedef struct MigFault {
    const char *fault;
    bool on_dst;
    bool seen_on_dst;
    const char *expect;
} MigFault;

static void set_return_path(QTestState *qts)
{
    qtest_qmp_assert_success(qts, "{'execute': 'migrate-set-capabilities', "
                             "'arguments': {'capabilities': [{'capability': "
                             "'return-path', 'state': true}]}}");
}

static void test_migration_fault(const void *opaque)
{
    const MigFault *f = opaque;
    const char *const faulty[] = {
        "--migration", "stop-copy", "--mig-extra-kib", "64", "--mig-fault",
        f->fault, NULL
    };
    const char *const good[] = {
        "--migration", "stop-copy", "--mig-extra-kib", "64", NULL
    };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    MigPair m;

    if (!mig_pair_start(&m, MIG_DEVICE_OPTS, f->on_dst ? good : faulty,
                        f->on_dst ? faulty : good)) {
        return;
    }
    mig_set_state(&m.src);
    /*
     * Without a return path, the source cannot hear that the destination
     * failed: it may have sent everything by then, and call it completed.
     */
    set_return_path(m.src.qts);
    set_return_path(m.dst.qts);
    status = mig_run(&m, &desc);
    g_assert_cmpstr(status, ==, "failed");
    if (f->seen_on_dst) {
        mig_expect_exit(&m.dst, f->expect);
    } else {
        g_autofree char *err = raw_qemu_stderr(&m.src);

        if (!strstr(desc ?: "", f->expect) && !strstr(err, f->expect)) {
            g_error("neither '%s' nor stderr '%s' says '%s'", desc, err,
                    f->expect);
        }
        mig_expect_exit(&m.dst, "load of migration failed");
    }
    mig_check_source_back(&m);
    mig_pair_stop(&m);
}

static const MigFault mig_faults[] = {
    { "refuse-stop-copy", false, false,
      "Failed setting device state to STOP_COPY" },
    { "excess", false, false, "MIG_DATA_READ reply of" },
    { "refuse-resuming", true, true,
      "Failed setting device state to RESUMING" },
    /* Found by the destination's server as the device leaves RESUMING */
    { "truncate", false, true, "Failed setting device state to STOP" },
};

/* What the raw server's --dma-fill writes for @seed */
#define RS_FILL_REG         0x7f8
#define RS_FILL_ADDR        0x100000
#define RS_DMA_FILLS        0xc58
#define RS_LOG_REPORTS      0xc60
#define MIG_FILL_KIB        64

static uint8_t *fill_pattern(uint64_t seed)
{
    uint8_t *buf = g_malloc(MIG_FILL_KIB * 1024);
    uint64_t v = seed;
    size_t i;

    for (i = 0; i < MIG_FILL_KIB * 1024; i++) {
        v = v * 6364136223846793005ULL + 1442695040888963407ULL;
        buf[i] = v >> 56;
    }
    return buf;
}

static bool fill_is(QTestState *qts, uint64_t seed)
{
    g_autofree uint8_t *expect = fill_pattern(seed);
    g_autofree uint8_t *got = g_malloc(MIG_FILL_KIB * 1024);

    qtest_memread(qts, RS_FILL_ADDR, got, MIG_FILL_KIB * 1024);
    return memcmp(got, expect, MIG_FILL_KIB * 1024) == 0;
}

static void check_fill(QTestState *qts, uint64_t seed)
{
    g_assert_true(fill_is(qts, seed));
}

/*
 * Have @r's server fill guest RAM, and wait until it is filled: the
 * client serves the server's DMA_WRITEs in a thread of their own, which
 * may finish after the server's next reply.
 */
static void raw_fill(RawDev *r, uint64_t seed, uint64_t fills)
{
    int i;

    qpci_io_writeq(r->dev, r->bar0, RS_FILL_REG, seed);
    g_assert_cmpuint(qpci_io_readq(r->dev, r->bar0, RS_DMA_FILLS), ==, fills);
    for (i = 0; i < WAIT_MS / 10 && !fill_is(r->qts, seed); i++) {
        g_usleep(10 * 1000);
    }
    check_fill(r->qts, seed);
}

static int64_t mig_dirty_syncs(QTestState *qts)
{
    QDict *rsp = qtest_qmp(qts, "{'execute': 'query-migrate'}");
    QDict *ram = qdict_get_qdict(qdict_get_qdict(rsp, "return"), "ram");
    int64_t n = ram ? qdict_get_try_int(ram, "dirty-sync-count", 0) : 0;

    qobject_unref(rsp);
    return n;
}

/*
 * The device writes guest RAM by DMA while the VM migrates, after QEMU
 * sent those pages: they must be sent again.  With @shared memory, the
 * server maps guest RAM and writes it itself, and only its DMA logging
 * can tell QEMU; without, it writes with DMA_WRITE messages, which
 * QEMU's own dirty log must catch, for the server does not log them.
 * The server offers DMA logging either way, so hw/vfio does not just
 * take all of guest RAM as dirty (as it would with enable-migration=on
 * and no logging) and the default enable-migration=auto allows
 * migration.
 */
static void test_migration_dma_dirty(const void *opaque)
{
    bool shared = GPOINTER_TO_INT(opaque);
    g_autofree char *fill = g_strdup_printf("%d", MIG_FILL_KIB);
    const char *const src_args[] = {
        "--migration", "stop-copy", "--dma-logging", "--dma-fill", fill, NULL
    };
    const char *const dst_args[] = {
        "--migration", "stop-copy", "--dma-logging", NULL
    };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    MigPair m;
    int i;

    if (!mig_pair_start_opts(&m, shared ?
                             "-object memory-backend-memfd,id=ram,size=128M "
                             "-machine memory-backend=ram" : "",
                             ",id=rawdev", ",id=rawdev", src_args,
                             dst_args)) {
        return;
    }
    qpci_device_enable(m.src.dev);
    raw_fill(&m.src, 1, 1);
    check_fill(m.src.qts, 1);

    /*
     * Keep the migration from converging (1 ms at 1 MiB/s is less than
     * the 64 KiB the client guesses for the device's state) until the
     * device has written again, after a pass over all of RAM.  QEMU
     * looks at that threshold only 100 ms into the migration, and stops
     * the VM before then if it estimates nothing is left: a slow RAM
     * copy gets past that.
     */
    qtest_qmp_assert_success(m.src.qts, "{'execute': "
                             "'migrate-set-parameters', 'arguments': "
                             "{'downtime-limit': 1, "
                             "'avail-switchover-bandwidth': %d, "
                             "'max-bandwidth': %d}}",
                             1024 * 1024, 1024 * 1024);
    qtest_qmp_assert_success(m.src.qts, "{'execute': 'migrate', "
                             "'arguments': {'uri': %s}}", m.uri);
    for (i = 0; i < 3 * WAIT_MS / 10 && mig_dirty_syncs(m.src.qts) < 2;
         i++) {
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(mig_dirty_syncs(m.src.qts), >=, 2);
    raw_fill(&m.src, 2, 2);
    qtest_qmp_assert_success(m.src.qts, "{'execute': "
                             "'migrate-set-parameters', 'arguments': "
                             "{'downtime-limit': 2000}}");
    status = mig_run_wait(&m, &desc);
    mig_check_completed(&m, status);

    check_fill(m.src.qts, 2);
    check_fill(m.dst.qts, 2);
    g_assert_cmpuint(qpci_io_readq(m.src.dev, m.src.bar0, RS_LOG_REPORTS),
                     >, 0);
    mig_pair_stop(&m);
}

/*
 * A device that writes guest RAM by DMA (messages) in every PRE_COPY
 * iteration: the migration converges, and the destination's RAM has what
 * the source's had when it stopped.
 */
static void test_migration_dma_precopy(void)
{
    g_autofree char *fill = g_strdup_printf("%d", MIG_FILL_KIB);
    const char *const src_args[] = {
        "--migration", "pre-copy", "--mig-extra-kib", "256",
        "--dma-logging", "--dma-fill", fill, "--dma-fill-precopy", NULL
    };
    const char *const dst_args[] = {
        "--migration", "pre-copy", "--mig-extra-kib", "256", "--dma-logging",
        NULL
    };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    MigPair m;

    if (!mig_pair_start_opts(&m, "", ",id=rawdev", ",id=rawdev", src_args,
                             dst_args)) {
        return;
    }
    qpci_device_enable(m.src.dev);
    mig_set_precopy_params(m.src.qts);
    status = mig_run(&m, &desc);
    mig_check_completed(&m, status);

    g_assert_cmpuint(qpci_io_readq(m.src.dev, m.src.bar0, RS_MIG_PRECOPY),
                     ==, 4);
    /* A fill with each chunk, and with each read once they are out */
    g_assert_cmpuint(qpci_io_readq(m.src.dev, m.src.bar0, RS_DMA_FILLS), >=,
                     4);
    /* The last fill, made with the last chunk's count, on both sides */
    check_fill(m.src.qts, 0x1000 + 4);
    check_fill(m.dst.qts, 0x1000 + 4);
    mig_pair_stop(&m);
}

/*
 * A server that claims VFIO_MIGRATION_P2P, whose states vfio-user does not
 * use (and which the server refuses): QEMU does not ask for them, and the
 * migration completes.
 */
static void test_migration_p2p_ignored(void)
{
    const char *const args[] = {
        "--migration", "stop-copy", "--mig-fault", "claim-p2p", NULL
    };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    MigPair m;

    if (!mig_pair_start(&m, MIG_DEVICE_OPTS, args, args)) {
        return;
    }
    mig_set_state(&m.src);
    status = mig_run(&m, &desc);
    mig_check_completed(&m, status);
    g_assert_cmpuint(qpci_io_readl(m.dst.dev, m.dst.bar0, RS_MIG_LOADS), ==,
                     1);
    mig_check_state(&m.dst);
    g_assert_cmpint(raw_log_count(&m.src, "refused migration state 5"), ==,
                    0);
    mig_pair_stop(&m);
}

/*
 * The destination's server died before the migration: the destination
 * cannot resume the device, and the source VM goes on running.
 */
static void test_migration_no_dst_server(void)
{
    const char *const args[] = { "--migration", "stop-copy", NULL };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    MigPair m;

    if (!mig_pair_start(&m, MIG_DEVICE_OPTS, args, args)) {
        return;
    }
    mig_set_state(&m.src);
    kill(m.dst.server->pid, SIGKILL);
    waitpid(m.dst.server->pid, NULL, 0);
    raw_expect_disconnected(&m.dst, "the server closed the connection");
    set_return_path(m.src.qts);
    set_return_path(m.dst.qts);
    status = mig_run(&m, &desc);
    g_assert_cmpstr(status, ==, "failed");
    mig_expect_exit(&m.dst, "Failed setting device state to RESUMING");
    mig_check_source_back(&m);
    mig_pair_stop(&m);
}

/*
 * A server that stops answering in STOP_COPY is disconnected after
 * x-request-timeout-ms: the migration fails, and the source VM runs on
 * without its device.
 */
static void test_migration_hang(void)
{
    const char *const src_args[] = {
        "--migration", "stop-copy", "--mig-fault", "hang-stop-copy", NULL
    };
    const char *const dst_args[] = { "--migration", "stop-copy", NULL };
    g_autofree char *status = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *src_status = NULL;
    MigPair m;

    if (!mig_pair_start(&m, ",id=rawdev,enable-migration=on,"
                        "x-request-timeout-ms=300", src_args, dst_args)) {
        return;
    }
    status = mig_run(&m, &desc);
    g_assert_cmpstr(status, ==, "failed");
    raw_expect_disconnected(&m.src, "within 300 ms");
    src_status = qmp_status(m.src.qts);
    g_assert_cmpstr(src_status, ==, "running");
    g_assert_cmphex(qpci_io_readl(m.src.dev, m.src.bar0, 0x100), ==,
                    0xffffffff);
    mig_expect_exit(&m.dst, "load of migration failed");
    mig_pair_stop(&m);
}

/* Whose migration is refused, and why */
static void expect_migration_blocked(QTestState *qts, const char *expect)
{
    QDict *rsp = qtest_qmp(qts, "{'execute': 'migrate', 'arguments': "
                           "{'uri': 'unix:/nonexistent/vfio-user-test'}}");
    const char *desc;

    g_assert_true(qdict_haskey(rsp, "error"));
    desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
    if (!strstr(desc, expect)) {
        g_error("migration refused with '%s', not '%s'", desc, expect);
    }
    qobject_unref(rsp);
}

/*
 * A server without migration blocks it: the raw server without
 * --migration, and libvfio-user's sample, which answers DEVICE_FEATURE
 * with an error.  enable-migration=on then refuses the device.
 */
static void test_migration_unsupported(void)
{
    static const char expect[] =
        "VFIO migration is not supported by the vfio-user server";
    g_autofree char *devargs = NULL;
    TestDev t = { .server = sample_start("gpio-pci-idio-16", true) };
    TestServer *s;
    RawDev r;

    if (raw_dev_start(&r, "", NULL)) {
        expect_migration_blocked(r.qts, expect);
        raw_dev_stop(&r);
        s = raw_server_start("/dev/null", NULL);
        devargs = g_strdup_printf("vfio-user-pci,socket=%s,"
                                  "enable-migration=on", s->sock);
        expect_cmdline_failure(devargs, expect, NULL);
        server_stop(s);
    }
    if (guest_start(&t, "pc", "")) {
        expect_migration_blocked(t.qts, expect);
        test_dev_stop(&t);
    }
}

/*
 * A server with migration but without dirty page tracking: hw/vfio
 * blocks migration unless enable-migration=on says to dirty all of guest
 * RAM instead.
 */
static void test_migration_no_dirty_tracking(void)
{
    const char *const args[] = { "--migration", "stop-copy", NULL };
    RawDev r;

    if (!raw_dev_start(&r, "", args)) {
        return;
    }
    expect_migration_blocked(r.qts, "doesn't support device and IOMMU "
                             "dirty tracking");
    raw_dev_stop(&r);
}

/*
 * QEMU moves the device to STOP as it exits: with the server gone, that
 * fails, and must be said, not crash.
 */
static void test_migration_exit_server_gone(void)
{
    const char *const args[] = { "--migration", "stop-copy", NULL };
    RawDev r;

    if (!raw_dev_start(&r, ",id=rawdev,enable-migration=on", args)) {
        return;
    }
    kill(r.server->pid, SIGKILL);
    waitpid(r.server->pid, NULL, 0);
    raw_expect_disconnected(&r, "the server closed the connection");
    qtest_quit(r.qts);
    r.qts = NULL;
    raw_expect_stderr(&r, "Failed setting device state to STOP");
    g_free(r.dev);
    qpci_free_pc(r.bus);
    raw_dev_stop(&r);
}

/*
 * FAILS_LATER: device_add works, then BAR0 reads all ones (or config
 * space does: the device failed before we got there)
 */
typedef enum {
    HOSTILE_WORKS,          /* BAR0 and BAR2 keep what is written */
    HOSTILE_REALIZE_FAILS,  /* device_add fails, saying @expect */
    HOSTILE_FAILS_LATER,
} HostileOutcome;

typedef struct Hostile Hostile;

typedef struct HostileCase {
    const char *name;           /* the server's --misbehave NAME */
    HostileOutcome outcome;
    const char *expect;         /* in device_add's error */
    const char *warn;           /* on QEMU's stderr */
    const char *log;            /* in the server's log, in time */
    void (*check)(Hostile *h);  /* more, with the device still there */
    void (*check_end)(Hostile *h);  /* more, after unplug */
} HostileCase;

struct Hostile {
    const HostileCase *c;
    char *dir;
    char *log;
    char *qemu_err;
    TestServer *server;
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar0;
    QPCIBar bar2;
    bool added;
};

/* Does @text hold one of @alternatives (separated by '|')? */
static bool hostile_contains(const char *text, const char *alternatives)
{
    g_auto(GStrv) alt = g_strsplit(alternatives, "|", -1);
    int i;

    for (i = 0; alt[i]; i++) {
        if (strstr(text, alt[i])) {
            return true;
        }
    }
    return false;
}

/* What the parent prints if the row fails: how far it got */
static void hostile_stage(Hostile *h, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static void hostile_stage(Hostile *h, const char *fmt, ...)
{
    g_autofree char *path = g_build_filename(h->dir, "stage", NULL);
    g_autofree char *line = NULL;
    va_list ap;
    FILE *f;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    f = fopen(path, "a");
    g_assert_nonnull(f);
    fprintf(f, "%s\n", line);
    fclose(f);
}

static char *hostile_file(const char *path)
{
    char *text = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return g_strdup("");
    }
    return text;
}

static int hostile_log_count(Hostile *h, const char *prefix)
{
    g_autofree char *log = hostile_file(h->log);
    g_auto(GStrv) lines = g_strsplit(log, "\n", -1);
    int i, n = 0;

    for (i = 0; lines[i]; i++) {
        n += g_str_has_prefix(lines[i], prefix);
    }
    return n;
}

/* The server's log comes to hold @what within WAIT_MS */
static void hostile_wait_log(Hostile *h, const char *what)
{
    int i;

    for (i = 0; i < WAIT_MS / 10; i++) {
        g_autofree char *log = hostile_file(h->log);

        if (hostile_contains(log, what)) {
            return;
        }
        g_usleep(10 * 1000);
    }
    g_printerr("hostile %s: the server's log lacks '%s'\n", h->c->name,
               what);
    g_assert_not_reached();
}

/* QMP answers query-status, within a second; how long it took (us) */
static gint64 hostile_responsive(Hostile *h, const char *when)
{
    gint64 start = g_get_monotonic_time();
    QDict *resp = qtest_qmp(h->qts, "{'execute': 'query-status'}");
    gint64 us = g_get_monotonic_time() - start;

    g_assert_true(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    if (us >= G_USEC_PER_SEC) {
        g_printerr("hostile %s: query-status %s took %" PRId64 " ms\n",
                   h->c->name, when, us / 1000);
    }
    g_assert_cmpint(us, <, G_USEC_PER_SEC);
    return us;
}

/*
 * No firmware runs under qtest: give the root port a bus number and the
 * windows libqos allocates BARs from.
 */
static void hostile_root_port_init(Hostile *h)
{
    QPCIDevice *rp = qpci_device_find(h->bus, HOSTILE_RP_DEVFN);

    g_assert_nonnull(rp);
    qpci_config_writeb(rp, PCI_PRIMARY_BUS, 0);
    qpci_config_writeb(rp, PCI_SECONDARY_BUS, 1);
    qpci_config_writeb(rp, PCI_SUBORDINATE_BUS, 1);
    qpci_config_writeb(rp, PCI_IO_BASE, 0xc0);              /* 0xc000 */
    qpci_config_writeb(rp, PCI_IO_LIMIT, 0xf0);             /* 0xffff */
    qpci_config_writew(rp, PCI_MEMORY_BASE, 0xe000);        /* 0xe0000000 */
    qpci_config_writew(rp, PCI_MEMORY_LIMIT, 0xfe00);       /* 0xfeafffff */
    qpci_config_writew(rp, PCI_PREF_MEMORY_BASE, 0xfff0);   /* none */
    qpci_config_writew(rp, PCI_PREF_MEMORY_LIMIT, 0);
    qpci_config_writew(rp, PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY |
                       PCI_COMMAND_MASTER);
    g_free(rp);
}

/* Unplug, doing the ACPI eject the guest's OSPM would do */
static void hostile_unplug(Hostile *h)
{
    QDict *resp = qtest_qmp(h->qts, "{'execute': 'qom-get', 'arguments': "
                            "{'path': '/machine/peripheral/rp0/rp0', "
                            "'property': 'acpi-pcihp-bsel'}}");
    gint64 start;
    int bsel;

    g_assert_true(qdict_haskey(resp, "return"));
    bsel = qdict_get_int(resp, "return");
    qobject_unref(resp);

    start = g_get_monotonic_time();
    qtest_qmp_device_del_send(h->qts, "vu0");
    qtest_outl(h->qts, ACPI_PCIHP_ICH9 + ACPI_PCIHP_SEL, bsel);
    qtest_outl(h->qts, ACPI_PCIHP_ICH9 + ACPI_PCIHP_EJ, 1 << 0);
    qtest_qmp_eventwait(h->qts, "DEVICE_DELETED");
    hostile_stage(h, "unplugged in %" PRId64 " ms",
                  (g_get_monotonic_time() - start) / 1000);
}

/*
 * QEMU gives back every fd the row gave it (some go from a bottom half),
 * and ends every thread it started (the connection's receive thread).
 */
static void hostile_check_left(Hostile *h, const char *what, int before)
{
    pid_t pid = qtest_pid(h->qts);
    int i, now = count_proc_entries(pid, what);

    for (i = 0; i < 2000 / 10 && now != before; i++) {
        g_usleep(10 * 1000);
        now = count_proc_entries(pid, what);
    }
    if (now != before) {
        g_printerr("hostile %s: QEMU had %d %s entries before, %d after\n",
                   h->c->name, before, what, now);
    }
    g_assert_cmpint(now, ==, before);
}

static void hostile_run(const HostileCase *c)
{
    const char *server_args[] = { "--misbehave", c->name, NULL };
    Hostile h = { .c = c };
    g_autofree char *err_text = NULL;
    const char *desc = NULL;
    QDict *resp, *error;
    uint16_t vendor;
    int fds_before, threads_before;

    h.dir = g_strdup(g_getenv("VFIO_USER_HOSTILE_DIR"));
    g_assert_nonnull(h.dir);
    h.log = g_build_filename(h.dir, "server.log", NULL);
    h.qemu_err = g_build_filename(h.dir, "qemu.err", NULL);
    h.server = raw_server_start(h.log, server_args);
    if (!h.server) {
        return;
    }
    h.qts = qtest_initf("-M q35 -m %d -nodefaults "
                        "-device pcie-root-port,id=rp0,bus=pcie.0,"
                        "chassis=1,addr=2 2>%s", HOSTILE_RAM / (1024 * 1024),
                        h.qemu_err);
    h.bus = qpci_new_pc(h.qts, NULL);
    hostile_root_port_init(&h);
    fds_before = count_fds(qtest_pid(h.qts));
    threads_before = count_proc_entries(qtest_pid(h.qts), "task");

    hostile_stage(&h, "device_add");
    resp = qtest_qmp(h.qts, "{'execute': 'device_add', 'arguments': "
                     "{'driver': 'vfio-user-pci', 'id': 'vu0', "
                     "'bus': 'rp0', 'socket': %s, "
                     "'x-request-timeout-ms': %d}}",
                     h.server->sock, HOSTILE_TIMEOUT_MS);
    g_assert_nonnull(resp);
    error = qdict_get_qdict(resp, "error");
    if (error) {
        desc = qdict_get_str(error, "desc");
        hostile_stage(&h, "device_add failed: %s", desc);
    } else {
        hostile_stage(&h, "device_add succeeded");
    }
    h.added = !error;
    hostile_responsive(&h, "after device_add");

    if (c->outcome == HOSTILE_REALIZE_FAILS) {
        if (!desc || !hostile_contains(desc, c->expect)) {
            g_printerr("hostile %s: device_add %s, expected failure '%s'\n",
                       c->name, desc ? desc : "succeeded", c->expect);
        }
        g_assert_nonnull(desc);
        g_assert_true(hostile_contains(desc, c->expect));
    } else {
        if (desc) {
            g_printerr("hostile %s: device_add failed: %s\n", c->name, desc);
        }
        g_assert_null(desc);
        vendor = h.bus->config_readw(h.bus, HOSTILE_DEVFN, PCI_VENDOR_ID);
        if (c->outcome == HOSTILE_FAILS_LATER && vendor == 0xffff) {
            /* It failed already: config space reads all ones too */
            hostile_stage(&h, "config space reads all ones");
        } else {
            g_assert_cmphex(vendor, ==, RS_VENDOR_ID);
            h.dev = qpci_device_find(h.bus, HOSTILE_DEVFN);
            g_assert_nonnull(h.dev);
            qpci_device_enable(h.dev);
            h.bar0 = qpci_iomap(h.dev, 0, NULL);
            hostile_stage(&h, "BAR0 access");
        }
        if (c->outcome == HOSTILE_FAILS_LATER) {
            g_assert_true(!h.dev ||
                          qpci_io_readl(h.dev, h.bar0, 0) == 0xffffffff);
        } else {
            qpci_io_writel(h.dev, h.bar0, 0x10, 0x5a5aa5a5);
            g_assert_cmphex(qpci_io_readl(h.dev, h.bar0, 0x10), ==,
                            0x5a5aa5a5);
            hostile_stage(&h, "BAR2 access");
            h.bar2 = qpci_iomap(h.dev, 2, NULL);
            qpci_io_writel(h.dev, h.bar2, 0x1010, 0x12345678);
            g_assert_cmphex(qpci_io_readl(h.dev, h.bar2, 0x1010), ==,
                            0x12345678);
        }
    }
    qobject_unref(resp);
    if (c->log) {
        hostile_stage(&h, "waiting for '%s' in the server's log", c->log);
        hostile_wait_log(&h, c->log);
    }
    if (c->check) {
        hostile_stage(&h, "checks");
        c->check(&h);
    }
    hostile_responsive(&h, "with the device in place");

    if (h.added) {
        hostile_stage(&h, "unplug");
        hostile_unplug(&h);
    }
    g_free(h.dev);
    if (c->check_end) {
        hostile_stage(&h, "checks after unplug");
        c->check_end(&h);
    }
    server_stop(h.server);
    hostile_stage(&h, "final checks");
    g_assert_true(qtest_probe_child(h.qts));
    hostile_responsive(&h, "at the end");
    hostile_check_left(&h, "fd", fds_before);
    hostile_check_left(&h, "task", threads_before);
    err_text = hostile_file(h.qemu_err);
    if (c->warn && !hostile_contains(err_text, c->warn)) {
        g_printerr("hostile %s: QEMU's stderr lacks '%s'\n", c->name,
                   c->warn);
        g_assert_not_reached();
    }
    qpci_free_pc(h.bus);
    qtest_quit(h.qts);
    hostile_stage(&h, "passed");
    g_free(h.log);
    g_free(h.qemu_err);
    g_free(h.dir);
}

/* The tail of @path, for a row that failed */
static void hostile_print_file(const char *dir, const char *name,
                               const char *what)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autofree char *text = hostile_file(path);
    size_t len = strlen(text);

    g_printerr("--- %s%s:\n%s\n", what, len > 2000 ? " (its end)" : "",
               len > 2000 ? text + len - 2000 : text);
}

static void test_hostile(const void *opaque)
{
    const HostileCase *c = opaque;
    g_autofree char *dir = NULL;
    const char *name;
    GDir *d;

    if (g_test_subprocess()) {
        hostile_run(c);
        return;
    }
    if (!g_file_test(raw_server_path(), G_FILE_TEST_IS_EXECUTABLE)) {
        g_test_skip("vfio-user raw test server not built");
        return;
    }
    dir = g_dir_make_tmp("vfio-user-hostile-XXXXXX", NULL);
    g_assert_nonnull(dir);
    g_setenv("VFIO_USER_HOSTILE_DIR", dir, true);
    g_test_trap_subprocess(NULL, HOSTILE_ROW_US,
                           G_TEST_SUBPROCESS_INHERIT_STDERR);
    if (!g_test_trap_has_passed()) {
        /* What matters most last: a log may show only its end */
        hostile_print_file(dir, "server.log", "the server's log");
        hostile_print_file(dir, "qemu.err", "QEMU's stderr");
        hostile_print_file(dir, "stage", "stages");
        g_printerr("hostile %s failed%s; expected: %s%s%s%s%s\n", c->name,
                   g_test_trap_reached_timeout() ? " (timed out)" : "",
                   c->outcome == HOSTILE_WORKS ? "the device works" :
                   c->outcome == HOSTILE_FAILS_LATER ?
                   "device_add works, the device fails later" :
                   "device_add fails with ", c->expect ? c->expect : "",
                   c->warn ? ", QEMU warns " : "", c->warn ? c->warn : "",
                   c->log ? ", and the server logs its request's reply" :
                   "");
        /* Fail this row, and go on with the next */
        g_test_fail();
    }
    d = g_dir_open(dir, 0, NULL);
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        unlink(path);
    }
    if (d) {
        g_dir_close(d);
    }
    rmdir(dir);
}

/* Row checks */

/* The DMA_WRITE without reply landed, and got none */
static void hostile_check_no_reply(Hostile *h)
{
    g_assert_cmphex(qtest_readq(h->qts, HOSTILE_DMA_ADDR), ==,
                    HOSTILE_DMA_PATTERN);
    g_assert_cmpint(hostile_log_count(h, "unexpected reply"), ==, 0);
}

/* The write across the end of RAM left its last bytes alone */
static void hostile_check_ram_end(Hostile *h)
{
    g_assert_cmphex(qtest_readq(h->qts, HOSTILE_RAM - 8), ==, 0);
}

/* The write that wraps around left the start of RAM alone */
static void hostile_check_ram_start(Hostile *h)
{
    g_assert_cmphex(qtest_readq(h->qts, 0), ==, 0);
}

/* BAR2's second page is mapped: its accesses send no REGION_WRITE */
static void hostile_check_bar2_mapped(Hostile *h)
{
    uint64_t writes = qpci_io_readq(h->dev, h->bar0, RS_WRITES);

    qpci_io_writel(h->dev, h->bar2, 0x1020, 0xabcd);
    g_assert_cmphex(qpci_io_readl(h->dev, h->bar2, 0x1020), ==, 0xabcd);
    g_assert_cmpuint(qpci_io_readq(h->dev, h->bar0, RS_WRITES), ==, writes);
}

/* For a second of the flood, QMP and the device answer */
static void hostile_check_flood_live(Hostile *h)
{
    gint64 end = g_get_monotonic_time() + G_USEC_PER_SEC, worst = 0;
    uint32_t i;

    for (i = 0; g_get_monotonic_time() < end; i++) {
        worst = MAX(worst, hostile_responsive(h, "during the flood"));
        qpci_io_writel(h->dev, h->bar0, 0x20, i);
        g_assert_cmpuint(qpci_io_readl(h->dev, h->bar0, 0x20), ==, i);
        g_usleep(50 * 1000);
    }
    hostile_stage(h, "query-status during the flood: %u tries, at most "
                  "%" PRId64 " us", i, worst);
}

/* The flood was answered while the device worked */
static void hostile_check_flood(Hostile *h)
{
    g_autofree char *log = NULL;
    unsigned long long sent = 0, answered = 0;
    const char *line;

    hostile_wait_log(h, "flood sent ");
    log = hostile_file(h->log);
    line = strstr(log, "flood sent ");
    g_assert_cmpint(sscanf(line, "flood sent %llu answered %llu", &sent,
                           &answered), ==, 2);
    hostile_stage(h, "flood: %llu sent, %llu answered", sent, answered);
    g_assert_cmpuint(answered, >, 0);
}

/* Realize gave up after about one timeout's worth of slow answers */
static void hostile_check_slow(Hostile *h)
{
    int answered = hostile_log_count(h, "answered ");

    hostile_stage(h, "%d messages answered", answered);
    g_assert_cmpint(answered, <=, 3);
}

/* After one request went unanswered, QEMU sent nothing more */
static void hostile_check_mute(Hostile *h)
{
    int unanswered = hostile_log_count(h, "unanswered ");

    hostile_stage(h, "%d messages unanswered", unanswered);
    g_assert_cmpint(unanswered, <=, 1);
}

#define WORKS               HOSTILE_WORKS
#define REALIZE_FAILS       HOSTILE_REALIZE_FAILS
#define FAILS_LATER         HOSTILE_FAILS_LATER

static const HostileCase hostile_cases[] = {
    /*
     * Error replies with 0x80000001 and 0xffffffff (NEW: they crashed), 0,
     * and 4096, which is no errno: failures all the same
     */
    { "errno-high-version", REALIZE_FAILS, "failed VERSION" },
    { "errno-high-get-info", REALIZE_FAILS, "failed DEVICE_GET_INFO" },
    { "errno-high-bar-read", FAILS_LATER },
    { "errno-high-cfg-info", REALIZE_FAILS, "failed to get config info" },
    { "errno-ones-version", REALIZE_FAILS, "failed VERSION" },
    { "errno-ones-get-info", REALIZE_FAILS, "failed DEVICE_GET_INFO" },
    { "errno-ones-bar-read", FAILS_LATER },
    { "errno-ones-cfg-info", REALIZE_FAILS, "failed to get config info" },
    { "errno-zero-version", REALIZE_FAILS, "failed VERSION" },
    { "errno-zero-get-info", REALIZE_FAILS, "failed DEVICE_GET_INFO" },
    { "errno-zero-bar-read", FAILS_LATER },
    { "errno-zero-cfg-info", REALIZE_FAILS, "failed to get config info" },
    { "errno-4096-version", REALIZE_FAILS, "failed VERSION" },
    { "errno-4096-get-info", REALIZE_FAILS, "failed DEVICE_GET_INFO" },
    { "errno-4096-bar-read", FAILS_LATER },
    { "errno-4096-cfg-info", REALIZE_FAILS, "failed to get config info" },

    { "hdr-size-small", REALIZE_FAILS, "invalid size 8" },
    { "hdr-size-huge", REALIZE_FAILS, "invalid size 1052689" },
    { "hdr-size-eof", REALIZE_FAILS, "closed the connection" },
    { "hdr-truncated", REALIZE_FAILS, "too short" },
    { "hdr-wrong-command", REALIZE_FAILS,
      "is for DEVICE_GET_REGION_INFO" },
    { "hdr-unknown-id", REALIZE_FAILS, "DEVICE_GET_INFO (id 1)" },
    { "hdr-dup-reply", WORKS },
    { "hdr-bad-type", REALIZE_FAILS, "unknown type 0x7" },
    { "req-unknown-cmd", WORKS,
      .log = "reply to UNKNOWN id 32768: error 38" },
    { "req-unknown-idle", WORKS,
      .log = "reply to UNKNOWN id 32768: error 38" },
    { "req-no-reply", WORKS,
      .log = "reply to DMA_READ id 32769: ok data 0x1122334455667788",
      .check = hostile_check_no_reply },

    { "fds-get-info", WORKS },
    { "fds-too-many", REALIZE_FAILS, "carries 9 fds" },
    /* NEW: an fd that is no sealed file is not mapped, with a warning */
    { "mmap-fd-socket", WORKS, .warn = "region 2 is not mapped" },
    { "mmap-fd-pipe", WORKS, .warn = "region 2 is not mapped" },
    { "mmap-fd-eventfd", WORKS, .warn = "region 2 is not mapped" },
    { "mmap-fd-short", WORKS, .warn = "region 2 is not mapped" },
    { "mmap-fd-tmpfile", WORKS, .warn = "region 2 is not mapped" },
    { "mmap-fd-sealed", WORKS, .check = hostile_check_bar2_mapped },

    /* NEW: an error naming the field and its value */
    { "region-size-max", REALIZE_FAILS, "0xffffffffffffffff" },
    { "region-size-2p63", REALIZE_FAILS, "0x8000000000000001" },
    { "region-offset-max", WORKS, .warn = "region 2 is not mapped" },
    { "sparse-overlap", REALIZE_FAILS, "region 2" },   /* NEW */
    { "sparse-beyond", REALIZE_FAILS, "region 2" },
    { "region-argsz-huge", REALIZE_FAILS, "region 2" },
    { "region-index-wrong", REALIZE_FAILS, "region 0" },
    { "bar-size-npot", WORKS, .warn = "not a power of two" },
    /* NEW: BARs the bus cannot map are refused, naming the BAR */
    { "bar-io-huge", REALIZE_FAILS, "BAR 1 is an I/O BAR of 0x20000 bytes" },
    { "bar32-huge", REALIZE_FAILS,
      "BAR 0 is a 32-bit memory BAR of 0x100000000 bytes" },
    { "bar64-slot5", REALIZE_FAILS, "BAR 5 is a 64-bit BAR" },
    { "bar64-upper-sized", REALIZE_FAILS, "BAR 1 holds the upper half" },
    { "bar64", WORKS },
    /* NEW: config space smaller than 256 bytes, or hidden beyond 256 */
    { "cfg-size-0", REALIZE_FAILS, "config space is 0 bytes" },
    { "cfg-size-16", REALIZE_FAILS, "config space is 16 bytes" },
    { "cfg-size-255", REALIZE_FAILS, "config space is 255 bytes" },
    { "cfg-size-1000", WORKS, .warn = "config space is 1000 bytes" },
    { "cfg-size-8192", WORKS },

    /* NEW: refused, naming the capability */
    { "cap-loop-self", REALIZE_FAILS, "capability" },
    { "cap-loop-two", REALIZE_FAILS, "capability" },
    { "cap-ptr-ff", REALIZE_FAILS, "capability" },
    { "cap-ptr-3e", REALIZE_FAILS, "capability" },
    { "cap-ptr-header", REALIZE_FAILS, "capability" },
    { "cap-next-unaligned", REALIZE_FAILS, "capability" },
    { "msi-at-fc", REALIZE_FAILS, "capability" },
    /* NEW: MSI-X refused, naming its BIR */
    { "msix-bir-6", REALIZE_FAILS, "MSIX table BIR 6" },
    { "msix-bir-7", REALIZE_FAILS, "MSIX table BIR 7" },
    { "msix-bar-absent", REALIZE_FAILS, "MSIX table BIR 3" },
    { "msix-table-beyond", REALIZE_FAILS, "don't fit in BARs" },
    { "msix-pba-bir-7", REALIZE_FAILS, "PBA BIR 7" },
    /* NEW: extended capabilities hidden, with a warning */
    { "ecap-loop-self", WORKS, .warn = "extended capabilities are hidden" },
    { "ecap-loop-two", WORKS, .warn = "extended capabilities are hidden" },
    { "ecap-below", WORKS, .warn = "extended capabilities are hidden" },
    /* NEW: the ROM is disabled, with a warning */
    { "rom-npot", WORKS, .warn = "ROM BAR sizes to 0x1800" },

    { "irq-msi-count", WORKS },
    { "irq-msix-count", WORKS },
    { "irq-index-wrong", REALIZE_FAILS, "MSI-X irq info" },
    { "irq-flags-garbage", WORKS },
    { "irq-err-count", WORKS },

    { "iofds-argsz-small", WORKS, .warn = "I/O fds refused" },
    { "iofds-count-huge", WORKS, .warn = "I/O fds refused" },
    { "iofds-beyond", WORKS, .warn = "lies outside the region" },
    { "iofds-stride-44", WORKS, .warn = "I/O fds refused" },

    { "dma-read-unmapped", WORKS,
      .log = "reply to DMA_READ id 32768: error" },
    { "dma-write-ram-end", WORKS,
      .log = "reply to DMA_WRITE id 32768: error",
      .check = hostile_check_ram_end },
    { "dma-read-count-max", WORKS,
      .log = "reply to DMA_READ id 32768: error" },
    { "dma-write-wrap", WORKS,
      .log = "reply to DMA_WRITE id 32768: error",
      .check = hostile_check_ram_start },
    { "dma-read-too-big", WORKS,
      .log = "reply to DMA_READ id 32768: error" },

    { "caps-no-nul", REALIZE_FAILS, "not NUL-terminated" },
    { "caps-not-json", REALIZE_FAILS, "malformed capabilities" },
    { "caps-max-fds-0", REALIZE_FAILS, "max_msg_fds" },
    { "caps-xfer-2p40", REALIZE_FAILS, "max_data_xfer_size" },
    { "caps-xfer-string", REALIZE_FAILS, "max_data_xfer_size" },
    { "version-major-2", REALIZE_FAILS, "protocol version 2.1" },
    { "version-minor-9999", REALIZE_FAILS, "protocol version 0.9999" },
    { "version-short", REALIZE_FAILS, "too short" },

    /* NEW: liveness */
    { "flood-dma", WORKS, .check = hostile_check_flood_live,
      .check_end = hostile_check_flood },
    { "stall-big-dma", FAILS_LATER },
    { "slow-replies", REALIZE_FAILS, "500 ms",
      .check_end = hostile_check_slow },
    { "mute-after-realize", FAILS_LATER, .check_end = hostile_check_mute },
};

static void add_migration_tests(void)
{
    size_t i;

    qtest_add_func("/vfio-user/migration/stop-copy", test_migration_stop_copy);
    qtest_add_func("/vfio-user/migration/pre-copy", test_migration_pre_copy);
    for (i = 0; i < G_N_ELEMENTS(mig_faults); i++) {
        g_autofree char *path = g_strdup_printf(
            "/vfio-user/migration/fault/%s", mig_faults[i].fault);

        qtest_add_data_func(path, &mig_faults[i], test_migration_fault);
    }
    qtest_add_data_func("/vfio-user/migration/dma-dirty/messages",
                        GINT_TO_POINTER(false), test_migration_dma_dirty);
    qtest_add_data_func("/vfio-user/migration/dma-dirty/shared-memory",
                        GINT_TO_POINTER(true), test_migration_dma_dirty);
    qtest_add_func("/vfio-user/migration/dma-dirty/pre-copy",
                   test_migration_dma_precopy);
    qtest_add_func("/vfio-user/migration/p2p-ignored",
                   test_migration_p2p_ignored);
    qtest_add_func("/vfio-user/migration/no-dst-server",
                   test_migration_no_dst_server);
    qtest_add_func("/vfio-user/migration/server-hang", test_migration_hang);
    qtest_add_func("/vfio-user/migration/unsupported",
                   test_migration_unsupported);
    qtest_add_func("/vfio-user/migration/no-dirty-tracking",
                   test_migration_no_dirty_tracking);
    qtest_add_func("/vfio-user/migration/exit-server-gone",
                   test_migration_exit_server_gone);
}

static void add_hostile_tests(void)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(hostile_cases); i++) {
        g_autofree char *path = g_strdup_printf(
            "/vfio-user/raw-server/hostile/%s", hostile_cases[i].name);

        qtest_add_data_func(path, &hostile_cases[i], test_hostile);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    if (!strcmp(qtest_get_arch(), "aarch64")) {
        qtest_add_data_func("/vfio-user/server/dma-messages",
                            GINT_TO_POINTER(false), test_server_sample_dma);
        qtest_add_data_func("/vfio-user/server/dma-shared-memory",
                            GINT_TO_POINTER(true), test_server_sample_dma);
        return g_test_run();
    }

    qtest_add_func("/vfio-user/gpio/config-space", test_gpio_config);
    qtest_add_func("/vfio-user/gpio/bar2-read", test_gpio_bar2);
    qtest_add_func("/vfio-user/socket/syntaxes", test_socket_syntax);
    qtest_add_func("/vfio-user/socket/fd-hotplug", test_socket_fd_hotplug);
    qtest_add_func("/vfio-user/null/config-only", test_null_config_only);
    qtest_add_func("/vfio-user/server/sparse-mmap", test_server_sparse_mmap);
    qtest_add_func("/vfio-user/server/unsealed-not-mapped",
                   test_server_unsealed_not_mapped);
    qtest_add_func("/vfio-user/test-server/access-sizes", test_access_sizes);
    qtest_add_func("/vfio-user/test-server/bar-mmap", test_bar_mmap);
    qtest_add_func("/vfio-user/test-server/bar-no-mmap", test_bar_no_mmap);
    qtest_add_func("/vfio-user/test-server/intx", test_intx);
    qtest_add_func("/vfio-user/test-server/dma-messages", test_dma_messages);
    qtest_add_func("/vfio-user/test-server/dma-shared", test_dma_shared);
    qtest_add_func("/vfio-user/test-server/msix", test_msix);
    qtest_add_func("/vfio-user/test-server/msi", test_msi);
    qtest_add_func("/vfio-user/test-server/hostile-dma", test_hostile_dma);
    qtest_add_func("/vfio-user/test-server/memory-hotplug",
                   test_memory_hotplug);
    qtest_add_func("/vfio-user/test-server/reset", test_reset);
    qtest_add_func("/vfio-user/test-server/server-death", test_server_death);
    qtest_add_func("/vfio-user/hotplug/no-fd-leak", test_hotplug_no_fd_leak);
    qtest_add_func("/vfio-user/raw-server/ioeventfd", test_raw_ioeventfd);
    qtest_add_func("/vfio-user/raw-server/shadow-ioeventfd", test_raw_shadow);
    qtest_add_func("/vfio-user/raw-server/ioregionfd", test_raw_ioregionfd);
    qtest_add_func("/vfio-user/raw-server/bad-entries", test_raw_bad_entries);
    qtest_add_func("/vfio-user/raw-server/bad-layouts", test_raw_bad_layouts);
    qtest_add_func("/vfio-user/raw-server/reset-unplug",
                   test_raw_reset_unplug);
    qtest_add_func("/vfio-user/raw-server/server-hang", test_raw_server_hang);
    qtest_add_func("/vfio-user/test-server/reconnect", test_reconnect);
    qtest_add_func("/vfio-user/test-server/reconnect-unanswered",
                   test_reconnect_unanswered);
    qtest_add_func("/vfio-user/raw-server/server-death",
                   test_raw_server_death);
    qtest_add_func("/vfio-user/raw-server/posted-writes",
                   test_raw_posted_writes);
    qtest_add_func("/vfio-user/raw-server/failed-writes",
                   test_raw_failed_writes);
    qtest_add_func("/vfio-user/raw-server/dma-p2p", test_raw_dma_p2p);
    add_hostile_tests();
    add_migration_tests();
    qtest_add_func("/vfio-user/error/no-socket", test_error_no_socket);
    qtest_add_func("/vfio-user/error/missing-path", test_error_missing_path);
    qtest_add_func("/vfio-user/error/not-listening",
                   test_error_not_listening);
    qtest_add_func("/vfio-user/error/backlog-full", test_error_backlog_full);
    qtest_add_func("/vfio-user/error/closed-in-negotiation",
                   test_error_closed_in_negotiation);
    qtest_add_func("/vfio-user/error/major-version",
                   test_error_major_version);
    qtest_add_func("/vfio-user/error/malformed-json",
                   test_error_malformed_json);
    qtest_add_func("/vfio-user/error/caps-type", test_error_caps_type);
    qtest_add_func("/vfio-user/error/timeout", test_error_timeout);

    return g_test_run();
}
