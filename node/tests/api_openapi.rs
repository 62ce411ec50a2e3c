//! `docs/openapi.yaml` describes exactly the routes the router serves (the same
//! `ROUTES` table builds both), with each route's scope, and documents exactly the error
//! codes the API answers with.

use std::collections::BTreeSet;

use herald_node::api::{ERROR_CODES, ROUTES};
use serde_norway::Value;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_norway::from_str(&text).expect("openapi.yaml parses")
}

#[test]
fn the_spec_lists_exactly_the_routes_with_their_scopes() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths") {
        let path = path.as_str().unwrap();
        for (method, operation) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_uppercase();
            let scope = operation["x-herald-scope"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            documented.insert((method, path.to_owned(), scope));
        }
    }
    let served: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.scope.as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn the_spec_documents_exactly_the_error_codes() {
    let spec = spec();
    let documented: BTreeSet<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_sequence()
        .expect("ErrorCode enum")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let answered: BTreeSet<&str> = ERROR_CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(documented, answered);
    // Every status an error code has is a documented response of some route.
    let mut statuses = BTreeSet::new();
    for (_, item) in spec["paths"].as_mapping().unwrap() {
        for (_, operation) in item.as_mapping().unwrap() {
            for (status, _) in operation["responses"].as_mapping().unwrap() {
                statuses.insert(status.as_str().unwrap().to_owned());
            }
        }
    }
    for (code, status) in ERROR_CODES {
        // 404/405 for unknown routes and methods, 500 for internal errors: not per route.
        if matches!(*code, "not_found" | "method_not_allowed" | "internal") {
            continue;
        }
        assert!(
            statuses.contains(&status.to_string()),
            "{code} ({status}) is in no route's responses"
        );
    }
}
