//! Every decoder fed arbitrary bytes and arbitrary JSON shaped like its message: none panics,
//! and an error about a message that is JSON of the right version and kind names the field.

use proptest::prelude::*;
use pvefleet_schemas::{CancelRequest, Checkpoint, DecodeError, Event, Heartbeat, Job, VmidReservation};
use serde_json::Value;

fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every decoder, on the same bytes: none may panic.
fn decode_all(bytes: &[u8]) {
    let _ = Job::decode(bytes).map(|j| j.validate());
    let _ = Event::decode(bytes);
    let _ = Heartbeat::decode(bytes);
    let _ = Checkpoint::decode(bytes);
    let _ = CancelRequest::decode(bytes);
    let _ = VmidReservation::decode(bytes);
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The dotted paths (`container.memory`, `deploy.files[0].mode`) of every value in `v`.
fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                out.push(p.clone());
                paths(child, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}[{i}]");
                out.push(p.clone());
                paths(child, &p, out);
            }
        }
        _ => {}
    }
}

/// `v` with the value at `path` replaced (`None`: removed).
fn replaced(v: &Value, path: &str, with: Option<Value>) -> Value {
    let mut v = v.clone();
    let pointer = format!(
        "/{}",
        path.replace('[', ".").replace(']', "").split('.').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
    );
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    if let Some(target) = v.pointer_mut(if parent.is_empty() { "" } else { parent }) {
        match (target, with) {
            (Value::Object(m), Some(new)) => {
                m.insert(last.to_owned(), new);
            }
            (Value::Object(m), None) => {
                m.remove(last);
            }
            (Value::Array(a), Some(new)) => {
                if let Ok(i) = last.parse::<usize>() {
                    a[i] = new;
                }
            }
            (Value::Array(a), None) => {
                if let Ok(i) = last.parse::<usize>() {
                    a.remove(i);
                }
            }
            _ => {}
        }
    }
    v
}

/// An error about a changed field names that field, or one on its path.
fn names_the_field(err: &DecodeError, path: &str) -> bool {
    match err {
        DecodeError::Field { field, .. } => {
            let field = field.trim_start_matches('.');
            !field.is_empty() && (path.starts_with(field) || field.starts_with(path))
        }
        // `v` and the kind are read first, with errors of their own.
        DecodeError::NoVersion | DecodeError::Version { .. } => path == "v",
        DecodeError::Kind { .. } => path == "kind" || path == "type",
        DecodeError::NotJson(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in any_json()) {
        decode_all(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn a_job_with_one_field_changed_decodes_or_names_that_field(pick in any::<prop::sample::Index>(), value in any_json(), drop in any::<bool>()) {
        let job = example("job-create.json");
        let mut all = Vec::new();
        paths(&job, "", &mut all);
        let path = pick.get(&all).clone();
        let changed = replaced(&job, &path, (!drop).then_some(value));
        let bytes = serde_json::to_vec(&changed).unwrap();
        decode_all(&bytes);
        if let Err(e) = Job::decode(&bytes) {
            prop_assert!(names_the_field(&e, &path), "changed `{}`, error: {}", path, e);
        }
    }

    #[test]
    fn an_event_with_one_field_changed_decodes_or_names_that_field(pick in any::<prop::sample::Index>(), value in any_json(), drop in any::<bool>(), which in 0usize..5) {
        let names = ["event-complete.json", "event-error.json", "event-log.json", "event-step.json", "event-step.json"];
        let event = example(names[which]);
        let mut all = Vec::new();
        paths(&event, "", &mut all);
        let path = pick.get(&all).clone();
        let changed = replaced(&event, &path, (!drop).then_some(value));
        let bytes = serde_json::to_vec(&changed).unwrap();
        decode_all(&bytes);
        if let Err(e) = Event::decode(&bytes) {
            prop_assert!(names_the_field(&e, &path), "changed `{}`, error: {}", path, e);
        }
    }
}
