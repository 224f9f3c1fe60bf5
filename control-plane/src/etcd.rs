//! The control plane's state in etcd (`tern control-plane --store etcd://HOST:PORT,...`),
//! shared by every replica that names the same cluster and key prefix.
//!
//! Layout under the prefix (default `/tern/`): `revision` (the latest, decimal; every commit
//! changes it), `changes/REVISION` (20 digits), `active/FUNCTION`, `versions/FUNCTION/N`
//! (10 digits), `secrets/FUNCTION/NAME` (sealed), `nodes/NAME`, `tokens/SHA256`,
//! `bundles/ID` (the chunk count, written last) with `bundles/ID/N` (chunks of at most 1 MiB,
//! under etcd's default 1.5 MiB request limit), `keys/FILE` (the data directory's keys,
//! [`EtcdStore::share_keys`]) and `live/NODE/REPLICA` (what replica REPLICA knows of the node
//! connected to it, under that replica's lease: it vanishes within [`LIVE_TTL_S`] of the
//! replica's death, or at once when the replica starts again).
//!
//! A commit is an optimistic transaction: read `revision` and the active set, run the
//! check, then write everything on condition that `revision` is unchanged and a new
//! version's key does not exist yet; on a lost race, read again and retry. So revisions stay
//! dense and two replicas deploying at once cannot both pass a route check.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::fleet::NodeLive;
use crate::keys::DataDirError;
use crate::store::{Active, Change, Check, Commit, NodeRecord, Store, StoreError, Version};
use crate::tokens::TokenRecord;

/// How long a replica's live records outlast it.
pub const LIVE_TTL_S: i64 = 5;
const CHUNK: usize = 1 << 20;
/// Lost races retried before a commit gives up.
const COMMIT_ATTEMPTS: u32 = 32;

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    pub endpoints: Vec<String>,
    /// Every key starts with it; ends with `/`.
    pub prefix: String,
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("store {text:?}: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix.trim_matches('/')),
            None => (rest, "tern"),
        };
        if prefix.is_empty() {
            return Err(format!("store {text:?}: the key prefix after the hosts is empty"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                    endpoints.push(format!("http://{host}"));
                }
                _ => return Err(format!("store {text:?}: {host:?} is not HOST:PORT")),
            }
        }
        Ok(Self { endpoints, prefix: format!("/{prefix}/") })
    }
}

pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    prefix: String,
    live: Arc<LiveShare>,
}

/// This replica's live records: the lease they live under (granted at the first record and
/// kept alive) and what was published, put again under a new lease if the old one is lost
/// (etcd out of reach for longer than [`LIVE_TTL_S`]).
struct LiveShare {
    client: Client,
    kv: KvClient,
    prefix: String,
    lease: tokio::sync::Mutex<Option<i64>>,
    published: Mutex<BTreeMap<String, NodeLive>>,
    /// Where the lease's id is kept, so that this replica, restarted, revokes the records
    /// its previous run left (instead of them saying for [`LIVE_TTL_S`] that nodes are
    /// connected to a process that is gone).
    lease_file: Option<std::path::PathBuf>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("etcd key {}: {e}", String::from_utf8_lossy(key))))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

fn prefix_opts() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix())
}

