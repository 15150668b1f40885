//! Standard Webhooks signatures for outbound pushes.
//!
//! Receivers verify that a push came from this cluster and was not replayed later by checking
//! `webhook-signature` = `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` against
//! the secret they share with us. The same scheme signs agent pushes and webhook
//! subscription pushes, so one verifier (any Standard Webhooks library) serves both.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header names of the Standard Webhooks spec.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Prefix of secrets given in the spec's own format: the rest is the base64 key.
const WHSEC_PREFIX: &str = "whsec_";
/// Key lengths of `whsec_` secrets that registration accepts: Standard Webhooks libraries
/// generate 24 to 64 bytes; less is a weak key, more is not what any library produces.
pub const WHSEC_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Shortest secret in the plain form (any other string), as the gateway's schema documents
/// (`secret`: a string of 16 to 128 characters).
pub const PLAIN_SECRET_MIN_CHARS: usize = 16;
/// Key length of the secrets generated for a registration that gives none.
const GENERATED_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A `whsec_` secret whose remainder is not base64: signing with its text would produce
    /// signatures no receiver library accepts, so it is refused instead.
    #[error("a whsec_ secret must be followed by base64: {0}")]
    BadSecret(String),
    #[error("the signing secret is empty")]
    EmptySecret,
    #[error("a whsec_ secret must encode {min} to {max} bytes, not {0}", min = WHSEC_KEY_BYTES.start(), max = WHSEC_KEY_BYTES.end())]
    KeyLength(usize),
    #[error("a secret must be whsec_ followed by base64, or at least {PLAIN_SECRET_MIN_CHARS} characters")]
    TooShort,
    #[error("a secret may not contain control characters")]
    ControlCharacter,
}

/// Checks a secret given at registration, so that a receiver is never registered with a
/// secret that every push would then fail on (or that signs with a weak key): either
/// `whsec_` + base64 of [`WHSEC_KEY_BYTES`] bytes (the Standard Webhooks form), or a plain
/// string of at least [`PLAIN_SECRET_MIN_CHARS`] characters, used as its UTF-8 bytes. The
/// longest accepted length is the caller's (the schemas differ).
pub fn check_secret(secret: &str) -> Result<(), SigningError> {
    if secret.chars().any(char::is_control) {
        return Err(SigningError::ControlCharacter);
    }
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(_) => {
            let key = signing_key(secret)?;
            if !WHSEC_KEY_BYTES.contains(&key.len()) {
                return Err(SigningError::KeyLength(key.len()));
            }
        }
        None if secret.chars().count() < PLAIN_SECRET_MIN_CHARS => {
            return Err(SigningError::TooShort)
        }
        None => {}
    }
    Ok(())
}

/// A fresh `whsec_` secret (32 random bytes), for a registration that gives none.
pub fn generate_secret() -> String {
    let key: [u8; GENERATED_KEY_BYTES] = rand::random();
    format!("{WHSEC_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key a secret stands for: `whsec_<base64>` is decoded (what Standard Webhooks
/// libraries generate and expect), any other secret is used as its UTF-8 bytes.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, SigningError> {
    let key = match secret.strip_prefix(WHSEC_PREFIX) {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|e| SigningError::BadSecret(e.to_string()))?,
        None => secret.as_bytes().to_vec(),
    };
    if key.is_empty() {
        return Err(SigningError::EmptySecret);
    }
    Ok(key)
}

/// The `webhook-signature` value for one message: `v1,<base64 signature>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SigningError> {
    let key = signing_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The three headers of a signed push, in the order the spec lists them.
pub fn headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<[(&'static str, String); 3], SigningError> {
    Ok([
        (WEBHOOK_ID, id.to_string()),
        (WEBHOOK_TIMESTAMP, timestamp.to_string()),
        (WEBHOOK_SIGNATURE, sign(secret, id, timestamp, body)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both vectors were computed independently with Python's `hmac` module:
    // base64(hmac.new(key, f"{id}.{ts}.{body}".encode(), hashlib.sha256).digest()).

    #[test]
    fn whsec_secrets_are_base64_decoded() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn other_secrets_are_their_utf8_bytes() {
        let sig = sign(
            "plain-secret",
            "11111111-2222-3333-4444-555555555555:3",
            1700000000,
            br#"{"a":1}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,0KXNyVDWqCYvVYjeNGPrwbAYiYiyILE4b6L/zdJx5Aw=");
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(matches!(
            signing_key("whsec_not base64!"),
            Err(SigningError::BadSecret(_))
        ));
        assert_eq!(signing_key(""), Err(SigningError::EmptySecret));
        assert_eq!(signing_key("whsec_"), Err(SigningError::EmptySecret));
    }

    #[test]
    fn registration_accepts_whsec_of_24_to_64_bytes_or_plain_secrets() {
        let whsec = |n: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; n]));
        for ok in [
            whsec(24),
            whsec(32),
            whsec(64),
            "0123456789abcdef".to_string(),
            "a plain secret, long enough".to_string(),
            generate_secret(),
        ] {
            assert_eq!(check_secret(&ok), Ok(()), "{ok}");
        }
        assert_eq!(check_secret(&whsec(23)), Err(SigningError::KeyLength(23)));
        assert_eq!(check_secret(&whsec(65)), Err(SigningError::KeyLength(65)));
        assert!(matches!(
            check_secret("whsec_this is not base64 at all!"),
            Err(SigningError::BadSecret(_))
        ));
        assert_eq!(check_secret("whsec_"), Err(SigningError::EmptySecret));
        assert_eq!(check_secret("short"), Err(SigningError::TooShort));
        assert_eq!(
            check_secret("0123456789abcdef\n"),
            Err(SigningError::ControlCharacter)
        );
    }

    #[test]
    fn generated_secrets_are_fresh_whsec_keys_of_32_bytes() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert_eq!(signing_key(&a).unwrap().len(), 32);
        assert!(a.starts_with("whsec_"), "{a}");
    }

    #[test]
    fn headers_carry_id_timestamp_and_signature() {
        let [id, ts, sig] = headers("k", "i:1", 5, b"{}").unwrap();
        assert_eq!(id, (WEBHOOK_ID, "i:1".to_string()));
        assert_eq!(ts, (WEBHOOK_TIMESTAMP, "5".to_string()));
        assert_eq!(sig.1, sign("k", "i:1", 5, b"{}").unwrap());
        assert!(sig.1.starts_with("v1,"));
    }
}
