//! Where things are and how far apart they are in time: great-circle distance and the
//! latency model the router uses for a client it cannot measure.
//!
//! The model, written down so it can be argued with:
//! - light in optical fibre covers about 200 km per millisecond (two thirds of c);
//! - fibre paths are longer than the great circle; a stretch of 1.5 is typical of
//!   terrestrial and submarine routes between well-connected cities;
//! - so a round trip over `d` km takes about `2 × 1.5 × d / 200` ms = `d / 66.7` ms, with no
//!   queueing and no last mile (the router's own measurements carry those for its links).

use std::time::Duration;

/// A point on the Earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// Kilometres covered by light in fibre per millisecond.
pub const FIBRE_KM_PER_MS: f64 = 200.0;
/// How much longer a network path is than the great circle.
pub const PATH_STRETCH: f64 = 1.5;
/// Mean radius of the Earth.
const EARTH_RADIUS_KM: f64 = 6371.0;

impl Location {
    pub fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }

    /// `LAT,LON` in degrees, each within range.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (lat, lon) = text.split_once(',').ok_or_else(|| format!("{text:?}: give LAT,LON, e.g. 52.37,4.90"))?;
        let lat: f64 = lat.trim().parse().map_err(|_| format!("{text:?}: latitude {lat:?} is not a number"))?;
        let lon: f64 = lon.trim().parse().map_err(|_| format!("{text:?}: longitude {lon:?} is not a number"))?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(format!("{text:?}: latitude must be within ±90 and longitude within ±180"));
        }
        Ok(Self { lat, lon })
    }

    /// Great-circle distance (haversine).
    pub fn km_to(self, other: Location) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }

    /// The modelled round trip to `other` (see the module's assumptions).
    pub fn modelled_rtt(self, other: Location) -> Duration {
        Duration::from_secs_f64(2.0 * PATH_STRETCH * self.km_to(other) / FIBRE_KM_PER_MS / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_known_city_pairs() {
        let amsterdam = Location::new(52.37, 4.90);
        let new_york = Location::new(40.71, -74.01);
        let km = amsterdam.km_to(new_york);
        assert!((5800.0..5900.0).contains(&km), "{km}");
        assert_eq!(amsterdam.km_to(amsterdam), 0.0);
        // About 88 ms modelled; measured Amsterdam-New York RTTs are 75-90 ms.
        let rtt = amsterdam.modelled_rtt(new_york).as_millis();
        assert!((80..95).contains(&rtt), "{rtt}");
    }

    #[test]
    fn locations_parse_or_say_why_not() {
        assert_eq!(Location::parse("52.37, 4.90").unwrap(), Location::new(52.37, 4.90));
        assert!(Location::parse("91,0").unwrap_err().contains("±90"));
        assert!(Location::parse("x,0").unwrap_err().contains("latitude"));
        assert!(Location::parse("52").unwrap_err().contains("LAT,LON"));
    }
}