impl EtcdStore {
    /// Connects to the cluster at `url` (failing within seconds when none of its members
    /// answers). `data`: this replica's data directory, where it keeps its lease's id.
    pub async fn connect(url: &EtcdUrl, data: Option<&Path>) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3));
        let connect = Client::connect(&url.endpoints, Some(options));
        let client = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| backend(format!("no member of {} answered within 5 s", url.endpoints.join(","))))?
            .map_err(|e| backend(format!("cannot connect to {}: {e}", url.endpoints.join(","))))?;
        let kv = client.kv_client().max_decoding_message_size(256 << 20);
        let live = Arc::new(LiveShare {
            client: client.clone(),
            kv: kv.clone(),
            prefix: url.prefix.clone(),
            lease: tokio::sync::Mutex::new(None),
            published: Mutex::new(BTreeMap::new()),
            lease_file: data.map(|d| d.join("etcd-lease")),
        });
        let store = Self { client, kv, prefix: url.prefix.clone(), live };
        // A first request, so that a wrong address fails here and not at the first deploy.
        tokio::time::timeout(Duration::from_secs(5), store.kv().get(store.key("revision"), None))
            .await
            .map_err(|_| backend(format!("{} did not answer within 5 s", url.endpoints.join(","))))?
            .map_err(|e| backend(format!("{}: {e}", url.endpoints.join(","))))?;
        let previous = store.live.lease_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
        if let Some(id) = previous.and_then(|s| s.trim().parse::<i64>().ok()) {
            // Gone already if the previous run ended more than the TTL ago.
            let _ = store.client.clone().lease_revoke(id).await;
        }
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn kv(&self) -> KvClient {
        self.kv.clone()
    }

    /// Every value under `rest`, in key order.
    async fn values(&self, rest: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let response = self.kv().get(self.key(rest), prefix_opts()).await.map_err(backend)?;
        Ok(response.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect())
    }

    async fn records<T: serde::de::DeserializeOwned>(&self, rest: &str) -> Result<Vec<T>, StoreError> {
        self.values(rest).await?.iter().map(|(k, v)| decode(k, v)).collect()
    }

    async fn one(&self, rest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self.kv().get(self.key(rest), None).await.map_err(backend)?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Makes the data directory `dir` hold the cluster's keys (`names`, files of `dir`):
    /// the first replica to start puts its own (created by the caller beforehand) into etcd,
    /// every later one takes them from there. Call it once before opening the keys (to take
    /// what etcd has) and once after (to share what was created): see
    /// [`KeySharing`]. A file that differs from the cluster's is an error naming it.
    pub async fn share_keys(&self, dir: &Path, names: &[&str], step: KeySharing) -> Result<(), DataDirError> {
        let fail = |what: String| DataDirError::new(dir, what);
        let shared: BTreeMap<String, Vec<u8>> = self
            .values("keys/")
            .await
            .map_err(|e| fail(e.to_string()))?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[self.key("keys/").len()..]).into_owned(), v))
            .collect();
        if shared.is_empty() && step == KeySharing::Publish {
            // One transaction for the whole set, so that the CA key and its certificate (and
            // every other key) come from the same replica.
            let mut puts = Vec::new();
            for name in names {
                let bytes = std::fs::read(dir.join(name)).map_err(|e| fail(format!("{name}: cannot read it: {e}")))?;
                puts.push(TxnOp::put(self.key(&format!("keys/{name}")), bytes, None));
            }
            let first = self.key(&format!("keys/{}", names[0]));
            let txn = Txn::new().when([Compare::create_revision(first, CompareOp::Equal, 0)]).and_then(puts);
            let response = self.kv().txn(txn).await.map_err(|e| fail(format!("etcd: {e}")))?;
            if response.succeeded() {
                tracing::info!(prefix = %self.prefix, "this replica's keys are now the cluster's");
                return Ok(());
            }
            // Another replica published first: take its keys.
            return Box::pin(self.share_keys(dir, names, KeySharing::Replace)).await;
        }
        for name in names {
            let Some(theirs) = shared.get(*name) else {
                if !shared.is_empty() {
                    return Err(fail(format!("the cluster's keys in etcd under {}keys/ lack {name}", self.prefix)));
                }
                continue;
            };
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(mine) if &mine == theirs => {}
                Ok(_) if step != KeySharing::Replace => {
                    return Err(fail(format!(
                        "{name} differs from the one the other replicas share in etcd ({}keys/{name}): this data \
                         directory belongs to another control plane; start this replica with an empty --data",
                        self.prefix
                    )));
                }
                _ => write_owner_only(&path, theirs).map_err(|e| fail(format!("{name}: cannot write it: {e}")))?,
            }
        }
        Ok(())
    }
}

