use std::fmt;
use std::path::{Path, PathBuf};

/// The database location: a PostgreSQL server or an SQLite file.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(PathBuf),
}

/// A `DATABASE_URL` that troupe cannot use.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidDatabaseUrl {
    #[error("DATABASE_URL is empty; give an SQLite file path or a postgres:// URL")]
    Empty,
    #[error(
        "DATABASE_URL points at an in-memory SQLite database, which every pooled \
         connection would see as a separate empty database; give a file path instead"
    )]
    InMemory,
    #[error(
        "DATABASE_URL has the unsupported scheme {0:?}; use postgres://, postgresql:// \
         or an SQLite file path"
    )]
    UnsupportedScheme(String),
    #[error(
        "DATABASE_URL opens SQLite read-only (mode=ro or immutable=1), but troupe \
         writes to the database; remove that parameter"
    )]
    ReadOnly,
    #[error(
        "DATABASE_URL looks like a libpq key=value string, which troupe does not read; \
         use a postgres:// URL"
    )]
    KeywordString,
}

impl DatabaseUrl {
    /// Reads `postgres://` and `postgresql://` URLs as PostgreSQL and anything
    /// else as an SQLite file path, with an optional `sqlite://` or `sqlite:`
    /// prefix.
    pub fn parse(raw: &str) -> Result<Self, InvalidDatabaseUrl> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }

        // The value is never echoed: it may hold a password.
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "sqlite" && scheme != "file" {
                let scheme: String = scheme.chars().take(20).collect();
                return Err(InvalidDatabaseUrl::UnsupportedScheme(scheme));
            }
        }
        let keyword_string = ["host=", "dbname=", "user=", "password=", "port="]
            .iter()
            .any(|keyword| raw.starts_with(keyword) || raw.contains(&format!(" {keyword}")));
        if keyword_string {
            return Err(InvalidDatabaseUrl::KeywordString);
        }

        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() {
            return Err(InvalidDatabaseUrl::Empty);
        }
        let in_memory =
            path == ":memory:" || path.starts_with("file::memory:") || path.contains("mode=memory");
        if in_memory {
            return Err(InvalidDatabaseUrl::InMemory);
        }
        let read_only = uri_parameters(path)
            .any(|parameter| parameter == "mode=ro" || parameter == "immutable=1");
        if read_only {
            return Err(InvalidDatabaseUrl::ReadOnly);
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// Returns the URL or path in the form Diesel connects with.
    pub fn connection_string(&self) -> String {
        match self {
            Self::Postgres(url) => url.clone(),
            Self::Sqlite(path) => path.to_string_lossy().into_owned(),
        }
    }

    /// Returns the SQLite file's path when it was given as a plain path, and
    /// `None` for PostgreSQL or a `file:` URI, whose path SQLite parses.
    pub fn sqlite_file(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) if !is_uri(path) => Some(path),
            _ => None,
        }
    }

    /// Returns the form pool connections open: for an SQLite path, a URI
    /// that opens the file read-write but never creates it. Migrations run
    /// first and create the file. A connection opened after the file was
    /// deleted then fails, where a plain path would start an empty database
    /// without troupe's tables. A path given as a `file:` URI gets the same
    /// `mode=rw` unless it sets a mode of its own.
    pub fn pool_connection_string(&self) -> String {
        let Self::Sqlite(path) = self else {
            return self.connection_string();
        };
        let given_as_uri = is_uri(path);
        let path = path.to_string_lossy();
        if given_as_uri {
            if uri_parameters(&path).any(|parameter| parameter.starts_with("mode=")) {
                return path.into_owned();
            }
            let separator = if path.contains('?') { '&' } else { '?' };
            return format!("{path}{separator}mode=rw");
        }
        // An absolute path follows an empty authority: `file:///tmp/a.db`.
        let mut uri = String::from(if path.starts_with('/') {
            "file://"
        } else {
            "file:"
        });
        for c in path.chars() {
            match c {
                '%' => uri.push_str("%25"),
                '?' => uri.push_str("%3F"),
                '#' => uri.push_str("%23"),
                c => uri.push(c),
            }
        }
        uri.push_str("?mode=rw");
        uri
    }

    /// Replaces this URL's password wherever it appears in `text`, such as
    /// in a driver error that echoes the URL.
    pub fn redact(&self, text: &str) -> String {
        match self.password() {
            Some(password) if !password.is_empty() => text.replace(&password, "***"),
            _ => text.to_owned(),
        }
    }

    /// Returns the password in `scheme://user:password@host` or `?password=`.
    fn password(&self) -> Option<String> {
        let Self::Postgres(url) = self else {
            return None;
        };
        let rest = url.split_once("://")?.1;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                return Some(password.to_owned());
            }
        }
        let query = url.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.eq_ignore_ascii_case("password")
                .then(|| value.to_owned())
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }
}

