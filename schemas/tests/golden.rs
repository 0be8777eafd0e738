//! The checked-in examples and JSON Schemas: examples decode and re-encode unchanged, validate
//! against the schemas, and the schemas match what the types generate.

use std::path::PathBuf;

use pvefleet_schemas::schema::{day_two_schemas, destroy_job_schema, event_schema, job_schema};
use pvefleet_schemas::{DecodeError, ErrorKind, Event, EventType, Job, Step};
use serde_json::Value;

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

const EVENTS: [&str; 4] = [
    "examples/event-step.json",
    "examples/event-log.json",
    "examples/event-complete.json",
    "examples/event-error.json",
];

#[test]
fn job_example_round_trips_unchanged_and_is_valid() {
    let bytes = read("examples/job-create.json");
    let job = Job::decode(&bytes).unwrap();
    assert_eq!(json(&job.encode()), json(&bytes));
    job.validate().unwrap();
    assert_eq!(job.deploy.files.len(), 2);
    assert_eq!(job.deploy.scripts.len(), 2);
    assert!(!job.deploy.packages.is_empty());
    assert!(!format!("{job:?}").contains("battery staple"));
}

#[test]
fn destroy_job_example_round_trips_unchanged_and_is_valid() {
    let bytes = read("examples/job-destroy.json");
    let job = pvefleet_schemas::DestroyJob::decode(&bytes).unwrap();
    assert_eq!(json(&job.encode()), json(&bytes));
    job.validate().unwrap();
    assert!(job.target.create_job.is_some() && job.target.vmid.is_some());
    assert!(Job::decode(&bytes).unwrap_err().to_string().contains("destroy"), "a create reader names the kind");
}

