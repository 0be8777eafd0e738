//! pvefleet-agent: one per Proxmox node; takes the node's jobs from JetStream and creates
//! containers through the node's Proxmox API, publishing every step as an event.

pub mod config;
pub mod proxmox;
