//! Geography shared by the catalog and the readings: WGS84 coordinate
//! checks, bounding boxes, radius areas and great-circle distance.
//!
//! It lives apart from both users because a dataset's spatial extent and a
//! query's area filter must agree on what "inside" means. Distances use the
//! haversine formula on a sphere of the IUGG mean Earth radius
//! ([`EARTH_RADIUS_KM`]); over municipal distances its error against the
//! ellipsoid (< 0.5 %) is far below sensor position accuracy.
//!
//! Bounding boxes do not wrap around the antimeridian (`min_lon <= max_lon`
//! always): Danish data never crosses it, and a non-wrapping box is one
//! comparison per axis.

use serde::{Deserialize, Serialize};

use crate::governance::body::FieldError;

/// Mean Earth radius (IUGG), in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Checks a latitude in degrees; the error names `field`.
pub fn check_lat(field: &str, lat: f64) -> Result<(), FieldError> {
    if lat.is_finite() && (-90.0..=90.0).contains(&lat) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{lat} is outside -90..=90")))
    }
}

/// Checks a longitude in degrees; the error names `field`.
pub fn check_lon(field: &str, lon: f64) -> Result<(), FieldError> {
    if lon.is_finite() && (-180.0..=180.0).contains(&lon) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{lon} is outside -180..=180"),
        ))
    }
}

/// Great-circle distance in kilometres between two (lat, lon) points.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// A latitude/longitude rectangle, edges included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    pub min_lat: f64,
    pub min_lon: f64,
    pub max_lat: f64,
    pub max_lon: f64,
}

impl BoundingBox {
    /// Checks ranges and order; errors name `prefix.min_lat` and so on.
    pub fn validate(&self, prefix: &str) -> Result<(), FieldError> {
        check_lat(&format!("{prefix}.min_lat"), self.min_lat)?;
        check_lon(&format!("{prefix}.min_lon"), self.min_lon)?;
        check_lat(&format!("{prefix}.max_lat"), self.max_lat)?;
        check_lon(&format!("{prefix}.max_lon"), self.max_lon)?;
        if self.max_lat < self.min_lat {
            return Err(FieldError::new(
                format!("{prefix}.max_lat"),
                format!(
                    "{} is below {prefix}.min_lat {}",
                    self.max_lat, self.min_lat
                ),
            ));
        }
        if self.max_lon < self.min_lon {
            return Err(FieldError::new(
                format!("{prefix}.max_lon"),
                format!(
                    "{} is below {prefix}.min_lon {} (boxes do not wrap around the antimeridian)",
                    self.max_lon, self.min_lon
                ),
            ));
        }
        Ok(())
    }

    /// Whether (lat, lon) lies inside or on the edge.
    pub fn contains(&self, (lat, lon): (f64, f64)) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }

    /// Whether the two boxes share at least one point.
    pub fn intersects(&self, other: &BoundingBox) -> bool {
        self.min_lat <= other.max_lat
            && other.min_lat <= self.max_lat
            && self.min_lon <= other.max_lon
            && other.min_lon <= self.max_lon
    }

    /// The smallest box holding this one and `point`.
    pub fn extended(self, (lat, lon): (f64, f64)) -> BoundingBox {
        BoundingBox {
            min_lat: self.min_lat.min(lat),
            min_lon: self.min_lon.min(lon),
            max_lat: self.max_lat.max(lat),
            max_lon: self.max_lon.max(lon),
        }
    }

    /// The box holding just `point`.
    pub fn point((lat, lon): (f64, f64)) -> BoundingBox {
        BoundingBox {
            min_lat: lat,
            min_lon: lon,
            max_lat: lat,
            max_lon: lon,
        }
    }
}

/// A spatial filter: a box, or a circle of `km` around a point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Area {
    BoundingBox(BoundingBox),
    Radius { lat: f64, lon: f64, km: f64 },
}

