//! Renters' SSH public keys: the server checks one when it is added, and nodes are given the
//! key text to accept.

use russh::keys::{HashAlg, PublicKey};

/// A key as a renter adds it: one line of an `authorized_keys` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`...
    pub algorithm: String,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The key without its comment: what nodes are given.
    pub key: String,
    pub comment: String,
}

impl AuthorizedKey {
    /// Reads one public key line (`ssh-ed25519 AAAA... comment`). DSA keys are refused (OpenSSH
    /// itself dropped them), as are RSA keys under 2048 bits.
    pub fn parse(line: &str) -> Result<AuthorizedKey, String> {
        let line = line.trim();
        if line.is_empty() {
            return Err("the public key is empty: give the contents of a .pub file".into());
        }
        if line.contains('\n') {
            return Err("one public key at a time: the text has more than one line".into());
        }
        if line.starts_with("-----BEGIN") {
            return Err(
                "that is a private key: give the public one (the .pub file), and keep this one to yourself".into()
            );
        }
        let mut key = PublicKey::from_openssh(line).map_err(|e| {
            format!("not an OpenSSH public key ({e}): expected a line like 'ssh-ed25519 AAAA... you@host'")
        })?;
        if let russh::keys::ssh_key::public::KeyData::Rsa(rsa) = key.key_data() {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(format!("an RSA key of {bits} bits is too weak: use 2048 bits or more, or ed25519"));
            }
        }
        let comment = <russh::keys::ssh_key::Comment as AsRef<str>>::as_ref(key.comment()).to_string();
        key.set_comment("");
        let text = key.to_openssh().map_err(|e| format!("cannot write the key back ({e})"))?;
        Ok(AuthorizedKey {
            algorithm: key.algorithm().as_str().to_string(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            key: text.trim().to_string(),
            comment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDBh7NsIURREmBoWHY68roPmpE3RQAwaKIruIXDI6kgb renter@laptop";

    #[test]
    fn a_public_key_is_read_with_its_fingerprint_and_without_its_comment() {
        let k = AuthorizedKey::parse(&format!("  {ED25519}\n")).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "renter@laptop");
        // What `ssh-keygen -lf` prints for it.
        assert_eq!(k.fingerprint, "SHA256:SaKGsp2lkMJpZyTnnUn3WAjfy9aB83Vsx2/oIER705Q");
        assert!(k.key.starts_with("ssh-ed25519 AAAA") && !k.key.contains("renter"), "{}", k.key);
        assert_eq!(AuthorizedKey::parse(&k.key).unwrap().fingerprint, k.fingerprint);
    }

    #[test]
    fn what_is_not_one_public_key_is_refused_with_the_reason() {
        for (text, says) in [
            ("", "empty"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            ("ssh-ed25519 notbase64", "not an OpenSSH public key"),
            (&format!("{ED25519}\n{ED25519}"), "one public key"),
        ] {
            let e = AuthorizedKey::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
