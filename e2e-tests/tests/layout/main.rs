//! The workspace's layout rules, checked over `cargo metadata` as rust-analyzer's tidy tests
//! check its Cargo.toml files:
//!
//! - a library (`libs/`) depends on no service (`services/`);
//! - a service depends on libraries only, with the exceptions named in [`SERVICE_EXCEPTIONS`];
//! - the engine (`runnel-engine`) depends on no runnel crate but the calendar
//!   (`runnel-time`), which depends on none (its benchmark uses the test kit);
//! - the test kit (`runnel-testkit`) is a dev-dependency only: nothing ships with it.
//!
//! Every kind of dependency counts (normal, build and dev), as `cargo tree` shows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The services that may depend on another service, and on which. ARCHITECTURE.md names
/// each with its reason.
const SERVICE_EXCEPTIONS: &[(&str, &str)] = &[
    // The CLI is every service in one binary (`runnel all`, the demo, `runnel backfill`).
    ("runnel", "runnel-ingest"),
    ("runnel", "runnel-stream-processor"),
    ("runnel", "runnel-batch-reprocessor"),
    ("runnel", "runnel-serving"),
    // A replay runs the live tasks' own code over the history.
    ("runnel-batch-reprocessor", "runnel-stream-processor"),
];

/// Where a workspace package lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Library,
    Service,
    Tests,
}

struct Package {
    kind: Kind,
    /// Names of the workspace packages it depends on, with the dependency kind.
    runnel_dependencies: Vec<(String, String)>,
}

fn workspace() -> BTreeMap<String, Package> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e-tests sits in the workspace root")
        .to_path_buf();
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: Vec<&str> = packages
        .iter()
        .filter_map(|package| package["name"].as_str())
        .collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_string();
            let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest"));
            let relative = manifest
                .strip_prefix(&root)
                .expect("a workspace package under the root");
            let kind = match relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
            {
                Some("libs") => Kind::Library,
                Some("services") => Kind::Service,
                Some("e2e-tests") => Kind::Tests,
                other => panic!("package {name} lives in {other:?}, not libs/ or services/"),
            };
            let runnel_dependencies = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter_map(|dependency| {
                    let name = dependency["name"].as_str()?;
                    names.contains(&name).then(|| {
                        let kind = dependency["kind"].as_str().unwrap_or("normal").to_string();
                        (name.to_string(), kind)
                    })
                })
                .collect();
            (
                name,
                Package {
                    kind,
                    runnel_dependencies,
                },
            )
        })
        .collect()
}

#[test]
fn a_service_depends_on_libraries_only_and_a_library_on_no_service() {
    let packages = workspace();
    assert!(
        packages.len() >= 10 && packages.contains_key("runnel-serving"),
        "the workspace's packages: {:?}",
        packages.keys().collect::<Vec<_>>()
    );
    let mut broken = Vec::new();
    for (name, package) in &packages {
        for (dependency, kind) in &package.runnel_dependencies {
            let target = &packages[dependency];
            let allowed = match (package.kind, target.kind) {
                (_, Kind::Library) | (Kind::Tests, _) => true,
                (Kind::Service, Kind::Service) => {
                    SERVICE_EXCEPTIONS.contains(&(name.as_str(), dependency.as_str()))
                }
                (Kind::Library, _) | (_, Kind::Tests) => false,
            };
            if !allowed {
                broken.push(format!("{name} -> {dependency} ({kind})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies the layout forbids (a service depends on libraries only, except \
         SERVICE_EXCEPTIONS; a library on no service): {broken:?}"
    );
    for (service, dependency) in SERVICE_EXCEPTIONS {
        assert!(
            packages[*service]
                .runnel_dependencies
                .iter()
                .any(|(name, _)| name == dependency),
            "the exception {service} -> {dependency} is no longer used: remove it here and in \
             ARCHITECTURE.md"
        );
    }
}

#[test]
fn the_test_kit_is_a_dev_dependency_only() {
    let packages = workspace();
    let users: Vec<String> = packages
        .iter()
        .flat_map(|(name, package)| {
            package
                .runnel_dependencies
                .iter()
                .filter(|(dependency, _)| dependency == "runnel-testkit")
                .map(move |(_, kind)| format!("{name} ({kind})"))
        })
        .collect();
    assert!(
        users.len() >= 3 && users.iter().all(|user| user.ends_with("(dev)")),
        "runnel-testkit must be used, and only as a dev-dependency: {users:?}"
    );
}

#[test]
fn serving_depends_on_no_other_service_and_the_engine_on_the_calendar_only() {
    let packages = workspace();
    let serving: Vec<&str> = packages["runnel-serving"]
        .runnel_dependencies
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| packages[*name].kind != Kind::Library)
        .collect();
    assert!(serving.is_empty(), "runnel-serving depends on {serving:?}");
    let engine: Vec<&str> = packages["runnel-engine"]
        .runnel_dependencies
        .iter()
        .filter(|(_, kind)| kind != "dev")
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        engine,
        ["runnel-time"],
        "runnel-engine's runnel dependencies"
    );
    assert!(
        packages["runnel-time"].runnel_dependencies.is_empty(),
        "runnel-time depends on {:?}",
        packages["runnel-time"].runnel_dependencies
    );
}
