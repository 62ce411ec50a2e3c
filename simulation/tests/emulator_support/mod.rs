//! Shared helpers for the emulator tests: a raw h2 client over TLS (or plaintext) and
//! provider tokens signed with jsonwebtoken.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use std::future::Future as _;

use bytes::Bytes;
use herald_actors::seams::{ManualClock, Timestamp};
use herald_sim::emulator::{Emulator, EmulatorConfig, GeneratedKey, TeamConfig};
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const TEAM: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const BUNDLE: &str = "com.example.app";
pub const TOKEN: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
pub const START_SECS: u64 = 1_700_000_000;
pub const PAYLOAD: &[u8] = br#"{"aps":{"alert":"hi"}}"#;

pub struct Setup {
    pub emulator: Emulator,
    pub key: GeneratedKey,
    pub clock: ManualClock,
}

/// An emulator with one team (TEAM, KEY_ID, BUNDLE) on a manual clock at START_SECS.
pub async fn setup(tweak: impl FnOnce(&mut EmulatorConfig)) -> Setup {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig {
        teams: vec![team],
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator = Emulator::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    Setup {
        emulator,
        key,
        clock,
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// An APNs provider token: header {alg: ES256, kid}, claims {iss, iat}.
pub fn jwt(p8_pem: &str, key_id: &str, team_id: &str, iat: u64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = None;
    header.kid = Some(key_id.to_owned());
    jsonwebtoken::encode(
        &header,
        &Claims { iss: team_id, iat },
        &EncodingKey::from_ec_pem(p8_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn bearer(setup: &Setup) -> String {
    format!(
        "bearer {}",
        jwt(&setup.key.p8_pem, KEY_ID, TEAM, START_SECS)
    )
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub apns_id: Option<String>,
    pub unique_id: Option<String>,
    pub reason: Option<String>,
    pub timestamp: Option<u64>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    pub max_streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Client certificate and key (DER) for mutual TLS.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl Client {
    pub async fn connect(emulator: &Emulator) -> Client {
        Self::connect_with(emulator, None).await.unwrap()
    }

    pub async fn connect_with(
        emulator: &Emulator,
        identity: Option<Identity>,
    ) -> Result<Client, String> {
        let tcp = TcpStream::connect(emulator.addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        match emulator.ca_pem() {
            None => Ok(Self::handshake(tcp).await),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
                let mut config = match identity {
                    None => builder.with_no_client_auth(),
                    Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
                };
                config.alpn_protocols = vec![b"h2".to_vec()];
                let tls = TlsConnector::from(Arc::new(config))
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Ok(Self::handshake(tls).await)
            }
        }
    }

    async fn handshake<S>(io: S) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::Builder::new()
            .initial_max_send_streams(1)
            .handshake::<_, Bytes>(io)
            .await
            .unwrap();
        let max_streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = max_streams.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            std::future::poll_fn(|cx| {
                let polled = conn.as_mut().poll(cx);
                seen.store(
                    conn.max_concurrent_send_streams(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                polled
            })
            .await
        });
        Client { send, max_streams }
    }

    /// POST /3/device/TOKEN with `headers` and PAYLOAD.
    pub async fn push(&self, headers: &[(&str, &str)]) -> Answer {
        self.request("POST", &format!("/3/device/{TOKEN}"), headers, PAYLOAD)
            .await
            .unwrap()
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, h2::Error> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(()).unwrap();
        let fut = async {
            let mut send = self.send.clone().ready().await?;
            let (resp, mut stream) = send.send_request(req, body.is_empty())?;
            if !body.is_empty() {
                stream.send_data(Bytes::copy_from_slice(body), true)?;
            }
            let resp = resp.await?;
            let status = resp.status().as_u16();
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let apns_id = header("apns-id");
            let unique_id = header("apns-unique-id");
            let headers = resp.headers().clone();
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let (reason, timestamp) = if data.is_empty() {
                (None, None)
            } else {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                (
                    v["reason"].as_str().map(str::to_owned),
                    v["timestamp"].as_u64(),
                )
            };
            Ok(Answer {
                status,
                apns_id,
                unique_id,
                reason,
                timestamp,
                headers,
                body: data,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("request timed out")
    }
}

/// Standard headers for a valid alert push with token auth.
pub fn alert_headers(bearer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", bearer.to_owned()),
        ("apns-topic", BUNDLE.to_owned()),
        ("apns-push-type", "alert".to_owned()),
    ]
}

pub fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
