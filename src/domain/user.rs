use super::{FieldError, NewPost, Post, Timestamp, UserId};

/// Name length limits, counted in Unicode scalar values after trimming.
pub const NAME_MIN_CHARS: usize = 2;
pub const NAME_MAX_CHARS: usize = 50;
/// Email length limit in characters, from the SMTP path limit.
pub const EMAIL_MAX_CHARS: usize = 254;
pub const AGE_MAX: i64 = 150;

/// A user's display name: 2 to 50 Unicode scalar values with no control
/// characters, surrounding white space removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let name = raw.trim();
        let chars = name.chars().count();

        if chars < NAME_MIN_CHARS {
            return Err(FieldError::new(
                "name",
                "too_short",
                format!("name must have at least {NAME_MIN_CHARS} characters, got {chars}"),
            ));
        }
        if chars > NAME_MAX_CHARS {
            return Err(FieldError::new(
                "name",
                "too_long",
                format!("name must have at most {NAME_MAX_CHARS} characters, got {chars}"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "name",
                "invalid_characters",
                "name must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, trimmed and lower-cased. The check is deliberately
/// loose: one `@`, a non-empty local part, a dotted domain, no white space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let email = raw.trim().to_lowercase();
        let invalid = |message: &str| FieldError::new("email", "invalid_format", message);

        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(FieldError::new(
                "email",
                "too_long",
                format!("email must have at most {EMAIL_MAX_CHARS} characters"),
            ));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "email must not contain white space or control characters",
            ));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(invalid("email must contain an @"));
        };
        if domain.contains('@') {
            return Err(invalid("email must contain exactly one @"));
        }
        if local.is_empty() {
            return Err(invalid("email must have a part before the @"));
        }
        let dotted = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if !dotted {
            return Err(invalid(
                "email domain must contain a dot between two labels",
            ));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An age in whole years, from 0 to 150.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(i32);

impl Age {
    pub fn parse(years: i64) -> Result<Self, FieldError> {
        if !(0..=AGE_MAX).contains(&years) {
            return Err(FieldError::new(
                "age",
                "out_of_range",
                format!("age must be from 0 to {AGE_MAX}, got {years}"),
            ));
        }
        // The range check above makes the conversion lossless.
        Ok(Self(years as i32))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// The fields a client sets on a user, as in a full replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    pub name: UserName,
    pub email: Email,
    pub age: Option<Age>,
}

/// A user to create, with the posts to create in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub fields: UserFields,
    pub posts: Vec<NewPost>,
}

/// A JSON merge patch of a user: `None` leaves a field unchanged, and
/// `age: Some(None)` clears the age.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPatch {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub age: Option<Option<Age>>,
}

/// A stored user that is not deleted. `version` grows by one on every change
/// and is the user's entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub age: Option<i32>,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A user with the posts that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserWithPosts {
    pub user: User,
    pub posts: Vec<Post>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_counts_unicode_scalar_values() {
        let cases: [(&str, Result<&str, &str>, &str); 9] = [
            ("李雷", Ok("李雷"), "two CJK characters are enough"),
            ("  Ada  ", Ok("Ada"), "surrounding white space is trimmed"),
            (
                &"é".repeat(50),
                Ok(&"é".repeat(50)),
                "50 accented letters fit",
            ),
            (
                &"é".repeat(51),
                Err("too_long"),
                "51 accented letters do not",
            ),
            ("😀", Err("too_short"), "one emoji is one character"),
            ("A", Err("too_short"), "one letter is too short"),
            ("   A   ", Err("too_short"), "padding does not count"),
            ("Ada\u{7}L", Err("invalid_characters"), "control characters"),
            ("Ada\nL", Err("invalid_characters"), "newline inside a name"),
        ];
        for (raw, expected, reason) in cases {
            let got = UserName::parse(raw);
            match expected {
                Ok(name) => assert_eq!(got.map(|n| n.0), Ok(name.to_owned()), "{reason}"),
                Err(code) => assert_eq!(got.map_err(|e| e.code), Err(code), "{reason}"),
            }
        }
    }

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  Ada.Lovelace@Example.COM ").map(|e| e.0);
        assert_eq!(email, Ok("ada.lovelace@example.com".to_owned()));
        assert_eq!(Email::parse("A@B.example"), Email::parse("a@b.example"));
    }

    #[test]
    fn email_rejects_malformed_addresses() {
        let long_local = format!("{}@example.com", "a".repeat(250));
        let cases = [
            ("", "no @ at all"),
            ("ada", "no @"),
            ("@example.com", "empty local part"),
            ("ada@", "empty domain"),
            ("ada@example", "domain without a dot"),
            ("ada@.example", "domain starting with a dot"),
            ("ada@example.", "domain ending with a dot"),
            ("ada@exa..mple", "empty domain label"),
            ("a@b@example.com", "two @"),
            ("ada lovelace@example.com", "inner space"),
            ("ada@exam\tple.com", "inner tab"),
            (long_local.as_str(), "over 254 characters"),
        ];
        for (raw, reason) in cases {
            assert!(Email::parse(raw).is_err(), "{raw:?} should fail: {reason}");
        }
    }

    #[test]
    fn age_bounds() {
        assert_eq!(Age::parse(0).map(Age::get), Ok(0));
        assert_eq!(Age::parse(150).map(Age::get), Ok(150));
        assert_eq!(Age::parse(-1).map_err(|e| e.code), Err("out_of_range"));
        assert_eq!(Age::parse(151).map_err(|e| e.code), Err("out_of_range"));
        assert!(Age::parse(i64::MAX).is_err());
    }
}