impl LiveShare {
    /// The lease the records live under, granted (and kept alive) at first use. (Boxed:
    /// granting spawns the keeper, which may come back here.)
    fn lease(self: &Arc<Self>) -> std::pin::Pin<Box<dyn Future<Output = Result<i64, StoreError>> + Send + '_>> {
        Box::pin(async move {
            let mut lease = self.lease.lock().await;
            if let Some(id) = *lease {
                return Ok(id);
            }
            let mut client = self.client.clone();
            let id = client.lease_grant(LIVE_TTL_S, None).await.map_err(backend)?.id();
            let (keeper, answers) = client.lease_keep_alive(id).await.map_err(backend)?;
            *lease = Some(id);
            if let Some(file) = &self.lease_file
                && let Err(e) = std::fs::write(file, id.to_string())
            {
                tracing::warn!("cannot keep the lease id in {}: {e}", file.display());
            }
            tokio::spawn(self.clone().keep(id, keeper, answers));
            Ok(id)
        })
    }

    /// Keeps lease `id` alive; when it is lost, publishes everything again under a new one
    /// as soon as etcd answers.
    async fn keep(
        self: Arc<Self>,
        id: i64,
        mut keeper: etcd_client::LeaseKeeper,
        mut answers: etcd_client::LeaseKeepAliveStream,
    ) {
        let interval = Duration::from_secs((LIVE_TTL_S as u64 / 3).max(1));
        loop {
            tokio::time::sleep(interval).await;
            let alive = match keeper.keep_alive().await {
                Ok(()) => matches!(answers.message().await, Ok(Some(answer)) if answer.ttl() > 0),
                Err(_) => false,
            };
            if alive {
                continue;
            }
            tracing::warn!(lease = id, "the lease of this replica's node records was lost; publishing them again");
            {
                let mut lease = self.lease.lock().await;
                if *lease == Some(id) {
                    *lease = None;
                }
            }
            loop {
                match self.republish().await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!("publishing the node records again: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn key(&self, name: &str, lease: i64) -> String {
        format!("{}live/{name}/{lease:x}", self.prefix)
    }

    async fn put(&self, name: &str, live: &NodeLive, lease: i64) -> Result<(), StoreError> {
        let options = Some(PutOptions::new().with_lease(lease));
        self.kv.clone().put(self.key(name, lease), encode(live), options).await.map_err(backend)?;
        Ok(())
    }

    /// Everything published, under the (new) lease.
    async fn republish(self: &Arc<Self>) -> Result<(), StoreError> {
        let lease = self.lease().await?;
        let all = self.published.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, live) in &all {
            self.put(name, live, lease).await?;
        }
        Ok(())
    }

    async fn publish(self: &Arc<Self>, name: &str, live: Option<&NodeLive>) -> Result<(), StoreError> {
        let lease = self.lease().await?;
        match live {
            Some(live) => {
                self.published.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), live.clone());
                if self.put(name, live, lease).await.is_err() {
                    // The lease may be gone, and every record under it.
                    {
                        let mut current = self.lease.lock().await;
                        if *current == Some(lease) {
                            *current = None;
                        }
                    }
                    self.republish().await?;
                }
            }
            None => {
                self.published.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                self.kv.clone().delete(self.key(name, lease), None).await.map_err(backend)?;
            }
        }
        Ok(())
    }
}

/// The two calls of [`EtcdStore::share_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySharing {
    /// Before the keys are opened: take what the cluster has.
    Take,
    /// After: share ours if the cluster has none.
    Publish,
    /// Take the cluster's over ours (we lost the race to publish).
    Replace,
}

fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A decimal number stored under `key` (a revision, a chunk count).
fn number(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("etcd key {}: not a number", String::from_utf8_lossy(key))))
}

