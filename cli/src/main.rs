//! `tern`: one binary for every role of the platform. Today: `tern dev`, `tern control-plane`
//! with its user commands (`tern deploy`, `tern versions`, `tern rollback`, `tern rollout`,
//! `tern status`),
//! `tern node`, and the internal
//! roles it starts: `tern serve` (a server process) and `tern isolate-host` (isolates in a
//! process of their own).
//!
//! Parses the command line, sets up logging and hands off to the role's module; no role
//! logic lives here.

mod control;
mod dev;
mod node;
mod project;
mod relay;
mod router;
mod serve;
mod up;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern: an edge function platform")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5y").is_err());
    }
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve function projects locally, reloading on change.
    Dev {
        /// Function projects: folders with tern.toml, or single .js/.mjs files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        ip: IpAddr,
        /// Threads serving HTTP (default: one per CPU core); every isolate has a thread of
        /// its own besides.
        #[arg(long)]
        http_threads: Option<usize>,
        /// A PEM file of certificate authorities that functions' outbound HTTPS trusts,
        /// besides the Mozilla roots (repeatable), like NODE_EXTRA_CA_CERTS.
        #[arg(long = "ca-cert", value_name = "FILE")]
        ca_certs: Vec<PathBuf>,
        /// Time a client has to send a request's head (slowloris), e.g. `10s` or `500ms`.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        header_read_timeout: Duration,
        /// Serve the admin endpoint (`/metrics` in Prometheus text, `/healthz`) on this port.
        #[arg(long, value_name = "PORT")]
        admin_port: Option<u16>,
        #[command(flatten)]
        isolates: IsolateArgs,
    },
    /// Internal: serve projects on the listening socket given as standard input (`tern dev`
    /// runs one such process per set of versions).
    #[command(hide = true)]
    Serve {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        http_threads: usize,
        /// Booted isolates kept waiting for functions new to the process.
        #[arg(long, default_value_t = 1)]
        warm_pool: usize,
        /// Serve the only project whatever the Host.
        #[arg(long)]
        any_host: bool,
        #[arg(long = "ca-cert", value_name = "FILE")]
        ca_certs: Vec<PathBuf>,
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        header_read_timeout: Duration,
        /// An inherited listening socket for the admin endpoint.
        #[arg(long, value_name = "FD")]
        admin_fd: Option<i32>,
        #[command(flatten)]
        isolates: IsolateArgs,
    },
    /// Run the control plane: the API that stores versions and says what every function runs.
    ControlPlane {
        /// Address of the HTTP/JSON API.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        /// Directory for the state (one file), the signing key and the admin token.
        #[arg(long)]
        data: PathBuf,
        /// Keep the state in etcd instead, `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`
        /// (prefix `tern` by default): replicas naming the same store serve the same
        /// platform, and share the keys through it.
        #[arg(long, value_name = "URL")]
        store: Option<tern_control_plane::etcd::EtcdUrl>,
    },
    /// Run an edge node: enrol with the control plane, follow what it assigns, serve it.
    Node {
        /// The control plane's API, e.g. http://127.0.0.1:7700 (its distribution endpoint is
        /// the same port over UDP); replicas as a comma-separated list, used in turn when one
        /// stops answering.
        #[arg(long = "control-plane", env = "TERN_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
        control_plane: String,
        /// Relays to follow the control plane through (`HOST:PORT` of their distribution
        /// endpoint; a comma-separated list is used in turn). The node enrols with the
        /// control plane, and subscribes to it directly when no relay answers.
        #[arg(long, env = "TERN_RELAY", value_name = "HOST:PORT")]
        relay: Option<String>,
        /// The token nodes enrol with (the control plane's `join-token` file); needed only
        /// until the node has enrolled.
        #[arg(long, env = "TERN_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// This node's name, unique among the control plane's nodes.
        #[arg(long)]
        name: String,
        /// The region it belongs to, e.g. `eu-west`.
        #[arg(long)]
        region: String,
        /// Where it is: `LAT,LON` in degrees.
        #[arg(long, value_parser = node::parse_location, allow_hyphen_values = true)]
        location: (f64, f64),
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: std::net::SocketAddr,
        /// The address routers reach this node's HTTP on (default: the listen address).
        #[arg(long)]
        advertise: Option<String>,
        /// Where the node keeps its identity and what it applied (default:
        /// `$XDG_DATA_HOME/tern/node-NAME`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Booted isolates kept waiting for functions new to the node.
        #[arg(long, default_value_t = 1)]
        warm_pool: usize,
        #[arg(long = "ca-cert", value_name = "FILE")]
        ca_certs: Vec<PathBuf>,
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        header_read_timeout: Duration,
        /// Routers in this range (CIDR; repeat for more) are believed about the client:
        /// its address (`x-forwarded-for`) and place (`request.cf`).
        #[arg(long = "trusted-proxy", value_name = "CIDR")]
        trusted_proxies: Vec<ipnet::IpNet>,
        /// Requests in flight at which the node tells routers it is full (they send it
        /// new requests only when every other node is full too).
        #[arg(long, value_name = "N")]
        max_in_flight: Option<u64>,
        /// Serve the admin endpoint (`/metrics` in Prometheus text, `/healthz`) on this
        /// address, e.g. `127.0.0.1:9787`; keep it off the public network.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        isolates: IsolateArgs,
    },
    /// Run a relay: follow the control plane once for many nodes, and serve them what it
    /// assigns (nodes subscribe with `tern node --relay HOST:PORT`).
    Relay {
        /// The control plane's API, e.g. http://127.0.0.1:7700; replicas as a comma-separated list.
        #[arg(long, env = "TERN_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
        upstream: String,
        /// Where nodes reach the relay (UDP).
        #[arg(long, default_value = "0.0.0.0:7710")]
        listen: std::net::SocketAddr,
        /// The address nodes are to use, if not the listen address (shown by `tern status`).
        #[arg(long)]
        advertise: Option<String>,
        /// The token to enrol with (the control plane's `join-token` file or `tern token
        /// create`); needed only until the relay has enrolled.
        #[arg(long, env = "TERN_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// This relay's name, unique among the control plane's nodes and relays.
        #[arg(long)]
        name: String,
        /// The region it serves, e.g. `eu-west` (shown by `tern status`).
        #[arg(long)]
        region: String,
        /// Where it is: `LAT,LON` in degrees (shown by `tern status`).
        #[arg(long, value_parser = node::parse_location, allow_hyphen_values = true, default_value = "0,0")]
        location: (f64, f64),
        /// Where the relay keeps its identity, state and bundles (default:
        /// `$XDG_DATA_HOME/tern/relay-NAME`).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// The whole platform on this machine: a control plane, two nodes and a router on
    /// 127.0.0.1:8080, with the given projects (default: ./examples/*) deployed.
    Up {
        /// Function projects to deploy (default: every folder under ./examples).
        paths: Vec<PathBuf>,
        /// Where the router listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the platform keeps its state (default: `$XDG_DATA_HOME/tern/up`).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Run a router: send each request to the nearest healthy node.
    Router {
        /// The control plane's API, e.g. http://127.0.0.1:7700; replicas as a comma-separated list.
        #[arg(long = "control-plane", env = "TERN_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
        control_plane: String,
        /// The join token (or the admin token); the router reads the topology with it.
        #[arg(long, env = "TERN_JOIN_TOKEN", hide_env_values = true)]
        join_token: String,
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the router is: `LAT,LON` in degrees.
        #[arg(long, value_parser = tern_router::geo::Location::parse, allow_hyphen_values = true)]
        location: tern_router::geo::Location,
        /// Upstreams in this range (CIDR; repeat for more) are believed about the client:
        /// `x-forwarded-for`, `tern-client-location` (LAT,LON) and `tern-client-country`.
        #[arg(long = "trusted-upstream", value_name = "CIDR")]
        trusted: Vec<ipnet::IpNet>,
        /// A table of client networks and where they are (TOML, `[[network]]` entries with
        /// `cidr`, `location` and `country`).
        #[arg(long, value_name = "FILE")]
        networks: Option<PathBuf>,
        /// Speak HTTP/2 (cleartext, prior knowledge) to nodes: every request to a node over
        /// one multiplexed connection instead of a pooled connection per concurrent request.
        #[arg(long)]
        http2_to_nodes: bool,
    },
    /// Deploy a function project: upload it as a new version, make it active, and wait
    /// until every connected node serves it.
    Deploy {
        /// A folder with tern.toml, or a single .js/.mjs file.
        path: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// Which node runs which version, and how long the last change took to reach them.
    Status {
        /// Only this function.
        name: Option<String>,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// List the versions of a function.
    Versions {
        name: String,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// Make an older version of a function active again (default: the one before).
    Rollback {
        name: String,
        /// A version number, or the first digits (6 or more) of its bundle id.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// Send some requests to another version of a function: a percentage of clients
    /// (sticky), and/or requests with a header. `--percent 0` without `--header` ends it.
    Rollout {
        name: String,
        /// The candidate: a version number, or the first digits (6 or more) of its bundle id.
        #[arg(long)]
        version: Option<String>,
        /// Share of clients, 0 to 100, that get the candidate.
        #[arg(long)]
        percent: u32,
        /// `NAME=VALUE`: requests with this header get the candidate whatever the percentage.
        #[arg(long)]
        header: Option<String>,
        /// Key stickiness on this request header's value instead of the client's address.
        #[arg(long)]
        sticky_header: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// Tokens for enrolling nodes.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// A function's secrets: sealed at rest, reaching the function as `env.NAME`.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Internal: run isolates for the node connected on standard input.
    #[command(hide = true)]
    IsolateHost {
        #[arg(long, default_value_t = 1)]
        warm_pool: usize,
        #[arg(long, default_value_t = 4096)]
        memory_budget_mib: u64,
        #[arg(long, default_value_t = 256)]
        cache_memory_mib: u64,
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        idle_ttl: Duration,
        #[arg(long)]
        allow_loopback: bool,
        #[arg(long = "ca-cert", value_name = "FILE")]
        ca_certs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretAction {
    /// Set a secret; the value is read from standard input.
    Put {
        function: String,
        name: String,
        #[command(flatten)]
        credentials: control::Credentials,
    },
    /// List a function's secret names (never values).
    List {
        function: String,
        #[command(flatten)]
        credentials: control::Credentials,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a join token that expires; prints it (only this once) on standard output.
    Create {
        /// How long it lets nodes enrol, e.g. `1h`, `30m`, `7d` (at most 30 days).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        credentials: control::Credentials,
    },
}

/// Whether a change waits until every connected node serves it.
#[derive(clap::Args, Clone, Debug)]
pub struct WaitArgs {
    /// Return once the change is recorded, without waiting for the nodes.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the nodes, e.g. `30s`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

impl WaitArgs {
    fn limit(&self) -> Option<Duration> {
        (!self.no_wait).then_some(self.timeout)
    }
}

/// Where isolates run and what they may reach: `tern dev` takes these and hands them to its
/// `tern serve` process unchanged.
#[derive(clap::Args, Clone, Debug)]
pub struct IsolateArgs {
    /// Let functions' outbound fetch reach loopback addresses (127.0.0.0/8, ::1), for
    /// local development against services on this machine. Other private ranges stay
    /// refused.
    #[arg(long)]
    pub allow_loopback: bool,
    /// Run isolates in this many isolate host processes, which the node replaces before the
    /// engine's leak adds up and restarts when they crash (0: in the serving process itself).
    /// Default: one per CPU core (at most 8) for `tern node`, 0 for `tern dev`.
    #[arg(long, value_name = "N")]
    pub isolate_hosts: Option<usize>,
    /// Replace an isolate host once this many of its isolates have ended (evicted, killed,
    /// or replaced by a new version): the engine leaks about 2 MiB with each.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub host_recycle_after: u64,
    /// Evict isolates (least recently used first) beyond this estimated memory (12 MiB an
    /// isolate), all isolate hosts together.
    #[arg(long, default_value_t = 4096)]
    pub isolate_memory_budget_mib: u64,
    /// Evict an isolate after this long without a request, e.g. `5m` or `30s`; its next
    /// request boots another.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub isolate_idle_ttl: Duration,
    /// Memory for the Cache API's stored responses (`caches.default`), all functions
    /// together (isolate hosts share it, each function's entries living in its host).
    #[arg(long, default_value_t = 256)]
    pub cache_memory_mib: u64,
}

impl IsolateArgs {
    /// The same flags, for a child `tern serve`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--host-recycle-after={}", self.host_recycle_after),
            format!("--isolate-memory-budget-mib={}", self.isolate_memory_budget_mib),
            format!("--isolate-idle-ttl={}ms", self.isolate_idle_ttl.as_millis()),
            format!("--cache-memory-mib={}", self.cache_memory_mib),
        ];
        if let Some(hosts) = self.isolate_hosts {
            args.push(format!("--isolate-hosts={hosts}"));
        }
        if self.allow_loopback {
            args.push("--allow-loopback".into());
        }
        args
    }
}

/// What `tern node` runs when not told: one isolate host per CPU core (a host serves the
/// node's connection to it from one thread), at most 8 (each costs about 14 MiB idle, and
/// its isolates have threads of their own anyway).
pub fn default_isolate_hosts() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// `250ms`, `10s`: a duration with its unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m, h or d"))?;
    let n: u64 = number.parse().map_err(|_| format!("{text:?} must start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86_400)),
        _ => Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    // Two rustls crypto providers are linked (ring, ours; aws-lc-rs, the Web API crates'),
    // so rustls cannot pick one for code that does not name it (outbound fetch): ring is the
    // process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(cli.command, Command::Serve { .. } | Command::IsolateHost { .. } | Command::Node { .. }) {
        // Before any thread starts: every thread of a serving role inherits it.
        tern_runtime::priority::serving_process();
        // Roles that run isolates own the engine's code cache; before any thread starts.
        tern_runtime::code_cache::install(&tern_runtime::code_cache::default_dir())?;
    }
    // The supervisor's runtime: it only watches files and signals. Serving roles build their own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let log_format = match cli.log_format {
        LogFormat::Pretty => "pretty",
        LogFormat::Json => "json",
    };
    match cli.command {
        Command::Dev { paths, port, ip, http_threads, ca_certs, header_read_timeout, admin_port, isolates } => {
            let http_threads =
                http_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            rt.block_on(dev::run(dev::DevOptions {
                paths,
                addr: ip,
                port,
                http_threads,
                log_format,
                ca_certs,
                header_read_timeout,
                admin_port,
                isolates,
            }))
        }
        Command::Serve {
            paths,
            http_threads,
            warm_pool,
            any_host,
            ca_certs,
            header_read_timeout,
            admin_fd,
            isolates,
        } => {
            let limits = tern_edge_node::ServerLimits { header_read_timeout, ..Default::default() };
            // HTTP is served on this runtime's threads; isolates run on threads of their own.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(http_threads.max(1))
                .thread_name("tern-http")
                .enable_all()
                .build()?;
            rt.block_on(serve::run(serve::ServeOptions {
                paths,
                ca_certs,
                warm_pool,
                fallback: any_host,
                limits,
                admin_fd,
                isolates,
                log_format,
            }))
        }
        Command::ControlPlane { listen, data, store } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(control::serve(listen, &data, store))
        }
        Command::Node {
            control_plane,
            relay,
            join_token,
            name,
            region,
            location,
            listen,
            advertise,
            data,
            warm_pool,
            ca_certs,
            header_read_timeout,
            trusted_proxies,
            max_in_flight,
            admin_listen,
            isolates,
        } => {
            let limits = tern_edge_node::ServerLimits { header_read_timeout, ..Default::default() };
            let rt = tokio::runtime::Builder::new_multi_thread().thread_name("tern-node").enable_all().build()?;
            rt.block_on(node::run(node::NodeOptions {
                control_plane,
                relays: relay,
                join_token,
                name,
                region,
                location,
                listen,
                advertise,
                data,
                isolates,
                ca_certs,
                warm_pool,
                limits,
                trusted_proxies,
                max_in_flight,
                admin_listen,
                log_format,
            }))
        }
        Command::Relay { upstream, listen, advertise, join_token, name, region, location, data } => {
            let rt = tokio::runtime::Builder::new_multi_thread().thread_name("tern-relay").enable_all().build()?;
            rt.block_on(relay::run(relay::RelayOptions {
                upstream,
                listen,
                advertise,
                join_token,
                name,
                region,
                location,
                data,
            }))
        }
        Command::Up { paths, listen, data } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            rt.block_on(up::run(up::UpOptions { paths, listen, data }))
        }
        Command::Router { control_plane, join_token, listen, location, trusted, networks, http2_to_nodes } => {
            let rt = tokio::runtime::Builder::new_multi_thread().thread_name("tern-router").enable_all().build()?;
            rt.block_on(router::run(router::RouterOptions {
                control_plane,
                token: join_token,
                listen,
                location,
                trusted,
                networks,
                http2_to_nodes,
            }))
        }
        Command::Deploy { path, wait, credentials } => rt.block_on(control::deploy(&path, wait.limit(), &credentials)),
        Command::Rollout { name, version, percent, header, sticky_header, wait, credentials } => {
            let rollout = control::Rollout { version, percent, header, sticky_header };
            rt.block_on(control::rollout(&name, rollout, wait.limit(), &credentials))
        }
        Command::Secret { action: SecretAction::Put { function, name, credentials } } => {
            rt.block_on(control::secret_put(&function, &name, &credentials))
        }
        Command::Token { action: TokenAction::Create { ttl, credentials } } => {
            rt.block_on(control::token_create(ttl, &credentials))
        }
        Command::Secret { action: SecretAction::List { function, credentials } } => {
            rt.block_on(control::secret_list(&function, &credentials))
        }
        Command::Status { name, credentials } => rt.block_on(control::status(name.as_deref(), &credentials)),
        Command::Versions { name, credentials } => rt.block_on(control::versions(&name, &credentials)),
        Command::Rollback { name, to, wait, credentials } => {
            rt.block_on(control::rollback(&name, to.as_deref(), wait.limit(), &credentials))
        }
        Command::IsolateHost { warm_pool, memory_budget_mib, cache_memory_mib, idle_ttl, allow_loopback, ca_certs } => {
            // One thread for the node's HTTP/2 connection and the streams on it: handing each
            // request between threads cost a context switch or two per request.
            let rt = tokio::runtime::Builder::new_current_thread().thread_name("tern-host").enable_all().build()?;
            let budgets = serve::HostBudgets { isolates_mib: memory_budget_mib, cache_mib: cache_memory_mib, idle_ttl };
            rt.block_on(serve::run_isolate_host(warm_pool, budgets, allow_loopback, &ca_certs))
        }
    }
}
