//! The job catalog on the object store, beside the checkpoints and the batch views:
//!
//! - `jobs/<job>/versions/<version>.json`: a registered job version ([`RegisteredVersion`]),
//!   its SQL and options, written by the backfill that first runs it. A version's definition
//!   never changes: registering it again with other SQL or options is refused
//!   ([`JobsError::Conflict`]), so a version's topics, checkpoints and batch view always hold
//!   the results of one definition.
//! - `jobs/<job>/active.json`: the version serving answers from ([`ActiveVersion`]), written
//!   by a replay once it has caught up with the live log.
//!
//! A job's versions are the ones the config declares and the ones registered ([`Catalog`]).
//! The running services read the catalog every poll interval, so a version that a backfill
//! in another process registers and makes active is served, and run live, with no restart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use runnel_config::{Config, JobConfig};
use serde::{Deserialize, Serialize};

use crate::{JobsError, get_json, put_json, to_json};

/// The folder under the object store's root of the job catalog.
pub const JOBS_PREFIX: &str = "jobs";

/// The content of `jobs/<job>/active.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveVersion {
    /// The job's name.
    pub job: String,
    /// The active version.
    pub version: u32,
    /// When it became active (epoch ms).
    pub activated_at_ms: i64,
}

/// The object that names `job`'s active version.
pub fn active_path(job: &str) -> Path {
    Path::from(format!("{JOBS_PREFIX}/{job}/active.json"))
}

/// Reads `job`'s active-version file, if it has one.
///
/// # Errors
///
/// Store failures; a file that does not parse.
pub async fn load_active(
    store: &dyn ObjectStore,
    job: &str,
) -> Result<Option<ActiveVersion>, JobsError> {
    get_json(store, &active_path(job)).await
}

/// Makes `active.version` the active version of `active.job` (one put).
///
/// # Errors
///
/// Store failures.
pub async fn save_active(store: &dyn ObjectStore, active: &ActiveVersion) -> Result<(), JobsError> {
    put_json(store, &active_path(&active.job), active).await
}

/// A job version registered in the catalog: everything that defines its results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredVersion {
    /// The job's name.
    pub job: String,
    /// The version.
    pub version: u32,
    /// The job's SQL (its `sql`, or the text of its `sql-file`), exactly: the operator's
    /// checkpoints are tied to the text.
    pub sql: String,
    /// `max-out-of-orderness`, in milliseconds.
    pub max_out_of_orderness_ms: u64,
    /// `allowed-lateness`, in milliseconds.
    pub allowed_lateness_ms: u64,
    /// `early-emit-interval`, in milliseconds.
    pub early_emit_interval_ms: Option<u64>,
    /// `idle-timeout`, in milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// When it was registered (epoch ms).
    pub registered_at_ms: i64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RegisteredVersion {
    /// The registration of `job`, as of `registered_at_ms`.
    ///
    /// # Errors
    ///
    /// [`JobsError::Sql`] when its `sql-file` cannot be read.
    pub fn of(job: &JobConfig, registered_at_ms: i64) -> Result<Self, JobsError> {
        let sql = job.sql_text().map_err(|source| JobsError::Sql {
            job: job.id(),
            source,
        })?;
        Ok(RegisteredVersion {
            job: job.name.clone(),
            version: job.version,
            sql,
            max_out_of_orderness_ms: millis(job.max_out_of_orderness),
            allowed_lateness_ms: millis(job.allowed_lateness),
            early_emit_interval_ms: job.early_emit_interval.map(millis),
            idle_timeout_ms: job.idle_timeout.map(millis),
            registered_at_ms,
        })
    }

    /// The version as a `[[jobs]]` entry, its SQL inline.
    pub fn job_config(&self) -> JobConfig {
        JobConfig {
            name: self.job.clone(),
            version: self.version,
            sql: Some(self.sql.clone()),
            sql_file: None,
            embedded_sql: None,
            max_out_of_orderness: Duration::from_millis(self.max_out_of_orderness_ms),
            allowed_lateness: Duration::from_millis(self.allowed_lateness_ms),
            early_emit_interval: self.early_emit_interval_ms.map(Duration::from_millis),
            idle_timeout: self.idle_timeout_ms.map(Duration::from_millis),
        }
    }

    /// What in `other`'s definition differs from this one's (when each was registered
    /// aside); `None` when they define the same results.
    pub fn difference(&self, other: &RegisteredVersion) -> Option<String> {
        let ms =
            |value: Option<u64>| value.map_or_else(|| "unset".to_string(), |v| format!("{v} ms"));
        let mut differences = Vec::new();
        if (&self.job, self.version) != (&other.job, other.version) {
            differences.push(format!(
                "another job version ({} version {} against {} version {})",
                self.job, self.version, other.job, other.version
            ));
        }
        if self.sql != other.sql {
            differences.push(format!(
                "other SQL (registered: `{}`; given: `{}`)",
                one_line(&self.sql),
                one_line(&other.sql)
            ));
        }
        for (name, held, given) in [
            (
                "max-out-of-orderness",
                Some(self.max_out_of_orderness_ms),
                Some(other.max_out_of_orderness_ms),
            ),
            (
                "allowed-lateness",
                Some(self.allowed_lateness_ms),
                Some(other.allowed_lateness_ms),
            ),
            (
                "early-emit-interval",
                self.early_emit_interval_ms,
                other.early_emit_interval_ms,
            ),
            ("idle-timeout", self.idle_timeout_ms, other.idle_timeout_ms),
        ] {
            if held != given {
                differences.push(format!(
                    "another {name} (registered: {}; given: {})",
                    ms(held),
                    ms(given)
                ));
            }
        }
        (!differences.is_empty()).then(|| differences.join(", "))
    }
}

