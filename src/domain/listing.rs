use super::user::AGE_MAX;
use super::{FieldError, UserId};

pub const DEFAULT_PAGE_LIMIT: i64 = 20;
pub const MAX_PAGE_LIMIT: i64 = 100;

/// One page of a listing: `page` counts from 1, `limit` is 1 to 100, and the
/// row offset they imply fits in an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: i64,
    limit: i64,
}

impl PageRequest {
    /// Validates the raw `page` and `limit` query values, applying defaults.
    pub fn parse(page: Option<&str>, limit: Option<&str>) -> Result<Self, FieldError> {
        let page = match page {
            None => 1,
            Some(raw) => parse_integer("page", raw, 1, i64::MAX)?,
        };
        let limit = match limit {
            None => DEFAULT_PAGE_LIMIT,
            Some(raw) => parse_integer("limit", raw, 1, MAX_PAGE_LIMIT)?,
        };
        let request = Self { page, limit };
        if request.checked_offset().is_none() {
            return Err(FieldError::new(
                "page",
                "out_of_range",
                format!("page {page} with limit {limit} is past any possible row"),
            ));
        }
        Ok(request)
    }

    pub fn page(self) -> i64 {
        self.page
    }

    pub fn limit(self) -> i64 {
        self.limit
    }

    /// Returns the number of rows before this page, which `parse` checked
    /// fits in an `i64`.
    pub fn offset(self) -> i64 {
        self.checked_offset().unwrap_or(i64::MAX)
    }

    fn checked_offset(self) -> Option<i64> {
        (self.page - 1).checked_mul(self.limit)
    }

    /// Returns the last page number for `total` rows, at least 1.
    pub fn last_page(self, total: i64) -> i64 {
        ((total + self.limit - 1) / self.limit).max(1)
    }
}

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// Splits `-field` into the field and a descending direction.
fn split_direction(raw: &str) -> (&str, Direction) {
    match raw.strip_prefix('-') {
        Some(field) => (field, Direction::Descending),
        None => (raw, Direction::Ascending),
    }
}

/// The order of a user listing; ties are always broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSort {
    Id(Direction),
    Name(Direction),
    CreatedAt(Direction),
}

impl UserSort {
    pub const ALLOWED: &'static str = "id, -id, name, -name, created_at, -created_at";

    pub fn parse(raw: Option<&str>) -> Result<Self, FieldError> {
        let Some(raw) = raw else {
            return Ok(Self::Id(Direction::Ascending));
        };
        match split_direction(raw) {
            ("id", direction) => Ok(Self::Id(direction)),
            ("name", direction) => Ok(Self::Name(direction)),
            ("created_at", direction) => Ok(Self::CreatedAt(direction)),
            _ => Err(invalid_sort(raw, Self::ALLOWED)),
        }
    }
}

/// The order of a post listing; ties are always broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostSort {
    Id(Direction),
    Title(Direction),
    CreatedAt(Direction),
}

impl PostSort {
    pub const ALLOWED: &'static str = "id, -id, title, -title, created_at, -created_at";

    pub fn parse(raw: Option<&str>) -> Result<Self, FieldError> {
        let Some(raw) = raw else {
            return Ok(Self::Id(Direction::Ascending));
        };
        match split_direction(raw) {
            ("id", direction) => Ok(Self::Id(direction)),
            ("title", direction) => Ok(Self::Title(direction)),
            ("created_at", direction) => Ok(Self::CreatedAt(direction)),
            _ => Err(invalid_sort(raw, Self::ALLOWED)),
        }
    }
}

fn invalid_sort(raw: &str, allowed: &str) -> FieldError {
    FieldError::new(
        "sort",
        "invalid_value",
        format!("sort must be one of {allowed}, got {:?}", truncate(raw)),
    )
}

/// Filters of a user listing; all given filters must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserFilter {
    pub min_age: Option<i32>,
    pub max_age: Option<i32>,
    /// Compared with the stored, lower-cased email.
    pub email: Option<String>,
}

impl UserFilter {
    /// Returns whether the filter keeps every user.
    pub fn is_empty(&self) -> bool {
        self.min_age.is_none() && self.max_age.is_none() && self.email.is_none()
    }

