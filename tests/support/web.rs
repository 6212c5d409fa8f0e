//! The web role in the test's process on a free loopback port, stopped on
//! drop, and a small HTTP client for it (hyper; every call bounded).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garivini::web::{self, Token, Web};
use garivini::Store;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The token the fixtures configure.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// How long one HTTP call may take.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// A running web role.
pub struct WebServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    running: Option<tokio::task::JoinHandle<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The settings tests start from: a free port, the [`TOKEN`], quick
/// sampling.
pub fn config() -> web::Config {
    web::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: Some(Token::new(TOKEN).unwrap()),
        sample_every: Duration::from_millis(500),
        ..web::Config::default()
    }
}

impl WebServer {
    /// Starts the web role with `config` on `store` and `gearmand`.
    pub async fn start(config: web::Config, store: Arc<Store>, gearmand: Vec<String>) -> WebServer {
        let web = Web::bind(config, store, gearmand)
            .await
            .expect("the web role binds a free port");
        let addr = web.local_addr();
        let stop = CancellationToken::new();
        let running = tokio::spawn(web.run(stop.clone()));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        WebServer {
            addr,
            stop,
            running: Some(running),
            client,
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request: its status, its headers and its body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(b) = &bearer {
            headers.push(("authorization", b));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.exchange(method, path, &headers, body.unwrap_or_default())
            .await
    }

    /// One request with `headers` and a raw `body`: its status, its
    /// headers and its body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, hyper::HeaderMap, String) {
        let (status, headers, bytes) = self
            .exchange(method, path, headers, body.as_bytes().to_vec())
            .await;
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// Sends one request and reads its whole answer, within [`CALL_LIMIT`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .expect("the web role answers");
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.expect("a whole body").to_bytes();
            (parts.status, parts.headers, bytes.to_vec())
        };
        tokio::time::timeout(CALL_LIMIT, call)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} took over {CALL_LIMIT:?}"))
    }

    /// One request whose answer is JSON: its status and the JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, _, bytes) = self
            .raw(
                method.clone(),
                path,
                token,
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await;
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    /// A GET with the token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(TOKEN), None).await
    }

    /// A POST with the token.
    pub async fn post(&self, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(TOKEN), body).await
    }

    /// Stops it and waits until it has returned.
    pub async fn stop(mut self, limit: Duration) {
        self.stop.cancel();
        let running = self.running.take().unwrap();
        tokio::time::timeout(limit, running)
            .await
            .expect("the web role stops within the limit")
            .expect("the web role ran");
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
