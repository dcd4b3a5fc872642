# vfio-user-pci: build and test our patch series on Debian's QEMU 10.0.
#
#   make          install build deps, fetch QEMU, apply the series, build
#   make check    run the tests, then verify the exported series
#   make series   export the series as git format-patch files (out/series)
#   make bench    measure vfio-user-pci beside in-process devices (out/bench)
#
# SPDX-License-Identifier: GPL-2.0-or-later

SHELL := /bin/bash
REPO := $(CURDIR)
BUILD := $(REPO)/build
STAMPS := $(BUILD)/stamps
PRISTINE := $(BUILD)/qemu-pristine
TREE := $(BUILD)/qemu
QEMU_BUILD := $(TREE)/build
SERIES_OUT := $(REPO)/out/series
JOBS ?= $(shell nproc)

# Let ccache share results between checkouts in different directories
export CCACHE_BASEDIR := $(REPO)
export CCACHE_NOHASHDIR := true

# configure names the compiler to meson itself, so meson never adds ccache:
# name it with ccache (installed by the deps step)
CONFIGURE_FLAGS := \
	--cc="ccache cc" \
	--python=/usr/bin/python3 \
	--target-list=x86_64-softmmu,aarch64-softmmu \
	--enable-kvm --enable-tcg \
	--enable-slirp \
	--enable-vfio-user-server \
	--disable-docs --disable-user \
	--disable-werror \
	--disable-install-blobs \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu

SAMPLES := gpio-pci-idio-16 server null client
QTEST_TARGETS := tests/qtest/vfio-user-test \
	tests/qtest/vfio-user-test-server \
	tests/qtest/vfio-user-raw-server \
	$(addprefix subprojects/libvfio-user/samples/,$(SAMPLES))
NINJA_TARGETS := qemu-system-x86_64 qemu-system-aarch64 $(QTEST_TARGETS)

# A second build of the same tree, with ASan and UBSan, for the x86_64
# qtest only.  Same device-relevant options as above (KVM, TCG, the
# vfio-user server, hence multiprocess, so the test servers and samples
# build); everything optional that our tests do not touch is left out to
# keep it small.  UBSan is fatal at build time, so no UBSAN_OPTIONS can
# make it recover.  clang, not gcc: with gcc's separate libubsan next to
# libasan, UBSan ignores log_path and reports only on stderr, which a test
# may have sent anywhere; and clang leaves the ASan runtime out of shared
# libraries (libvfio-user.so), so they may not insist on no undefined
# symbols (b_lundef).  Out of tree (configure run in $(TREE) itself would
# wipe $(TREE)/build) and kept by prepare-tree.sh's git clean.
ASAN_BUILD := $(TREE)/build-asan
ASAN_CONFIGURE_FLAGS := \
	--cc="ccache clang" -Db_lundef=false \
	--python=/usr/bin/python3 \
	--target-list=x86_64-softmmu \
	--without-default-features \
	--enable-kvm --enable-tcg \
	--enable-multiprocess --enable-vfio-user-server \
	--enable-asan --enable-ubsan \
	--extra-cflags=-fno-sanitize-recover=undefined \
	--disable-docs --disable-user --disable-tools \
	--disable-werror \
	--disable-install-blobs \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
ASAN_NINJA_TARGETS := qemu-system-x86_64 $(QTEST_TARGETS)

GUEST := $(BUILD)/guest
QEMU_BIN := $(BUILD)/qemu-system-x86_64

.PHONY: all deps fetch tree configure qemu qemu-asan guest check series \
	check-series demo bench fuzz clean FORCE

all: qemu guest

deps: $(STAMPS)/deps
$(STAMPS)/deps: harness/install-deps.sh
	@mkdir -p $(STAMPS)
	harness/install-deps.sh $@

fetch: $(PRISTINE)/.git/debian-version
$(PRISTINE)/.git/debian-version: BASE_VERSION $(STAMPS)/deps
	harness/fetch-qemu.sh BASE_VERSION $(BUILD)/dl $(PRISTINE)

tree: fetch
	harness/prepare-tree.sh $(REPO) $(PRISTINE) $(TREE)

# Reconfigure when the flags change: the file changes only then
$(STAMPS)/configure-flags: FORCE
	@mkdir -p $(STAMPS)
	@echo '$(CONFIGURE_FLAGS)' | cmp -s - $@ || echo '$(CONFIGURE_FLAGS)' > $@

configure: $(QEMU_BUILD)/build.ninja
$(QEMU_BUILD)/build.ninja: $(STAMPS)/configure-flags | tree
	cd $(TREE) && ./configure $(CONFIGURE_FLAGS) > $(BUILD)/configure.log 2>&1 || \
		{ tail -30 $(BUILD)/configure.log; exit 1; }

