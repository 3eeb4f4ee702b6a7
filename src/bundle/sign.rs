//! Ed25519 signatures over `manifest.json` (which lists the sha256 of every other byte).
//!
//! Keys are PKCS#8 / SPKI PEM files (`trident bundle keygen`), readable by OpenSSL too. The
//! signature entry `manifest.sig` carries the signer's public key and key id; what it proves
//! depends on the reader: with `--key` the bundle must be signed by exactly that key, without
//! one a signed bundle is still checked against its own key (a tampered manifest fails) and
//! the receipt says the key was not pinned. Every failure is an error, never a warning.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BundleError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `manifest.sig` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
    pub signature: String,
}

/// Short, stable name of a public key: the first 16 hex digits of sha256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let d = Sha256::digest(key.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Writes a new key pair: `<stem>.key` (private, mode 0600) and `<stem>.pub`. Refuses to
/// overwrite either.
pub fn keygen(
    stem: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf, String), BundleError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(format!("encoding the private key: {e}")))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(format!("encoding the public key: {e}")))?;
    let (priv_path, pub_path) = (stem.with_extension("key"), stem.with_extension("pub"));
    for p in [&priv_path, &pub_path] {
        if p.exists() {
            return Err(BundleError::Key(format!(
                "{} exists; refusing to overwrite a key",
                p.display()
            )));
        }
    }
    write_new(&priv_path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, public.as_bytes(), 0o644)?;
    Ok((priv_path, pub_path, key_id(&key.verifying_key())))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| BundleError::io(path, e))?;
    f.write_all(bytes).map_err(|e| BundleError::io(path, e))
}

/// Reads a private key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        BundleError::Key(format!(
            "{}: not an Ed25519 private key (PKCS#8 PEM): {e}",
            path.display()
        ))
    })
}

/// Reads a public key file.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        BundleError::Key(format!(
            "{}: not an Ed25519 public key (SPKI PEM): {e}",
            path.display()
        ))
    })
}

/// Signs the manifest bytes.
pub fn sign(key: &SigningKey, manifest: &[u8]) -> SignatureFile {
    SignatureFile {
        algorithm: "ed25519".into(),
        key_id: key_id(&key.verifying_key()),
        public_key: B64.encode(key.verifying_key().as_bytes()),
        signature: B64.encode(key.sign(manifest).to_bytes()),
    }
}

/// How a bundle's signature was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SignatureState {
    /// Not signed, and no key was asked for.
    Unsigned,
    /// Valid, by the key given with `--key`.
    Pinned { key_id: String },
    /// Valid against the key it carries; no key was given to say who that is.
    NotPinned { key_id: String },
}

/// Checks `sig` (the `manifest.sig` entry, if any) over `manifest` under the policy above.
pub fn check(
    manifest: &[u8],
    sig: Option<&[u8]>,
    pinned: Option<&VerifyingKey>,
) -> Result<SignatureState, BundleError> {
    let Some(sig) = sig else {
        return match pinned {
            Some(k) => Err(BundleError::Signature(format!(
                "the bundle is not signed, but a key was given (key id {})",
                key_id(k)
            ))),
            None => Ok(SignatureState::Unsigned),
        };
    };
    let file: SignatureFile = serde_json::from_slice(sig).map_err(|e| {
        BundleError::Signature(format!("{}: unreadable: {e}", super::manifest::SIGNATURE))
    })?;
    if file.algorithm != "ed25519" {
        return Err(BundleError::Signature(format!(
            "unsupported signature algorithm '{}'",
            file.algorithm
        )));
    }
    let carried = decode_key(&file.public_key)?;
    let signature = B64
        .decode(&file.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| BundleError::Signature("signature is not 64 bytes of base64".into()))?;
    let key = match pinned {
        Some(k) if k != &carried => {
            return Err(BundleError::Signature(format!(
                "signed by key {}, but the key given is {}",
                key_id(&carried),
                key_id(k)
            )))
        }
        Some(k) => k,
        None => &carried,
    };
    key.verify(manifest, &signature).map_err(|_| {
        BundleError::Signature(format!(
            "the signature by key {} does not match manifest.json (the manifest or the signature was altered)",
            key_id(key)
        ))
    })?;
    let key_id = key_id(key);
    Ok(match pinned {
        Some(_) => SignatureState::Pinned { key_id },
        None => SignatureState::NotPinned { key_id },
    })
}

fn decode_key(b64: &str) -> Result<VerifyingKey, BundleError> {
    B64.decode(b64)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| BundleError::Signature("the signature's public key is not valid".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path, name: &str) -> (SigningKey, VerifyingKey) {
        let (k, p, id) = keygen(&dir.join(name)).unwrap();
        let (sk, vk) = (
            read_signing_key(&k).unwrap(),
            read_verifying_key(&p).unwrap(),
        );
        assert_eq!(id, key_id(&vk));
        (sk, vk)
    }

    #[test]
    fn keygen_sign_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, vk) = keypair(dir.path(), "a");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keygen(&dir.path().join("a"))
            .unwrap_err()
            .to_string()
            .contains("overwrite"));

        let m = br#"{"manifest":1}"#;
        let sig = serde_json::to_vec(&sign(&sk, m)).unwrap();
        assert_eq!(
            check(m, Some(&sig), Some(&vk)).unwrap(),
            SignatureState::Pinned {
                key_id: key_id(&vk)
            }
        );
        assert!(matches!(
            check(m, Some(&sig), None).unwrap(),
            SignatureState::NotPinned { .. }
        ));
        assert_eq!(check(m, None, None).unwrap(), SignatureState::Unsigned);
    }

    #[test]
    fn every_bad_signature_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, vk) = keypair(dir.path(), "a");
        let (other_sk, other_vk) = keypair(dir.path(), "b");
        let m = br#"{"manifest":1}"#;
        let sig = serde_json::to_vec(&sign(&sk, m)).unwrap();
        // Another manifest, another key, no signature though a key is pinned, garbage.
        let e = check(br#"{"manifest":2}"#, Some(&sig), None).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let e = check(m, Some(&sig), Some(&other_vk)).unwrap_err();
        assert!(e.to_string().contains("but the key given is"), "{e}");
        assert!(check(m, None, Some(&vk))
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        assert!(check(m, Some(b"nonsense"), None).is_err());
        // A signature made by another key but claiming the pinned key's public key.
        let mut forged = sign(&other_sk, m);
        forged.public_key = B64.encode(vk.as_bytes());
        let forged = serde_json::to_vec(&forged).unwrap();
        assert!(check(m, Some(&forged), Some(&vk)).is_err());
        assert!(check(m, Some(&forged), None).is_err());
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pub");
        std::fs::write(&p, "not a key").unwrap();
        assert!(read_verifying_key(&p)
            .unwrap_err()
            .to_string()
            .contains("x.pub"));
        assert!(read_signing_key(&p).is_err());
    }
}
