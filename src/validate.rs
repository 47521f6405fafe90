//! A manifest checked against the CRD's schema the way the API server checks
//! it at admission, for the commands that read manifests from files
//! (`regcred mint -f`): types, required fields, unknown fields, enums,
//! patterns, lengths, item counts and bounds, and the CEL rules
//! (`x-kubernetes-validations`: exactly one source, https unless allowed,
//! duration bounds, …), from the same generated schema that `crds/` holds.
//! Names of referenced Secrets, for one, are DNS-1123 subdomains there, so
//! no name can be a path.
//!
//! Messages name the field and the rule, never the value (a header value
//! may be a token).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

/// Check a RegistryCredential (`cluster`: a ClusterRegistryCredential)
/// manifest. Every problem found, each naming its field.
pub fn manifest(v: &Value, cluster: bool) -> Result<(), Vec<String>> {
    let crd = if cluster { crate::crdgen::cluster_crd() } else { crate::crdgen::crd() };
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default().to_string();
    let group = crd["spec"]["group"].as_str().unwrap_or_default().to_string();
    let mut errs = Vec::new();
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let version = api_version.strip_prefix(&format!("{group}/")).unwrap_or_default();
    let Some(served) = crd["spec"]["versions"].as_array().and_then(|vs| vs.iter().find(|x| x["name"] == version)) else {
        let names: Vec<&str> = crd["spec"]["versions"].as_array().into_iter().flatten().filter_map(|x| x["name"].as_str()).collect();
        return Err(vec![format!("apiVersion: must be {group}/{}", names.join(" or "))]);
    };
    if v.get("kind").and_then(Value::as_str) != Some(kind.as_str()) {
        errs.push(format!("kind: must be {kind}"));
    }
    if let Some(name) = v.pointer("/metadata/name") {
        match name.as_str() {
            Some(n) if is_dns1123_subdomain(n) => {}
            _ => errs.push("metadata.name: must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253)".into()),
        }
    }
    let schema = &served["schema"]["openAPIV3Schema"];
    // (status is the operator's: the API server drops it on create)
    match v.get("spec") {
        Some(spec) => walk(spec, &schema["properties"]["spec"], "spec", &mut errs),
        None => errs.push("spec: Required value".into()),
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// What the API server accepts as the name of a Secret (and most objects).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

const MAX_DEPTH: usize = 64;

fn walk(v: &Value, schema: &Value, path: &str, errs: &mut Vec<String>) {
    if path.matches('.').count() > MAX_DEPTH || errs.len() > 100 {
        return;
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let before = errs.len();
    walk_schema(v, schema, path, preserve, errs);
    // A node's CEL rules run once its value (and all below it) has the
    // right shape, never on a value of the wrong type.
    if errs.len() == before {
        rules(v, schema, path, errs);
    }
}

/// The `x-kubernetes-validations` of one schema node, `self` being `v`.
fn rules(v: &Value, schema: &Value, path: &str, errs: &mut Vec<String>) {
    for r in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let Some(rule) = r.get("rule").and_then(Value::as_str) else { continue };
        let at = format!("{path}{}", r.get("fieldPath").and_then(Value::as_str).unwrap_or(""));
        let program = match cel::Program::compile(rule) {
            Ok(p) => p,
            Err(_) => {
                errs.push(format!("{at}: the schema's rule does not compile: {rule}"));
                continue;
            }
        };
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("self", to_cel(v));
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => match r.get("message").and_then(Value::as_str) {
                Some(m) => errs.push(format!("{at}: {m}")),
                None => errs.push(format!("{at}: failed rule: {rule}")),
            },
            _ => errs.push(format!("{at}: the rule could not be evaluated: {rule}")),
        }
    }
}

/// A JSON value as CEL sees it (integers as `int`, as the API server does).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => n.as_i64().map(cel::Value::Int).unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> = m.iter().map(|(k, x)| (k.clone(), to_cel(x))).collect();
            cel::Value::Map(map.into())
        }
    }
}