# Debian's firmware, where a binary run from the build tree looks for it
FIRMWARE_DIRS := /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu

qemu: tree configure
	ninja -C $(QEMU_BUILD) -j$(JOBS) $(NINJA_TARGETS)
	for d in $(FIRMWARE_DIRS); do \
		mkdir -p $(QEMU_BUILD)/qemu-bundle$$(dirname $$d); \
		ln -sfn $$d $(QEMU_BUILD)/qemu-bundle$$d; \
	done
	ln -sf qemu/build/qemu-system-x86_64 $(BUILD)/qemu-system-x86_64

$(STAMPS)/asan-configure-flags: FORCE
	@mkdir -p $(STAMPS)
	@echo '$(ASAN_CONFIGURE_FLAGS)' | cmp -s - $@ || \
		echo '$(ASAN_CONFIGURE_FLAGS)' > $@

$(ASAN_BUILD)/build.ninja: $(STAMPS)/asan-configure-flags | tree
	mkdir -p $(ASAN_BUILD)
	cd $(ASAN_BUILD) && ../configure $(ASAN_CONFIGURE_FLAGS) \
		> $(BUILD)/configure-asan.log 2>&1 || \
		{ tail -30 $(BUILD)/configure-asan.log; exit 1; }

# Only what the sanitized qtest run needs (run-tests.sh, x86_64:asan)
qemu-asan: tree $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD) -j$(JOBS) $(ASAN_NINJA_TARGETS)
	for d in $(FIRMWARE_DIRS); do \
		mkdir -p $(ASAN_BUILD)/qemu-bundle$$(dirname $$d); \
		ln -sfn $$d $(ASAN_BUILD)/qemu-bundle$$d; \
	done

