//! What every Redis-backed part of the crate shares: how it connects, and
//! how one call is bounded in time.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, RedisError, Value};

use crate::error::BoxError;

/// The answer of one Redis call, or why there is none: its error, or that
/// it took longer than `timeout` (its effect is then unknown).
pub(crate) async fn within(
    timeout: Duration,
    call: impl Future<Output = Result<Value, RedisError>>,
) -> Result<Value, BoxError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("redis did not answer within {timeout:?}"),
        )
        .into()),
    }
}

/// A [`ConnectionManager`] to `url` with [`manager_config`] and
/// `TCP_NODELAY`, as every Redis-backed part of the crate connects.
pub(crate) async fn connect_manager(url: &str) -> Result<ConnectionManager, RedisError> {
    // Requests from many handlers share one connection; without
    // TCP_NODELAY a command written while another awaits its reply can
    // sit in the kernel waiting for an ACK.
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = Client::open(info)?;
    ConnectionManager::new_with_config(client, manager_config()).await
}

/// The connection settings of every Redis-backed store and queue: a call
/// waits at most a second for a connection and a second for its answer, and
/// reconnection gives up after 2 retries 100 to 500 ms apart.
pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(500))
}
