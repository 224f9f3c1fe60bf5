//! Where a client is, from the sources the operator configured, in order:
//! 1. headers set by a trusted upstream (a load balancer that knows): `tern-client-location`
//!    (`LAT,LON`) and `tern-client-country` (ISO 3166 alpha-2), honoured only from peers in
//!    the trusted ranges, since a function may act on the country;
//! 2. a table of networks (`[[network]]` entries: `cidr`, `location`, `country`), longest
//!    prefix first;
//! 3. nothing: the client is taken to be at the router, and the router's measurements
//!    decide alone.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::geo::Location;

pub const LOCATION_HEADER: &str = "tern-client-location";
pub const COUNTRY_HEADER: &str = "tern-client-country";

/// What is known of a client's whereabouts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientPlace {
    pub location: Option<Location>,
    pub country: Option<String>,
}

/// One entry of the network table.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub net: IpNet,
    pub location: Option<Location>,
    pub country: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Locator {
    trusted: Vec<IpNet>,
    networks: Vec<Network>,
}

impl Locator {
    /// Headers are trusted from `trusted` peers; `networks` is the table.
    pub fn new(trusted: Vec<IpNet>, mut networks: Vec<Network>) -> Self {
        networks.sort_by_key(|n| std::cmp::Reverse(n.net.prefix_len()));
        Self { trusted, networks }
    }

    /// Whether headers from `peer` are believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// Reads a network table: TOML with `[[network]]` entries.
    pub fn parse_networks(text: &str) -> Result<Vec<Network>, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            network: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            cidr: String,
            location: Option<String>,
            country: Option<String>,
        }
        let table: Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
        table
            .network
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let at = format!("network {} ({})", i + 1, e.cidr);
                let net =
                    e.cidr.parse::<IpNet>().map_err(|_| format!("{at}: cidr is not a CIDR range like 10.0.0.0/8"))?;
                let location =
                    e.location.as_deref().map(Location::parse).transpose().map_err(|m| format!("{at}: {m}"))?;
                let country = e.country.map(|c| check_country(&c).map_err(|m| format!("{at}: {m}"))).transpose()?;
                Ok(Network { net, location, country })
            })
            .collect()
    }

    /// Where the client at `peer`, sending `headers`, is.
    pub fn locate(&self, peer: IpAddr, client: IpAddr, headers: &HeaderMap) -> ClientPlace {
        if self.trusts(peer) {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
            let location = header(LOCATION_HEADER).and_then(|v| Location::parse(v).ok());
            let country = header(COUNTRY_HEADER).and_then(|v| check_country(v).ok());
            if location.is_some() || country.is_some() {
                return ClientPlace { location, country };
            }
        }
        let client = client.to_canonical();
        match self.networks.iter().find(|n| n.net.contains(&client)) {
            Some(n) => ClientPlace { location: n.location, country: n.country.clone() },
            None => ClientPlace::default(),
        }
    }
}

fn check_country(code: &str) -> Result<String, String> {
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(format!("country {code:?} must be a two-letter code like NL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn headers_count_only_from_trusted_peers() {
        let locator = Locator::new(vec!["10.0.0.0/8".parse().unwrap()], vec![]);
        let h = headers(&[(LOCATION_HEADER, "40.71,-74.01"), (COUNTRY_HEADER, "us")]);
        let place = locator.locate(ip("10.1.1.1"), ip("198.51.100.7"), &h);
        assert_eq!(place.location, Some(Location::new(40.71, -74.01)));
        assert_eq!(place.country.as_deref(), Some("US"));
        assert_eq!(locator.locate(ip("192.0.2.1"), ip("192.0.2.1"), &h), ClientPlace::default());
        // IPv4-mapped peers count as their IPv4 address.
        assert!(locator.locate(ip("::ffff:10.1.1.1"), ip("::ffff:10.1.1.1"), &h).location.is_some());
    }

    #[test]
    fn the_network_table_matches_the_longest_prefix() {
        let networks = Locator::parse_networks(
            r#"
            [[network]]
            cidr = "203.0.113.0/24"
            location = "40.71,-74.01"
            country = "US"
            [[network]]
            cidr = "203.0.113.128/25"
            location = "1.35,103.82"
            country = "SG"
            "#,
        )
        .unwrap();
        let locator = Locator::new(vec![], networks);
        let empty = HeaderMap::new();
        assert_eq!(locator.locate(ip("203.0.113.200"), ip("203.0.113.200"), &empty).country.as_deref(), Some("SG"));
        assert_eq!(locator.locate(ip("203.0.113.5"), ip("203.0.113.5"), &empty).country.as_deref(), Some("US"));
        assert_eq!(locator.locate(ip("198.51.100.1"), ip("198.51.100.1"), &empty), ClientPlace::default());
    }

    #[test]
    fn a_bad_table_says_which_entry() {
        let e = Locator::parse_networks("[[network]]\ncidr = \"10.0.0.0/8\"\nlocation = \"100,0\"\n").unwrap_err();
        assert!(e.contains("network 1") && e.contains("±90"), "{e}");
        let e = Locator::parse_networks("[[network]]\ncidr = \"ten\"\n").unwrap_err();
        assert!(e.contains("CIDR"), "{e}");
        let e = Locator::parse_networks("[[network]]\ncidr = \"10.0.0.0/8\"\ncountry = \"USA\"\n").unwrap_err();
        assert!(e.contains("two-letter"), "{e}");
    }
}
