//! DKIM signing (RFC 6376; Ed25519 by RFC 8463), with mail-auth's signer. A message is
//! signed once, at ingest, before it is stored: every attempt and every retry sends the same
//! bytes, so a signature that verified once verifies every time. Each `[[dkim]]` key whose
//! domain is the From address's signs it (the sender's signature), and each key for `"*"`
//! signs every message (a platform's), so a message may carry several signatures.
//!
//! `knock dkim keygen` makes a key and prints the TXT record to publish.

use crate::config::DkimConfig;
use anyhow::{Context, anyhow};
use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct Key {
    /// The From domain it signs for; `None`: every message.
    domain: Option<String>,
    signer: Signer,
}

/// The configured keys, loaded.
#[derive(Default)]
pub struct Dkim {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dkim({} keys)", self.keys.len())
    }
}

impl Dkim {
    /// Loads every `[[dkim]]` key; an error names the key (`dkim[0].key: ...`).
    pub fn from_config(config: &[DkimConfig]) -> anyhow::Result<Dkim> {
        let keys = config
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let signer = signer(c).with_context(|| format!("dkim[{i}].key"))?;
                Ok(Key {
                    domain: (c.domain != "*").then(|| c.domain.to_ascii_lowercase()),
                    signer,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Dkim { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `message` with the DKIM-Signature fields of every key that applies on top (the
    /// platform's above the sender's); as it was when none applies. A key that fails to
    /// sign is logged and left out: the message still goes, unsigned by it.
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        if self.keys.is_empty() {
            return None;
        }
        let from = from_domain(message);
        let mut fields = Vec::new();
        for key in self.keys.iter().filter(|k| match &k.domain {
            None => true,
            Some(d) => from.as_deref() == Some(d.as_str()),
        }) {
            let signed = match &key.signer {
                Signer::Rsa(s) => s.sign(message),
                Signer::Ed25519(s) => s.sign(message),
            };
            match signed {
                Ok(signature) => fields.insert(0, signature.to_header()),
                Err(e) => {
                    tracing::error!(error = %e, "DKIM signing failed: the message goes without this signature")
                }
            }
        }
        if fields.is_empty() {
            return None;
        }
        let mut out =
            Vec::with_capacity(message.len() + fields.iter().map(String::len).sum::<usize>());
        for f in fields {
            out.extend_from_slice(f.as_bytes());
        }
        out.extend_from_slice(message);
        Some(out)
    }
}

/// The domain of the message's From address, in lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

fn signer(c: &DkimConfig) -> anyhow::Result<Signer> {
    let pem = std::fs::read(&c.key).with_context(|| format!("reading {}", c.key.display()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow!("{}: not a PEM private key ({e})", c.key.display()))?;
    let ed25519 = match &der {
        PrivateKeyDer::Pkcs8(k) => Ed25519Key::from_pkcs8_der(k.secret_pkcs8_der()).ok(),
        _ => None,
    };
    Ok(match ed25519 {
        Some(key) => Signer::Ed25519(configured(key, c)?),
        None => {
            let key = RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| anyhow!("{}: not an RSA or Ed25519 key ({e})", c.key.display()))?;
            Signer::Rsa(configured(key, c)?)
        }
    })
}

/// A signer with `key` for the domain, selector, header fields and canonicalization `c`
/// names.
fn configured<T: SigningKey>(key: T, c: &DkimConfig) -> anyhow::Result<DkimSigner<T, Done>> {
    let (relaxed_header, relaxed_body) = c.canonicalization()?;
    let canon = |relaxed| match relaxed {
        true => Canonicalization::Relaxed,
        false => Canonicalization::Simple,
    };
    Ok(DkimSigner::from_key(key)
        .domain(c.signing_domain())
        .selector(&c.selector)
        .headers(c.headers.iter().map(String::as_str))
        .header_canonicalization(canon(relaxed_header))
        .body_canonicalization(canon(relaxed_body)))
}

/// A new key: the private key as PEM, and the TXT record's value (`v=DKIM1; k=…; p=…`).
pub struct NewKey {
    pub pem: String,
    pub record: String,
}

/// Makes a key: RSA of `bits` (2048 is what receivers expect), or Ed25519.
pub fn generate(ed25519: bool, bits: usize) -> anyhow::Result<NewKey> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    if ed25519 {
        let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| anyhow!("generating the key: {e}"))?;
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| anyhow!("{e}"))?;
        return Ok(NewKey {
            pem: pem("PRIVATE KEY", &pkcs8),
            // RFC 8463: the bare 32-byte public key.
            record: format!("v=DKIM1; k=ed25519; p={}", b64(&key.public_key())),
        });
    }
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePublicKey;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| anyhow!("generating the key: {e}"))?;
    let der = private.to_pkcs1_der().map_err(|e| anyhow!("{e}"))?;
    let public = rsa::RsaPublicKey::from(&private)
        .to_public_key_der()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(NewKey {
        pem: pem("RSA PRIVATE KEY", der.as_bytes()),
        // The SubjectPublicKeyInfo, as every verifier reads it.
        record: format!("v=DKIM1; k=rsa; p={}", b64(public.as_bytes())),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new key for `domain` and `selector` into `dir` as `DOMAIN.SELECTOR.pem`,
/// readable by its owner only; refuses to overwrite one. Returns the file and the TXT
/// record's name and value.
pub fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    ed25519: bool,
) -> anyhow::Result<(std::path::PathBuf, String, String)> {
    crate::address::check_domain(domain).map_err(|_| anyhow!("{domain:?} is not a domain"))?;
    let key = generate(ed25519, 2048)?;
    let path = dir.join(format!("{domain}.{selector}.pem"));
    write_private(&path, key.pem.as_bytes())?;
    Ok((path, format!("{selector}._domainkey.{domain}"), key.record))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "writing {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