fn walk_schema(v: &Value, schema: &Value, path: &str, preserve: bool, errs: &mut Vec<String>) {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errs.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{path}: must be of type {}", ty.unwrap_or("?")));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            errs.push(format!("{path}: must be one of {}", list.join(", ")));
        }
    }
    let n = |k: &str| schema.get(k).and_then(Value::as_u64);
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(m) = n("minLength").filter(|m| len < *m) {
                errs.push(format!("{path}: must be at least {m} characters"));
            }
            if let Some(m) = n("maxLength").filter(|m| len > *m) {
                errs.push(format!("{path}: must be at most {m} characters"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if re.is_match(s) => {}
                    Ok(_) => errs.push(format!("{path}: must match '{p}'")),
                    Err(_) => errs.push(format!("{path}: the schema's pattern does not compile")),
                }
            }
        }
        Value::Number(x) => {
            let f = x.as_f64().unwrap_or(0.0);
            if let Some(m) = schema.get("minimum").and_then(Value::as_f64).filter(|m| f < *m) {
                errs.push(format!("{path}: must be at least {m}"));
            }
            if let Some(m) = schema.get("maximum").and_then(Value::as_f64).filter(|m| f > *m) {
                errs.push(format!("{path}: must be at most {m}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(m) = n("minItems").filter(|m| len < *m) {
                errs.push(format!("{path}: must have at least {m} items"));
            }
            if let Some(m) = n("maxItems").filter(|m| len > *m) {
                errs.push(format!("{path}: must have at most {m} items"));
                return;
            }
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    walk(x, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            if let Some(m) = n("maxProperties").filter(|m| map.len() as u64 > *m) {
                errs.push(format!("{path}: must have at most {m} entries"));
                return;
            }
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    errs.push(format!("{path}.{r}: Required value"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in map {
                let sub = format!("{path}.{k}");
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk(x, s, &sub, errs);
                } else if let Some(s) = extra {
                    walk(x, s, &format!("{path}[{k:?}]"), errs);
                } else if !preserve {
                    errs.push(format!("{sub}: unknown field"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn cr(source: Value) -> Value {
        json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "local"}, "spec": {"source": source}})
    }

    #[test]
    fn a_secret_name_that_is_a_path_is_refused_naming_the_field() {
        for name in ["../../root/.aws", "/etc", "a/b", "..", "UPPER"] {
            let v = cr(json!({"basic": {"secretRef": {"name": name}, "registries": ["r.example.com"]}}));
            let errs = manifest(&v, false).unwrap_err();
            assert!(errs.iter().any(|e| e.starts_with("spec.source.basic.secretRef.name: must match")), "{name}: {errs:?}");
            assert!(!errs.iter().any(|e| e.contains(name)), "the value is echoed: {errs:?}");
        }
        let ok = cr(json!({"basic": {"secretRef": {"name": "robot.pull-1"}, "registries": ["r.example.com"]}}));
        assert_eq!(manifest(&ok, false), Ok(()));
    }

    #[test]
    fn the_crds_cel_rules_are_applied() {
        let basic = json!({"secretRef": {"name": "s"}, "registries": ["r.example.com"]});
        let cases = [
            (json!({"source": {"basic": basic, "oauth2": {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}, "registries": ["r.example.com"]}}}), "spec.source: "),
            (json!({"source": {"basic": basic}, "renewBefore": "9000h"}), "spec.renewBefore: "),
            (json!({"source": {"oauth2": {"tokenURL": "http://a.example/t", "clientSecretRef": {"name": "c"}, "registries": ["r.example.com"]}}}), "must use https://"),
            (json!({"source": {"ecr": {"region": "eu-west-1", "webIdentity": {"serviceAccountName": "sa"}}}}), "spec.source.ecr: "),
            (json!({"source": {"basic": {"secretRef": {"name": "s"}, "registries": ["r.example.com"], "refreshInterval": "30s"}}}), "refreshInterval"),
        ];
        for (spec, want) in cases {
            let v = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "x"}, "spec": spec});
            let errs = manifest(&v, false).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(want)), "{want} not in {errs:?}");
            assert!(!errs.iter().any(|e| e.contains("could not be evaluated") || e.contains("does not compile")), "{errs:?}");
        }
    }

    #[test]
    fn every_rule_of_both_crds_compiles() {
        fn collect(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for r in m.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
                        out.push(r["rule"].as_str().unwrap().to_string());
                    }
                    m.values().for_each(|x| collect(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
                _ => {}
            }
        }
        let mut rules = Vec::new();
        collect(&crate::crdgen::crd(), &mut rules);
        collect(&crate::crdgen::cluster_crd(), &mut rules);
        assert!(rules.len() > 40, "{}", rules.len());
        for r in &rules {
            assert!(cel::Program::compile(r).is_ok(), "{r}");
        }
    }

    #[test]
    fn every_example_manifest_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = Value::deserialize(doc).unwrap();
                let cluster = match v["kind"].as_str() {
                    Some("RegistryCredential") => false,
                    Some("ClusterRegistryCredential") => true,
                    _ => continue,
                };
                seen += 1;
                assert_eq!(manifest(&v, cluster), Ok(()), "{}: {}", path.display(), v["metadata"]["name"]);
            }
        }
        assert!(seen >= 5, "only {seen} example credentials");
    }

    #[test]
    fn types_required_unknown_and_bounds() {
        let v = cr(json!({"oauth2": {"tokenURL": 7, "registries": [], "surprise": true}}));
        let errs = manifest(&v, false).unwrap_err();
        for want in ["spec.source.oauth2.tokenURL: must be of type string", "spec.source.oauth2.clientSecretRef: Required value", "spec.source.oauth2.surprise: unknown field"] {
            assert!(errs.iter().any(|e| e == want), "{want} not in {errs:?}");
        }
        let mut v = cr(json!({"basic": {"secretRef": {"name": "s"}, "registries": ["r.example.com"]}}));
        v["kind"] = json!("Secret");
        assert!(manifest(&v, false).unwrap_err().contains(&"kind: must be RegistryCredential".to_string()));
        v["apiVersion"] = json!("v1");
        assert!(manifest(&v, false).unwrap_err()[0].starts_with("apiVersion: must be regcred.dev/"));
        assert!(is_dns1123_subdomain("a.b-c"));
        for bad in ["", "-a", "a-", "a..b", ".a", "a_b", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }
}
