//! The usual start of an integration test: a temp dir, a nats-server with pvefleet's streams,
//! fakepve with the nodes asked for, and agents on demand.

use crate::agent::{Agent, AgentOptions};
use crate::{FakePve, FakePveOptions, NatsServer, TestDir};

#[derive(Debug)]
pub struct Fleet {
    pub dir: TestDir,
    pub nats: NatsServer,
    pub pve: FakePve,
    /// A JetStream context on the test's server.
    pub js: async_nats::jetstream::Context,
}

impl Fleet {
    pub async fn start(name: &str, nodes: &[&str]) -> anyhow::Result<Self> {
        crate::init_tracing();
        let dir = TestDir::new(name);
        let nats = NatsServer::start(&dir).await?;
        let pve = FakePve::start(
            &dir,
            FakePveOptions { nodes: nodes.iter().map(|n| n.to_string()).collect(), ..Default::default() },
        )
        .await?;
        let js = nats.jetstream().await?;
        crate::jobs::ensure_streams(&js, nodes).await?;
        let mut enrolled: Vec<&str> = crate::trust::BED_NODES.to_vec();
        enrolled.extend(nodes.iter().filter(|n| !crate::trust::BED_NODES.contains(n)));
        crate::trust::enroll(&js, dir.path(), &enrolled).await?;
        Ok(Self { dir, nats, pve, js })
    }

    /// An agent for `node` with the test defaults.
    pub fn agent(&self, node: &str) -> anyhow::Result<Agent> {
        self.agent_with(AgentOptions::node(node))
    }

    pub fn agent_with(&self, opts: AgentOptions) -> anyhow::Result<Agent> {
        Agent::start(&self.dir, &[self.nats.url()], &self.pve, opts)
    }
}
