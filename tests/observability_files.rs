//! The shipped dashboard (`deploy/grafana/idemgate.json`) and alert rules
//! (`deploy/prometheus/alerts.yaml`): their shape, balanced brackets in every query, a runbook per
//! alert in `deploy/README.md`, and every `idemgate_*` metric and `outcome`/`op`/`class` value they query
//! present in a `/metrics` scrape of a running proxy (and every metric of that scrape used by one
//! of them). There is no promtool here: this is their validation (PromQL beyond brackets is not
//! parsed).

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

const DASHBOARD: &str = "deploy/grafana/idemgate.json";
const RULES: &str = "deploy/prometheus/alerts.yaml";
const README: &str = "deploy/README.md";

/// The alerts deploy/README.md and the brief promise; the file may hold more.
const EXPECTED_ALERTS: [&str; 12] = [
    "IdemgateDown",
    "IdemgateNotReady",
    "IdemgateStoreErrors",
    "IdemgateAppErrors",
    "IdemgateApp5xx",
    "IdemgateInflightClaimsStuck",
    "IdemgateLostClaims",
    "IdemgateLeaseExpiries",
    "IdemgateConfigReloadRefused",
    "IdemgateDuplicateRatioShift",
    "IdemgateQueueOldestEventOld",
    "IdemgateDeadLetters",
];

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

fn rules() -> Value {
    serde_saphyr::from_str::<Value>(&read(RULES)).unwrap_or_else(|e| panic!("{RULES} is not YAML: {e}"))
}

fn text<'a>(value: &'a Value, field: &str, what: &str) -> &'a str {
    match value.get(field).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => s,
        _ => panic!("{what}: `{field}` missing or empty"),
    }
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("dashboard has `panels`") {
        out.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            out.extend(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// (where, query) for every panel target and every query variable of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            out.push((format!("panel {title:?} target {}", target["refId"]), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] == "query" {
            let query = match &variable["query"] {
                Value::String(s) => s.clone(),
                other => other["query"].as_str().unwrap_or_default().to_string(),
            };
            out.push((format!("variable {}", variable["name"]), query));
        }
    }
    out
}

fn alert_rules(rules: &Value) -> Vec<&Value> {
    let groups = rules["groups"].as_array().expect("rules file has `groups`");
    assert!(!groups.is_empty(), "no rule groups");
    let mut out = Vec::new();
    for group in groups {
        text(group, "name", "a rule group");
        let list = group["rules"].as_array().unwrap_or_else(|| panic!("group {} has no `rules`", group["name"]));
        assert!(!list.is_empty(), "group {} is empty", group["name"]);
        out.extend(list);
    }
    out
}

fn rule_queries(rules: &Value) -> Vec<(String, String)> {
    alert_rules(rules)
        .into_iter()
        .map(|r| (format!("alert {}", r["alert"]), r["expr"].as_str().unwrap_or_default().to_string()))
        .collect()
}

fn all_queries() -> Vec<(String, String)> {
    let mut queries = dashboard_queries(&dashboard());
    queries.extend(rule_queries(&rules()));
    queries
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every `idemgate_[a-z_]+` name in a query (not counting ones that are part of a longer word).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in expr.match_indices("idemgate_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let len = expr[at..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(expr.len() - at);
        names.insert(expr[at..at + len].to_string());
    }
    names
}

/// A histogram's series all map to its base name, in queries and in the scrape alike.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// The metric names of the samples in a scrape (`# TYPE` lines name counters without `_total`).
fn scraped_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| base_name(&l[..l.find(['{', ' ']).unwrap_or(l.len())]).to_string())
        .collect()
}

/// The values a query matches `label` against (`label="a"`, `label=~"a|b"`, `!=`, `!~`).
fn label_values(expr: &str, label: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (at, _) in expr.match_indices(label) {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = expr[at + label.len()..].trim_start();
        let Some(rest) = ["=~", "!~", "!=", "="].iter().find_map(|op| rest.strip_prefix(op)) else { continue };
        let Some(rest) = rest.trim_start().strip_prefix('"') else { continue };
        let value = &rest[..rest.find('"').expect("closing quote")];
        values.extend(value.split('|').map(str::to_string));
    }
    values
}

