//! The cluster CA (`dfs ca init`) and the certificates it issues (`dfs ca
//! issue`). Keys are ECDSA P-256. A certificate's subject holds its role (OU)
//! and name (CN); server roles also carry the DNS name `dfs-<role>` that
//! clients ask for, plus any hosts given.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{AuthError, Role};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// How long an issued certificate is valid by default (rotate before).
pub const DEFAULT_DAYS: u32 = 365;
/// How long the CA is valid.
const CA_DAYS: u32 = 3650;

/// Creates a new CA in `dir` (`ca.crt`, and `ca.key` readable by root only).
/// Refuses to overwrite one.
pub fn init_ca(dir: &Path, name: &str) -> Result<PathBuf, AuthError> {
    std::fs::create_dir_all(dir).map_err(AuthError::file(dir))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(AuthError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(AuthError::file(&cert_path))?;
    Ok(cert_path)
}

/// A certificate and key issued by a CA.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issues a certificate for `name` with `role`, signed by the CA in
/// `ca_dir`, written to `out_dir` as `NAME.crt` and `NAME.key`. `hosts` are
/// extra DNS names or IP addresses the holder serves on.
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    role: Role,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<Issued, AuthError> {
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(AuthError::file(&ca_cert_path))?;
    let ca_key_pem =
        std::fs::read_to_string(&ca_key_path).map_err(AuthError::file(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // The CA's own certificate, rebuilt from its parameters: same subject and
    // key, which is what an issued certificate refers to.
    let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    let mut sans: Vec<String> = hosts.to_vec();
    if matches!(role, Role::Meta | Role::Node) {
        sans.push(role.server_name());
    }
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    std::fs::create_dir_all(out_dir).map_err(AuthError::file(out_dir))?;
    let issued = Issued {
        cert: out_dir.join(format!("{name}.crt")),
        key: out_dir.join(format!("{name}.key")),
    };
    write_private(&issued.key, &key.serialize_pem())?;
    std::fs::write(&issued.cert, cert.pem()).map_err(AuthError::file(&issued.cert))?;
    Ok(issued)
}

/// Valid from yesterday (clocks differ) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(AuthError::file(path))?;
    f.write_all(pem.as_bytes()).map_err(AuthError::file(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn issued_certificates_carry_role_and_name() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA").unwrap();
        assert!(matches!(
            init_ca(dir.path(), "again"),
            Err(AuthError::Exists(_))
        ));
        let issued = issue(
            dir.path(),
            dir.path(),
            Role::Node,
            "node-7",
            &["127.0.0.1".into()],
            30,
        )
        .unwrap();
        let pem = std::fs::read_to_string(&issued.cert).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let id = Identity::from_der(&der).unwrap();
        assert_eq!(
            id,
            Identity {
                role: Role::Node,
                name: "node-7".into()
            }
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
    }
}
