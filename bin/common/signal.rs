//! SIGINT and SIGTERM as a shutdown token, for the binaries that run until
//! told to stop.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM; a second one exits
/// at once. Must be called within the runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let t = token.clone();
    // Registered before this returns, not in the task: a signal that comes
    // before the task first runs is not lost (it would end the process).
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return token;
    };
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if n > 0 {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            tracing::info!("signal received: finishing work in hand (signal again to exit now)");
            t.cancel();
        }
    });
    token
}
