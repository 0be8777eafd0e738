//! NATS operator mode (JWT accounts, a `.creds` file per user): the agent signs in with its
//! file and reads it again at every reconnect, so a user rotated on disk (the old one revoked
//! in the account) is taken without restarting the agent (issue 20).

use std::net::Ipv4Addr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use nkeys::KeyPair;
use pvefleet_testbed::agent::{Agent, AgentOptions};
use pvefleet_testbed::jobs::{create_job, result_of, run_to_end};
use pvefleet_testbed::{FakePve, FakePveOptions, NatsServer, TestDir, free_port, init_tracing};

/// A NATS JWT: `issuer` signs claims about `subject`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = B64URL.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({"jti": format!("{name}{now}"), "iat": now, "iss": issuer.public_key(),
        "name": name, "sub": subject, "nats": nats});
    let payload = B64URL.encode(claims.to_string());
    let signature = issuer.sign(format!("{header}.{payload}").as_bytes()).expect("signs");
    format!("{header}.{payload}.{}", B64URL.encode(signature))
}

fn account_jwt(operator: &KeyPair, account: &KeyPair, revoked: &[&str]) -> String {
    let revocations: serde_json::Map<String, serde_json::Value> = revoked
        .iter()
        .map(|u| ((*u).to_owned(), serde_json::json!(time::OffsetDateTime::now_utc().unix_timestamp() + 1)))
        .collect();
    jwt(
        operator,
        &account.public_key(),
        "FLEET",
        serde_json::json!({"type": "account", "version": 2, "revocations": revocations,
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
                "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
    )
}

fn creds(account: &KeyPair, user: &KeyPair, name: &str) -> String {
    let token = jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1}),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("a seed")
    )
}

#[tokio::test]
async fn an_agent_reads_its_creds_file_again_when_it_reconnects() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("creds-rotate");
    let (operator, system, account) = (KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_account());
    let (admin, first, second) = (KeyPair::new_user(), KeyPair::new_user(), KeyPair::new_user());
    let port = free_port("127.0.0.1");
    let config = dir.path().join("operator.conf");
    let write_config = |revoked: &[&str]| {
        let system_jwt =
            jwt(&operator, &system.public_key(), "SYS", serde_json::json!({"type": "account", "version": 2}));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nserver_name: creds\njetstream {{ store_dir: {store:?} }}\noperator: {op}\n\
                 system_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {acc_jwt}\n}}\n",
                store = dir.path().join("store"),
                op = jwt(
                    &operator,
                    &operator.public_key(),
                    "pvefleet",
                    serde_json::json!({"type": "operator", "version": 2})
                ),
                sys = system.public_key(),
                acc = account.public_key(),
                acc_jwt = account_jwt(&operator, &account, revoked),
            ),
        )
    };
    write_config(&[])?;
    let mut nats = NatsServer::from_config(&dir, "nats-operator", config.clone(), port, Vec::new())?;
    nats.ready().await?;
    let admin_creds = dir.path().join("admin.creds");
    std::fs::write(&admin_creds, creds(&account, &admin, "admin"))?;
    let url = nats.url();
    let connect = || async {
        anyhow::Ok(async_nats::jetstream::new(
            pvefleet_schemas::creds::options(&admin_creds).map_err(anyhow::Error::msg)?.connect(url.clone()).await?,
        ))
    };
    let js = connect().await?;
    pvefleet_testbed::jobs::ensure_streams(&js, &["pve1"]).await?;
    pvefleet_testbed::trust::enroll(&js, dir.path(), &["pve1"]).await?;
    let pve = FakePve::start(&dir, FakePveOptions::default()).await?;

    // The agent signs in as `first`, from its file.
    let agent_creds = dir.path().join("agent.creds");
    std::fs::write(&agent_creds, creds(&account, &first, "agent-first"))?;
    let _agent = Agent::start(
        &dir,
        std::slice::from_ref(&url),
        &pve,
        AgentOptions {
            env: vec![("PVEFLEET_NATS_CREDS".into(), agent_creds.display().to_string())],
            ..AgentOptions::node("pve1")
        },
    )?;
    let job = create_job("pve1", "creds-1", Ipv4Addr::new(127, 0, 0, 14));
    assert!(result_of(&run_to_end(&js, &job).await?).success);

    // The operator rotates it: `second` in the file, `first` revoked; the server restarts.
    std::fs::write(&agent_creds, creds(&account, &second, "agent-second"))?;
    write_config(&[&first.public_key()])?;
    nats.kill();
    nats.restart().await?;
    let js = connect().await?;
    let job = create_job("pve1", "creds-2", Ipv4Addr::new(127, 0, 0, 15));
    let events = run_to_end(&js, &job).await?;
    assert!(result_of(&events).success, "the agent came back as `second`: {events:#?}");
    dir.pass();
    Ok(())
}
