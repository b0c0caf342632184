//! The OpenAPI document at `/api/v1/openapi.json`: valid OpenAPI 3 by an independent
//! validator (Python's openapi-spec-validator), and every operation it lists answers on
//! the running API (none falls through to "no such endpoint" or "method not allowed").

use crate::world::*;
use knock::net::resolve::StaticResolver;
use serde_json::Value;
use std::io::Write;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_every_entry_is_routed() {
    let world = World::new(&["1s"], "1h");
    let engine = world.start(StaticResolver::new()).await;
    let (status, doc) = http_get(&engine, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");

    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "valid",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Path parameters get a value that names nothing: the route must still be found.
        let concrete = path
            .replace("{id}", "0123456789abcdef")
            .replace("{address}", "nobody@nowhere.test")
            .replace("{name}", "app.js");
        for (method, _) in item.as_object().unwrap() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let resp = client
                .request(
                    method.clone(),
                    format!("http://{}{concrete}", engine.http_addr),
                )
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}: no such method");
            assert_ne!(
                body["error"], "no such endpoint",
                "{method} {path}: documented but not routed"
            );
            operations += 1;
        }
    }
    assert!(operations >= 20, "{operations} operations documented");
    engine.shutdown().await;
}
