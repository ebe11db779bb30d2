//! A throwaway test CA and a leaf certificate for `localhost`/`127.0.0.1`, written as PEM
//! files. The leaf has `basicConstraints=CA:FALSE`: rustls rejects a CA certificate used as an
//! end entity, so a single self-signed certificate would not do.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

#[derive(Debug)]
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

impl TestPki {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "leadloop test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

        let pki = Self {
            ca_pem: dir.join("ca.pem"),
            leaf_pem: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        };
        std::fs::write(&pki.ca_pem, ca.pem())?;
        std::fs::write(&pki.leaf_pem, leaf.pem())?;
        std::fs::write(&pki.leaf_key, leaf_key.serialize_pem())?;
        Ok(pki)
    }
}