/// The label values a scrape carries for `label`.
fn scraped_label_values(scrape: &str, label: &str) -> BTreeSet<String> {
    scrape.lines().filter(|l| !l.starts_with('#')).flat_map(|l| label_values(l, label)).collect()
}

/// `()`, `{}` and `[]` nest properly outside string literals, and every string is closed.
fn check_brackets(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut chars = expr.chars().enumerate();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => loop {
                match chars.next() {
                    None => return Err(format!("string opened at {i} is not closed")),
                    Some((_, '\\')) if c != '`' => {
                        chars.next();
                    }
                    Some((_, q)) if q == c => break,
                    Some(_) => {}
                }
            },
            '(' | '{' | '[' => stack.push((i, c)),
            ')' | '}' | ']' => {
                let want = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                match stack.pop() {
                    Some((_, open)) if open == want => {}
                    Some((at, open)) => return Err(format!("{open:?} at {at} closed by {c:?} at {i}")),
                    None => return Err(format!("{c:?} at {i} closes nothing")),
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some((at, open)) => Err(format!("{open:?} at {at} is never closed")),
        None => Ok(()),
    }
}

/// A Prometheus duration: `30s`, `5m`, `1h30m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"].into_iter().find(|u| rest.starts_with(u)) else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

#[test]
fn the_checkers_catch_what_they_should() {
    assert!(check_brackets(r#"sum(rate(x{a="(",b=~"[\")"}[5m]))"#).is_ok());
    assert!(check_brackets("sum(rate(x[5m])").is_err());
    assert!(check_brackets("sum(rate(x[5m)))").is_err());
    assert!(check_brackets(r#"x{a="b}"#).is_err());
    assert_eq!(
        metric_names("rate(idemgate_a_total[5m]) / my_idemgate_b + idemgate_c_bucket{x=\"idemgate\"}"),
        BTreeSet::from(["idemgate_a_total".to_string(), "idemgate_c_bucket".to_string()])
    );
    assert_eq!(base_name("idemgate_x_seconds_bucket"), "idemgate_x_seconds");
    assert_eq!(label_values(r#"x{route="a", outcome =~ "b|c"}"#, "outcome"), ["b", "c"]);
    assert!(is_duration("5m") && is_duration("1h30m") && !is_duration("5") && !is_duration("m"));
}

#[test]
fn dashboard_has_a_title_variables_and_described_panels_with_queries() {
    let dashboard = dashboard();
    text(&dashboard, "title", "the dashboard");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable =
        |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no `{name}` variable"));
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    assert_eq!(variable("route")["query"], "label_values(idemgate_requests_total, route)");

    let mut ids = BTreeSet::new();
    let panels = panels(&dashboard);
    assert!(panels.iter().filter(|p| !is_row(p)).count() >= 10, "too few panels");
    for panel in panels {
        let title = text(panel, "title", "a panel");
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap_or(99), grid["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24 && grid["h"].as_u64().is_some(), "panel {title:?}: bad gridPos {grid}");
        if is_row(panel) {
            continue;
        }
        text(panel, "description", &format!("panel {title:?}"));
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?} must use the variable");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let what = format!("panel {title:?} target {}", target["refId"]);
            text(target, "expr", &what);
            text(target, "refId", &what);
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{what} must use the variable");
        }
    }
}

#[test]
fn alert_rules_have_every_field() {
    let rules = rules();
    let mut names = BTreeSet::new();
    for rule in alert_rules(&rules) {
        let name = text(rule, "alert", "a rule");
        assert!(names.insert(name.to_string()), "alert {name} defined twice");
        let what = format!("alert {name}");
        text(rule, "expr", &what);
        let wait = text(rule, "for", &what);
        assert!(is_duration(wait), "{what}: `for: {wait}` is not a duration");
        let severity = text(&rule["labels"], "severity", &what);
        assert!(["critical", "warning", "info"].contains(&severity), "{what}: severity {severity}");
        for field in ["summary", "description", "runbook"] {
            text(&rule["annotations"], field, &what);
        }
    }
    for expected in EXPECTED_ALERTS {
        assert!(names.contains(expected), "no alert {expected}");
    }
    // Alerts the dashboard's descriptions send an operator to exist.
    let dashboard = read(DASHBOARD);
    for (at, _) in dashboard.match_indices("Idemgate") {
        let len = dashboard[at..].find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(0);
        let mentioned = &dashboard[at..at + len];
        assert!(names.contains(mentioned), "the dashboard mentions {mentioned}, which is no alert");
    }
}

#[test]
fn every_alert_has_a_runbook_section() {
    let readme = read(README);
    for rule in alert_rules(&rules()) {
        let name = rule["alert"].as_str().unwrap();
        assert!(readme.lines().any(|l| l.trim() == format!("### {name}")), "{README} has no `### {name}` section");
    }
}

#[test]
fn every_query_has_balanced_brackets() {
    let queries = all_queries();
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    for (what, expr) in queries {
        assert!(!expr.trim().is_empty(), "{what}: empty query");
        if let Err(e) = check_brackets(&expr) {
            panic!("{what}: {e} in {expr}");
        }
    }
}

#[tokio::test]
async fn every_queried_metric_exists_in_a_scrape() {
    let app = TestApp::start().await;
    // And an async route, whose queue series exist from the start.
    let routes = format!(
        "{HEADER_ROUTE}  - name: inbox\n    match: {{ path: /inbox }}\n    key: {{ header: Idempotency-Key }}\n    \
         delivery: {{ mode: async }}\n"
    );
    let proxy = TestProxy::start(&app, &routes).await;
    let first = proxy.post("/hooks/a", &[("idempotency-key", "obs-1")], "{}").await;
    assert_eq!(first.status, 200);
    let duplicate = proxy.post("/hooks/a", &[("idempotency-key", "obs-1")], "{}").await;
    assert!(duplicate.replayed());
    proxy.post("/hooks/a", &[], "{}").await.assert_problem(400);
    assert_eq!(app.count("obs-1"), 1);

    let reply = proxy.admin.get("/metrics").await;
    assert_eq!(reply.status, 200);
    let scrape = String::from_utf8(reply.body.to_vec()).unwrap();
    let scraped = scraped_names(&scrape);
    let outcomes = scraped_label_values(&scrape, "outcome");
    let ops = scraped_label_values(&scrape, "op");
    let classes = scraped_label_values(&scrape, "class");
    assert!(outcomes.contains("replayed") && ops.contains("claim") && classes.contains("5xx"), "scrape:\n{scrape}");

    let mut missing = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for (what, expr) in all_queries() {
        for name in metric_names(&expr) {
            let base = base_name(&name).to_string();
            if !scraped.contains(&base) {
                missing.insert(format!("{name} (in {what})"));
            }
            queried.insert(base);
        }
        for (label, known) in [("outcome", &outcomes), ("op", &ops), ("class", &classes)] {
            for value in label_values(&expr, label) {
                assert!(known.contains(&value), "{what}: {label} {value:?} is not in the scrape ({known:?})");
            }
        }
    }
    assert!(missing.is_empty(), "metrics queried but not in /metrics: {missing:#?}\nscrape:\n{scrape}");
    // The files cover what idemgate exports (names from the scrape, not from a list kept here).
    let unqueried: Vec<_> = scraped.iter().filter(|n| n.starts_with("idemgate_") && !queried.contains(*n)).collect();
    assert!(unqueried.is_empty(), "metrics in /metrics that neither file shows: {unqueried:?}");
}