impl Area {
    /// Checks coordinates and radius; errors name `prefix.…`.
    pub fn validate(&self, prefix: &str) -> Result<(), FieldError> {
        match self {
            Area::BoundingBox(b) => b.validate(&format!("{prefix}.bbox")),
            Area::Radius { lat, lon, km } => {
                check_lat(&format!("{prefix}.radius.lat"), *lat)?;
                check_lon(&format!("{prefix}.radius.lon"), *lon)?;
                if !(km.is_finite() && *km > 0.0 && *km <= 20_000.0) {
                    return Err(FieldError::new(
                        format!("{prefix}.radius.km"),
                        format!("{km} is not a radius; use a number of kilometres in (0, 20000]"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Whether `point` is inside the area (edges included).
    pub fn contains(&self, point: (f64, f64)) -> bool {
        match self {
            Area::BoundingBox(b) => b.contains(point),
            Area::Radius { lat, lon, km } => haversine_km((*lat, *lon), point) <= *km,
        }
    }

    /// A box that holds every point of the area (exact for boxes; for a
    /// circle, the spherical cap's latitude and longitude extent, widened to
    /// all longitudes when the cap reaches a pole or the antimeridian).
    pub fn bounds(&self) -> BoundingBox {
        match self {
            Area::BoundingBox(b) => *b,
            Area::Radius { lat, lon, km } => {
                // Angular radius, plus a hair for floating-point rounding.
                let d = km / EARTH_RADIUS_KM * (1.0 + 1e-9) + 1e-12;
                let d_deg = d.to_degrees();
                let min_lat = lat - d_deg;
                let max_lat = lat + d_deg;
                let whole = BoundingBox {
                    min_lat: min_lat.max(-90.0),
                    min_lon: -180.0,
                    max_lat: max_lat.min(90.0),
                    max_lon: 180.0,
                };
                if min_lat <= -90.0 || max_lat >= 90.0 {
                    return whole;
                }
                let ratio = d.sin() / lat.to_radians().cos();
                if ratio.is_nan() || ratio >= 1.0 {
                    return whole;
                }
                let dlon = ratio.asin().to_degrees();
                if lon - dlon < -180.0 || lon + dlon > 180.0 {
                    return whole;
                }
                BoundingBox {
                    min_lat,
                    min_lon: lon - dlon,
                    max_lat,
                    max_lon: lon + dlon,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let d = haversine_km((55.0, 10.0), (56.0, 10.0));
        assert!((d - 111.195).abs() < 0.001, "{d}");
        let aarhus_copenhagen = haversine_km((56.1572, 10.2107), (55.6761, 12.5683));
        assert!(
            (150.0..165.0).contains(&aarhus_copenhagen),
            "{aarhus_copenhagen}"
        );
    }

    #[test]
    fn a_circles_bounds_hold_its_edge_points() {
        let area = Area::Radius {
            lat: 56.1572,
            lon: 10.2107,
            km: 5.0,
        };
        let b = area.bounds();
        for step in 0..360 {
            let bearing = f64::from(step).to_radians();
            // Walk out along a great circle to just inside the edge.
            let d = 4.999 / EARTH_RADIUS_KM;
            let (lat1, lon1) = (56.1572f64.to_radians(), 10.2107f64.to_radians());
            let lat2 = (lat1.sin() * d.cos() + lat1.cos() * d.sin() * bearing.cos()).asin();
            let lon2 = lon1
                + (bearing.sin() * d.sin() * lat1.cos()).atan2(d.cos() - lat1.sin() * lat2.sin());
            let p = (lat2.to_degrees(), lon2.to_degrees());
            assert!(area.contains(p), "{p:?}");
            assert!(b.contains(p), "{p:?} outside {b:?}");
        }
    }

    #[test]
    fn box_errors_name_the_field() {
        let b = BoundingBox {
            min_lat: 91.0,
            min_lon: 0.0,
            max_lat: 92.0,
            max_lon: 1.0,
        };
        let err = b.validate("spatial").expect_err("bad");
        assert_eq!(err.to_string(), "spatial.min_lat: 91 is outside -90..=90");
        let b = BoundingBox {
            min_lat: 56.0,
            min_lon: 10.0,
            max_lat: 55.0,
            max_lon: 11.0,
        };
        let err = b.validate("spatial").expect_err("bad");
        assert_eq!(err.field, "spatial.max_lat");
    }
}
