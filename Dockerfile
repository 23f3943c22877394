# syntax=docker/dockerfile:1
#
# usagebreaker: a static binary on distroless, running as a non-root user.
#
#   docker build -t usagebreaker \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) .
#
# docs/DEPLOY.md shows how to run it. deploy/dockerfile_test.go parses
# this file: it builds the binary with exactly the go build line below, checks
# that it is static, and runs ENTRYPOINT + CMD, HEALTHCHECK and USER in an
# empty root. Keep the go build a RUN of its own (no && or ;).

# The builder: a pinned Go release (go.mod needs 1.26). It runs on the build
# host's platform and cross-compiles for the target (docker buildx).
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download && go mod verify
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false \
      -ldflags="-s -w -X github.com/usagebreaker/usagebreaker/internal/version.Version=${VERSION} -X github.com/usagebreaker/usagebreaker/internal/version.Revision=${REVISION}" \
      -o /out/usagebreaker ./cmd/usagebreaker
# The state directory, owned by the runtime user so that a new volume is writable.
RUN mkdir -p /out/state && chown 65532:65532 /out/state && chmod 0700 /out/state

# The image: no shell, no package manager; CA certificates, tzdata and
# /etc/passwd come with distroless/static.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="usagebreaker" \
      org.opencontainers.image.description="Circuit breaker for Twilio subaccounts" \
      org.opencontainers.image.source="https://github.com/usagebreaker/usagebreaker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/usagebreaker /usagebreaker
COPY --from=build --chown=65532:65532 /out/state /var/lib/usagebreaker
# distroless's "nonroot", numeric so that Kubernetes can check runAsNonRoot.
USER 65532:65532
# 8080: the Twilio-facing callback listener (server.listen).
# 9111: metrics, health, reload and the admin API (server.admin_listen); keep it private.
EXPOSE 8080 9111
# The SQLite state (state.path: /var/lib/usagebreaker/usagebreaker.db).
VOLUME ["/var/lib/usagebreaker"]
# No shell in the image: the binary checks itself (GET /-/healthy on 127.0.0.1:9111).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usagebreaker", "healthcheck"]
# SIGTERM: stop taking callbacks, finish in-flight work, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usagebreaker"]
CMD ["run", "--config", "/etc/usagebreaker/config.yaml"]
