//! A minimal bearer-token service for the registry's `token` auth (distribution's JWT scheme):
//! checks HTTP basic credentials and issues ES256 JWTs signed by an openssl-made key whose
//! self-signed certificate the registry trusts (`x5c`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::registry::{TOKEN_ISSUER, TOKEN_SERVICE, require_tool};

pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    pub issued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| {
            v.replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
        .collect()
}

impl TokenServer {
    pub async fn start(dir: &Path, user: &str, password: &str) -> Self {
        require_tool("openssl", "openssl");
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args(["-subj", "/CN=coffer-token-signer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signing = p256::ecdsa::SigningKey::from(
            p256::SecretKey::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap()).unwrap(),
        );
        let pem = std::fs::read_to_string(&cert).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let header = b64url(
            serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [body]})
                .to_string()
                .as_bytes(),
        );
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&issued);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let authorized = text.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                    })
                });
                let response = if authorized {
                    let target = text.split_whitespace().nth(1).unwrap_or_default();
                    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
                    let access: Vec<_> = query_values(query, "scope")
                        .iter()
                        .filter_map(|s| {
                            let mut parts = s.splitn(3, ':');
                            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                        })
                        .collect();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let claims = b64url(
                        serde_json::json!({
                            "iss": TOKEN_ISSUER, "sub": "coffer", "aud": TOKEN_SERVICE,
                            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", counter.load(Ordering::SeqCst)),
                            "access": access,
                        })
                        .to_string()
                        .as_bytes(),
                    );
                    let signing_input = format!("{header}.{claims}");
                    let signature: p256::ecdsa::Signature = signing.sign(signing_input.as_bytes());
                    let token = format!("{signing_input}.{}", b64url(&signature.to_bytes()));
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        Self {
            realm,
            cert,
            issued,
            task,
        }
    }
}