/// Shows the URL with any password replaced by `***`, so it is safe to log.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(url) => f.write_str(&redact_password(url)),
            Self::Sqlite(path) if is_uri(path) => {
                write!(f, "{}", path.display())
            }
            Self::Sqlite(path) => {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                write!(f, "sqlite://{}", absolute.display())
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Returns the `key=value` parameters of an SQLite URI's query.
fn uri_parameters(uri: &str) -> impl Iterator<Item = &str> {
    uri.split_once('?')
        .map_or("", |(_, query)| query)
        .split('&')
}

/// Tells whether an SQLite location is a `file:` URI rather than a path.
fn is_uri(path: &Path) -> bool {
    path.to_string_lossy().starts_with("file:")
}

/// Replaces the password in `scheme://user:password@host` and in a
/// `password=` query parameter.
fn redact_password(url: &str) -> String {
    let mut redacted = url.to_owned();

    if let Some(scheme_end) = redacted.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = redacted[authority_start..]
            .find(['/', '?'])
            .map_or(redacted.len(), |i| authority_start + i);
        if let Some(at) = redacted[authority_start..authority_end].rfind('@') {
            let userinfo = authority_start..authority_start + at;
            if let Some(colon) = redacted[userinfo.clone()].find(':') {
                redacted.replace_range(userinfo.start + colon + 1..userinfo.end, "***");
            }
        }
    }

    if let Some(query_start) = redacted.find('?') {
        let (base, query) = redacted.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted = format!("{base}{}", query.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_selects_backend() {
        let pg = DatabaseUrl::parse("postgresql://u@h/db");
        assert!(matches!(pg, Ok(DatabaseUrl::Postgres(_))));
        let sqlite = DatabaseUrl::parse("sqlite://data/troupe.db");
        assert_eq!(
            sqlite,
            Ok(DatabaseUrl::Sqlite(PathBuf::from("data/troupe.db")))
        );
        assert_eq!(
            DatabaseUrl::parse("./troupe.db"),
            Ok(DatabaseUrl::Sqlite(PathBuf::from("./troupe.db")))
        );
    }

    #[test]
    fn url_rejects_in_memory_sqlite() {
        for raw in [
            ":memory:",
            "sqlite::memory:",
            "file::memory:?cache=shared",
            "file:x?mode=memory",
        ] {
            assert_eq!(
                DatabaseUrl::parse(raw),
                Err(InvalidDatabaseUrl::InMemory),
                "{raw}"
            );
        }
        assert_eq!(DatabaseUrl::parse("  "), Err(InvalidDatabaseUrl::Empty));
    }

    #[test]
    fn url_rejects_read_only_sqlite() {
        for raw in [
            "file:x.db?mode=ro",
            "file:/tmp/x.db?cache=private&immutable=1",
        ] {
            assert_eq!(
                DatabaseUrl::parse(raw),
                Err(InvalidDatabaseUrl::ReadOnly),
                "{raw}"
            );
        }
        assert!(DatabaseUrl::parse("file:x.db?mode=rw").is_ok());
    }

    #[test]
    fn url_rejects_other_forms() {
        let cases = [
            (
                "mysql://root:pw@db/app",
                InvalidDatabaseUrl::UnsupportedScheme("mysql".into()),
            ),
            (
                "host=db user=app password=pw",
                InvalidDatabaseUrl::KeywordString,
            ),
            ("dbname=app", InvalidDatabaseUrl::KeywordString),
        ];
        for (raw, expected) in cases {
            assert_eq!(DatabaseUrl::parse(raw), Err(expected.clone()), "{raw}");
            assert!(
                !expected.to_string().contains("pw"),
                "the message hides the value"
            );
        }
    }

    #[test]
    fn pool_connections_open_only_an_existing_file() {
        use diesel::connection::SimpleConnection;
        use diesel::{Connection, RunQueryDsl, SqliteConnection};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd ?#%20 name.db");
        let url = DatabaseUrl::Sqlite(path.clone());
        let missing = SqliteConnection::establish(&url.pool_connection_string());
        assert!(missing.is_err(), "opened a file that does not exist");
        assert!(!path.exists(), "the failed open created the file");

        let mut first = SqliteConnection::establish(&url.connection_string()).unwrap();
        first
            .batch_execute("CREATE TABLE marker (id INTEGER)")
            .unwrap();
        let mut pooled = SqliteConnection::establish(&url.pool_connection_string()).unwrap();
        let tables = diesel::sql_query("SELECT 1 FROM marker").execute(&mut pooled);
        assert_eq!(tables, Ok(0), "the pool string opened another file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let relative = DatabaseUrl::Sqlite(PathBuf::from("data/a#b.db"));
        assert_eq!(
            relative.pool_connection_string(),
            "file:data/a%23b.db?mode=rw"
        );
        let uri = DatabaseUrl::parse("file:x.db?cache=private").unwrap();
        assert_eq!(
            uri.pool_connection_string(),
            "file:x.db?cache=private&mode=rw"
        );
        let uri = DatabaseUrl::parse("file:x.db").unwrap();
        assert_eq!(uri.pool_connection_string(), "file:x.db?mode=rw");
        let uri = DatabaseUrl::parse("file:x.db?mode=rwc").unwrap();
        assert_eq!(uri.pool_connection_string(), "file:x.db?mode=rwc");
    }

    #[test]
    fn redact_hides_password_in_text() {
        let url = DatabaseUrl::Postgres("postgres://app:s3cr3t@[::1:5432/troupe".into());
        let text = "invalid URL postgres://app:s3cr3t@[::1:5432/troupe";
        assert_eq!(
            url.redact(text),
            "invalid URL postgres://app:***@[::1:5432/troupe"
        );
    }

    #[test]
    fn display_hides_password() {
        let url =
            DatabaseUrl::Postgres("postgres://app:s3cr3t@db:5432/troupe?sslmode=require".into());
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db:5432/troupe?sslmode=require"
        );
        let url = DatabaseUrl::Postgres("postgres://db/troupe?user=app&password=s3cr3t".into());
        assert_eq!(
            url.to_string(),
            "postgres://db/troupe?user=app&password=***"
        );
        let url = DatabaseUrl::Postgres("postgres://app@db/troupe".into());
        assert_eq!(url.to_string(), "postgres://app@db/troupe");
    }
}
