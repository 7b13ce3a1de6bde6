//! Throw-away X.509 material for TLS tests: a CA and a loopback server certificate, an unrelated
//! CA for "unknown authority" cases, a client CA with a client certificate for mTLS, and rustls
//! configurations built from them (always with the aws-lc-rs provider).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every config here is built with. Naming it explicitly keeps the configs
/// independent of whatever process-wide default another crate might install.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS settings for a [`crate::stub::StubForge`] (or any loopback server of the testkit).
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self { config }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// A leaf certificate with its private key, both PEM and DER.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl Identity {
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// All certificates a TLS test needs. Every call to [`TestPki::new`] makes fresh keys, so two
/// instances never trust each other.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// CA that signed [`TestPki::server`].
    pub ca_cert_pem: String,
    pub ca_cert_der: Vec<u8>,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: Identity,
    /// A CA that signed nothing the servers present: trusting only it must fail verification.
    pub other_ca_cert_pem: String,
    pub other_ca_cert_der: Vec<u8>,
    /// CA that servers with client authentication trust.
    pub client_ca_cert_pem: String,
    pub client_ca_cert_der: Vec<u8>,
    /// Client certificate signed by the client CA.
    pub client: Identity,
    /// Client certificate signed by the unrelated CA: a server requiring client auth rejects it.
    pub rogue_client: Identity,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "csc-testkit");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-signed CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Identity {
    let mut params = CertificateParams::new(sans).expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

fn roots(ders: &[&[u8]]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for der in ders {
        store
            .add(CertificateDer::from(der.to_vec()))
            .expect("CA certificate is valid");
    }
    store
}

impl TestPki {
    pub fn new() -> Self {
        let server_ca = ca("csc-testkit server CA");
        let other_ca = ca("csc-testkit unrelated CA");
        let client_ca = ca("csc-testkit client CA");
        let server = leaf(
            &server_ca,
            "localhost",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            &client_ca,
            "csc-testkit client",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let rogue_client = leaf(
            &other_ca,
            "csc-testkit rogue client",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca_cert_pem: server_ca.pem(),
            ca_cert_der: server_ca.der().to_vec(),
            server,
            other_ca_cert_pem: other_ca.pem(),
            other_ca_cert_der: other_ca.der().to_vec(),
            client_ca_cert_pem: client_ca.pem(),
            client_ca_cert_der: client_ca.der().to_vec(),
            client,
            rogue_client,
        }
    }

    fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
        ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
    }

    /// Server config presenting [`TestPki::server`], no client authentication.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = Self::server_builder()
            .with_no_client_auth()
            .with_single_cert(self.server.cert_chain(), self.server.private_key())
            .expect("server certificate and key match");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Server config that additionally requires a client certificate signed by the client CA.
    pub fn server_config_with_client_auth(&self) -> Arc<ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&[&self.client_ca_cert_der])),
            crypto_provider(),
        )
        .build()
        .expect("client verifier");
        let mut config = Self::server_builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server.cert_chain(), self.server.private_key())
            .expect("server certificate and key match");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn server_tls(&self) -> ServerTls {
        ServerTls::new(self.server_config())
    }

    pub fn server_tls_with_client_auth(&self) -> ServerTls {
        ServerTls::new(self.server_config_with_client_auth())
    }

    fn client_builder(
        trust: &[u8],
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots(&[trust]))
    }

    /// Client config trusting the server CA, without a client certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(Self::client_builder(&self.ca_cert_der).with_no_client_auth())
    }

    /// Client config trusting the server CA and presenting [`TestPki::client`].
    pub fn client_config_with_identity(&self) -> Arc<ClientConfig> {
        Arc::new(
            Self::client_builder(&self.ca_cert_der)
                .with_client_auth_cert(self.client.cert_chain(), self.client.private_key())
                .expect("client certificate and key match"),
        )
    }

    /// Client config trusting only the unrelated CA: the handshake must fail.
    pub fn client_config_untrusting(&self) -> Arc<ClientConfig> {
        Arc::new(Self::client_builder(&self.other_ca_cert_der).with_no_client_auth())
    }
}
