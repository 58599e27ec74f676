//! The ingress line's signature: the server signs which instance port a proxied connection may
//! reach and until when; the node's ingress checks it before splicing anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What the server signs: the instance, the port and the expiry.
pub fn signature(secret: &[u8], instance: &str, port: u16, expires_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{instance} {port} {expires_ms}").as_bytes());
    gpucloud_model::hex::encode(&mac.finalize().into_bytes())
}
