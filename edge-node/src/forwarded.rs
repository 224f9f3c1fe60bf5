//! Who is asking, and from where, when a request reaches the node through Tern's router.
//!
//! The node believes forwarding headers only from peers in its trusted ranges (`tern node
//! --trusted-proxy CIDR`): then the client is who the router's `tern-connecting-ip` header
//! names (the router decided it, from the socket or a trusted upstream's
//! `x-forwarded-for`), and the router's `tern-cf` header (JSON: `country`, `latitude`,
//! `longitude`) describes it. From anyone else both are ignored. Either way the function
//! gets `request.cf` from a `tern-cf` header the node writes itself, with `colo` set to the
//! node's region; the runtime takes that header off the request again.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub use tern_proto::forwarding::{CF_HEADER, CONNECTING_IP_HEADER};

/// What the node says about itself and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct EdgeIdentity {
    /// The node's region, as `request.cf.colo`.
    pub colo: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// Requests it takes at once before it tells routers it is full; `None`: no limit.
    pub capacity: Option<u64>,
}

impl EdgeIdentity {
    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer.to_canonical()))
    }

    /// The client's address, and the `tern-cf` value to hand the function (none when there
    /// is nothing to say, as under `tern dev`: no header to write, nothing to parse).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> (IpAddr, Option<String>) {
        let peer = peer.to_canonical();
        let trusted = self.trusts(peer);
        let forwarded = headers
            .get(CONNECTING_IP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let client = if trusted { forwarded.unwrap_or(peer) } else { peer };
        let mut cf = serde_json::Map::new();
        if trusted
            && let Some(serde_json::Value::Object(given)) =
                headers.get(CF_HEADER).and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        {
            for key in ["country", "latitude", "longitude", "city", "region", "continent", "timezone"] {
                if let Some(value) = given.get(key).filter(|v| v.is_string() || v.is_number()) {
                    cf.insert(key.into(), value.clone());
                }
            }
        }
        if let Some(colo) = &self.colo {
            cf.insert("colo".into(), colo.clone().into());
        }
        let cf = (!cf.is_empty()).then(|| serde_json::Value::Object(cf).to_string());
        (client.to_canonical(), cf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_trusted_router_names_the_client_and_its_place() {
        let edge = EdgeIdentity {
            colo: Some("eu-west".into()),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            capacity: None,
        };
        let h = headers(&[
            (CONNECTING_IP_HEADER, "198.51.100.7"),
            (CF_HEADER, r#"{"country":"NL","latitude":52.37,"longitude":4.9,"asn":"x","colo":"fake"}"#),
        ]);
        let (client, cf) = edge.client("10.1.1.1".parse().unwrap(), &h);
        assert_eq!(client, "198.51.100.7".parse::<IpAddr>().unwrap());
        let cf: serde_json::Value = serde_json::from_str(&cf.unwrap()).unwrap();
        assert_eq!(cf, serde_json::json!({"country": "NL", "latitude": 52.37, "longitude": 4.9, "colo": "eu-west"}));
    }

    #[test]
    fn anyone_else_is_who_the_socket_says() {
        let edge = EdgeIdentity { colo: None, trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()], capacity: None };
        let h = headers(&[(CONNECTING_IP_HEADER, "1.2.3.4"), (CF_HEADER, r#"{"country":"NL"}"#)]);
        let (client, cf) = edge.client("192.0.2.1".parse().unwrap(), &h);
        assert_eq!(client, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(cf, None);
    }
}
