//! `--metrics-addr IP:PORT`: the metrics the library records (see
//! `garivini::telemetry`), served as Prometheus text by the roles and by
//! gv_consume.

/// Serves the metrics the library records (see `garivini::telemetry`) as
/// Prometheus text, with their HELP lines, on `http://ADDR/metrics` (any
/// other path: 404). Fails (one line) if the address cannot be bound.
pub async fn serve(addr: &str) -> anyhow::Result<()> {
    let socket: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --metrics-addr {addr:?}: expected IP:PORT"))?;
    let listener = tokio::net::TcpListener::bind(socket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(garivini::telemetry::BUCKETS)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    garivini::telemetry::describe();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "the metrics endpoint ended");
        }
    });
    tracing::info!(addr, "serving Prometheus metrics on /metrics");
    Ok(())
}
