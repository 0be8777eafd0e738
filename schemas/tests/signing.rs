//! The signed bytes cover everything: for a full example job, any change to any field (a value
//! changed, a field taken away, one added, at any depth, `auth`'s own included) makes the
//! signature fail, and the unchanged job verifies.

use proptest::prelude::*;
use pvefleet_schemas::signing::{Identity, SignerId, SignerKey, VerifyError, verify};
use serde_json::Value;

fn example_job() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("job-create.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The path of every value in `v` (object keys and array indexes), the root excluded.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                here.push(k.clone());
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                here.push(i.to_string());
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Array(items) => &mut items[k.parse::<usize>().unwrap()],
        other => &mut other[k.as_str()],
    })
}

/// One change at `path`: 0 replaces the value, 1 removes it, 2 adds a field beside it (in an
/// object) or an item after it (in an array).
fn change(v: &mut Value, path: &[String], how: u8, new: &Value) {
    let (last, parent) = path.split_last().unwrap();
    let parent = at(v, parent);
    match (how, parent) {
        (1, Value::Object(map)) => {
            map.remove(last);
        }
        (1, Value::Array(items)) => {
            items.remove(last.parse::<usize>().unwrap());
        }
        (2, Value::Object(map)) => {
            map.insert(format!("{last}_x"), new.clone());
        }
        (2, Value::Array(items)) => items.insert(last.parse::<usize>().unwrap() + 1, new.clone()),
        (_, parent) => {
            let slot = match parent {
                Value::Array(items) => &mut items[last.parse::<usize>().unwrap()],
                other => &mut other[last.as_str()],
            };
            // A value the slot surely does not hold already.
            *slot = if slot == new { Value::String(format!("{new}!")) } else { new.clone() };
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_change_to_any_field_breaks_the_signature(
        pick in any::<prop::sample::Index>(),
        how in 0u8..3,
        new in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-z0-9 ]{0,12}".prop_map(Value::String),
        ],
    ) {
        let me = Identity::generate();
        let key = me.public();
        let known = |id: &SignerId| -> Option<SignerKey> { (id == &key.id()).then_some(key) };
        let mut signed = example_job();
        me.sign(&mut signed, 30).unwrap();
        let now = time::OffsetDateTime::now_utc();
        prop_assert_eq!(verify(&signed, known, now), Ok(key));

        let mut all = Vec::new();
        paths(&signed, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        let mut changed = signed.clone();
        change(&mut changed, &path, how, &new);
        prop_assume!(changed != signed);
        let refused = verify(&changed, known, now);
        prop_assert!(
            matches!(refused, Err(VerifyError::BadSignature(_) | VerifyError::Malformed(_) | VerifyError::UnknownSigner(_) | VerifyError::Unsigned)),
            "{:?} at {:?} (how {}) still verified: {:?}", new, path, how, refused
        );
    }
}
