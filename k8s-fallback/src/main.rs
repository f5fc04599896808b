//! `k8s-fallback`: configuration from the environment, JSON logs (the core's schema, `LOG_LEVEL`;
//! `LOG_FORMAT=text` for people), then [`k8s_fallback::run`].

fn main() -> std::process::ExitCode {
    // Read first: the log lines carry the configured deployment (its one reading, blank
    // filtered); a configuration error is logged once the logger is up.
    let cfg = k8s_fallback::config::from_lookup(|name| std::env::var(name).ok());
    let json = std::env::var("LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    let filter = k8s_fallback::telemetry::filter(
        std::env::var("RUST_LOG").ok(),
        std::env::var("LOG_LEVEL").ok(),
    );
    if json {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let deployment = match &cfg {
            Ok(cfg) => cfg.deployment_id.clone(),
            Err(_) => "fallback".into(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(k8s_fallback::telemetry::JsonLines { deployment })
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    k8s_fallback::telemetry::install_panic_hook();
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!("configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("could not start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(k8s_fallback::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
