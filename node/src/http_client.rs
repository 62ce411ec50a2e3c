//! A small HTTP/1.1 client of the Herald API for the CLI (`herald push`, `herald admin`,
//! `herald bench http`): one keep-alive connection per [`Connection`] (hyper's
//! `client::conn::http1`), answers bounded to [`ANSWER_BYTES_MAX`], a timeout per request, and
//! the API's JSON errors turned into [`ClientError::Api`]. The API key is never printed.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The largest answer body read, in bytes.
pub const ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The default time a request may take, connecting included.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://host:port[/]`.
    #[error("bad URL {0:?}: expected http://host:port")]
    BadUrl(String),
    /// The node could not be reached.
    #[error("cannot reach {url}: {error}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        error: String,
    },
    /// No answer within the timeout.
    #[error("no answer from {0} within the timeout")]
    Timeout(String),
    /// The API answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's error code (`docs/api.md`, "Errors").
        code: String,
        /// Its message.
        message: String,
    },
    /// The answer is not what the API sends (not JSON, too large, cut off).
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// Where the API is and how to authenticate.
#[derive(Clone)]
pub struct ApiClient {
    url: String,
    authority: String,
    key: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiClient {
    /// A client of the API at `url` (`http://host:port`), sending `key` as a bearer token.
    ///
    /// # Errors
    /// [`ClientError::BadUrl`].
    pub fn new(url: &str, key: Option<String>) -> Result<Self, ClientError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/') && a.contains(':'))
            .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            authority: authority.to_owned(),
            key,
            timeout: REQUEST_TIMEOUT_DEFAULT,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Open a keep-alive connection.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] or [`ClientError::Timeout`].
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let unreachable = |e: &dyn fmt::Display| ClientError::Unreachable {
            url: self.url.clone(),
            error: e.to_string(),
        };
        let stream = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| ClientError::Timeout(self.url.clone()))?
        .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes.
            let _ = connection.await;
        });
        Ok(Connection {
            client: self.clone(),
            sender,
        })
    }

    /// One request on a fresh connection: the answer's JSON (`Null` for an empty body).
    ///
    /// # Errors
    /// As [`Connection::json`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.connect().await?.json(method, path, body).await
    }
}

/// One keep-alive connection to the API.
#[derive(Debug)]
pub struct Connection {
    client: ApiClient,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Send a request; the status and the raw body.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] (the connection broke), [`ClientError::Timeout`],
    /// [`ClientError::BadAnswer`].
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let client = &self.client;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, client.authority.as_str());
        if let Some(key) = &client.key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::BadUrl(format!("{}{path}: {e}", client.url)))?;
        let exchange =
            async {
                self.sender
                    .ready()
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        url: client.url.clone(),
                        error: e.to_string(),
                    })?;
                let response = self.sender.send_request(request).await.map_err(|e| {
                    ClientError::Unreachable {
                        url: client.url.clone(),
                        error: e.to_string(),
                    }
                })?;
                let status = response.status();
                let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                    .collect()
                    .await
                    .map_err(|e| ClientError::BadAnswer(e.to_string()))?
                    .to_bytes();
                Ok((status, body))
            };
        tokio::time::timeout(client.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(client.url.clone()))?
    }

    /// Send a request with an optional JSON body; the answer's JSON on a 2xx, else the API's
    /// error.
    ///
    /// # Errors
    /// [`ClientError::Api`] for a non-2xx answer, else as [`send`](Self::send).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, bytes) = self.send(method, path, body).await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::BadAnswer(format!("{status}: not JSON ({e}): {}", preview(&bytes)))
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        let error = &value["error"];
        Err(ClientError::Api {
            status: status.as_u16(),
            code: error["code"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"]
                .as_str()
                .map_or_else(|| preview(&bytes), str::to_owned),
        })
    }
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.into_owned()
}

/// `herald push` / `herald admin`'s connection arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The node's API, `http://host:port`.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The API key (a tenant key for pushes, an admin key for admin commands).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

impl ClientArgs {
    /// The client these arguments describe.
    ///
    /// # Errors
    /// A bad URL.
    pub fn client(&self) -> Result<ApiClient, ClientError> {
        Ok(ApiClient::new(&self.url, self.key.clone())?
            .with_timeout(Duration::from_secs(self.timeout_secs.max(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_keys_never_shown() {
        assert!(ApiClient::new("http://127.0.0.1:8080", None).is_ok());
        assert!(ApiClient::new("http://127.0.0.1:8080/", None).is_ok());
        for bad in [
            "127.0.0.1:8080",
            "https://h:1",
            "http://",
            "http://h",
            "http://h:1/x",
        ] {
            assert!(
                matches!(ApiClient::new(bad, None), Err(ClientError::BadUrl(_))),
                "{bad}"
            );
        }
        let c = ApiClient::new("http://h:1", Some("secret-key".into())).unwrap();
        assert!(!format!("{c:?}").contains("secret-key"));
    }
}
