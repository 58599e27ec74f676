//! The gpucloud control plane. `http/` parses and authenticates, `app/` decides, the store
//! persists; `tasks/` are the reconcilers (scheduling, heartbeat watch) and `fake_agent` runs
//! nodes without hardware for dev mode and tests, through the same interface a real agent uses.

pub mod app;
pub mod chaos;
pub mod dev;
pub mod fake_agent;
pub mod http;
pub mod tasks;

use app::{App, Config};
use gpucloud_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running server: its address, and the handles of what it spawned.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the HTTP server and the background tasks (tests use it; a real server runs until
    /// it is killed, and loses nothing when it is).
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// Waits until the HTTP server stops (it does not, unless it fails).
    pub async fn wait(mut self) {
        if let Some(http) = self.tasks.pop() {
            let _ = http.await;
        }
    }
}

/// Opens (and migrates) the database at `url`, then [`start_with`]: what `gpucloud serve` and
/// `gpucloud dev` run, so no front end opens a store itself.
pub async fn start_on(
    url: &str,
    config: Config,
    listen: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<Running, String> {
    let store = gpucloud_store::open(url).await.map_err(|e| format!("opening {url}: {e}"))?;
    start_with(store, config, listen, tls).await.map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// Binds `listen`, starts the reconcilers (and fake agents when configured) and serves the API.
pub async fn start(store: Arc<dyn Store>, config: Config, listen: &str) -> std::io::Result<Running> {
    start_with(store, config, listen, None).await
}

/// As [`start`], serving HTTPS when `tls` is given.
pub async fn start_with(
    store: Arc<dyn Store>,
    mut config: Config,
    listen: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if config.public_url.is_empty() {
        let host = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
        let scheme = if tls.is_some() { "https" } else { "http" };
        config.public_url = format!("{scheme}://{}", SocketAddr::new(host, addr.port()));
    }
    config.public_url = config.public_url.trim_end_matches('/').to_string();
    let app = Arc::new(App::new(store, config));
    let mut tasks = tasks::spawn_all(app.clone());
    let router = http::router(app.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = gpucloud_tls::serve(listener, tls, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }));
    Ok(Running { addr, app, tasks })
}
