use std::fmt;

/// A path or query id that is not an integer from 1 to 2^63-1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("id must be an integer from 1 to 9223372036854775807, got {0:?}")]
pub struct InvalidId(pub String);

fn parse_id(text: &str) -> Result<i64, InvalidId> {
    // `i64::from_str` accepts a leading `+` and leading zeros, which would
    // give one resource several paths.
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = digits_only && !text.starts_with('0');
    match text.parse::<i64>() {
        Ok(id) if canonical && id >= 1 => Ok(id),
        _ => Err(InvalidId(text.chars().take(40).collect())),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i64);

        impl $name {
            /// Parses a decimal id from 1 to 2^63-1.
            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                parse_id(text).map(Self)
            }

            /// Wraps an id read from the database, where ids are always positive.
            pub fn from_db(id: i64) -> Self {
                Self(id)
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// The id of a user: a positive 64-bit integer.
    UserId
);
id_type!(
    /// The id of a post: a positive 64-bit integer.
    PostId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_parse_accepts_full_range() {
        assert_eq!(UserId::parse("1").map(UserId::get), Ok(1));
        assert_eq!(
            UserId::parse("9223372036854775807").map(UserId::get),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn id_parse_rejects_non_canonical() {
        let cases = [
            "",
            "0",
            "-1",
            "+5",
            "01",
            "007",
            " 5",
            "5 ",
            "abc",
            "1.0",
            "1e3",
            "9223372036854775808",
            "99999999999999999999999",
        ];
        for case in cases {
            assert!(UserId::parse(case).is_err(), "{case:?} should be rejected");
        }
    }
}
