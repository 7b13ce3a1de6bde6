# A small static image: the binary built for musl, CA certificates, nothing else.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang ca-certificates
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p commit-status-controller \
 && cp target/release/commit-status-controller /commit-status-controller

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /commit-status-controller /commit-status-controller
USER 65532:65532
EXPOSE 9090 8080 9440
ENTRYPOINT ["/commit-status-controller"]
