//! Running roles in one process: the QueueRunner, the Injector and the
//! Controller, on one set of database pools, until one shutdown token is
//! cancelled. `garivini queuerunner|injector|controller|workers` is flags
//! and signals around [`run`].

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, DEFAULT_MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::{controller, injector, queue_runner};

/// Which roles to run, each with its settings (`None`: not run).
#[derive(Debug, Clone)]
pub struct Config {
    /// Claims due rows and submits them to gearmand.
    pub queue_runner: Option<queue_runner::Config>,
    /// Serves `inject_jobs`.
    pub injector: Option<injector::Config>,
    /// Serves `run_queued_job`.
    pub controller: Option<controller::Config>,
    /// Serves the dashboard and the HTTP JSON API.
    #[cfg(feature = "web")]
    pub web: Option<crate::web::Config>,
    /// The Controller's: failures after which a job is parked as dead.
    pub max_attempts: u8,
}

impl Default for Config {
    /// No role yet; each role's settings are its `Config::default()`.
    fn default() -> Self {
        Config {
            queue_runner: None,
            injector: None,
            controller: None,
            #[cfg(feature = "web")]
            web: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl Config {
    /// Checks that there is a role to run and every role's settings.
    pub fn validate(&self) -> Result<()> {
        #[cfg(feature = "web")]
        let web = self.web.is_some();
        #[cfg(not(feature = "web"))]
        let web = false;
        if self.queue_runner.is_none()
            && self.injector.is_none()
            && self.controller.is_none()
            && !web
        {
            return Err(Error::invalid_config("roles", "name at least one role"));
        }
        if let Some(c) = &self.queue_runner {
            c.validate()?;
        }
        if let Some(c) = &self.injector {
            c.validate()?;
        }
        if let Some(c) = &self.controller {
            c.validate()?;
        }
        #[cfg(feature = "web")]
        if let Some(c) = &self.web {
            c.validate()?;
        }
        Ok(())
    }
}

/// Runs the roles of `roles` on `store` and `gearmand` until `shutdown` is
/// cancelled, and returns once every one of them has stopped (each bounded
/// by its own shutdown timeout).
///
/// Every setting is checked, and every role built, before the first one
/// starts: an error here means none ran. A role that panics is not
/// swallowed: the panic goes on in the caller, the other roles dropped.
///
/// Nothing here needs a database to answer: with `store` started with
/// every database down ([`Store::connect_or_wait`]) the roles start all
/// the same and wait, their calls refused at once as in any outage (no
/// claim, `inject_jobs` answered with a failure, nothing acknowledged),
/// until the store's probe takes a database up.
pub async fn run(
    store: Arc<Store>,
    gearmand: Vec<String>,
    roles: Config,
    shutdown: CancellationToken,
) -> Result<()> {
    roles.validate()?;
    let queue_runner = roles
        .queue_runner
        .map(|c| queue_runner::QueueRunner::new(c, store.clone(), gearmand.clone()))
        .transpose()?;
    let injector = roles
        .injector
        .map(|c| injector::Injector::new(c, store.clone(), gearmand.clone()))
        .transpose()?;
    let controller = roles
        .controller
        .map(|c| {
            let client = Client::new(store.clone())
                .with_max_attempts(roles.max_attempts)
                .with_functions(c.functions.clone());
            controller::Controller::new(c, client, gearmand.clone())
        })
        .transpose()?;
    #[cfg(feature = "web")]
    let web = match roles.web {
        Some(c) => Some(crate::web::Web::bind(c, store.clone(), gearmand.clone()).await?),
        None => None,
    };
    // In one process, the Injector hands its due jobs to the Controller
    // while that has room: no run_queued_job round through gearmand.
    if let (Some(injector), Some(controller)) = (&injector, &controller) {
        injector.hand_to(controller.local());
    }
    let mut tasks = JoinSet::new();
    if let Some(role) = queue_runner {
        tasks.spawn(role.run(shutdown.clone()));
    }
    if let Some(role) = injector {
        tasks.spawn(role.run(shutdown.clone()));
    }
    if let Some(role) = controller {
        tasks.spawn(role.run(shutdown.clone()));
    }
    #[cfg(feature = "web")]
    if let Some(role) = web {
        tasks.spawn(role.run(shutdown.clone()));
    }
    while let Some(ended) = tasks.join_next().await {
        if let Err(err) = ended {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_or_a_bad_setting_is_refused() {
        assert!(matches!(
            Config::default().validate(),
            Err(Error::InvalidConfig { name: "roles", .. })
        ));
        let bad = Config {
            controller: Some(controller::Config {
                lease: 1,
                ..controller::Config::default()
            }),
            ..Config::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(Error::InvalidConfig { name: "lease", .. })
        ));
        let good = Config {
            queue_runner: Some(queue_runner::Config::default()),
            ..Config::default()
        };
        assert!(good.validate().is_ok());
    }

    #[tokio::test]
    async fn nothing_starts_when_a_setting_is_refused() {
        let dbs = crate::config::parse_dsn_list("mysql://u@127.0.0.1:1/never").unwrap();
        let store = Arc::new(Store::open(dbs).unwrap());
        let roles = Config {
            injector: Some(injector::Config {
                max_batch: 0,
                ..injector::Config::default()
            }),
            ..Config::default()
        };
        let ran = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            run(
                store,
                vec!["127.0.0.1:1".into()],
                roles,
                CancellationToken::new(),
            ),
        )
        .await
        .expect("a refused setting answers at once, without connecting");
        assert!(matches!(
            ran,
            Err(Error::InvalidConfig {
                name: "max_batch",
                ..
            })
        ));
    }
}
