//! A development federation: several real nodes on loopback, each with its
//! own node directory, sled store and certificate from one fresh
//! development CA. `samvirke demo` and the end-to-end tests start nodes
//! this way, so both exercise exactly what an operator would set up with
//! `samvirke pki ca`, `samvirke init` and `samvirke-node`.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
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
    pub async fn start_with_clock(
        dir: &Path,
        codes: &[u32],
        clock: Option<SharedClock>,
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
            let mut text =
                std::fs::read_to_string(&made.config_path).map_err(|source| ConfigError::Read {
                    path: made.config_path.clone(),
                    source,
                })?;
            // Development nodes serve the HTTP API and the admin listener
            // too, each on a port of its own.
            text.push_str(&format!(
                "\n[governance]\nsync_interval_secs = {DEV_SYNC_INTERVAL_SECS}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            ));
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
