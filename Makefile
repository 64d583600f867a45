# A thin wrapper over CMake. The README's two commands: `make demo`, `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
CLANG_BUILD ?= build-clang
FUZZ_SECONDS ?= 30
SCENARIO   ?=
KERNEL     ?= 6.12

# The plain tree (RelWithDebInfo): what build, build-bins and the bench
# targets configure.
CONFIGURE_PLAIN = cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

.PHONY: all deps build build-bins build-asan build-tsan test unit-test asan-test tsan-test demo e2e clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD)

# The programs alone (ublk-csi, ublk-csi-ctl, ublk-tool): what the guest
# scenarios, the demo and the image need, without compiling the tests. The
# plain tree links gRPC, protobuf, abseil and liburing statically
# (STATIC_DEPS, cmake/StaticDeps.cmake: a process start in the guest is on
# the path of every recovery); the sanitizer and clang trees, which only run
# tests, keep the shared objects.
BINS := ublk-csi ublk-csi-ctl ublk-tool
build-bins: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) $(BINS)

# The ASan+UBSan tree is also the fuzz tree: clang-14 with libFuzzer's
# coverage (-DFUZZ=ON), so one compile serves the unit tests and the fuzzers
# (two separate trees cost CI ~5 minutes). -O0: a translation unit compiles
# in 12-14 s against 32 s at -O1 (and 18 s with gcc -O0); the tests and the
# fuzzers run a little slower. gcc's warnings stay checked by the plain tree.
# A tree configured otherwise is reconfigured from scratch.
build-asan: deps
	@grep -qs 'FUZZ:BOOL=ON' $(ASAN_BUILD)/CMakeCache.txt || rm -rf $(ASAN_BUILD)
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_C_FLAGS_DEBUG="-O0 -g" -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g" -DFUZZ=ON -DSTATIC_DEPS=OFF >/dev/null
	@ninja -C $(ASAN_BUILD)

# The TSan tree is built with clang-14, so the same compile also checks every
# thread-safety annotation (-Wthread-safety -Werror, as thread-safety-check):
# CI runs this one build instead of both. -O1: TSan at -O0 is several times
# slower. A tree configured with another compiler is reconfigured from scratch.
build-tsan: deps
	@grep -qs 'CMAKE_CXX_COMPILER:.*clang++-14' $(TSAN_BUILD)/CMakeCache.txt || rm -rf $(TSAN_BUILD)
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_C_FLAGS_DEBUG="-O1 -g" -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DSANITIZE=thread -DSTATIC_DEPS=OFF >/dev/null
	@ninja -C $(TSAN_BUILD)

unit-test: build
	@cd $(BUILD) && ctest --output-on-failure -j2

asan-test: build-asan
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j2

# external_symbolizer_path: tests run the plugin binaries as subprocesses,
# whose reports must be symbolized for tests/tsan.supp to match them.
tsan-test: build-tsan
	@cd $(TSAN_BUILD) && TSAN_OPTIONS="halt_on_error=1 external_symbolizer_path=$$(command -v llvm-symbolizer-14) suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --output-on-failure -j2

# Every unit test under ASan+UBSan, and the programs in the plain build
# (`make unit-test` runs the tests in the plain build too; CI leaves that
# out: the same tests, ~8 of its minutes).
test: build-bins asan-test

# Real ublk devices: natively where the host kernel has ublk_drv, else in a
# qemu guest booting Debian's 6.12 kernel (tests/e2e).
# make e2e KERNEL=7 boots a 7.x kernel from trixie-backports instead;
# KERNEL="6.12 7" runs every scenario on both.
demo: build-bins
	@scripts/demo.sh $(BUILD)

e2e: build-bins
	@tests/e2e/run.sh --build-dir $(BUILD) --kernel "$(KERNEL)" $(SCENARIO)

# Kubernetes end to end (tests/e2e/k8s): a one-node cluster, the node in the
# ublk guest, the chart installed with helm; needs the Kubernetes bundle
# (../shared/k8s or K8S_BUNDLE_DIR). SCENARIO: some of tests/e2e/k8s/scenarios.
.PHONY: e2e-k8s deps-k8s
deps-k8s:
	@scripts/install-deps.sh --e2e-k8s

