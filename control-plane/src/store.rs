//! Where the control plane's state lives, behind one trait: bundles by id, every version of
//! every function, which version each function runs, and the revisioned log of changes that
//! nodes follow. [`EmbeddedStore`] keeps it in one file under the data directory (redb,
//! crash-safe transactions); [`crate::etcd::EtcdStore`] keeps it in etcd, which replicas
//! share. What each replica knows of the nodes connected to it is shared through the store
//! too ([`Store::publish_live`]), so any replica can tell how far a deploy has spread.
//!
//! A change is decided inside the store's write transaction ([`Store::commit`] takes the
//! check as a closure over the current state), so two deploys racing for the same route
//! cannot both pass the check.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::fleet::NodeLive;
use crate::tokens::TokenRecord;

/// Bundle wire bytes by bundle id (hex).
const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");
/// Version records (JSON) by `function/sequence` (sequence zero-padded).
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
/// What each function runs (JSON), by function name.
const ACTIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("active");
/// The change log (JSON) by revision.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Sealed secret values ([`crate::vault`]) by `function/NAME`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Enrolled nodes (JSON), by name.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Created tokens by the hex SHA-256 of the token: JSON [`TokenRecord`]s.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// A node enrolled with the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub info: tern_proto::distribution::NodeInfo,
    /// SHA-256 of the certificate issued to it (hex): what identifies it on the
    /// distribution channel. Enrolling again under the same name replaces it.
    pub fingerprint: String,
    pub enrolled_ms: u64,
    /// A relay rather than a node: it serves nodes, not requests, so it is no part of a
    /// deploy's progress or a router's topology.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub function: String,
    /// 1 for the first version of the function, and so on.
    pub number: u32,
    /// The bundle's id (64 hex digits).
    pub bundle: String,
    /// The control plane's Ed25519 signature over the id (128 hex digits).
    pub signature: String,
    /// When it was deployed, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// What a function runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    pub function: String,
    pub version: u32,
    pub bundle: String,
    /// The version's signature (128 hex digits), which nodes verify.
    #[serde(default)]
    pub signature: String,
    /// The revision that made it so.
    pub revision: u64,
    /// The route patterns its manifest claims.
    pub routes: Vec<String>,
    /// A rollout to a candidate version, if one is under way.
    #[serde(default)]
    pub rollout: Option<tern_proto::rollout::Candidate>,
    /// The regions its manifest's `[placement]` allows; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

/// One entry of the log nodes follow: at `revision`, `function` started running `active`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    pub active: Active,
    pub at_ms: u64,
}

/// A change to make: optionally record a new version, and make `active` what the function
/// runs. The revision is filled in by the store.
pub struct Commit {
    pub new_version: Option<Version>,
    pub active: Active,
    pub at_ms: u64,
    /// A secret to set in the same transaction: `function/NAME` and the sealed value.
    pub secret: Option<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the control plane's store failed: {0} (check the data directory's disk and permissions)")]
    Backend(String),
    #[error("the store holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("{0} is in use by another control plane: give each its own --data directory")]
    InUse(String),
    /// A concurrent change took what this one meant to record; deciding again succeeds.
    #[error("{0}")]
    Conflict(String),
}

/// The check a commit must pass, run inside the write transaction over every function's
/// current state (for etcd: again on every retry of an optimistic transaction); its error
/// is returned as is.
pub type Check<'a, E> = &'a (dyn Fn(&[Active]) -> Result<(), E> + Sync);