impl Store for EtcdStore {
    async fn put_bundle(&self, id: &str, wire: &[u8]) -> Result<(), StoreError> {
        if self.one(&format!("bundles/{id}")).await?.is_some() {
            return Ok(());
        }
        let chunks: Vec<&[u8]> = if wire.is_empty() { vec![&[]] } else { wire.chunks(CHUNK).collect() };
        for (n, chunk) in chunks.iter().enumerate() {
            self.kv().put(self.key(&format!("bundles/{id}/{n:06}")), *chunk, None).await.map_err(backend)?;
        }
        // The count last: a bundle is there only once all of it is.
        self.kv().put(self.key(&format!("bundles/{id}")), chunks.len().to_string(), None).await.map_err(backend)?;
        Ok(())
    }

    async fn bundle(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(&format!("bundles/{id}"));
        let Some(count) = self.one(&format!("bundles/{id}")).await? else { return Ok(None) };
        let count = number(key.as_bytes(), &count)?;
        let mut wire = Vec::new();
        for n in 0..count {
            let chunk = self
                .one(&format!("bundles/{id}/{n:06}"))
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("etcd: bundle {id} lacks chunk {n} of {count}")))?;
            wire.extend_from_slice(&chunk);
        }
        Ok(Some(wire))
    }

    async fn versions(&self, function: &str) -> Result<Vec<Version>, StoreError> {
        self.records(&format!("versions/{function}/")).await
    }

    async fn active(&self) -> Result<Vec<Active>, StoreError> {
        self.records("active/").await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        match self.one("revision").await? {
            None => Ok(0),
            Some(bytes) => number(self.key("revision").as_bytes(), &bytes),
        }
    }

    async fn changes_since(&self, revision: u64) -> Result<Vec<Change>, StoreError> {
        let from = self.key(&format!("changes/{:020}", revision + 1));
        let end = self.key("changes0");
        let response = self.kv().get(from, Some(GetOptions::new().with_range(end))).await.map_err(backend)?;
        response.kvs().iter().map(|kv| decode(kv.key(), kv.value())).collect()
    }

    async fn secrets(&self, function: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.key(&format!("secrets/{function}/"));
        Ok(self
            .values(&format!("secrets/{function}/"))
            .await?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
            .collect())
    }

    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.kv().put(self.key(&format!("nodes/{}", node.info.name)), encode(node), None).await.map_err(backend)?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.records("nodes/").await
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.kv().put(self.key(&format!("tokens/{}", token.hash)), encode(token), None).await.map_err(backend)?;
        Ok(())
    }

    async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.key(&format!("tokens/{hash}"));
        self.one(&format!("tokens/{hash}")).await?.map(|v| decode(key.as_bytes(), &v)).transpose()
    }

    async fn commit<E: From<StoreError> + Send>(&self, commit: Commit, check: Check<'_, E>) -> Result<u64, E> {
        let revision_key = self.key("revision");
        for _ in 0..COMMIT_ATTEMPTS {
            let read = self.kv().get(revision_key.as_str(), None).await.map_err(backend)?;
            let (last, guard) = match read.kvs().first() {
                None => (0, Compare::create_revision(revision_key.as_str(), CompareOp::Equal, 0)),
                Some(kv) => (
                    number(kv.key(), kv.value())?,
                    Compare::mod_revision(revision_key.as_str(), CompareOp::Equal, kv.mod_revision()),
                ),
            };
            let current = self.active().await?;
            check(&current)?;
            let revision = last + 1;
            let mut guards = vec![guard];
            let mut puts = vec![TxnOp::put(revision_key.as_str(), revision.to_string(), None)];
            if let Some((entry, sealed)) = &commit.secret {
                puts.push(TxnOp::put(self.key(&format!("secrets/{entry}")), sealed.clone(), None));
            }
            if let Some(version) = &commit.new_version {
                let key = self.key(&format!("versions/{}/{:010}", version.function, version.number));
                guards.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                puts.push(TxnOp::put(key, encode(version), None));
            }
            let record = Active { revision, ..commit.active.clone() };
            puts.push(TxnOp::put(self.key(&format!("active/{}", record.function)), encode(&record), None));
            let change = Change { revision, active: record, at_ms: commit.at_ms };
            puts.push(TxnOp::put(self.key(&format!("changes/{revision:020}")), encode(&change), None));
            let probe = commit
                .new_version
                .as_ref()
                .map(|v| TxnOp::get(self.key(&format!("versions/{}/{:010}", v.function, v.number)), None));
            let txn = Txn::new().when(guards).and_then(puts).or_else(probe.into_iter().collect::<Vec<_>>());
            let response = self.kv().txn(txn).await.map_err(backend)?;
            if response.succeeded() {
                return Ok(revision);
            }
            let taken =
                response.op_responses().iter().any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
            if taken {
                let v = commit.new_version.as_ref().expect("only a new version is probed");
                return Err(StoreError::Conflict(format!(
                    "version {} of {} was recorded by another deploy at the same moment",
                    v.number, v.function
                ))
                .into());
            }
            // Another commit won the race for this revision: read again.
        }
        Err(backend(format!("{COMMIT_ATTEMPTS} commits in a row lost the race for the next revision")).into())
    }

    async fn follow(&self, revisions: tokio::sync::watch::Sender<u64>) {
        let mut pause = Duration::from_millis(100);
        let mut failing = false;
        loop {
            match self.follow_once(&revisions, &mut failing).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) if !failing => {
                    tracing::warn!("following etcd's revisions: {e}; trying again until it answers");
                    failing = true;
                }
                Err(e) => tracing::debug!("following etcd's revisions: {e}"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn publish_live(&self, name: &str, live: Option<&NodeLive>) -> Result<(), StoreError> {
        self.live.publish(name, live).await
    }

    async fn live(&self) -> Result<BTreeMap<String, NodeLive>, StoreError> {
        let prefix = self.key("live/");
        let mut out = BTreeMap::new();
        for (key, value) in self.values("live/").await? {
            let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let Some((name, _replica)) = rest.split_once('/') else { continue };
            let live: NodeLive = decode(&key, &value)?;
            crate::fleet::add(&mut out, name.to_string(), live);
        }
        Ok(out)
    }
}

impl EtcdStore {
    /// Watches `revision` and passes every newer value on, until the watch ends.
    async fn follow_once(
        &self,
        revisions: &tokio::sync::watch::Sender<u64>,
        failing: &mut bool,
    ) -> Result<(), StoreError> {
        let advance = |revision: u64| {
            revisions.send_if_modified(|r| {
                let newer = revision > *r;
                *r = (*r).max(revision);
                newer
            });
        };
        let mut stream = self.client.clone().watch(self.key("revision"), None).await.map_err(backend)?;
        // Anything committed before the watch began.
        advance(self.revision().await?);
        if std::mem::take(failing) {
            tracing::info!("following etcd's revisions again");
        }
        while let Some(answer) = stream.message().await.map_err(backend)? {
            for event in answer.events() {
                if let Some(revision) = event.kv().and_then(|kv| number(kv.key(), kv.value()).ok()) {
                    advance(revision);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_hosts_and_an_optional_prefix() {
        let url: EtcdUrl = "etcd://10.0.0.1:2379,etcd-2:2379".parse().unwrap();
        assert_eq!(url.endpoints, ["http://10.0.0.1:2379", "http://etcd-2:2379"]);
        assert_eq!(url.prefix, "/tern/");
        let url: EtcdUrl = "etcd://127.0.0.1:2379/staging/".parse().unwrap();
        assert_eq!(url.prefix, "/staging/");
        for bad in ["http://127.0.0.1:2379", "etcd://127.0.0.1", "etcd://:2379", "etcd://h:0", "etcd://h:1/"] {
            assert!(bad.parse::<EtcdUrl>().is_err(), "{bad}");
        }
    }
}