e2e-k8s: build-bins deps-k8s
	@tests/e2e/k8s/run.sh --build-dir $(BUILD) --kernel "$(KERNEL)" $(SCENARIO)

# The CI subset of e2e-k8s (issue 19: scenarios 1, 2, 3 and 6 on 6.12), with
# scenario 6 at K8S_CI_DELETES plugin pod deletes and K8S_CI_KILLS kill -9s
# under I/O (the full scenario: 3 and 3). Measured times: tests/e2e/README.md.
K8S_CI_SCENARIOS ?= 10-install 20-filesystem-pvc 30-block-pvc 60-restart-under-io
K8S_CI_DELETES ?= 3
K8S_CI_KILLS ?= 3
.PHONY: e2e-k8s-ci
e2e-k8s-ci: build-bins deps-k8s
	@K8S_POD_DELETES=$(K8S_CI_DELETES) K8S_PLUGIN_KILLS=$(K8S_CI_KILLS) \
	  tests/e2e/k8s/run.sh --build-dir $(BUILD) --kernel 6.12 $(K8S_CI_SCENARIOS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(CLANG_BUILD) build-fuzz

# Static checks. thread-safety-check compiles the tree with clang-14 and
# -Wthread-safety -Werror (every ABSL_GUARDED_BY on a ublk::Mutex checked);
# nothing is run. format-check: clang-format-14 and shellcheck, no edits
# (scripts/format.sh applies clang-format).
.PHONY: thread-safety-check format-check fuzz
thread-safety-check: deps
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(CLANG_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_C_FLAGS_DEBUG=-O0 -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DSTATIC_DEPS=OFF >/dev/null
	@ninja -C $(CLANG_BUILD)

format-check: deps
	@scripts/format.sh --check

# libFuzzer targets (tests/fuzz), built in the ASan+UBSan tree; each runs
# FUZZ_SECONDS from its seed corpus (tests/fuzz/corpus/<target>) and the run
# fails on the first crash, leak or timeout (reproducer under $(ASAN_BUILD)/fuzz-artifacts).
fuzz: build-asan
	@tests/fuzz/run.sh $(ASAN_BUILD) $(FUZZ_SECONDS)

# Packaging: chart lint/template/schema checks (tools cached under build/tools),
# and the plugin image built offline with podman (scripts/build-image.sh).
.PHONY: check-packaging image
check-packaging:
	@scripts/check-packaging.sh

image:
	@scripts/build-image.sh

# Benchmarks in the e2e guest (one boot): fio on ublk exports vs loop and
# null_blk, perf profiles, and the plugin's memory / recovery / control plane;
# writes bench/results/RESULTS.md and iops-ratios.png (KERNEL=7: the 7.x
# kernel, zero copy against the copy modes, into bench/results/kernel-7/).
# BENCH_RUNTIME (s per fio run, default 10) and BENCH_REPEATS (2) override.
.PHONY: bench
bench: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool ublk-csi ublk-csi-ctl
	@bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)

# The plugin part's two kill -9 recoveries alone (66 then 256 exports, fio on
# 8 of them across the kill), one 6.12 guest boot, ~5 min. Results in
# $(BUILD)/bench-recovery/RESULTS.md (not committed). BENCH_PLUGIN_ARGS adds
# ublk-csi flags, e.g. BENCH_PLUGIN_ARGS=--recovery-concurrency=16.
.PHONY: bench-recovery
bench-recovery: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool ublk-csi ublk-csi-ctl
	@BENCH_PARTS=recovery BENCH_OUT=$${BENCH_OUT:-$(BUILD)/bench-recovery} \
	  bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)

# RBD rows (issue 21), on demand: one image on a single-node Ceph in the guest
# (tests/e2e/lib/ceph.sh) through krbd (baseline), rbd-nbd and the project's
# RBD target (bench/rbd.sh), the same five fio jobs as `make bench`. One 6.12
# boot. Results in $(BUILD)/bench-rbd/RESULTS.md (section "RBD"); set
# BENCH_OUT=bench/results/rbd to commit them.
.PHONY: bench-rbd
bench-rbd: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool
	@BENCH_PARTS=data BENCH_GROUPS=rbd BENCH_OUT=$${BENCH_OUT:-$(BUILD)/bench-rbd} \
	  bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)

