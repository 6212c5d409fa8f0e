//! Where the databases and job servers are: the `--dsn` and `--gearmand`
//! flags (and their environment variables) every binary takes.

use std::sync::Arc;

use anyhow::Context as _;
use garivini::config::{parse_dsn_list, parse_gearmand_list};
use garivini::Store;

/// Where the databases and job servers are.
#[derive(clap::Args, Debug, Clone)]
pub struct Servers {
    /// Databases: mysql:// URLs, comma separated (ids 1..n in this order).
    #[arg(long, env = "GARIVINI_DSN", hide_env_values = true, global = true)]
    pub dsn: Option<String>,
    /// gearmand servers: host:port, comma separated.
    #[arg(long, env = "GARIVINI_GEARMAND", global = true)]
    pub gearmand: Option<String>,
}

impl Servers {
    /// Connects to every database and checks it has the job table; fails
    /// when none answers (a command, a client).
    pub async fn store(&self) -> anyhow::Result<Arc<Store>> {
        let dbs = parse_dsn_list(self.dsn.as_deref().unwrap_or_default())?;
        let store = Store::connect(dbs).await.context("cannot start")?;
        Ok(Arc::new(store))
    }

    /// [`Servers::store`] for a process that serves (the roles, the web
    /// role): it starts even when no database answers, and takes each up
    /// once it does ([`Store::connect_or_wait`]).
    #[allow(dead_code)] // gv_inject and gv_consume share this file
    pub async fn serving_store(&self) -> anyhow::Result<Arc<Store>> {
        let dbs = parse_dsn_list(self.dsn.as_deref().unwrap_or_default())?;
        let store = Store::connect_or_wait(dbs).await.context("cannot start")?;
        Ok(Arc::new(store))
    }

    /// The gearmand list.
    pub fn gearmand(&self) -> anyhow::Result<Vec<String>> {
        Ok(parse_gearmand_list(
            self.gearmand.as_deref().unwrap_or_default(),
        )?)
    }
}
