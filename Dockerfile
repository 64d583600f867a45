# ublk-csi plugin image, on Debian bookworm: the runtime stage holds only the
# runtime libraries and the programs the plugin runs (mkfs.ext4, mkfs.xfs,
# resize2fs, xfs_growfs, mount, umount, blkid, modprobe); the build stage
# compiles against the same Debian packages as a developer machine
# (scripts/install-deps.sh); the final stage is the runtime plus the two
# binaries.
#
# Built offline by scripts/build-image.sh (`make image`), which makes the base
# image itself with debootstrap; any debian:bookworm-slim works as BASE.
ARG BASE=debian:bookworm-slim

# The runtime: the libraries and programs the plugin needs (librbd1 and
# librados2 are loaded on the first RBD connection, ublk/rbd_api.h). gRPC,
# protobuf, abseil and liburing are linked into the binaries (STATIC_DEPS,
# cmake/StaticDeps.cmake). Also the base of `scripts/build-image.sh
# --binaries DIR` (an image of binaries built outside, in a tree configured
# the same way; image-check below refuses binaries that need more).
FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libgoogle-glog0v6 libgflags2.2 libprometheus-cpp-core1.0 libcivetweb1 librbd1 librados2 \
      e2fsprogs xfsprogs util-linux mount kmod \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
COPY scripts/packaging/image-check.sh /usr/local/libexec/ublk-csi/image-check

FROM ${BASE} AS build
# Lets build-image.sh prune superseded build stages (see there).
LABEL org.ublk-csi.stage=build
ENV DEBIAN_FRONTEND=noninteractive
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY CMakeLists.txt /src/
COPY cmake /src/cmake
COPY proto /src/proto
COPY ublk /src/ublk
COPY csi /src/csi
COPY tests /src/tests
# Only the two shipped binaries; -j2 because build machines here have 2 cores.
# RelWithDebInfo is the configuration the unit tests run in (gcc 12 at -O3
# raises false -Wrestrict errors in libstdc++); the binaries are stripped.
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null \
 && ninja -C /build -j2 ublk-csi ublk-csi-ctl \
 && install -D -s -m 0755 /build/csi/ublk-csi /out/usr/local/bin/ublk-csi \
 && install -D -s -m 0755 /build/csi/ublk-csi-ctl /out/usr/local/bin/ublk-csi-ctl

FROM runtime
COPY --from=build /out/ /
# Fail the build here, not on a node, if a runtime library or program is missing.
RUN /usr/local/libexec/ublk-csi/image-check
LABEL org.opencontainers.image.title="ublk-csi" \
      org.opencontainers.image.description="Kubernetes CSI plugin serving node-local volumes as ublk block devices"
ENTRYPOINT ["/usr/local/bin/ublk-csi"]
