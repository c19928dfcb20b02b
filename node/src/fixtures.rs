//! Facts about Danish municipalities (official codes and approximate
//! town-hall coordinates), shipped with the node so the demo, examples and
//! tests run on the shapes of data the fellowships really have. The TOML
//! files under `node/fixtures/` are copies of the project's fixture set.

use serde::Deserialize;

const MUNICIPALITIES_TOML: &str = include_str!("../fixtures/municipalities.toml");

/// One municipality: kommunekode, name and town-hall position (WGS84).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Municipality {
    pub code: u32,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

#[derive(Deserialize)]
struct MunicipalityFile {
    municipality: Vec<Municipality>,
}

/// Every municipality in the fixture set.
pub fn municipalities() -> Vec<Municipality> {
    // The file is compiled into the binary and checked by a unit test, so a
    // parse failure here is a build defect, not bad input.
    toml::from_str::<MunicipalityFile>(MUNICIPALITIES_TOML)
        .map(|file| file.municipality)
        .unwrap_or_default()
}

/// The municipality with kommunekode `code`, if the fixture set has it.
pub fn municipality(code: u32) -> Option<Municipality> {
    municipalities().into_iter().find(|m| m.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_file_parses_and_has_the_demo_municipalities() {
        let all: Vec<Municipality> = toml::from_str::<MunicipalityFile>(MUNICIPALITIES_TOML)
            .expect("fixture parses")
            .municipality;
        assert!(all.len() >= 20);
        assert_eq!(municipality(751).expect("Aarhus").name, "Aarhus Kommune");
        assert_eq!(municipality(630).expect("Vejle").name, "Vejle Kommune");
        assert_eq!(
            municipality(165).expect("Albertslund").name,
            "Albertslund Kommune"
        );
    }
}
