//! k8s-fallback: the native host of the piano core, for operators who do not run on Cloudflare.
//!
//! **Status: not built yet.** This crate exists so the workspace already has its final shape
//! and so the core keeps compiling for native targets. Nothing here serves players yet.
//!
//! What it will be (DESIGN §6): a tokio + axum server hosting the same `piano-core` room and
//! lobby state machines with the same URL paths, protobuf protocol and Ed25519 tokens as the
//! edge worker; embedded local persistence with no configuration; with `REDIS_URL` set, several
//! stateless replicas cooperating through a per-room lease and pub/sub in Redis; Prometheus
//! `/metrics`, `/healthz`, `/readyz`, JSON logs, graceful drain on SIGTERM; and the Kubernetes
//! manifests and Dockerfile under `k8s-fallback/k8s/`.

/// Shown by the binary until the server exists, so nobody mistakes it for a working host.
pub const NOT_YET: &str =
    "k8s-fallback is not implemented yet: run the edge server with `npm run dev`";