# The Linux test guest: Debian's kernel and busybox in an initramfs;
# and a bare-metal multiboot guest that runs under KVM here
MSIX_GUEST_SRC := $(wildcard harness/guest/msix-guest/*)
BENCH_GUEST_SRC := $(wildcard harness/guest/bench-guest/*)
guest: $(STAMPS)/deps $(GUEST)/msix-guest.elf $(GUEST)/msi-guest.elf \
		$(GUEST)/bench-guest.elf
	harness/build-guest.sh $(REPO) $(GUEST)

# The same program, driving MSI-X or (-DGUEST_USE_MSI) MSI
$(GUEST)/msix-guest.elf: GUEST_CFLAGS :=
$(GUEST)/msi-guest.elf: GUEST_CFLAGS := -DGUEST_USE_MSI
$(GUEST)/msix-guest.elf $(GUEST)/msi-guest.elf: $(MSIX_GUEST_SRC)
	@mkdir -p $(GUEST)
	gcc -m32 -march=i686 -ffreestanding -fno-pic -fno-pie \
		-fno-stack-protector -nostdlib -static -O2 -Wall -Werror \
		-Wl,--build-id=none -Wl,--no-warn-rwx-segments \
		-Wl,-T,harness/guest/msix-guest/link.ld $(GUEST_CFLAGS) -o $@ \
		harness/guest/msix-guest/entry.S harness/guest/msix-guest/main.c

# Times and checks register accesses (harness/bench, harness/kvm-iofds.sh);
# keeps a device busy beside a vCPU that is not (harness/bql-wait.sh)
$(GUEST)/bench-guest.elf: $(BENCH_GUEST_SRC)
	@mkdir -p $(GUEST)
	gcc -m32 -march=i686 -ffreestanding -fno-pic -fno-pie \
		-fno-stack-protector -nostdlib -static -O2 -Wall -Werror \
		-Wl,--build-id=none -Wl,--no-warn-rwx-segments \
		-Wl,-T,harness/guest/bench-guest/link.ld -o $@ \
		harness/guest/bench-guest/entry.S harness/guest/bench-guest/main.c

check: qemu qemu-asan guest
	harness/run-tests.sh --asan $(ASAN_BUILD) \
		$(QEMU_BUILD) $(REPO)/out/test-results \
		"e2e: Linux guest, NVMe via x-vfio-user-server, MSI-X" \
		"$(REPO)/harness/e2e-nvme.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-nvme shared" \
		"e2e: Linux guest, virtio-blk via x-vfio-user-server (iommu_platform=on), MSI-X" \
		"$(REPO)/harness/e2e-nvme.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-virtio-blk shared virtio-blk" \
		"e2e: Linux guest, SCSI disk on megasas-gen2 via x-vfio-user-server, MSI-X" \
		"$(REPO)/harness/e2e-nvme.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-scsi shared scsi" \
		"e2e: Linux guest with intel-iommu, NVMe via x-vfio-user-server" \
		"$(REPO)/harness/e2e-nvme.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-nvme-iommu shared iommu" \
		"libvirt: the docs' domain XML with NVMe, destroy, missing server, socket permissions" \
		"$(REPO)/harness/libvirt.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/libvirt $(REPO)/docs/system/devices/vfio-user.rst" \
		"e2e: NVMe server killed and restarted, the Linux guest recovers" \
		"$(REPO)/harness/e2e-nvme-reconnect.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-nvme-reconnect" \
		"e2e: NVMe server stopped under I/O, the monitor and the guest run on" \
		"$(REPO)/harness/e2e-nvme-hang.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/e2e-nvme-hang" \
		"kvm: bare-metal guest, MSI-X through KVM irqfd" \
		"$(REPO)/harness/kvm-msix.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-test-server $(GUEST)/msix-guest.elf $(REPO)/out/kvm-msix msix" \
		"kvm: bare-metal guest, MSI through KVM irqfd" \
		"$(REPO)/harness/kvm-msix.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-test-server $(GUEST)/msi-guest.elf $(REPO)/out/kvm-msi msi" \
		"tcg: bare-metal guest, every kind of I/O fd takes its accesses" \
		"$(REPO)/harness/kvm-iofds.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-iofds tcg" \
		"kvm: bare-metal guest, ioeventfd doorbells signalled by KVM" \
		"$(REPO)/harness/kvm-iofds.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/kvm-iofds kvm" \
		"tcg: monitor and other vCPUs run while a vCPU waits for a stopped server" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-bql-wait tcg" \
		"kvm: monitor and other vCPUs run while a vCPU waits for a stopped server" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/kvm-bql-wait kvm" \
		"tcg: a device unplugged while a vCPU's config read waits for its server" \
		"$(REPO)/harness/unplug-race.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-unplug-race" \
		"tcg: the same, the vCPU waiting in a config space access" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-bql-wait-config tcg config" \
		"kvm: the same, the vCPU waiting in a config space access" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/kvm-bql-wait-config kvm config" \
		"tcg: the same, the vCPU waiting for an ioregionfd's response" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-bql-wait-ioregionfd tcg ioregionfd" \
		"tcg: the same, the vCPU masking and unmasking an MSI-X vector (SET_IRQS)" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-bql-wait-msix tcg msix" \
		"tcg: the same, the vCPU turning MSI-X off (INTx wired instead) and on" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-bql-wait-msix-enable tcg msix-enable" \
		"kvm: the same under KVM (INTx through KVM's resample irqfd)" \
		"$(REPO)/harness/bql-wait.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/kvm-bql-wait-msix-enable kvm msix-enable" \
		"tcg: a VM migrated while its guest drives the device and takes MSI-X" \
		"$(REPO)/harness/migrate-guest.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/tcg-migrate-guest tcg" \
		"kvm: the same under KVM (MSI-X through the destination's irqfd)" \
		"$(REPO)/harness/migrate-guest.sh $(QEMU_BIN) $(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(GUEST)/bench-guest.elf $(REPO)/out/kvm-migrate-guest kvm" \
		"series: export, git am, checkpatch" \
		"$(MAKE) -C $(REPO) --no-print-directory check-series" \
		"fuzz: server messages through check.c, libFuzzer + ASan/UBSan, 60 s" \
		"$(REPO)/harness/fuzz.sh $(REPO) $(QEMU_BUILD) $(REPO)/out/fuzz-check 60"

# Show a new user the whole thing working
demo: qemu guest
	harness/demo.sh $(QEMU_BIN) $(GUEST) $(REPO)/out/demo

# The same fuzz target for longer (FUZZ_SECONDS, default 10 minutes)
FUZZ_SECONDS ?= 600
fuzz: qemu
	harness/fuzz.sh $(REPO) $(QEMU_BUILD) $(REPO)/out/fuzz $(FUZZ_SECONDS)

# Side by side timings on this machine: a tool, not a test (not in CI)
bench: qemu guest
	harness/bench/run.sh $(QEMU_BIN) $(GUEST) \
		$(QEMU_BUILD)/tests/qtest/vfio-user-raw-server $(REPO)/out/bench

series:
	harness/export-series.sh $(REPO) $(PRISTINE) $(SERIES_OUT)

check-series: series
	harness/check-series.sh $(PRISTINE) $(TREE) $(SERIES_OUT)

clean:
	rm -rf $(BUILD) $(REPO)/out
