//! The Proxmox VE API client.

pub mod tls;