/// SQL on one line, shortened, for messages.
fn one_line(sql: &str) -> String {
    const MAX: usize = 120;
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The object that holds version `version` of `job`'s registration.
pub fn version_path(job: &str, version: u32) -> Path {
    Path::from(format!("{JOBS_PREFIX}/{job}/versions/{version}.json"))
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The version was not registered before; now it is.
    Registered,
    /// The version was registered already, with the same definition.
    AlreadyRegistered,
}

/// Registers `version` in the catalog, unless it is registered already with the same
/// definition. Two processes registering one version at once cannot both win: the write
/// creates the object only if there is none (where the store supports that).
///
/// # Errors
///
/// [`JobsError::Conflict`] when the version is registered with another definition; store
/// failures; a registration that does not parse.
pub async fn register(
    store: &dyn ObjectStore,
    version: &RegisteredVersion,
) -> Result<Registration, JobsError> {
    let path = version_path(&version.job, version.version);
    let compare = |held: RegisteredVersion| match held.difference(version) {
        None => Ok(Registration::AlreadyRegistered),
        Some(difference) => Err(JobsError::Conflict {
            job: version.job.clone(),
            version: version.version,
            path: path.to_string(),
            difference,
        }),
    };
    if let Some(held) = get_json::<RegisteredVersion>(store, &path).await? {
        return compare(held);
    }
    let json = to_json(&path, version)?;
    match store
        .put_opts(
            &path,
            PutPayload::from(json.clone()),
            PutMode::Create.into(),
        )
        .await
    {
        Ok(_) => Ok(Registration::Registered),
        Err(object_store::Error::AlreadyExists { .. }) => {
            match get_json::<RegisteredVersion>(store, &path).await? {
                Some(held) => compare(held),
                None => Err(JobsError::Invalid {
                    path: path.to_string(),
                    message: "it exists and cannot be read".to_string(),
                }),
            }
        }
        Err(
            object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. },
        ) => {
            store
                .put(&path, PutPayload::from(json))
                .await
                .map_err(|source| JobsError::store("write", &path, source))?;
            Ok(Registration::Registered)
        }
        Err(source) => Err(JobsError::store("write", &path, source)),
    }
}

/// Every registered job version, by job name and version.
///
/// # Errors
///
/// Store failures; a registration that does not parse, or whose content names another
/// version than its path.
pub async fn registered_versions(
    store: &dyn ObjectStore,
) -> Result<BTreeMap<(String, u32), RegisteredVersion>, JobsError> {
    let prefix = Path::from(JOBS_PREFIX);
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| JobsError::store("list", &prefix, source))?;
    let mut versions = BTreeMap::new();
    for object in objects {
        let parts: Vec<&str> = object.location.as_ref().split('/').collect();
        let [_, job, "versions", file] = parts.as_slice() else {
            continue;
        };
        let Some(version) = file
            .strip_suffix(".json")
            .and_then(|number| number.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(registered) = get_json::<RegisteredVersion>(store, &object.location).await? else {
            // Removed since it was listed.
            continue;
        };
        if registered.job != *job || registered.version != version {
            return Err(JobsError::Invalid {
                path: object.location.to_string(),
                message: format!(
                    "it registers job `{}` version {}, not the one its path names",
                    registered.job, registered.version
                ),
            });
        }
        versions.insert((job.to_string(), version), registered);
    }
    Ok(versions)
}

