//! Amazon MSK IAM authentication (`storage.log.kafka.aws-msk-iam`): the SASL/OAUTHBEARER
//! token AWS's MSK IAM signers make, and the context that hands it to every Kafka client.
//!
//! The token is a SigV4-presigned URL for `GET https://kafka.<region>.amazonaws.com/?Action=
//! kafka-cluster%3AConnect` (service `kafka-cluster`, only `host` signed, valid 900 s, with
//! `X-Amz-Security-Token` when the credentials have one), with a `User-Agent` parameter
//! appended after signing, encoded as unpadded base64url: byte for byte what
//! `aws-msk-iam-sasl-signer-python` 1.0.2 makes (tested against it below).
//!
//! Threads. librdkafka asks for a token ([`TokenContext::generate_oauth_token`]) from whichever
//! thread serves the client's events: a producer's polling thread, a group member's thread, a
//! blocking-pool thread (`kafka::run_blocking` serves the metadata and group clients' events
//! before each call, as nothing else polls them), or a tokio worker polling a reader's stream.
//! So signing is synchronous and cheap, from credentials a thread of its own fetches:
//! [`MskIamTokens`] runs the AWS credential chain (object_store's: it may call the ECS or STS
//! endpoints through reqwest) on a current-thread tokio runtime that nothing else uses, every
//! minute (the chain caches and renews temporary credentials five minutes before they expire),
//! and the callback signs with the latest. Only before the first credentials arrive may the
//! callback wait, boundedly, and only on a thread outside any tokio runtime; on a runtime
//! thread it fails at once and librdkafka asks again ten seconds later.
//!
//! rdkafka 0.39's `AdminClient` never serves its token-refresh events (fede1024/rust-rdkafka
//! #757), so [`set_admin_token`] sets a token on it directly before each admin request.

use std::error::Error;
use std::ffi::{CString, c_char};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential, AwsCredentialProvider};
use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::ConsumerContext;
use ring::{digest, hmac};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::LogError;

/// How long a token is valid (`X-Amz-Expires`), as AWS's signers make it.
const TOKEN_LIFETIME_SECS: i64 = 900;

/// How often the credential chain is asked again while it answers (it caches, and renews
/// temporary credentials ahead of their expiry).
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// How soon the credential chain is asked again after it failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The longest one ask of the credential chain may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a token request outside a tokio runtime waits for the first credentials: as
/// long as librdkafka would wait before asking again after a failure.
const FIRST_CREDENTIALS_WAIT: Duration = Duration::from_secs(10);

/// The `User-Agent` parameter of runnel's tokens.
const USER_AGENT: &str = concat!("runnel/", env!("CARGO_PKG_VERSION"));

/// A signed MSK IAM token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MskToken {
    /// The presigned URL, base64url without padding.
    pub(crate) token: String,
    /// When it expires: signing time + 900 s, in epoch milliseconds.
    pub(crate) lifetime_ms: i64,
    /// The principal librdkafka reports (any non-empty name will do): the access key id.
    pub(crate) principal: String,
}

/// Signs the MSK IAM token for `region` with `credential` at `signed_at` (epoch seconds).
pub(crate) fn sign_token(
    credential: &AwsCredential,
    region: &str,
    signed_at: i64,
    user_agent: &str,
) -> MskToken {
    // `20240517T083005Z` and `20240517`, from runnel's one RFC 3339 formatter.
    let timestamp: String = runnel_time::format_millis(signed_at.saturating_mul(1000))
        .replace(".000", "")
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let date = timestamp.get(..8).unwrap_or_default();
    let host = format!("kafka.{region}.amazonaws.com");
    let scope = format!("{date}/{region}/kafka-cluster/aws4_request");
    let credential_param = format!("{}/{scope}", credential.key_id);
    let expires = TOKEN_LIFETIME_SECS.to_string();
    // In the order AWS's signers write them; the canonical request sorts them.
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", "kafka-cluster:Connect"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", &credential_param),
        ("X-Amz-Date", &timestamp),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(session_token) = &credential.token {
        params.push(("X-Amz-Security-Token", session_token));
    }
    let mut sorted: Vec<(String, String)> = params
        .iter()
        .map(|(key, value)| (uri_encode(key), uri_encode(value)))
        .collect();
    sorted.sort();
    let canonical_query = join_query(&sorted);
    let empty_payload = hex(digest::digest(&digest::SHA256, b"").as_ref());
    let canonical_request =
        format!("GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{empty_payload}");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{}", credential.secret_key).into_bytes();
    for part in [date, region, "kafka-cluster", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    let mut query: Vec<(String, String)> = params
        .iter()
        .map(|(key, value)| (uri_encode(key), uri_encode(value)))
        .collect();
    query.push(("X-Amz-Signature".to_string(), signature));
    // Not signed: appended after signing, as AWS's signers do.
    query.push(("User-Agent".to_string(), uri_encode(user_agent)));
    let url = format!("https://{host}/?{}", join_query(&query));
    MskToken {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url),
        lifetime_ms: (signed_at + TOKEN_LIFETIME_SECS).saturating_mul(1000),
        principal: credential.key_id.clone(),
    }
}

