//! A development federation: several real nodes on loopback, each with its
//! own node directory, sled store and certificate from one fresh
//! development CA. `samvirke demo` and the end-to-end tests start nodes
//! this way, so both exercise exactly what an operator would set up with
//! `samvirke pki ca`, `samvirke init` and `samvirke-node`.
//!
//! Nodes store into sled by default. With `SAMVIRKE_DEV_STORE=postgres` in
//! the environment ([`DevStore::from_env`]) each node gets a database of its
//! own on this process's throwaway PostgreSQL server
//! ([`DevPostgres::shared`]) instead, so the same tests and the demo run
//! against the PostgreSQL backend; `sled` (or the variable unset or empty)
//! keeps sled. Any other value is an error, not a silent fallback.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::dev_postgres::{DevPostgres, DevPostgresError};
use crate::fixtures;
use crate::governance::files::IdentityCard;
use crate::governance::registry::{ImportError, RosterImport};
use crate::governance::{DecisionRule, Roster, RosterBody};
use crate::identity::generate_signing_key;
use crate::pki::{DevCa, PkiError, loopback_hosts};
use crate::provision::{NodeSpec, ProvisionError, init_node_dir, install_dev_certificate};
use crate::server::{Listeners, Node, NodeError, RunningNode};

/// The demo federation's municipalities: Aarhus, Vejle, Silkeborg,
/// Albertslund (`samvirke demo`; tests that check what the demo shows).
pub const DEMO_MUNICIPALITIES: [u32; 4] = [751, 630, 740, 165];

/// The sensor kinds each demo municipality publishes, in the order of
/// [`DEMO_MUNICIPALITIES`]; Aarhus also publishes its pilot results and
/// procurement outcomes.
pub const DEMO_SENSOR_KINDS: [&[&str]; 4] = [
    &["air-quality", "waste-bin-fill"],
    &["air-quality", "parking-occupancy"],
    &["air-quality", "water-level"],
    &["noise", "indoor-climate"],
];

/// Why a development federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("municipality code {0} is not in the fixture set")]
    UnknownMunicipality(u32),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Governance(#[from] ImportError),
    #[error("{0}")]
    Roster(String),
    #[error(
        "{STORE_VARIABLE} is {value:?}; accepted values are `sled` (the default) and `postgres`"
    )]
    StoreChoice { value: String },
    #[error(transparent)]
    Postgres(#[from] DevPostgresError),
}

/// The environment variable choosing development nodes' store.
pub const STORE_VARIABLE: &str = "SAMVIRKE_DEV_STORE";

/// Which store development nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStore {
    /// The embedded sled store in the node directory (the default).
    Sled,
    /// A database of the node's own on [`DevPostgres::shared`].
    Postgres,
}

impl DevStore {
    /// The choice in [`STORE_VARIABLE`].
    pub fn from_env() -> Result<DevStore, DevnetError> {
        Self::from_value(std::env::var_os(STORE_VARIABLE).as_deref())
    }

    /// The choice a value of [`STORE_VARIABLE`] makes: unset or empty means
    /// sled; exact lower-case names only, so a typo fails loudly instead of
    /// quietly testing the other backend.
    pub fn from_value(value: Option<&OsStr>) -> Result<DevStore, DevnetError> {
        match value.map(|v| v.to_str()) {
            None => Ok(DevStore::Sled),
            Some(Some("" | "sled")) => Ok(DevStore::Sled),
            Some(Some("postgres")) => Ok(DevStore::Postgres),
            Some(Some(other)) => Err(DevnetError::StoreChoice {
                value: other.to_string(),
            }),
            Some(None) => Err(DevnetError::StoreChoice {
                value: value.unwrap_or_default().to_string_lossy().into_owned(),
            }),
        }
    }

