//! One Redis connection per process, shared by every task (redis' multiplexed connection
//! pipelines concurrent commands), that reconnects after a failure and bounds every command by
//! a timeout. A hung or restarted Redis then costs each caller at most that timeout, and the
//! first command after Redis is back opens a fresh connection.
//!
//! (redis' own `ConnectionManager` was tried first: after Redis restarted it kept failing
//! commands instead of reconnecting, see `tests/cluster.rs`, the Redis restart test.)

use piano_backends::outbox::Op;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, RedisResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Clone)]
pub struct RedisHandle {
    client: redis::Client,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
    timeout: Duration,
}

fn timed_out() -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, "redis command timed out"))
}

impl RedisHandle {
    /// Connects once, so a wrong `REDIS_URL` fails at start.
    pub async fn connect(client: redis::Client, timeout: Duration) -> RedisResult<RedisHandle> {
        let handle = RedisHandle {
            client,
            current: Arc::new(Mutex::new(None)),
            timeout,
        };
        handle.conn().await?;
        Ok(handle)
    }

    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let c = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| timed_out())??;
        *current = Some(c.clone());
        Ok(c)
    }

    /// After a failure that may mean the connection is gone, the next command reconnects.
    async fn check(&self, e: &RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            *self.current.lock().await = None;
        }
    }

    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if let Err(e) = &result {
            self.check(e).await;
        }
        result
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let mut c = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                self.check(&e).await;
                return Err(e);
            }
        };
        self.run(cmd.query_async(&mut c)).await
    }

    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> RedisResult<T> {
        let mut c = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                self.check(&e).await;
                return Err(e);
            }
        };
        self.run(pipe.query_async(&mut c)).await
    }

    pub async fn script<T: FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let mut c = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                self.check(&e).await;
                return Err(e);
            }
        };
        self.run(call.invoke_async(&mut c)).await
    }
}

/// Runs one of the layout's Redis writes (`Op::Redis`, a list of commands) as one pipeline.
pub async fn run_redis_op(conn: &RedisHandle, op: &Op) -> redis::RedisResult<()> {
    let Op::Redis { commands } = op else {
        return Ok(());
    };
    let mut pipe = redis::pipe();
    for c in commands {
        let mut parts = c.iter();
        let Some(name) = parts.next() else { continue };
        let cmd = pipe.cmd(name);
        for p in parts {
            cmd.arg(p);
        }
        cmd.ignore();
    }
    conn.pipe::<()>(&pipe).await
}
