//! `coffer-mesh-probe`: the mTLS workload of the mesh end-to-end case (#9), a static binary that
//! runs in a busybox container in the guest (and, for the refused clients, on the host).
//!
//! `server` loads the workload identity the agent placed in `--svid DIR` (`svid.pem`,
//! `svid_key.pem`, `svid_bundle.pem`), requires a client certificate that chains to the bundle and
//! names a SPIFFE ID in `--trust-domain` (the `coffer_attestation::identity::mtls` verifiers),
//! answers each client with `hello <its SPIFFE ID>` and prints `accepted <id> tee=<tee>` or
//! `refused: <why>` per connection; it exits after `--connections` of them. `client` presents the SVID in `--svid DIR`, a certificate it makes for
//! itself (`--self-signed ID`) or none, checks that the server's chain ends at `--bundle` and that
//! its URI SAN is `--server-id` (SPIFFE certificates carry no DNS name), prints `server <id>` once
//! the handshake verified it, then `reply <line>`, or `error: <why>` (exit 1) — a server refusing
//! the client's certificate shows as its alert. Keys are never printed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use coffer_attestation::identity::mtls::{
    SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

/// How long one connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "coffer-mesh-probe",
    about = "mTLS with SPIFFE identities (Coffer's mesh test)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve mTLS, requiring a client SVID of the trust domain.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The workload identity directory.
        #[arg(long)]
        svid: PathBuf,
        /// The trust domain client SPIFFE IDs must be in.
        #[arg(long)]
        trust_domain: String,
        /// Exit after this many connections.
        #[arg(long)]
        connections: usize,
    },
    /// Connect, present an identity, check the server's, print its answer.
    Client {
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// The SPIFFE ID the server must have.
        #[arg(long)]
        server_id: String,
        /// Trust bundle (PEM) the server's chain must end at.
        #[arg(long)]
        bundle: PathBuf,
        /// Present the SVID of this workload identity directory.
        #[arg(long, conflicts_with = "self_signed")]
        svid: Option<PathBuf>,
        /// Present a self-signed certificate naming this SPIFFE ID, made here and now.
        #[arg(long)]
        self_signed: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Server {
            listen,
            svid,
            trust_domain,
            connections,
        } => server(listen, &svid, &trust_domain, connections),
        Mode::Client {
            connect,
            server_id,
            bundle,
            svid,
            self_signed,
        } => client(connect, &server_id, &bundle, svid.as_deref(), self_signed),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            println!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

fn roots(bundle: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(bundle)? {
        roots.add(cert).context("a bundle certificate")?;
    }
    Ok(Arc::new(roots))
}

/// The chain and key of the SVID in `dir`.
fn svid(dir: &Path) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(&dir.join("svid.pem"))?;
    // The error names the file only: never the key's bytes.
    let key = PrivateKeyDer::from_pem_file(dir.join("svid_key.pem"))
        .map_err(|_| anyhow::anyhow!("reading the key {}", dir.join("svid_key.pem").display()))?;
    Ok((chain, key))
}

/// The TEE named by a certificate's attestation binding (`-` without one).
fn attested_tee(cert: &CertificateDer<'_>) -> String {
    coffer_attestation::identity::inspect_certificate(cert)
        .ok()
        .and_then(|i| i.attestation)
        .map_or_else(|| "-".to_owned(), |a| a.tee)
}

fn server(
    listen: SocketAddr,
    dir: &Path,
    trust_domain: &str,
    connections: usize,
) -> anyhow::Result<()> {
    let provider = provider();
    let (chain, key) = svid(dir)?;
    let verifier = SpiffeClientVerifier::new(
        roots(&dir.join("svid_bundle.pem"))?,
        trust_domain,
        provider.clone(),
    )
    .context("the client verifier")?;
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(chain, key)
            .context("the server certificate")?,
    );
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    println!("listening on {listen}");
    std::io::stdout().flush()?;
    for _ in 0..connections {
        let (tcp, _) = listener.accept().context("accepting")?;
        match serve_one(&config, tcp) {
            Ok((id, tee)) => println!("accepted {id} tee={tee}"),
            Err(err) => println!("refused: {err:#}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// One client: the handshake (which verifies its certificate), then `hello <its id>`.
fn serve_one(config: &Arc<ServerConfig>, tcp: TcpStream) -> anyhow::Result<(String, String)> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut tls = StreamOwned::new(ServerConnection::new(config.clone())?, tcp);
    while tls.conn.is_handshaking() {
        // On failure this also sends the alert telling the client why.
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no client certificate")?
        .clone();
    let id = peer_spiffe_id(&peer)?;
    tls.write_all(format!("hello {id}\n").as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok((id, attested_tee(&peer)))
}

fn client(
    connect: SocketAddr,
    server_id: &str,
    bundle: &Path,
    svid_dir: Option<&Path>,
    self_signed: Option<String>,
) -> anyhow::Result<()> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            roots(bundle)?,
            server_id,
            provider,
        )));
    let config = match (svid_dir, self_signed) {
        (Some(dir), _) => {
            let (chain, key) = svid(dir)?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, Some(id)) => {
            let (chain, key) = self_signed_certificate(&id)?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(connect).with_context(|| format!("connecting to {connect}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = ClientConnection::new(Arc::new(config), ServerName::IpAddress(connect.ip().into()))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let server = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone();
    println!("server {}", peer_spiffe_id(&server)?);
    std::io::stdout().flush()?;
    // Under TLS 1.3 the server judges the client's certificate after the client's handshake
    // ended: a refusal arrives as an alert on the first read.
    let mut reply = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut reply)
        .context("reading the server's reply")?;
    if reply.is_empty() {
        bail!("the server closed the connection without a reply");
    }
    print!("reply {reply}");
    Ok(())
}

/// A key and a self-signed certificate naming `id`, made here: an identity no broker issued.
fn self_signed_certificate(
    id: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into()?)];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.self_signed(&key)?;
    Ok((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}