fn join_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SigV4's URI encoding: every byte but `A-Za-z0-9-_.~` as `%XX`.
fn uri_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The region of the cluster: `AWS_REGION`, else `AWS_DEFAULT_REGION`.
fn region_of(vars: &[(String, String)]) -> Result<String, LogError> {
    let lookup = |name: &str| {
        vars.iter()
            .find(|(key, value)| key == name && !value.trim().is_empty())
            .map(|(_, value)| value.trim().to_string())
    };
    let Some(region) = lookup("AWS_REGION").or_else(|| lookup("AWS_DEFAULT_REGION")) else {
        return Err(LogError::AwsMskIam(
            "no AWS region is set: set AWS_REGION (or AWS_DEFAULT_REGION) to the MSK cluster's region"
                .to_string(),
        ));
    };
    if !region
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    {
        return Err(LogError::AwsMskIam(format!(
            "the AWS region `{region}` is not a region name (like `eu-west-1`)"
        )));
    }
    Ok(region)
}

/// What the credential thread last got.
#[derive(Default)]
struct CredentialState {
    credential: Option<Arc<AwsCredential>>,
    /// The last failure, while there are no credentials to sign with.
    error: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<CredentialState>,
    /// Signalled whenever `state` changes.
    changed: Condvar,
}

impl Shared {
    fn set(&self, fetched: Result<Arc<AwsCredential>, String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok(credential) => {
                if state.credential.is_none() {
                    info!(key_id = %credential.key_id, "got AWS credentials for MSK IAM");
                }
                state.credential = Some(credential);
                state.error = None;
            }
            Err(error) => {
                // Credentials fetched earlier stay usable: the chain renews them ahead of
                // their expiry, so one failed ask leaves them minutes to run.
                if state.error.as_deref() != Some(&error) {
                    warn!(%error, "could not get AWS credentials for MSK IAM; trying again");
                }
                state.error = Some(error);
            }
        }
        self.changed.notify_all();
    }
}

/// The MSK IAM token source of one [`KafkaLog`](crate::KafkaLog): credentials from the AWS
/// chain, kept fresh by a thread of its own (see the module docs), and tokens signed from them.
pub(crate) struct MskIamTokens {
    region: String,
    shared: Arc<Shared>,
    /// Tokens handed out, for tests and debugging.
    issued: AtomicU64,
    /// Dropped with the source: stops the credential thread.
    _stop: oneshot::Sender<()>,
}

impl MskIamTokens {
    /// A token source over the process environment's AWS settings.
    pub(crate) fn from_env() -> Result<MskIamTokens, LogError> {
        MskIamTokens::from_vars(std::env::vars().collect())
    }

