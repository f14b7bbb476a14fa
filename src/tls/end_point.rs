//! The `tls-server-end-point` channel binding (RFC 5929 section 4.1): a hash
//! of the server's certificate, computed with the hash function of the
//! certificate's own signature algorithm, MD5 and SHA-1 replaced by SHA-256.
//! SCRAM-SHA-256-PLUS mixes it into the proof, so a man in the middle who
//! terminates TLS with another certificate cannot relay the exchange.
//!
//! Only the outer `signatureAlgorithm` of the certificate is read, with a
//! bounded DER walk over bytes that come from a configuration file or a
//! server's handshake; anything unexpected yields `None`.

use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// Signature algorithm OIDs (DER content bytes) and the hash they use.
const MD5_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
const SHA1_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

/// The channel-binding value of a DER certificate, or `None` when its
/// signature algorithm has no hash RFC 5929 can use (Ed25519, RSA-PSS):
/// PostgreSQL cannot bind to such a certificate either.
pub fn hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(cert_der)?;
    Some(match oid {
        MD5_RSA | SHA1_RSA | SHA256_RSA | ECDSA_SHA1 | ECDSA_SHA256 => {
            Sha256::digest(cert_der).to_vec()
        }
        SHA384_RSA | ECDSA_SHA384 => Sha384::digest(cert_der).to_vec(),
        SHA512_RSA | ECDSA_SHA512 => Sha512::digest(cert_der).to_vec(),
        _ => return None,
    })
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }`:
/// the OID of `signatureAlgorithm`.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = element(der, SEQUENCE)?;
    let (_tbs, rest) = element(cert, SEQUENCE)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, _) = element(algorithm, OID)?;
    Some(oid)
}

/// One DER element of type `tag` at the front of `input`: its content and
/// what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes. Four are plenty
        // for a certificate and keep the arithmetic far from overflow.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(n..)?)
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap_or_else(|e| panic!("{e}"));
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(hash(&p256), Some(Sha256::digest(&p256).to_vec()));
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(hash(&p384), Some(Sha384::digest(&p384).to_vec()));
        // Ed25519 names no hash: no channel binding (as in PostgreSQL).
        let ed = cert(&rcgen::PKCS_ED25519);
        assert_eq!(hash(&ed), None);
    }

    #[test]
    fn malformed_certificates_give_none() {
        let good = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        for n in 0..good.len() {
            assert_eq!(hash(&good[..n]), None, "truncated to {n}");
        }
        assert_eq!(hash(&[]), None);
        assert_eq!(hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(hash(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        let mut wrong_tag = good.clone();
        wrong_tag[0] = 0x31;
        assert_eq!(hash(&wrong_tag), None);
    }
}
