//! The web role's flags (`garivini web`, `garivini workers --roles ...,web`)
//! and its library config. The token is read here, from a file or the
//! environment, never from a flag's value (which `ps` shows).

use std::path::PathBuf;

use anyhow::Context as _;
use garivini::web::{self, Token};

/// The token's environment variable, read when no --web-token-file is given.
pub const TOKEN_ENV: &str = "GARIVINI_WEB_TOKEN";

/// The web role's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WebArgs {
    /// Web: where the dashboard and the API listen; an address other than
    /// loopback only with a token.
    #[arg(long, value_name = "IP:PORT", default_value = web::DEFAULT_ADDR, env = "GARIVINI_WEB_ADDR")]
    web_addr: String,
    /// Web: a file holding the bearer token (else the environment's
    /// GARIVINI_WEB_TOKEN). Without a token the web role is read-only.
    #[arg(long, value_name = "FILE", env = "GARIVINI_WEB_TOKEN_FILE")]
    web_token_file: Option<PathBuf>,
    /// Web: pages and GET requests of the API without the token.
    #[arg(long)]
    public_read: bool,
    /// Web: trust the proxy in front: its X-Forwarded-Proto: https makes
    /// the login cookie Secure, and the last address of its X-Forwarded-For
    /// is the client's for the limit on failed logins. Give it only when
    /// every request comes through that proxy.
    #[arg(long, env = "GARIVINI_WEB_TRUSTED_PROXY")]
    web_trusted_proxy: bool,
}

impl WebArgs {
    /// The library's config, the token read, every setting checked.
    pub fn config(
        &self,
        lease: u32,
        limits: garivini::waiting::Limits,
    ) -> anyhow::Result<web::Config> {
        let addr = self.web_addr.parse().map_err(|_| {
            anyhow::anyhow!("invalid --web-addr {:?}: expected IP:PORT", self.web_addr)
        })?;
        let token = match &self.web_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --web-token-file {}", path.display()))?;
                Some(
                    Token::new(&text)
                        .with_context(|| format!("--web-token-file {}", path.display()))?,
                )
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) if !text.is_empty() => {
                    Some(Token::new(&text).with_context(|| TOKEN_ENV.to_string())?)
                }
                _ => None,
            },
        };
        let config = web::Config {
            addr,
            token,
            public_read: self.public_read,
            trusted_proxy: self.web_trusted_proxy,
            // Room is left under the file limit for the roles' databases and gearmand.
            max_connections: web::connection_cap(crate::terminal::file_limit()),
            lease,
            limits,
            ..web::Config::default()
        };
        config.validate()?;
        Ok(config)
    }
}