    /// The config text selecting this store for one node: nothing for
    /// sled; for PostgreSQL a `[store]` table with the URL of a new
    /// database (named after `name_hint`) on the shared server.
    pub fn config_section(self, name_hint: &str) -> Result<String, DevnetError> {
        match self {
            DevStore::Sled => Ok(String::new()),
            DevStore::Postgres => {
                let url = DevPostgres::shared()?.create_database(name_hint)?;
                Ok(format!(
                    "\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
                ))
            }
        }
    }
}

/// What development nodes add to the config `samvirke init` wrote: fast
/// governance sync, the HTTP API and the admin listener each on a port of
/// its own, and the store `store` chose for municipality `code`.
fn dev_node_config(base: &str, store: DevStore, code: u32) -> Result<String, DevnetError> {
    let mut text = base.to_string();
    text.push_str(&format!(
        "\n[governance]\nsync_interval_secs = {DEV_SYNC_INTERVAL_SECS}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    text.push_str(&store.config_section(&format!("node_{code}"))?);
    Ok(text)
}

/// How often development nodes compare governance documents: often, so a
/// document imported at one node is everywhere within a second or two.
pub const DEV_SYNC_INTERVAL_SECS: u64 = 1;

/// One running node of a development federation.
#[derive(Debug)]
pub struct DevNode {
    pub dir: PathBuf,
    pub config: Config,
    pub admin_token: Zeroizing<String>,
    pub running: RunningNode,
}

/// Several running nodes sharing one development CA.
#[derive(Debug)]
pub struct DevFederation {
    pub ca: DevCa,
    pub nodes: Vec<DevNode>,
}

impl DevFederation {
    /// Starts one node per municipality code under `dir` (one sub-directory
    /// each), on `127.0.0.1:0`, with the system clock.
    pub async fn start(dir: &Path, codes: &[u32]) -> Result<DevFederation, DevnetError> {
        Self::start_with_clock(dir, codes, None).await
    }

    /// Like [`DevFederation::start`], with an injected clock if given.
    /// The store is the one [`DevStore::from_env`] chooses.
    pub async fn start_with_clock(
        dir: &Path,
        codes: &[u32],
        clock: Option<SharedClock>,
    ) -> Result<DevFederation, DevnetError> {
        Self::start_with_store(dir, codes, clock, DevStore::from_env()?).await
    }

    /// Like [`DevFederation::start_with_clock`], on the given store.
    pub async fn start_with_store(
        dir: &Path,
        codes: &[u32],
        clock: Option<SharedClock>,
        store: DevStore,
    ) -> Result<DevFederation, DevnetError> {
        let ca = DevCa::generate("Samvirke development CA")?;
        ca.write(&dir.join("ca"))?;
        let mut nodes = Vec::with_capacity(codes.len());
        for &code in codes {
            let municipality =
                fixtures::municipality(code).ok_or(DevnetError::UnknownMunicipality(code))?;
            let node_dir = dir.join(code.to_string());
            let spec = NodeSpec {
                municipality_code: code,
                municipality_name: municipality.name.clone(),
                peer_listen: "127.0.0.1:0".to_string(),
                local_listen: "127.0.0.1:0".to_string(),
                advertised_endpoint: None,
            };
            let made = init_node_dir(&node_dir, &spec)?;
            install_dev_certificate(&node_dir, &municipality.name, &ca, &loopback_hosts())?;
            let base =
                std::fs::read_to_string(&made.config_path).map_err(|source| ConfigError::Read {
                    path: made.config_path.clone(),
                    source,
                })?;
            let text = dev_node_config(&base, store, code)?;
            std::fs::write(&made.config_path, text).map_err(|source| ConfigError::Read {
                path: made.config_path.clone(),
                source,
            })?;
            let config = Config::load(&made.config_path)?;
            let mut node = Node::open(config.clone())?;
            if let Some(clock) = &clock {
                node = node.with_clock(clock.clone())?;
            }
            let listeners = Listeners::bind(&config).await?;
            nodes.push(DevNode {
                dir: node_dir,
                config,
                admin_token: made.admin_token,
                running: node.spawn(listeners),
            });
        }
        Ok(DevFederation { ca, nodes })
    }

    /// Makes every node a member of one fellowship `fellowship`: a roster
    /// of all of them (joined 2000-01-01), signed by a fresh secretariat key
    /// and pinned on each node as its operator would. Returns the roster.
    pub fn pin_fellowship(&self, fellowship: &str) -> Result<Roster, DevnetError> {
        let secretariat = generate_signing_key().map_err(|e| DevnetError::Roster(e.to_string()))?;
        let members = self
            .nodes
            .iter()
            .map(|node| {
                IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint())
                    .to_member(time::macros::date!(2000 - 01 - 01))
                    .map_err(|e| DevnetError::Roster(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut roster = RosterBody::first(
            fellowship,
            "Development fellowship",
            secretariat.verifying_key(),
            DecisionRule::Secretariat,
            time::OffsetDateTime::now_utc(),
            members,
        )
        .to_draft()
        .map_err(|e| DevnetError::Roster(e.to_string()))?;
        roster
            .sign(&secretariat)
            .map_err(|e| DevnetError::Roster(e.to_string()))?;
        for node in &self.nodes {
            node.running.registry.import_roster(
                &roster.to_bytes(),
                RosterImport {
                    trust_anchor: true,
                    ..RosterImport::default()
                },
            )?;
        }
        Ok(roster)
    }

    /// Stops every node and waits for each to drain.
    pub async fn shutdown(self) -> Result<(), DevnetError> {
        for node in self.nodes {
            node.running.shutdown().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn the_store_variable_takes_exactly_sled_or_postgres() {
        let choice = |v: &str| DevStore::from_value(Some(OsStr::new(v)));
        assert_eq!(DevStore::from_value(None).unwrap(), DevStore::Sled);
        assert_eq!(choice("").unwrap(), DevStore::Sled);
        assert_eq!(choice("sled").unwrap(), DevStore::Sled);
        assert_eq!(choice("postgres").unwrap(), DevStore::Postgres);
        // Near misses fail loudly rather than test the other backend.
        for bad in [
            "Postgres",
            "postgresql",
            " postgres",
            "postgres\n",
            "pg",
            "sled;postgres",
        ] {
            let err = choice(bad).unwrap_err().to_string();
            assert!(
                err.contains("SAMVIRKE_DEV_STORE")
                    && err.contains("`sled`")
                    && err.contains("`postgres`"),
                "{bad:?}: {err}"
            );
        }
        let not_utf8 = OsString::from_vec(vec![b'p', 0xff]);
        let err = DevStore::from_value(Some(&not_utf8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SAMVIRKE_DEV_STORE"), "{err}");
    }

    #[test]
    fn postgres_nodes_get_a_store_table_with_a_database_each() {
        let base = "[node]\nmunicipality_code = 751\n";
        let sled = dev_node_config(base, DevStore::Sled, 751).unwrap();
        assert!(!sled.contains("[store]"), "{sled}");

        let first = dev_node_config(base, DevStore::Postgres, 751).unwrap();
        let second = dev_node_config(base, DevStore::Postgres, 751).unwrap();
        let pg = DevPostgres::shared().unwrap();
        let prefix = format!(
            "\n[store]\nbackend = \"postgres\"\nurl = \"postgresql://samvirke@127.0.0.1:{}/node_751_",
            pg.port()
        );
        let mut urls = Vec::new();
        for text in [&first, &second] {
            assert!(text.contains(&prefix), "{text}");
            assert!(text.starts_with(base));
            // Still one well-formed TOML document, with the other tables.
            let table: toml::Table = toml::from_str(text).unwrap();
            assert_eq!(table["store"]["backend"].as_str(), Some("postgres"));
            assert!(table["http"]["listen"].is_str());
            let url = table["store"]["url"].as_str().unwrap().to_string();
            // The database exists and is empty.
            assert_eq!(
                pg.psql(
                    &url,
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                )
                .unwrap()
                .trim(),
                "0"
            );
            urls.push(url);
        }
        assert_ne!(urls[0], urls[1], "one database per node");
    }
}