    pub fn parse(
        min_age: Option<&str>,
        max_age: Option<&str>,
        email: Option<&str>,
    ) -> Result<Self, FieldError> {
        let age = |field, raw| parse_integer(field, raw, 0, AGE_MAX).map(|age| age as i32);
        let min_age = min_age.map(|raw| age("min_age", raw)).transpose()?;
        let max_age = max_age.map(|raw| age("max_age", raw)).transpose()?;

        if let (Some(min), Some(max)) = (min_age, max_age) {
            if min > max {
                return Err(FieldError::new(
                    "min_age",
                    "out_of_range",
                    format!("min_age {min} is greater than max_age {max}"),
                ));
            }
        }
        let email = email.map(|raw| raw.trim().to_lowercase());
        // No stored email is empty, so an empty filter is a client's mistake.
        if email.as_deref() == Some("") {
            return Err(FieldError::new(
                "email",
                "too_short",
                "email must not be empty; leave the parameter out to list every user",
            ));
        }
        if email
            .as_deref()
            .is_some_and(|email| email.chars().any(char::is_control))
        {
            return Err(FieldError::new(
                "email",
                "invalid_value",
                "email must not contain control characters",
            ));
        }
        Ok(Self {
            min_age,
            max_age,
            email,
        })
    }
}

/// Filters of a post listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PostFilter {
    pub user_id: Option<UserId>,
}

fn parse_integer(field: &'static str, raw: &str, min: i64, max: i64) -> Result<i64, FieldError> {
    let out_of_range = || {
        FieldError::new(
            field,
            "out_of_range",
            format!(
                "{field} must be an integer from {min} to {max}, got {:?}",
                truncate(raw)
            ),
        )
    };
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new(
            field,
            "invalid_type",
            format!("{field} must be an integer, got {:?}", truncate(raw)),
        ));
    }
    let value = raw.parse::<i64>().map_err(|_| out_of_range())?;
    if !(min..=max).contains(&value) {
        return Err(out_of_range());
    }
    Ok(value)
}

/// Keeps echoed client input short in error messages.
fn truncate(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_and_offset() {
        let page = PageRequest::parse(None, None).map(|p| (p.page(), p.limit(), p.offset()));
        assert_eq!(page, Ok((1, 20, 0)));
        let page = PageRequest::parse(Some("3"), Some("10")).map(|p| p.offset());
        assert_eq!(page, Ok(20));
    }

    #[test]
    fn page_rejects_bad_values() {
        let cases = [
            (Some("0"), None, "page", "page starts at 1"),
            (Some("-1"), None, "page", "negative page"),
            (Some("x"), None, "page", "not a number"),
            (Some(""), None, "page", "empty value"),
            (Some("1.5"), None, "page", "fraction"),
            (Some("99999999999999999999"), None, "page", "beyond i64"),
            (
                Some("9223372036854775807"),
                Some("100"),
                "page",
                "offset overflow",
            ),
            (None, Some("0"), "limit", "limit starts at 1"),
            (None, Some("101"), "limit", "limit ends at 100"),
            (None, Some("-5"), "limit", "negative limit"),
        ];
        for (page, limit, field, reason) in cases {
            let got = PageRequest::parse(page, limit).map_err(|e| e.field);
            assert_eq!(got, Err(field.to_owned()), "{reason}");
        }
    }

    #[test]
    fn last_page_rounds_up() {
        let page = PageRequest::parse(None, Some("10"));
        assert_eq!(
            page.map(|p| (p.last_page(0), p.last_page(10), p.last_page(11))),
            Ok((1, 1, 2))
        );
    }

    #[test]
    fn sort_parses_direction() {
        assert_eq!(
            UserSort::parse(Some("-name")),
            Ok(UserSort::Name(Direction::Descending))
        );
        assert_eq!(
            UserSort::parse(None),
            Ok(UserSort::Id(Direction::Ascending))
        );
        assert!(UserSort::parse(Some("email")).is_err());
        assert!(UserSort::parse(Some("--id")).is_err());
        assert_eq!(
            PostSort::parse(Some("title")),
            Ok(PostSort::Title(Direction::Ascending))
        );
    }

    #[test]
    fn user_filter_checks_age_range() {
        assert!(UserFilter::parse(Some("10"), Some("20"), None).is_ok());
        assert!(UserFilter::parse(Some("30"), Some("20"), None).is_err());
        assert!(UserFilter::parse(Some("151"), None, None).is_err());
        let filter = UserFilter::parse(None, None, Some(" A@B.Example "));
        assert_eq!(filter.map(|f| f.email), Ok(Some("a@b.example".to_owned())));
    }
}