    /// A token source over the AWS settings among `vars` (environment variables): the region
    /// from `AWS_REGION` or `AWS_DEFAULT_REGION`, the credentials from object_store's AWS chain
    /// over the `AWS_*` variables, as `AmazonS3Builder::from_env` reads them.
    pub(crate) fn from_vars(vars: Vec<(String, String)>) -> Result<MskIamTokens, LogError> {
        let region = region_of(&vars)?;
        let mut builder = AmazonS3Builder::new();
        for (key, value) in &vars {
            if key.starts_with("AWS_")
                && let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(config_key, value);
            }
        }
        // object_store has the AWS credential chain runnel's S3 store already uses, but
        // exposes it only through a store: this one is built for its credential provider
        // alone, and its bucket is never used.
        let store = builder
            .with_region(&region)
            .with_bucket_name("runnel-msk-iam-credentials-only")
            .build()
            .map_err(|error| {
                LogError::AwsMskIam(format!("build the AWS credential chain: {error}"))
            })?;
        MskIamTokens::start(region, store.credentials().clone())
    }

    /// A token source signing for `region` with what `provider` gives.
    pub(crate) fn start(
        region: String,
        provider: AwsCredentialProvider,
    ) -> Result<MskIamTokens, LogError> {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("msk-iam credentials".to_string())
            .spawn(move || {
                // A runtime of its own: the chain's HTTP calls block no runtime of the
                // application's, and run whether or not the log was opened inside one.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(refresh_credentials(provider, &thread_shared, stopped));
                    }
                    Err(error) => {
                        thread_shared.set(Err(format!("start the credential runtime: {error}")));
                    }
                }
            })
            .map_err(|error| {
                LogError::AwsMskIam(format!("start the AWS credential thread: {error}"))
            })?;
        Ok(MskIamTokens {
            region,
            shared,
            issued: AtomicU64::new(0),
            _stop: stop,
        })
    }

    /// Signs a token valid from `now` with the latest credentials.
    fn token(&self, now: SystemTime) -> Result<MskToken, String> {
        let credential = {
            let state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match (&state.credential, &state.error) {
                (Some(credential), _) => Arc::clone(credential),
                (None, Some(error)) => return Err(format!("no AWS credentials: {error}")),
                (None, None) => return Err("AWS credentials are still being fetched".to_string()),
            }
        };
        let signed_at = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        self.issued.fetch_add(1, Ordering::Relaxed);
        Ok(sign_token(&credential, &self.region, signed_at, USER_AGENT))
    }

    /// Blocks the calling thread until the first credentials have arrived, at most `timeout`.
    /// Never call it on a tokio worker.
    pub(crate) fn wait_for_credentials(&self, timeout: Duration) {
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |state| {
                state.credential.is_none() && state.error.is_none()
            })
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// [`MskIamTokens::wait_for_credentials`] for as long as a token request would wait.
    pub(crate) fn wait_for_first_credentials(&self) {
        self.wait_for_credentials(FIRST_CREDENTIALS_WAIT);
    }

    /// How many tokens have been signed.
    #[cfg(test)]
    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

/// Asks `provider` for credentials every [`REFRESH_INTERVAL`] (every [`RETRY_INTERVAL`] after
/// a failure) into `shared`, until `stopped` fires or its sender is dropped.
async fn refresh_credentials(
    provider: AwsCredentialProvider,
    shared: &Shared,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let fetched = tokio::select! {
            fetched = tokio::time::timeout(FETCH_TIMEOUT, provider.get_credential()) => fetched,
            _ = &mut stopped => break,
        };
        let wait = match fetched {
            Ok(Ok(credential)) => {
                shared.set(Ok(credential));
                REFRESH_INTERVAL
            }
            Ok(Err(error)) => {
                shared.set(Err(error.to_string()));
                RETRY_INTERVAL
            }
            Err(_) => {
                shared.set(Err(format!(
                    "the AWS credential chain did not answer within {FETCH_TIMEOUT:?}"
                )));
                RETRY_INTERVAL
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stopped => break,
        }
    }
    debug!("stopped fetching AWS credentials for MSK IAM");
}

/// The context of every runnel Kafka client (or a part of it): supplies OAUTHBEARER tokens
/// when the log uses MSK IAM. librdkafka asks only clients configured for OAUTHBEARER, so
/// without MSK IAM it is [`rdkafka::client::DefaultClientContext`] by another name.
#[derive(Clone, Default)]
pub(crate) struct TokenContext {
    msk_iam: Option<Arc<MskIamTokens>>,
}

impl TokenContext {
    /// A context whose clients get `tokens`.
    pub(crate) fn msk_iam(tokens: Arc<MskIamTokens>) -> TokenContext {
        TokenContext {
            msk_iam: Some(tokens),
        }
    }

    /// The context `config` asks for: MSK IAM tokens from the process environment's AWS
    /// settings when `aws-msk-iam` is on.
    pub(crate) fn for_config(
        config: &runnel_config::KafkaLogConfig,
    ) -> Result<TokenContext, LogError> {
        if !config.aws_msk_iam {
            return Ok(TokenContext::default());
        }
        Ok(TokenContext::msk_iam(Arc::new(MskIamTokens::from_env()?)))
    }

    /// The token source, when the log uses MSK IAM.
    pub(crate) fn tokens(&self) -> Option<&Arc<MskIamTokens>> {
        self.msk_iam.as_ref()
    }