# The null rows against the kernel's own selftest ublk server (kublk, built
# from Debian's newest linux-source by bench/selftest-server.sh; liburing
# 2.9 of trixie, static), in one guest boot (~12 min on 6.12, ~16 on 7):
# the project's server in each copy mode, with and without busy polling,
# beside kublk in its copy modes (7.x: zero copy, auto buffer registration
# and UBLK_F_BATCH_IO too). Results in bench/results/selftest/ (6.12) or
# bench/results/selftest/kernel-7/; BENCH_OUT overrides.
SELFTEST_MODES_6.12 := user_copy user_copy_poll0 get_data selftest_copy selftest_user_copy
SELFTEST_MODES_7 := zero_copy zero_copy_poll0 user_copy user_copy_poll0 selftest_copy \
  selftest_user_copy selftest_zero_copy selftest_auto_zc selftest_batch selftest_batch_auto_zc
.PHONY: bench-selftest
bench-selftest: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool
	@BENCH_GROUPS=null BENCH_PARTS=data BENCH_WORKLOADS="$(QUICK_WORKLOADS)" \
	  BENCH_MODES="$(SELFTEST_MODES_$(KERNEL))" BENCH_RUNTIME=$${BENCH_RUNTIME:-8} BENCH_PF_SYSCALLS=0 \
	  BENCH_OUT=$${BENCH_OUT:-bench/results/selftest$(if $(filter 7,$(KERNEL)),/kernel-7)} \
	  bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)

# The file rows against the same server's loop target (kublk add -t loop:
# O_DIRECT on the backing file, as losetup --direct-io=on), in one guest boot
# (~17 min on 6.12, ~20 on 7): every workload on the tmpfs and ext4 backing
# files, the project's server in its copy modes beside kublk's and loop.
# Results in bench/results/selftest-files/ (6.12) or
# bench/results/selftest-files/kernel-7/; BENCH_OUT overrides.
SELFTEST_FILE_MODES_6.12 := user_copy get_data selftest_copy selftest_user_copy
SELFTEST_FILE_MODES_7 := zero_copy user_copy selftest_copy selftest_zero_copy selftest_auto_zc
.PHONY: bench-selftest-files
bench-selftest-files: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool
	@BENCH_GROUPS="tmpfs ext4" BENCH_PARTS=data \
	  BENCH_MODES="$(SELFTEST_FILE_MODES_$(KERNEL))" BENCH_RUNTIME=$${BENCH_RUNTIME:-8} BENCH_PF_SYSCALLS=0 \
	  BENCH_OUT=$${BENCH_OUT:-bench/results/selftest-files$(if $(filter 7,$(KERNEL)),/kernel-7)} \
	  bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)

# The data-path rows one change to the I/O loop should move, in one guest boot
# (~6 min instead of ~18): null and file-on-tmpfs against null_blk and loop,
# 4k randread/randwrite QD32, 4k randread QD1 and 128k seqread QD8, one copy
# mode, 8 s per run, two interleaved repeats; server CPU and context switches
# per I/O as in `make bench`. Results in $(BUILD)/bench-quick (not committed).
# Override: QUICK_MODES="user_copy get_data", QUICK_PARTS="data profile"
# (perf profiles of the same devices), BENCH_RUNTIME, BENCH_REPEATS.
QUICK_MODES ?= user_copy
QUICK_PARTS ?= data
QUICK_WORKLOADS ?= randread-4k-qd32 randwrite-4k-qd32 randread-4k-qd1 seqread-128k-qd8
.PHONY: bench-quick
bench-quick: deps
	@$(CONFIGURE_PLAIN)
	@ninja -C $(BUILD) ublk-tool
	@BENCH_GROUPS="tmpfs null" BENCH_PARTS="$(QUICK_PARTS)" BENCH_WORKLOADS="$(QUICK_WORKLOADS)" \
	  BENCH_MODES="$(QUICK_MODES)" BENCH_RUNTIME=$${BENCH_RUNTIME:-8} BENCH_PF_SYSCALLS=0 \
	  BENCH_OUT=$${BENCH_OUT:-$(BUILD)/bench-quick} bench/run.sh --build-dir $(BUILD) --kernel $(KERNEL)
