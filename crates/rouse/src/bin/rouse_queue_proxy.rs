//! `rouse-queue-proxy`: the queue-proxy sidecar (the same as `rouse queue-proxy`, configured
//! by Knative's environment contract), in a binary that links only what the sidecar runs.

fn main() -> std::process::ExitCode {
    rouse::cli::sidecar_main()
}