#[test]
fn day_two_examples_round_trip_unchanged_and_are_valid() {
    use pvefleet_schemas::{PowerJob, ResizeJob, UpdateJob};
    let update = read("examples/job-update.json");
    let job = UpdateJob::decode(&update).unwrap();
    assert_eq!(json(&job.encode()), json(&update));
    job.validate().unwrap();
    let resize = read("examples/job-resize.json");
    let job = ResizeJob::decode(&resize).unwrap();
    assert_eq!((json(&job.encode()), job.size_text()), (json(&resize), "20G".to_owned()));
    job.validate().unwrap();
    let power = read("examples/job-power.json");
    let job = PowerJob::decode(&power).unwrap();
    assert_eq!(json(&job.encode()), json(&power));
    job.validate().unwrap();
    for kind in ["update", "resize", "power", "snapshot", "rollback", "backup", "restore", "move"] {
        let (example, schema) = (format!("examples/job-{kind}.json"), format!("json-schema/{kind}-job.json"));
        let bytes = read(&example);
        // Read by its kind, as a plan request carries it: the same bytes back, valid.
        let job: pvefleet_schemas::DayTwoJob = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(job.kind().as_str(), kind);
        assert_eq!(json(&job.encode()), json(&bytes), "{example}");
        job.validate().unwrap_or_else(|e| panic!("{example}: {e}"));
        let validator = jsonschema::validator_for(&json(&read(&schema))).unwrap();
        let errors: Vec<String> = validator.iter_errors(&json(&bytes)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{example}: {errors:?}");
    }
}

#[test]
fn event_examples_round_trip_unchanged() {
    let mut kinds = Vec::new();
    for rel in EVENTS {
        let bytes = read(rel);
        let event = Event::decode(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(json(&event.encode()), json(&bytes), "{rel}");
        kinds.push(event.kind);
    }
    assert_eq!(kinds, [EventType::Step, EventType::Log, EventType::Complete, EventType::Error]);
    let error = Event::decode(&read("examples/event-error.json")).unwrap();
    let info = error.result.unwrap().error.unwrap();
    assert_eq!((info.kind, info.step), (ErrorKind::Deploy, Step::Deploying));
}

#[test]
fn checked_in_schemas_are_current() {
    let day_two = day_two_schemas().map(|(name, schema)| (format!("json-schema/{name}"), schema));
    for (rel, fresh) in [
        ("json-schema/job.json".to_owned(), job_schema()),
        ("json-schema/destroy-job.json".to_owned(), destroy_job_schema()),
        ("json-schema/event.json".to_owned(), event_schema()),
    ]
    .into_iter()
    .chain(day_two)
    {
        let rel = rel.as_str();
        if std::env::var_os("PVEFLEET_BLESS").is_some() {
            std::fs::write(path(rel), &fresh).unwrap();
        }
        let on_disk = String::from_utf8(read(rel)).unwrap();
        assert!(
            on_disk == fresh,
            "schemas/{rel} is stale: regenerate it with `just schemas` (PVEFLEET_BLESS=1 cargo test -p pvefleet-schemas)"
        );
    }
}

#[test]
fn examples_validate_against_the_schemas() {
    let job = jsonschema::validator_for(&json(&read("json-schema/job.json"))).unwrap();
    let example = json(&read("examples/job-create.json"));
    let errors: Vec<String> = job.iter_errors(&example).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");

    let event = jsonschema::validator_for(&json(&read("json-schema/event.json"))).unwrap();
    for rel in EVENTS {
        let example = json(&read(rel));
        let errors: Vec<String> = event.iter_errors(&example).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{rel}: {errors:?}");
    }

    let destroy = jsonschema::validator_for(&json(&read("json-schema/destroy-job.json"))).unwrap();
    let example = json(&read("examples/job-destroy.json"));
    let errors: Vec<String> = destroy.iter_errors(&example).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");

    // The schema is strict where the types are: a typo'd container field is refused.
    let mut typo = json(&read("examples/job-create.json"));
    typo["container"]["memroy"] = Value::from(1024);
    assert!(!job.is_valid(&typo));
}

#[test]
fn unknown_version_and_kind_are_named() {
    let mut job = json(&read("examples/job-create.json"));
    job["v"] = Value::from(2);
    let err = Job::decode(&serde_json::to_vec(&job).unwrap()).unwrap_err();
    assert!(matches!(err, DecodeError::Version { .. }), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");

    job["v"] = Value::from(1);
    job["kind"] = Value::from("resize");
    let err = Job::decode(&serde_json::to_vec(&job).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "unknown job kind `resize`; this build knows create");

    let mut event = json(&read("examples/event-step.json"));
    event["type"] = Value::from("exploded");
    let err = Event::decode(&serde_json::to_vec(&event).unwrap()).unwrap_err();
    assert!(err.to_string().contains("unknown event type `exploded`"), "{err}");

    assert!(matches!(Job::decode(b"{\"kind\":\"create\"}").unwrap_err(), DecodeError::NoVersion));
    assert!(matches!(Job::decode(b"not json").unwrap_err(), DecodeError::NotJson(_)));
}

#[test]
fn a_bad_field_is_named_by_its_path() {
    let mut job = json(&read("examples/job-create.json"));
    job["container"]["swap"] = Value::from(-1);
    let err = Job::decode(&serde_json::to_vec(&job).unwrap()).unwrap_err();
    let DecodeError::Field { field, .. } = &err else { panic!("{err}") };
    assert_eq!(field, "container.swap");

    job["container"]["swap"] = Value::from(0);
    job["container"]["memory"] = Value::from(0);
    job["container"]["hostname"] = Value::from("bad_name");
    job["deploy"]["files"][1]["path"] = Value::from("relative/path");
    let job = Job::decode(&serde_json::to_vec(&job).unwrap()).unwrap();
    let fields: Vec<_> = job.validate().unwrap_err().fields().map(str::to_owned).collect();
    assert_eq!(fields, ["container.hostname", "container.memory", "deploy.files[1].path"]);

    let mut node = json(&read("examples/job-create.json"));
    node["node"] = Value::from("pve.1");
    let err = Job::decode(&serde_json::to_vec(&node).unwrap()).unwrap_err();
    assert!(err.to_string().contains("node") && err.to_string().contains("NATS"), "{err}");
}
