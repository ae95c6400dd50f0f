//! What every Redis-backed part of the crate shares: how it connects, the
//! client it holds (connection, key prefix, the time one call may take),
//! and how it reads and reports Redis's answers.

mod client;
mod reply;

pub(crate) use client::{Connect, RedisClient};
pub(crate) use reply::{ReplyError, millis};

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::{Client, FromRedisValue, IntoConnectionInfo, RedisError};

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

/// A [`ClusterConnection`] to the cluster that `nodes` belong to, with
/// [`cluster_builder`]'s settings, and how to connect again the same way: for a
/// [`RedisClient::renewed_by`], which replaces a cluster connection that
/// stopped answering (see `client::Renewal`).
pub(crate) async fn connect_cluster_renewable<T: IntoConnectionInfo>(
    nodes: impl IntoIterator<Item = T>,
) -> Result<(ClusterConnection, Connect<ClusterConnection>), RedisError> {
    let client = cluster_builder(nodes).build()?;
    let connection = client.get_async_connection().await?;
    let connect: Connect<ClusterConnection> = Arc::new(move || {
        let client = client.clone();
        Box::pin(async move { client.get_async_connection().await })
    });
    Ok((connection, connect))
}

/// The cluster counterpart of [`manager_config`]: a connection attempt and
/// an answer wait at most a second each, `TCP_NODELAY` is set, and a
/// command is retried (after `MOVED`, `TRYAGAIN`, a lost connection) at most
/// 3 times 50 to 500 ms apart, so that a slot moving in a failover is
/// followed without holding a request longer than a store's timeout.
pub(crate) fn cluster_builder<T: IntoConnectionInfo>(
    nodes: impl IntoIterator<Item = T>,
) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .tcp_settings(TcpSettings::default().set_nodelay(true))
}

/// `WAIT replicas timeout_ms` on the node holding `key`: the primary of the
/// key's slot on a [`ClusterConnection`] (whose own routing would send a
/// bare `WAIT` to every primary and answer with the least count, so one slow
/// shard would hold every write), the one server on any other connection.
/// Either way the `WAIT` goes over the connection that carried the writes
/// it waits for.
pub(crate) async fn wait_on_key<C>(
    connection: &C,
    key: &str,
    replicas: u32,
    timeout_ms: u64,
) -> Result<i64, RedisError>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut command = redis::cmd("WAIT");
    command.arg(replicas).arg(timeout_ms);
    let mut connection = connection.clone();
    if let Some(cluster) = (&mut connection as &mut dyn Any).downcast_mut::<ClusterConnection>() {
        let route = Route::with_key(key, SlotAddr::Master);
        let value = cluster
            .route_command(
                command,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await?;
        return Ok(i64::from_redis_value(value)?);
    }
    command.query_async(&mut connection).await
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
