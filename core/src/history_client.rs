//! A client of msgqueue's topic history (`/v1/history/<topic>` on its listener, authenticated with the link's
//! credentials): the subscriber reads it for clients that resume (`sub <topic> since=…`), read or ack their inbox,
//! or ask for `history`, and the publisher for its HTTP API's `GET /v1/history/<topic>`. A few keep-alive
//! connections are shared by every session, so 10,000 clients reconnecting at once make as many requests over a
//! handful of connections rather than 10,000 connections; a request waits for one of them.

use std::time::Duration;

use crate::api_client::{ApiClient, ApiClientError};
use crate::dial::Dialers;
use crate::protocol::history::{Epoch, HISTORY_API_PATH, HistoryPage, HistoryQuery, Position};
use bytes::Bytes;
use hyper::Method;
use parking_lot::Mutex;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

/// msgqueue's answer to an ack.
#[derive(Deserialize)]
struct Acked {
    epoch: Epoch,
    acked: u64,
}

/// How long a history request may take: a resuming client then goes live without it, an API request gets 503.
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to msgqueue used for history at most.
const CONNECTIONS: usize = 4;

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// No msgqueue instance could be reached or the exchange failed.
    #[error("msgqueue unreachable")]
    Unreachable(#[source] ApiClientError),
    /// msgqueue refused the request.
    #[error("msgqueue answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its error body.
        body: String,
    },
    /// msgqueue's answer is not a history page.
    #[error("unreadable history answer")]
    Unreadable(#[source] serde_json::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A client of msgqueue's history route, shared by every connection of a service.
#[derive(Debug)]
pub struct HistoryClient {
    dialers: Dialers,
    idle: Mutex<Vec<ApiClient>>,
    permits: Semaphore,
    timeout: Duration,
}

impl HistoryClient {
    /// A client of the msgqueue instances of `dialers` (tried in order); each request gets `timeout`.
    pub fn new(dialers: Dialers, timeout: Duration) -> Self {
        Self {
            dialers,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(CONNECTIONS),
            timeout,
        }
    }

    /// One page of `topic`'s history.
    pub async fn fetch(
        &self,
        topic: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, HistoryError> {
        let path = format!(
            "{HISTORY_API_PATH}/{}?{}",
            utf8_percent_encode(topic, NON_ALPHANUMERIC),
            query.to_query()
        );
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self.permits.acquire().await;
        tokio::time::timeout(self.timeout, self.get(&path))
            .await
            .map_err(|_| HistoryError::Timeout(self.timeout))?
    }

    /// Acks `topic`'s messages up to `offset` in `epoch` (`None`: its current one); returns the topic's ack
    /// afterwards, durable in msgqueue.
    pub async fn ack(
        &self,
        topic: &str,
        epoch: Option<Epoch>,
        offset: u64,
    ) -> Result<Position, HistoryError> {
        let mut path = format!(
            "{HISTORY_API_PATH}/{}?ack={offset}",
            utf8_percent_encode(topic, NON_ALPHANUMERIC)
        );
        if let Some(epoch) = epoch {
            path.push_str(&format!("&epoch={epoch}"));
        }
        let _permit = self.permits.acquire().await;
        let acked: Acked = tokio::time::timeout(self.timeout, self.request(Method::POST, &path))
            .await
            .map_err(|_| HistoryError::Timeout(self.timeout))??;
        Ok(Position {
            epoch: acked.epoch,
            offset: acked.acked,
        })
    }

    async fn get(&self, path: &str) -> Result<HistoryPage, HistoryError> {
        self.request(Method::GET, path).await
    }

    /// One request on a pooled connection (or a new one), its JSON answer decoded.
    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, HistoryError> {
        let pooled = self.idle.lock().pop();
        let mut client = match pooled {
            Some(client) if !client.is_closed() => client,
            _ => self.connect().await?,
        };
        let reply = if method == Method::POST {
            client.post_json(path, &[], Bytes::new()).await
        } else {
            client.get(path).await
        }
        .map_err(HistoryError::Unreachable)?;
        self.idle.lock().push(client);
        if !reply.status.is_success() {
            return Err(HistoryError::Refused {
                status: reply.status.as_u16(),
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            });
        }
        serde_json::from_slice(&reply.body).map_err(HistoryError::Unreadable)
    }

    /// Connects to the first msgqueue instance that answers.
    async fn connect(&self) -> Result<ApiClient, HistoryError> {
        let mut connected = ApiClient::connect(self.dialers.get(0)).await;
        for index in 1..self.dialers.count() {
            if connected.is_ok() {
                break;
            }
            connected = ApiClient::connect(self.dialers.get(index)).await;
        }
        connected.map_err(HistoryError::Unreachable)
    }
}
