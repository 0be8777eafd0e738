//! Certificate authorities of the test's own, made with OpenSSL's command line: a CA and one
//! server certificate for 127.0.0.1 and localhost (serverAuth and clientAuth), and a second CA
//! with a certificate for cluster routes, for NATS servers run with TLS as the shipped configs do.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::dir::TestDir;

#[derive(Debug, Clone)]
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (Debian package openssl; `bash scripts/bootstrap` installs it)")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestCa {
    /// Makes the CA and the server certificate in `<test dir>/tls`, with the names the shipped
    /// configs use (`ca.pem`, `server.pem`, `server.key`).
    pub fn make(dir: &TestDir) -> anyhow::Result<Self> {
        let home = dir.sub("tls");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca =
            vec!["req", "-x509", "-days", "2", "-subj", "/CN=pvefleet test CA", "-keyout", "ca.key", "-out", "ca.pem"];
        ca.extend(ec);
        openssl(&ca, &home)?;
        let mut csr = vec!["req", "-subj", "/CN=nats", "-keyout", "server.key", "-out", "server.csr"];
        csr.extend(ec);
        openssl(&csr, &home)?;
        std::fs::write(
            home.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
            &home,
        )?;
        // Cluster routes have a CA of their own (as the shipped cluster configs want), and a
        // certificate from it for 127.0.0.1.
        let mut route_ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=pvefleet test route CA",
            "-keyout",
            "route-ca.key",
            "-out",
            "route-ca.pem",
        ];
        route_ca.extend(ec);
        openssl(&route_ca, &home)?;
        let mut csr = vec!["req", "-subj", "/CN=route", "-keyout", "route.key", "-out", "route.csr"];
        csr.extend(ec);
        openssl(&csr, &home)?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "route.csr",
                "-CA",
                "route-ca.pem",
                "-CAkey",
                "route-ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "route.pem",
            ],
            &home,
        )?;
        Ok(Self { ca: home.join("ca.pem"), cert: home.join("server.pem"), key: home.join("server.key"), dir: home })
    }
}