    /// Serves `librdkafka`'s request for a token (see [`ClientContext::generate_oauth_token`]).
    pub(crate) fn oauth_token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let Some(tokens) = &self.msk_iam else {
            return Err("runnel supplies OAUTHBEARER tokens only with \
                storage.log.kafka.aws-msk-iam"
                .into());
        };
        // Outside a tokio runtime (a producer's or a group member's thread) waiting is
        // harmless; on a runtime thread (a reader's stream) it is not.
        if tokio::runtime::Handle::try_current().is_err() {
            tokens.wait_for_credentials(FIRST_CREDENTIALS_WAIT);
        }
        let token = tokens.token(SystemTime::now())?;
        Ok(OAuthToken {
            token: token.token,
            principal_name: token.principal,
            lifetime_ms: token.lifetime_ms,
        })
    }
}

impl ClientContext for TokenContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.oauth_token()
    }
}

impl ConsumerContext for TokenContext {}

/// Sets a fresh token on `admin`, whose own token-refresh events rdkafka 0.39 never serves
/// (see the module docs), waiting for the first credentials if need be: call it before each
/// admin request, on a thread that may block.
pub(crate) fn set_admin_token(admin: &AdminClient<TokenContext>) -> Result<(), LogError> {
    let Some(tokens) = admin.inner().context().tokens() else {
        return Ok(());
    };
    tokens.wait_for_first_credentials();
    let token = tokens
        .token(SystemTime::now())
        .map_err(LogError::AwsMskIam)?;
    let (Ok(value), Ok(principal)) = (CString::new(token.token), CString::new(token.principal))
    else {
        return Err(LogError::AwsMskIam(
            "the token or the access key id holds a NUL byte".to_string(),
        ));
    };
    let mut error = [0 as c_char; 512];
    // SAFETY: the client pointer is valid while `admin` is borrowed; `value`, `principal`
    // and `error` outlive the call, which copies what it keeps; no extensions are passed
    // (null and 0); librdkafka's token setter is safe to call from any thread.
    #[allow(unsafe_code)]
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            admin.inner().native_ptr(),
            value.as_ptr(),
            token.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        let message: String = error
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| char::from(*c as u8))
            .collect();
        return Err(LogError::AwsMskIam(format!(
            "set the admin client's token ({code:?}): {message}"
        )));
    }
    Ok(())
}

