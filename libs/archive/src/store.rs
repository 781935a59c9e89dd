//! Opening the object store that `storage.object-store-url` names.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

use crate::ArchiveError;

/// Opens the object store `url` names:
/// - `file://<folder>`: a local folder, created if missing; a relative folder is relative
///   to the working directory (`file://runnel-data/objects`), an absolute one starts with
///   `/` (`file:///var/lib/runnel/objects`).
/// - `s3://<bucket>[/<prefix>]`: S3 or an S3-compatible server, configured from the
///   standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   `AWS_REGION`, `AWS_ENDPOINT` for a non-AWS server, `AWS_ALLOW_HTTP=true` for plain
///   HTTP).
/// - `memory://`: a new, empty in-memory store (tests).
///
/// `options` (`storage.object-store-options`) override the environment, with the same keys in
/// lower case (`aws_endpoint`, `aws_allow_http`, ...).
///
/// # Errors
///
/// [`ArchiveError::StoreUrl`] for another scheme, a folder that cannot be created or an S3
/// configuration the client refuses.
pub fn open_object_store(
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let refuse = |message: String| ArchiveError::StoreUrl {
        url: url.to_string(),
        message,
    };
    if let Some(folder) = url.strip_prefix("file://") {
        if folder.is_empty() {
            return Err(refuse("the folder is empty".to_string()));
        }
        std::fs::create_dir_all(folder)
            .map_err(|error| refuse(format!("create {folder}: {error}")))?;
        let store =
            LocalFileSystem::new_with_prefix(folder).map_err(|error| refuse(error.to_string()))?;
        return Ok(Arc::new(store));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(refuse("no bucket".to_string()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key = key
                .parse()
                .map_err(|_| refuse(format!("unknown S3 option `{key}`")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|error| refuse(error.to_string()))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(Arc::new(store));
        }
        return Ok(Arc::new(PrefixStore::new(store, prefix)));
    }
    if url.starts_with("memory://") {
        return Ok(Arc::new(InMemory::new()));
    }
    Err(refuse(
        "the scheme must be file://, s3:// or memory://".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn file_urls_open_a_folder_and_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a/b");
        let store =
            open_object_store(&format!("file://{}", folder.display()), &BTreeMap::new()).unwrap();
        store
            .put(&Path::from("x/y.txt"), PutPayload::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(folder.join("x/y.txt")).unwrap(), b"hi");
    }

    #[test]
    fn other_schemes_are_refused_with_the_url() {
        let none = BTreeMap::new();
        let error = open_object_store("gs://bucket", &none)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("gs://bucket"), "{error}");
        assert!(open_object_store("s3://", &none).is_err());
        assert!(open_object_store("file://", &none).is_err());
        let bad = BTreeMap::from([("aws_colour".to_string(), "blue".to_string())]);
        let error = open_object_store("s3://bucket", &bad)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("aws_colour"), "{error}");
    }
}
