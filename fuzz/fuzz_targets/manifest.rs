//! Manifest decoding on arbitrary bytes: the YAML/JSON parsers with their budgets, strict
//! typed decoding, Knative defaulting and validation must answer (Ok or Err) without panicking,
//! hanging or growing without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse_api::config::Config;
use rouse_api::decode::{AnyObject, decode_value, parse_documents, parse_json};
use rouse_api::{defaults, validation};

fuzz_target!(|data: &[u8]| {
    let _ = parse_json(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = parse_documents(text) else {
        return;
    };
    let cfg = Config::default();
    for (i, doc) in docs.into_iter().enumerate() {
        match decode_value(i + 1, doc) {
            Ok(AnyObject::Service(mut s)) => {
                defaults::default_service(&mut s, None, &cfg);
                let _ = validation::validate_service(&s, None, &cfg);
            }
            Ok(AnyObject::Configuration(mut c)) => {
                defaults::default_configuration(&mut c, None, &cfg);
                let _ = validation::validate_configuration(&c, None, &cfg);
            }
            Ok(AnyObject::Route(mut r)) => {
                defaults::default_route(&mut r, None, &cfg);
                let _ = validation::validate_route(&r, None, &cfg);
            }
            _ => {}
        }
    }
});
