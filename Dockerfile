# The Rouse image: two static binaries and a CA bundle, nothing else (no shell, no libc, no
# package manager), running as a non-root user. `rouse` is every control-plane role as a subcommand
# (`controller`, `activator`, `gateway`; `queue-proxy` too); `rouse-queue-proxy` is the
# sidecar in every revision pod, built without the rest of the platform linked in (the
# Deployment's queue-proxy container runs it as its command).
#
# The binaries are built on the host (the build needs no registry), statically linked against
# glibc, then copied in:
#
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --locked -p rouse --bins --target x86_64-unknown-linux-gnu
#   strip target/x86_64-unknown-linux-gnu/release/rouse \
#     target/x86_64-unknown-linux-gnu/release/rouse-queue-proxy
#   cp /etc/ssl/certs/ca-certificates.crt target/ca-certificates.crt
#   docker build -t rouse:dev .
#
# The CA bundle (the build machine's) is what the controller trusts when it resolves image
# tags to digests at registries over HTTPS; SSL_CERT_FILE points at another bundle.
#
# (The release profile keeps line tables for backtraces: unstripped, the image is 315 MB;
# stripped, 43 MB.)
# `--target` keeps the static build apart from the ordinary one (and keeps RUSTFLAGS away from
# build scripts). A debug build works too:
#   docker build --build-arg PROFILE=debug -t rouse:dev .
# See docs/kubernetes.md.
FROM scratch
ARG PROFILE=release
COPY target/x86_64-unknown-linux-gnu/${PROFILE}/rouse /rouse
COPY target/x86_64-unknown-linux-gnu/${PROFILE}/rouse-queue-proxy /rouse-queue-proxy
COPY target/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# A numeric user: the image has no /etc/passwd. Kubernetes' runAsNonRoot checks the number.
USER 65532:65532
ENTRYPOINT ["/rouse"]
