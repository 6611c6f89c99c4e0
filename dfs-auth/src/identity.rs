//! The caller a verified client certificate names. TLS has already checked
//! the chain against the cluster CA; this only reads what it says.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{AuthError, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// The certificate's common name: a node's name, a client's identity
    /// (what exports are keyed by).
    pub name: String,
}

impl Identity {
    /// Reads role (OU) and name (CN) from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Identity, AuthError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| AuthError::BadPeerCertificate(e.to_string()))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let role = subject
            .iter_organizational_unit()
            .next()
            .and_then(|ou| ou.as_str().ok())
            .ok_or_else(|| AuthError::NoRole(subject.to_string()))?
            .parse()?;
        Ok(Identity { role, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes a peer presents as a certificate are read or refused,
        /// never a panic (TLS verified the chain, but this parser runs too).
        #[test]
        fn any_bytes_are_read_or_refused(der in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Identity::from_der(&der);
        }
    }
}