/// A token source over fixed credentials (`AKIDEXAMPLE`), for client tests.
#[cfg(test)]
pub(crate) fn static_tokens() -> Arc<MskIamTokens> {
    let provider: AwsCredentialProvider =
        Arc::new(object_store::StaticCredentialProvider::new(AwsCredential {
            key_id: "AKIDEXAMPLE".to_string(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            token: None,
        }));
    Arc::new(MskIamTokens::start("eu-west-1".to_string(), provider).expect("a token source"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE/session+token==";
    /// 2024-05-17T08:30:05Z.
    const SIGNED_AT: i64 = 1_715_934_605;

    fn credential(token: Option<&str>) -> AwsCredential {
        AwsCredential {
            key_id: KEY_ID.to_string(),
            secret_key: SECRET.to_string(),
            token: token.map(str::to_string),
        }
    }

    fn decode(token: &str) -> String {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .expect("base64url without padding");
        String::from_utf8(bytes).expect("a URL")
    }

    /// The tokens of AWS's reference signer, `aws-msk-iam-sasl-signer-python` 1.0.2 (with
    /// botocore 1.44.18), for these credentials, region `eu-west-1`, User-Agent `runnel` and
    /// signing time 2024-05-17T08:30:05Z: printed by `libs/log/tests/msk_iam_reference.py`,
    /// which says how to run it.
    #[test]
    fn tokens_equal_the_reference_signers() {
        let with_session_token = "aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJREVYQU1QTEUlMkYyMDI0MDUxNyUyRmV1LXdlc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI0MDUxN1QwODMwMDVaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TZWN1cml0eS1Ub2tlbj1JUW9KYjNKcFoybHVYMlZqRVhBTVBMRSUyRnNlc3Npb24lMkJ0b2tlbiUzRCUzRCZYLUFtei1TaWduYXR1cmU9OGQ2ZWNiYjkwYmRhM2VlOGU3NjE4YjNjOTg5NGYyYTlhZmFiZDVjODYxNDMzZmFiNTA4ZTZlOTYxZTM5ZmZhOCZVc2VyLUFnZW50PXJ1bm5lbA";
        let without_session_token = "aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJREVYQU1QTEUlMkYyMDI0MDUxNyUyRmV1LXdlc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI0MDUxN1QwODMwMDVaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TaWduYXR1cmU9MmI5NThiZDhkMTM5OGI1ZjZiNjI3YWI5NzUzOWZmODU4NjA5MGRhNzBjZTRhOGIwZmJjM2FkNzQ4NTM5ODZjMSZVc2VyLUFnZW50PXJ1bm5lbA";
        let token = sign_token(
            &credential(Some(SESSION_TOKEN)),
            "eu-west-1",
            SIGNED_AT,
            "runnel",
        );
        assert_eq!(token.token, with_session_token);
        // The reference signer's expiry, printed beside its token.
        assert_eq!(token.lifetime_ms, 1_715_935_505_000);
        assert_eq!(token.principal, KEY_ID);
        let token = sign_token(&credential(None), "eu-west-1", SIGNED_AT, "runnel");
        assert_eq!(token.token, without_session_token);
    }

    #[test]
    fn a_token_is_a_presigned_connect_url() {
        let token = sign_token(
            &credential(Some(SESSION_TOKEN)),
            "us-east-2",
            SIGNED_AT,
            USER_AGENT,
        );
        assert!(!token.token.contains('='), "no padding: {}", token.token);
        let url = decode(&token.token);
        let query = url
            .strip_prefix("https://kafka.us-east-2.amazonaws.com/?")
            .unwrap_or_else(|| panic!("host: {url}"));
        let params: Vec<(&str, &str)> = query
            .split('&')
            .map(|pair| pair.split_once('=').expect("key=value"))
            .collect();
        let value = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        assert_eq!(value("Action"), Some("kafka-cluster%3AConnect"));
        assert_eq!(value("X-Amz-Expires"), Some("900"));
        assert_eq!(value("X-Amz-SignedHeaders"), Some("host"));
        assert_eq!(
            value("X-Amz-Credential"),
            Some("AKIDEXAMPLE%2F20240517%2Fus-east-2%2Fkafka-cluster%2Faws4_request")
        );
        assert_eq!(
            value("X-Amz-Security-Token"),
            Some("IQoJb3JpZ2luX2VjEXAMPLE%2Fsession%2Btoken%3D%3D")
        );
        assert_eq!(
            params.last(),
            Some(&("User-Agent", uri_encode(USER_AGENT).as_str()))
        );
        assert_eq!(token.lifetime_ms, (SIGNED_AT + 900) * 1000);

        let url = decode(&sign_token(&credential(None), "us-east-2", SIGNED_AT, USER_AGENT).token);
        assert!(!url.contains("X-Amz-Security-Token"), "{url}");
        assert!(url.contains("&User-Agent=runnel%2F"), "{url}");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn without_a_region_the_setting_is_refused() {
        let Err(error) = MskIamTokens::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", " "),
        ])) else {
            panic!("a token source without a region");
        };
        let message = error.to_string();
        assert!(
            matches!(error, LogError::AwsMskIam(_))
                && message.contains("storage.log.kafka.aws-msk-iam")
                && message.contains("AWS_REGION"),
            "{message}"
        );
    }

    #[test]
    fn the_region_is_aws_region_then_aws_default_region() {
        let region = |pairs: &[(&str, &str)]| region_of(&vars(pairs)).ok();
        assert_eq!(
            region(&[("AWS_DEFAULT_REGION", "eu-west-1")]).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region(&[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_REGION", "us-east-1")
            ])
            .as_deref(),
            Some("us-east-1")
        );
        assert_eq!(region(&[("AWS_REGION", "evil.com/x")]), None);
    }

    /// Credentials from the environment's keys sign tokens for the environment's region.
    #[test]
    fn a_source_from_environment_keys_signs_tokens() {
        let tokens = MskIamTokens::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ]))
        .expect("a token source");
        tokens.wait_for_credentials(Duration::from_secs(10));
        let token = tokens.token(SystemTime::now()).expect("a token");
        let url = decode(&token.token);
        assert!(
            url.starts_with("https://kafka.ap-south-1.amazonaws.com/?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Security-Token="), "{url}");
        assert_eq!(tokens.issued(), 1);
    }
}
