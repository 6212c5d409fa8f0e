//! Connection helpers: connecting to gearmand (with TCP_NODELAY), reading
//! an answer within a bounded wait, and the errors a call makes.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearman::protocol::{GearmanCodec, Packet, PacketType};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::error::{Error, Result};

/// How long a connect to gearmand may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long gearmand may take to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Conn = Framed<TcpStream, GearmanCodec>;

pub(super) fn gearman_err(server: &str, source: gearman::GearmanError) -> Error {
    Error::Gearman {
        server: server.to_string(),
        source,
    }
}

pub(super) fn io_err(server: &str, err: std::io::Error) -> Error {
    gearman_err(server, gearman::GearmanError::Io(err))
}

pub(super) async fn connect_stream(server: &str) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?
        .map_err(|e| io_err(server, e))?;
    stream.set_nodelay(true).map_err(|e| io_err(server, e))?;
    Ok(stream)
}

pub(super) async fn connect(server: &str) -> Result<Conn> {
    Ok(Framed::new(
        connect_stream(server).await?,
        GearmanCodec::new(),
    ))
}

pub(super) async fn recv(conn: &mut Conn, server: &str) -> Result<Packet> {
    match tokio::time::timeout(REPLY_TIMEOUT, conn.next()).await {
        Err(_) => Err(gearman_err(server, gearman::GearmanError::Timeout)),
        Ok(None) => Err(gearman_err(server, gearman::GearmanError::ConnectionClosed)),
        Ok(Some(pkt)) => pkt.map_err(|e| gearman_err(server, e)),
    }
}

pub(super) fn req(ptype: PacketType, args: Vec<Bytes>) -> Packet {
    Packet::request(ptype, args)
}

/// A new connection that has sent one request (`ask` with `arg`) and got
/// its answer, of type `answer`.
pub(super) async fn connect_asking(
    server: &str,
    ask: PacketType,
    arg: &'static [u8],
    answer: PacketType,
) -> Result<Conn> {
    let mut conn = connect(server).await?;
    conn.send(req(ask, vec![Bytes::from_static(arg)]))
        .await
        .map_err(|e| gearman_err(server, e))?;
    let pkt = recv(&mut conn, server).await?;
    if pkt.ptype != answer {
        return Err(Error::GearmanProtocol {
            server: server.to_string(),
            what: format!(
                "{:?} in answer to {ask:?} {}",
                pkt.ptype,
                String::from_utf8_lossy(arg)
            ),
        });
    }
    Ok(conn)
}

/// Sleeps until `deadline`; for ever when there is none.
pub(crate) async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