/// The job versions a process knows: those its config declares and those registered.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Every version, declared or registered, by job name and version.
    pub versions: BTreeMap<(String, u32), CatalogVersion>,
    /// Declared versions whose registration holds another definition: the declared one is
    /// used, and each conflict is reported here (the registered results, checkpoints and
    /// view were made by the other definition).
    pub conflicts: Vec<JobsError>,
}

/// One version in a [`Catalog`].
#[derive(Debug, Clone)]
pub struct CatalogVersion {
    /// Its definition.
    pub job: JobConfig,
    /// Whether the config declares it (else only the catalog has it).
    pub declared: bool,
}

impl Catalog {
    /// The versions `config` declares and the ones `registered`; a declared version's own
    /// definition wins over a registration that differs, which is reported in
    /// [`Catalog::conflicts`].
    pub fn merge(
        config: &Config,
        registered: &BTreeMap<(String, u32), RegisteredVersion>,
    ) -> Catalog {
        let mut catalog = Catalog::default();
        for job in &config.jobs {
            if let Some(held) = registered.get(&(job.name.clone(), job.version)) {
                let declared = RegisteredVersion::of(job, held.registered_at_ms);
                match declared {
                    Ok(declared) => {
                        if let Some(difference) = held.difference(&declared) {
                            catalog.conflicts.push(JobsError::Conflict {
                                job: job.name.clone(),
                                version: job.version,
                                path: version_path(&job.name, job.version).to_string(),
                                difference,
                            });
                        }
                    }
                    Err(error) => catalog.conflicts.push(error),
                }
            }
            catalog.versions.insert(
                (job.name.clone(), job.version),
                CatalogVersion {
                    job: job.clone(),
                    declared: true,
                },
            );
        }
        for (key, registered) in registered {
            catalog
                .versions
                .entry(key.clone())
                .or_insert_with(|| CatalogVersion {
                    job: registered.job_config(),
                    declared: false,
                });
        }
        catalog
    }

    /// Reads the registrations and merges them with `config`'s declared versions.
    ///
    /// # Errors
    ///
    /// The errors of [`registered_versions`].
    pub async fn load(store: &dyn ObjectStore, config: &Config) -> Result<Catalog, JobsError> {
        Ok(Catalog::merge(config, &registered_versions(store).await?))
    }

    /// The versions of `job`, lowest first.
    pub fn versions_of<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a CatalogVersion> {
        self.versions
            .values()
            .filter(move |version| version.job.name == job)
    }

