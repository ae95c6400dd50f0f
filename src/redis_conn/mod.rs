//! What every Redis-backed part of the crate shares: how it connects, the
//! client it holds (connection, key prefix, the time one call may take),
//! and how it reads and reports Redis's answers.

mod client;
mod reply;

pub(crate) use client::RedisClient;
pub(crate) use reply::{ReplyError, millis};

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, RedisError};

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
