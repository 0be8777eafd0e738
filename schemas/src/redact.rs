//! Credentials out of sight: a URL is printed with its password replaced by `***`, wherever
//! it is printed (connect errors, retry logs, start-up lines).

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; anything else as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    // The authority ends at the first `/`, `?` or `#`; a password may hold `@`, so the last
    // `@` inside the authority ends the user info.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..]),
        // A bare user (or token) in the URL is a credential too.
        None => format!("{}***{}", &url[..scheme_end + 3], &rest[at..]),
    }
}

/// Each of a comma-separated list of URLs, redacted.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',').map(|u| redact_url(u.trim())).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("nats://agent-pve1:s3cr3t@nats1:4222"), "nats://agent-pve1:***@nats1:4222");
        assert_eq!(redact_url("nats://u:p@ss:w@rd@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("postgres://user:secret@host/db?x=a@b"), "postgres://user:***@host/db?x=a@b");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("h:4222"), "h:4222");
        assert_eq!(redact_urls("nats://a:1@h1:4222, nats://h2:4222"), "nats://a:***@h1:4222,nats://h2:4222");
    }
}