    /// The job names, each once.
    pub fn job_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.versions.keys().map(|(name, _)| name.clone()).collect();
        names.dedup();
        names
    }

    /// The active version of `job`: the one its active-version file names, if the catalog
    /// has it, else its lowest version; `None` if the catalog has no version of `job`.
    ///
    /// # Errors
    ///
    /// The errors of [`load_active`].
    pub async fn active_version(
        &self,
        store: &dyn ObjectStore,
        job: &str,
    ) -> Result<Option<u32>, JobsError> {
        let known: Vec<u32> = self
            .versions_of(job)
            .map(|version| version.job.version)
            .collect();
        if let Some(active) = load_active(store, job).await?
            && known.contains(&active.version)
        {
            return Ok(Some(active.version));
        }
        Ok(known.into_iter().min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn job(version: u32, sql: &str) -> JobConfig {
        JobConfig {
            name: "views".to_string(),
            version,
            sql: Some(sql.to_string()),
            sql_file: None,
            embedded_sql: None,
            max_out_of_orderness: Duration::from_secs(5),
            allowed_lateness: Duration::from_secs(60),
            early_emit_interval: None,
            idle_timeout: Some(Duration::from_millis(1500)),
        }
    }

    const SQL: &str = "SELECT page, COUNT(*) AS n FROM clicks GROUP BY page, TUMBLE(event_time, INTERVAL '1' MINUTE)";

    #[tokio::test]
    async fn a_version_registers_once_and_round_trips_to_its_definition() {
        let store = InMemory::new();
        let v2 = RegisteredVersion::of(&job(2, SQL), 10).expect("of");
        assert_eq!(
            register(&store, &v2).await.expect("register"),
            Registration::Registered
        );
        let again = RegisteredVersion::of(&job(2, SQL), 20).expect("of");
        assert_eq!(
            register(&store, &again).await.expect("register again"),
            Registration::AlreadyRegistered,
            "the same definition registered later is no conflict"
        );
        let held = registered_versions(&store).await.expect("list");
        assert_eq!(held.len(), 1);
        let registered = &held[&("views".to_string(), 2)];
        assert_eq!(registered.registered_at_ms, 10);
        let config = registered.job_config();
        assert_eq!(config.sql_text().expect("sql"), SQL);
        assert_eq!(config.idle_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.id(), "views.v2");
    }

    #[tokio::test]
    async fn registering_a_version_again_with_other_sql_or_options_is_refused_naming_the_difference()
     {
        let store = InMemory::new();
        register(
            &store,
            &RegisteredVersion::of(&job(2, SQL), 10).expect("of"),
        )
        .await
        .expect("register");
        let other_sql = RegisteredVersion::of(&job(2, "SELECT 1"), 20).expect("of");
        let error = register(&store, &other_sql).await.expect_err("conflict");
        let message = error.to_string();
        assert!(
            message.contains("version 2 is already registered")
                && message.contains("other SQL")
                && message.contains("jobs/views/versions/2.json"),
            "{message}"
        );
        let mut lateness = job(2, SQL);
        lateness.allowed_lateness = Duration::from_secs(1);
        let error = register(&store, &RegisteredVersion::of(&lateness, 20).expect("of"))
            .await
            .expect_err("conflict");
        assert!(
            error
                .to_string()
                .contains("another allowed-lateness (registered: 60000 ms; given: 1000 ms)"),
            "{error}"
        );
        let held = registered_versions(&store).await.expect("list");
        assert_eq!(
            held[&("views".to_string(), 2)].sql,
            SQL,
            "the first one stays"
        );
    }

    #[tokio::test]
    async fn the_catalog_holds_declared_and_registered_versions_and_the_active_one_among_them() {
        let store = InMemory::new();
        let mut config = Config::embedded_defaults();
        config.jobs = vec![job(1, SQL)];
        let catalog = Catalog::load(&store, &config).await.expect("catalog");
        assert_eq!(catalog.versions.len(), 1);
        assert_eq!(
            catalog
                .active_version(&store, "views")
                .await
                .expect("active"),
            Some(1)
        );
        // Another process registers version 2 and makes it active.
        register(
            &store,
            &RegisteredVersion::of(&job(2, "SELECT 2"), 10).expect("of"),
        )
        .await
        .expect("register");
        save_active(
            &store,
            &ActiveVersion {
                job: "views".to_string(),
                version: 2,
                activated_at_ms: 11,
            },
        )
        .await
        .expect("activate");
        let catalog = Catalog::load(&store, &config).await.expect("catalog");
        let versions: Vec<(u32, bool)> = catalog
            .versions_of("views")
            .map(|version| (version.job.version, version.declared))
            .collect();
        assert_eq!(versions, vec![(1, true), (2, false)]);
        assert_eq!(
            catalog
                .active_version(&store, "views")
                .await
                .expect("active"),
            Some(2)
        );
        assert!(catalog.conflicts.is_empty());
        // A config that declares version 2 otherwise: its own wins, and the conflict is told.
        config.jobs.push(job(2, "SELECT 3"));
        let catalog = Catalog::load(&store, &config).await.expect("catalog");
        assert_eq!(
            catalog.versions[&("views".to_string(), 2)]
                .job
                .sql
                .as_deref(),
            Some("SELECT 3")
        );
        assert_eq!(catalog.conflicts.len(), 1, "{:?}", catalog.conflicts);
        // An active version nobody knows falls back to the lowest one.
        save_active(
            &store,
            &ActiveVersion {
                job: "views".to_string(),
                version: 9,
                activated_at_ms: 12,
            },
        )
        .await
        .expect("activate");
        assert_eq!(
            catalog
                .active_version(&store, "views")
                .await
                .expect("active"),
            Some(1)
        );
    }
}
