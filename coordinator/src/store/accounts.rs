//! The web view's users and sessions in the store.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::{Store, session, user};

/// What a login attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok(user::Model),
    /// Unknown user, wrong password or disabled: the same answer for all three.
    Refused,
    /// Too many wrong passwords: no login until then (RFC 3339).
    Locked(String),
}

/// Wrong passwords in a row that lock a user, and for how long.
pub const LOCK_AFTER: i32 = 5;
pub const LOCK_FOR: time::Duration = time::Duration::minutes(15);

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn text(t: time::OffsetDateTime) -> String {
    pvefleet_schemas::Timestamp(t).to_string()
}

fn parse(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

impl Store {
    pub async fn users(&self) -> anyhow::Result<Vec<user::Model>> {
        Ok(user::Entity::find().order_by_asc(user::Column::Name).all(&self.db).await?)
    }

    pub async fn has_users(&self) -> anyhow::Result<bool> {
        use sea_orm::PaginatorTrait as _;
        Ok(user::Entity::find().count(&self.db).await? > 0)
    }

    pub async fn user(&self, name: &str) -> anyhow::Result<Option<user::Model>> {
        Ok(user::Entity::find_by_id(name.to_owned()).one(&self.db).await?)
    }

    /// Adds a user; `false` when the name is taken.
    pub async fn add_user(&self, name: &str, role: &str, password_hash: &str) -> anyhow::Result<bool> {
        if self.user(name).await?.is_some() {
            return Ok(false);
        }
        let at = text(now());
        user::ActiveModel {
            name: Set(name.to_owned()),
            role: Set(role.to_owned()),
            password_hash: Set(password_hash.to_owned()),
            disabled: Set(false),
            failed_logins: Set(0),
            locked_until: Set(None),
            created_at: Set(at.clone()),
            updated_at: Set(at),
        }
        .insert(&self.db)
        .await?;
        Ok(true)
    }

    /// Sets a user's password (and unlocks them); every session of theirs ends. `false` when
    /// there is no such user.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> anyhow::Result<bool> {
        let Some(found) = self.user(name).await? else { return Ok(false) };
        let mut row: user::ActiveModel = found.into();
        row.password_hash = Set(password_hash.to_owned());
        row.failed_logins = Set(0);
        row.locked_until = Set(None);
        row.updated_at = Set(text(now()));
        row.update(&self.db).await?;
        self.end_sessions_of(name).await?;
        Ok(true)
    }

    /// Disables (or enables) a user; disabling ends every session of theirs at once.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> anyhow::Result<bool> {
        let Some(found) = self.user(name).await? else { return Ok(false) };
        let mut row: user::ActiveModel = found.into();
        row.disabled = Set(disabled);
        row.updated_at = Set(text(now()));
        row.update(&self.db).await?;
        if disabled {
            self.end_sessions_of(name).await?;
        }
        Ok(true)
    }

    /// Checks a login: a wrong password counts towards the lock; a good one clears the count.
    /// A lock that ran out starts the count again. The count goes up in one statement, so a
    /// burst of tries at once gets no more than [`LOCK_AFTER`] guesses between them.
    pub async fn login(&self, name: &str, password: &str) -> anyhow::Result<Login> {
        let Some(found) = self.user(name).await? else {
            crate::users::verify_off_runtime(password.to_owned(), crate::users::decoy().to_owned()).await;
            return Ok(Login::Refused);
        };
        if let Some(until) = found.locked_until.as_deref() {
            if parse(until).is_some_and(|u| u > now()) {
                return Ok(Login::Locked(until.to_owned()));
            }
            // Its lock ran out: a fresh count.
            user::Entity::update_many()
                .col_expr(user::Column::FailedLogins, sea_orm::sea_query::Expr::value(0))
                .col_expr(user::Column::LockedUntil, sea_orm::sea_query::Expr::value(Option::<String>::None))
                .filter(user::Column::Name.eq(name.to_owned()))
                .filter(user::Column::LockedUntil.eq(until.to_owned()))
                .exec(&self.db)
                .await?;
        }
        let good = crate::users::verify_off_runtime(password.to_owned(), found.password_hash.clone()).await;
        if good {
            user::Entity::update_many()
                .col_expr(user::Column::FailedLogins, sea_orm::sea_query::Expr::value(0))
                .filter(user::Column::Name.eq(name.to_owned()))
                .exec(&self.db)
                .await?;
            return Ok(if found.disabled { Login::Refused } else { Login::Ok(found) });
        }
        user::Entity::update_many()
            .col_expr(user::Column::FailedLogins, sea_orm::sea_query::Expr::col(user::Column::FailedLogins).add(1))
            .filter(user::Column::Name.eq(name.to_owned()))
            .exec(&self.db)
            .await?;
        let failed = self.user(name).await?.map_or(0, |u| u.failed_logins);
        if failed < LOCK_AFTER {
            return Ok(Login::Refused);
        }
        let until = text(now() + LOCK_FOR);
        user::Entity::update_many()
            .col_expr(user::Column::LockedUntil, sea_orm::sea_query::Expr::value(until.clone()))
            .filter(user::Column::Name.eq(name.to_owned()))
            .exec(&self.db)
            .await?;
        Ok(Login::Locked(until))
    }

    /// A new session for `user`, valid for `hours`: stored by the SHA-256 of its cookie.
    pub async fn open_session(&self, user: &str, token_hash: &str, csrf: &str, hours: i64) -> anyhow::Result<()> {
        let at = now();
        session::ActiveModel {
            token_hash: Set(token_hash.to_owned()),
            user_name: Set(user.to_owned()),
            csrf: Set(csrf.to_owned()),
            created_at: Set(text(at)),
            expires_at: Set(text(at + time::Duration::hours(hours))),
            revoked_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// The live session with this cookie hash and its user: not revoked, not expired, its
    /// user there and not disabled.
    pub async fn session(&self, token_hash: &str) -> anyhow::Result<Option<(session::Model, user::Model)>> {
        let Some(found) = session::Entity::find_by_id(token_hash.to_owned()).one(&self.db).await? else {
            return Ok(None);
        };
        if found.revoked_at.is_some() || parse(&found.expires_at).is_none_or(|e| e <= now()) {
            return Ok(None);
        }
        let Some(user) = self.user(&found.user_name).await?.filter(|u| !u.disabled) else { return Ok(None) };
        Ok(Some((found, user)))
    }

    /// Ends one session (logout).
    pub async fn end_session(&self, token_hash: &str) -> anyhow::Result<()> {
        session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, sea_orm::sea_query::Expr::value(text(now())))
            .filter(session::Column::TokenHash.eq(token_hash.to_owned()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ends every session of `user`.
    pub async fn end_sessions_of(&self, user: &str) -> anyhow::Result<u64> {
        let done = session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, sea_orm::sea_query::Expr::value(text(now())))
            .filter(session::Column::UserName.eq(user.to_owned()))
            .filter(session::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::store::database_url(Some(&dir.path().join("s.db").display().to_string())).unwrap();
        (dir, Store::open(&url).await.unwrap())
    }

    #[tokio::test]
    async fn five_wrong_passwords_lock_a_user_and_a_new_password_lifts_it() {
        let (_dir, store) = store().await;
        assert!(store.add_user("alice", "operator", &crate::users::hash("the right password").unwrap()).await.unwrap());
        assert!(!store.add_user("alice", "viewer", "x").await.unwrap(), "a name is taken once");
        for _ in 1..LOCK_AFTER {
            assert_eq!(store.login("alice", "a wrong one").await.unwrap(), Login::Refused);
        }
        assert!(matches!(store.login("alice", "a wrong one").await.unwrap(), Login::Locked(_)));
        assert!(matches!(store.login("alice", "the right password").await.unwrap(), Login::Locked(_)), "locked");
        assert_eq!(store.login("nobody", "the right password").await.unwrap(), Login::Refused);
        // Its lock run out, one wrong try does not lock it again: the count starts afresh.
        user::Entity::update_many()
            .col_expr(
                user::Column::LockedUntil,
                sea_orm::sea_query::Expr::value(text(now() - time::Duration::minutes(1))),
            )
            .filter(user::Column::Name.eq("alice"))
            .exec(&store.db)
            .await
            .unwrap();
        assert_eq!(store.login("alice", "a wrong one").await.unwrap(), Login::Refused);
        assert!(matches!(store.login("alice", "the right password").await.unwrap(), Login::Ok(_)));
        for _ in 0..LOCK_AFTER {
            let _ = store.login("alice", "a wrong one").await.unwrap();
        }
        store.set_password("alice", &crate::users::hash("another password").unwrap()).await.unwrap();
        assert!(matches!(store.login("alice", "another password").await.unwrap(), Login::Ok(u) if u.name == "alice"));
    }

    #[tokio::test]
    async fn a_session_ends_when_it_expires_is_ended_or_its_user_is_disabled() {
        let (_dir, store) = store().await;
        store.add_user("bob", "viewer", &crate::users::hash("bob's password!").unwrap()).await.unwrap();
        for token in ["a", "b", "c"] {
            store.open_session("bob", token, "csrf", 1).await.unwrap();
        }
        assert!(store.session("a").await.unwrap().is_some());
        store.end_session("a").await.unwrap();
        assert!(store.session("a").await.unwrap().is_none(), "logged out");
        // Expired: its time is past.
        session::Entity::update_many()
            .col_expr(
                session::Column::ExpiresAt,
                sea_orm::sea_query::Expr::value(text(now() - time::Duration::minutes(1))),
            )
            .filter(session::Column::TokenHash.eq("b"))
            .exec(&store.db)
            .await
            .unwrap();
        assert!(store.session("b").await.unwrap().is_none(), "expired");
        assert!(store.session("c").await.unwrap().is_some());
        store.set_disabled("bob", true).await.unwrap();
        assert!(store.session("c").await.unwrap().is_none(), "a disabled user's sessions end");
        store.set_disabled("bob", false).await.unwrap();
        assert!(store.session("c").await.unwrap().is_none(), "and stay ended once enabled again");
        assert_eq!(
            store.login("bob", "bob's password!").await.unwrap(),
            Login::Ok(store.user("bob").await.unwrap().unwrap())
        );
    }
}