/// The state's operations. Every implementation keeps revisions dense (1, 2, 3, ...) and
/// commits atomically with its check.
pub trait Store: Send + Sync + 'static {
    fn put_bundle(&self, id: &str, wire: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn bundle(&self, id: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Every version of `function`, oldest first.
    fn versions(&self, function: &str) -> impl Future<Output = Result<Vec<Version>, StoreError>> + Send;
    /// What every function runs now.
    fn active(&self) -> impl Future<Output = Result<Vec<Active>, StoreError>> + Send;
    /// The latest revision (0 before the first change).
    fn revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Changes after `revision`, in order.
    fn changes_since(&self, revision: u64) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send;
    /// The sealed secrets of `function`, by name.
    fn secrets(&self, function: &str) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
    /// Records an enrolled node (replacing one of the same name).
    fn put_node(&self, node: &NodeRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every enrolled node, by name.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send;
    /// Records a created token.
    fn put_token(&self, token: &TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The created token whose SHA-256 (hex) is `hash`.
    fn token(&self, hash: &str) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;
    /// Applies `commit` if `check` passes over the current state; returns the new revision.
    fn commit<E: From<StoreError> + Send>(
        &self,
        commit: Commit,
        check: Check<'_, E>,
    ) -> impl Future<Output = Result<u64, E>> + Send;
    /// Sends every revision committed by anyone else sharing the store (other replicas) to
    /// `revisions`, until the process ends. A store nobody else shares returns at once.
    fn follow(&self, revisions: tokio::sync::watch::Sender<u64>) -> impl Future<Output = ()> + Send;
    /// Shares what this replica knows of node `name`'s connection with the other replicas
    /// (`None`: it is no longer connected here). A store nobody else shares keeps nothing.
    fn publish_live(&self, name: &str, live: Option<&NodeLive>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// What the other replicas published of their connected nodes.
    fn live(&self) -> impl Future<Output = Result<BTreeMap<String, NodeLive>, StoreError>> + Send;
}

/// The default store: one redb file.
pub struct EmbeddedStore {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

fn version_key(function: &str, number: u32) -> String {
    format!("{function}/{number:010}")
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.display().to_string()),
            e => StoreError::Backend(format!("{}: {e}", path.display())),
        })?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(BUNDLES).map_err(backend)?;
        txn.open_table(VERSIONS).map_err(backend)?;
        txn.open_table(ACTIVE).map_err(backend)?;
        txn.open_table(CHANGES).map_err(backend)?;
        txn.open_table(NODES).map_err(backend)?;
        txn.open_table(SECRETS).map_err(backend)?;
        txn.open_table(TOKENS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self { db })
    }
}

impl Store for EmbeddedStore {
    async fn put_bundle(&self, id: &str, wire: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(BUNDLES).map_err(backend)?.insert(id, wire).map_err(backend)?;
        txn.commit().map_err(backend)
    }

    async fn bundle(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(BUNDLES).map_err(backend)?;
        Ok(table.get(id).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    async fn versions(&self, function: &str) -> Result<Vec<Version>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(VERSIONS).map_err(backend)?;
        let (from, to) = (format!("{function}/"), format!("{function}0"));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(backend)? {
            let (_, value) = entry.map_err(backend)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }

    async fn active(&self) -> Result<Vec<Active>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(ACTIVE).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (_, value) = entry.map_err(backend)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(CHANGES).map_err(backend)?;
        Ok(table.last().map_err(backend)?.map_or(0, |(k, _)| k.value()))
    }

    async fn changes_since(&self, revision: u64) -> Result<Vec<Change>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(CHANGES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.range(revision + 1..).map_err(backend)? {
            let (_, value) = entry.map_err(backend)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }

    async fn secrets(&self, function: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(SECRETS).map_err(backend)?;
        let (from, to) = (format!("{function}/"), format!("{function}0"));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let name = key.value()[from.len()..].to_string();
            out.push((name, value.value().to_vec()));
        }
        Ok(out)
    }

    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(NODES)
            .map_err(backend)?
            .insert(node.info.name.as_str(), encode(node).as_slice())
            .map_err(backend)?;
        txn.commit().map_err(backend)
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(NODES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (_, value) = entry.map_err(backend)?;
            out.push(decode(value.value())?);
        }
        Ok(out)
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(TOKENS)
            .map_err(backend)?
            .insert(token.hash.as_str(), encode(token).as_slice())
            .map_err(backend)?;
        txn.commit().map_err(backend)
    }

    async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(TOKENS).map_err(backend)?;
        table.get(hash).map_err(backend)?.map(|v| decode(v.value())).transpose()
    }

    async fn commit<E: From<StoreError> + Send>(&self, commit: Commit, check: Check<'_, E>) -> Result<u64, E> {
        let txn = self.db.begin_write().map_err(backend)?;
        let revision = {
            let mut active = txn.open_table(ACTIVE).map_err(backend)?;
            let mut current = Vec::new();
            for entry in active.iter().map_err(backend)? {
                let (_, value) = entry.map_err(backend)?;
                current.push(decode::<Active>(value.value())?);
            }
            check(&current)?;
            let mut changes = txn.open_table(CHANGES).map_err(backend)?;
            let last = changes.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
            let revision = last + 1;
            if let Some((key, sealed)) = &commit.secret {
                txn.open_table(SECRETS).map_err(backend)?.insert(key.as_str(), sealed.as_slice()).map_err(backend)?;
            }
            if let Some(version) = &commit.new_version {
                let mut versions = txn.open_table(VERSIONS).map_err(backend)?;
                let key = version_key(&version.function, version.number);
                if versions.get(key.as_str()).map_err(backend)?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "version {} of {} was recorded by another deploy at the same moment",
                        version.number, version.function
                    ))
                    .into());
                }
                versions
                    .insert(version_key(&version.function, version.number).as_str(), encode(version).as_slice())
                    .map_err(backend)?;
            }
            let record = Active { revision, ..commit.active };
            active.insert(record.function.as_str(), encode(&record).as_slice()).map_err(backend)?;
            let change = Change { revision, active: record, at_ms: commit.at_ms };
            changes.insert(revision, encode(&change).as_slice()).map_err(backend)?;
            revision
        };
        txn.commit().map_err(backend)?;
        Ok(revision)
    }

    async fn follow(&self, _revisions: tokio::sync::watch::Sender<u64>) {}

    async fn publish_live(&self, _name: &str, _live: Option<&NodeLive>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn live(&self) -> Result<BTreeMap<String, NodeLive>, StoreError> {
        Ok(BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(function: &str, number: u32) -> Version {
        Version {
            function: function.into(),
            number,
            bundle: format!("{number:064}"),
            signature: "00".repeat(64),
            created_ms: 1,
        }
    }

    async fn activate(store: &EmbeddedStore, v: &Version, new: bool) -> Result<u64, StoreError> {
        let active = Active {
            function: v.function.clone(),
            version: v.number,
            bundle: v.bundle.clone(),
            signature: v.signature.clone(),
            revision: 0,
            routes: vec![],
            placement: vec![],
            rollout: None,
        };
        store.commit(Commit { new_version: new.then(|| v.clone()), active, at_ms: 2, secret: None }, &|_| Ok(())).await
    }

    #[tokio::test]
    async fn versions_active_and_changes_survive_reopening() {
        let dir = tempdir();
        let path = dir.join("state.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert_eq!(activate(&store, &version("a", 1), true).await.unwrap(), 1);
            assert_eq!(activate(&store, &version("ab", 1), true).await.unwrap(), 2);
            assert_eq!(activate(&store, &version("a", 2), true).await.unwrap(), 3);
            assert_eq!(activate(&store, &version("a", 1), false).await.unwrap(), 4);
            store.put_bundle("x", b"bytes").await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let numbers: Vec<u32> = store.versions("a").await.unwrap().iter().map(|v| v.number).collect();
        assert_eq!(numbers, [1, 2], "'ab' is another function");
        let a = store.active().await.unwrap().into_iter().find(|x| x.function == "a").unwrap();
        assert_eq!((a.version, a.revision), (1, 4));
        let revisions: Vec<u64> = store.changes_since(2).await.unwrap().iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [3, 4]);
        assert_eq!(store.bundle("x").await.unwrap().as_deref(), Some(&b"bytes"[..]));
        assert_eq!(store.bundle("y").await.unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_refused_check_changes_nothing() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir.join("state.redb")).unwrap();
        activate(&store, &version("a", 1), true).await.unwrap();
        let v = version("a", 2);
        let active = Active {
            function: "a".into(),
            version: 2,
            bundle: v.bundle.clone(),
            signature: String::new(),
            revision: 0,
            routes: vec![],
            placement: vec![],
            rollout: None,
        };
        let refused = store
            .commit(Commit { new_version: Some(v), active, at_ms: 3, secret: None }, &|current: &[Active]| {
                assert_eq!(current.len(), 1);
                Err(StoreError::Corrupt("refused".into()))
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(store.versions("a").await.unwrap().len(), 1);
        assert_eq!(store.changes_since(0).await.unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_version_number_recorded_meanwhile_is_a_conflict_and_changes_nothing() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir.join("state.redb")).unwrap();
        activate(&store, &version("a", 1), true).await.unwrap();
        let mut again = version("a", 1);
        again.bundle = "f".repeat(64);
        let conflict = activate(&store, &again, true).await;
        assert!(matches!(conflict, Err(StoreError::Conflict(_))), "{conflict:?}");
        assert_eq!(store.versions("a").await.unwrap(), [version("a", 1)]);
        assert_eq!(store.revision().await.unwrap(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tern-store-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
